"""Analyse Rank in a real ComfyUI server: listed with its documented inputs, it writes the map beside the dataset,
shows its summary, and Train Adapter trains and exports each module at the map's rank."""

from __future__ import annotations

import json

from safetensors import safe_open

from sidestep.adapters.adaptive import RANK_MAP_FILE
from sidestep.adapters.files import load_adapter
from sidestep.adapters.keys import peft_name

from .fixtures_pack import EXAMPLE_GRAPHS, substitute
from .host import ComfyUIHost
from .test_nodes import comfy_lora, run_folder, run_prompt

NODE = "SideStepAnalyseRank"
INPUTS = ["model", "dataset", "adapter_config", "seed", "batches", "rank_budget", "min_rank", "max_rank"]


def test_analyse_rank_sits_between_encode_and_train(pack: ComfyUIHost) -> None:
    info = pack.object_info()[NODE]
    order = info["input_order"]
    assert info["category"] == "Side-Step" and order["required"] + order.get("optional", []) == INPUTS
    assert info["output"] == ["ADAPTER_CONFIG"]
    graph = EXAMPLE_GRAPHS["train_lora_turbo"]
    prompt = {key: graph[key] for key in ("1", "2", "3", "4")}
    prompt = substitute(prompt, "SideStepConfigureAdapter", rank=4, alpha=8.0)
    prompt = substitute(prompt, "SideStepTrainAdapter", run_name="adaptive", epochs=1)
    prompt["9"] = {
        "class_type": NODE,
        "inputs": {"model": ["1", 0], "dataset": ["2", 0], "adapter_config": ["3", 0], "batches": 2, "rank_budget": -1,
                   "min_rank": 2, "max_rank": -1, "seed": 42},
    }
    prompt["4"]["inputs"]["adapter_config"] = ["9", 0]
    run = run_prompt(pack, prompt)
    assert run.entry["status"]["status_str"] == "success", run.entry["status"]
    (text,) = run.entry["outputs"]["9"]["text"]
    assert text.startswith("Adaptive rank:") and RANK_MAP_FILE in text
    dataset = pack.output_dir / "sidestep" / "datasets" / "my_songs_turbo"
    ranks = {name: entry["rank"] for name, entry in json.loads((dataset / RANK_MAP_FILE).read_text())["modules"].items() if entry["rank"]}
    trained = load_adapter(run_folder(pack, "adaptive") / "final")
    assert {module: weights.rank for module, weights in trained.modules.items()} == ranks
    with safe_open(str(comfy_lora(pack, "adaptive")), framework="pt") as exported:
        for module, rank in ranks.items():
            assert float(exported.get_tensor(f"{peft_name(module)}.alpha")) == 8.0 * rank / 4
