"""The Side-Step node pack in a real ComfyUI server: node definitions, every example workflow run through the real
frontend's conversion, the files and events they produce, re-queue without retraining, and Cancel during training."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import soundfile
from safetensors import safe_open

from sidestep.adapters.config import LokrConfig, LoraConfig
from sidestep.adapters.files import load_adapter
from sidestep.dataset.encode import EncodeConfig
from sidestep.training.config import TrainConfig

from .fixtures_pack import (
    BASE,
    COMFY_TURBO,
    EXAMPLE_GRAPHS,
    LOKR_RUN,
    LORA_RUN,
    TURBO,
    example_path,
    load_example,
    strip_meta,
    substitute,
    without_newer_defaults,
)
from .host import ComfyUIHost, Frontend, PromptRejected


# Every node and its documented inputs, in widget order.
NODE_INPUTS = {
    "SideStepLoadCheckpoint": ["model", "base_model", "model_path", "dtype", "device", "text_encoder", "vae"],
    "SideStepFromComfyModels": ["model", "base_model", "clip", "vae"],
    "SideStepEncodeDataset": [
        "model", "audio_folder", "dataset_folder", "max_duration", "normalize", "skip_existing", "trigger_word",
        "trigger_position",
    ],
    "SideStepConfigureAdapter": [
        "adapter_type", "rank", "alpha", "dropout", "weight_decompose", "lokr_factor", "lokr_decompose_both", "target",
        "custom_modules", "loha_dim", "loha_alpha", "oft_block_size",
    ],
    "SideStepTrainAdapter": [
        "model", "dataset", "adapter_config", "run_name", "epochs", "learning_rate", "optimizer", "scheduler",
        "warmup_steps", "batch_size", "gradient_accumulation", "timestep_mode", "cfg_ratio", "save_every", "seed",
        "resume_from", "gradient_checkpointing", "precision", "preview_caption", "preview_every", "max_grad_norm",
        "validation", "validation_every", "ema_decay", "final_from_best", "overwrite",
    ],
    "SideStepLoadAdapter": ["model", "adapter_file", "strength", "adapter"],
    "SideStepApplyAdapterToModel": ["model", "adapter_file", "strength", "adapter"],
    "SideStepSampleWithShift": [
        "model", "caption", "lyrics", "language", "duration", "bpm", "keyscale", "timesignature", "seed", "steps",
        "shift", "guidance", "batch_size",
    ],
}
NODE_OUTPUTS = {
    "SideStepLoadCheckpoint": ["ACESTEP_MODEL"],
    "SideStepFromComfyModels": ["ACESTEP_MODEL"],
    "SideStepEncodeDataset": ["ACESTEP_DATASET"],
    "SideStepConfigureAdapter": ["ADAPTER_CONFIG"],
    "SideStepTrainAdapter": ["ADAPTER"],
    "SideStepLoadAdapter": ["ACESTEP_MODEL"],
    "SideStepApplyAdapterToModel": ["MODEL"],
    "SideStepSampleWithShift": ["AUDIO"],
}
SAMPLE_SECONDS = 5.0
QUICK_SAMPLING = {"duration": SAMPLE_SECONDS}


@dataclasses.dataclass
class Run:
    """A finished prompt: its id, the API prompt that ran, its history entry and the websocket messages."""

    prompt_id: str
    prompt: dict[str, Any]
    entry: dict[str, Any]
    messages: list[dict[str, Any]]
    seconds: float

    def events(self, event_type: str, node: str | None = None) -> list[dict[str, Any]]:
        """The data of this prompt's messages of one type (optionally from one node)."""
        return [
            message["data"]
            for message in self.messages
            if message["type"] == event_type
            and message["data"].get("prompt_id") == self.prompt_id
            and (node is None or message["data"].get("node") == node)
        ]


def run_prompt(host: ComfyUIHost, prompt: dict[str, Any], timeout: float = 150.0) -> Run:
    """Queue an API prompt with a websocket listening and wait until it has finished (any outcome)."""
    started = time.monotonic()
    with host.events() as events:
        prompt_id = host.queue(prompt, events.client_id)
        entry = host.wait(prompt_id, timeout=timeout)
        events.wait_for("executing", lambda data: data.get("node") is None and data.get("prompt_id") == prompt_id, 10)
        messages = events.messages
    return Run(prompt_id, prompt, entry, messages, time.monotonic() - started)


def converted_example(page: Frontend, name: str) -> dict[str, Any]:
    """The shipped example loaded in the real frontend and converted with app.graphToPrompt()."""
    page.page.evaluate("async () => { await window.app.refreshComboInNodes(); }")
    page.load_workflow(load_example(name))
    prompt = page.graph_to_prompt()
    expected = strip_meta(EXAMPLE_GRAPHS[name])
    assert without_newer_defaults(strip_meta(prompt), expected, page.host.object_info()) == expected, (
        f"{example_path(name)} is out of date"
    )
    return prompt


def run_example(host: ComfyUIHost, page: Frontend, name: str, **substitutions: dict[str, Any]) -> Run:
    """Convert a shipped example in the frontend, apply {node class: {widget: value}} and run it to success."""
    prompt = converted_example(page, name)
    for class_type, values in substitutions.items():
        prompt = substitute(prompt, class_type, **values)
    run = run_prompt(host, prompt)
    assert run.entry["status"]["status_str"] == "success", f"{name}: {run.entry['status']}\n{host.log_tail()}"
    return run


def saved_flac(host: ComfyUIHost, run: Run, node: str = "7") -> Path:
    """The FLAC file the native Save Audio node wrote."""
    (saved,) = run.entry["outputs"][node]["audio"]
    path = host.output_dir / saved["subfolder"] / saved["filename"]
    assert path.suffix == ".flac" and path.is_file()
    return path


def assert_song(path: Path, seconds: float) -> None:
    """The file decodes to 48 kHz stereo of the requested length, and is not silent."""
    data, rate = soundfile.read(path)
    assert rate == 48_000 and data.shape[1] == 2
    assert data.shape[0] / rate == pytest.approx(seconds, abs=0.05)
    assert abs(data).max() > 0


def header(path: Path) -> tuple[list[str], dict[str, str]]:
    """Tensor names and metadata of a safetensors file."""
    with safe_open(str(path), framework="pt") as handle:
        return list(handle.keys()), dict(handle.metadata() or {})


def run_folder(host: ComfyUIHost, run_name: str) -> Path:
    """A training run's output folder."""
    return host.output_dir / "sidestep" / run_name


def comfy_lora(host: ComfyUIHost, run_name: str) -> Path:
    """A run's ComfyUI-native export in the first loras folder."""
    return host.root / "models" / "loras" / f"sidestep_{run_name}.safetensors"


def kinds(run: Run, node: str = "4") -> list[str]:
    """The kinds of the training events of one prompt, without free-form notes."""
    return [event["kind"] for event in run.events("sidestep.progress", node) if event["kind"] != "note"]


def mtimes(folder: Path) -> dict[str, int]:
    """Modification time of every file under a folder."""
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def lora_run(pack: ComfyUIHost, browser_page: Frontend) -> Run:
    """The 'train a LoRA on turbo and hear it' example, run once (2 epochs, 5 s song)."""
    return run_example(
        pack, browser_page, "train_lora_turbo",
        SideStepTrainAdapter={"epochs": 2, "save_every": 1}, SideStepSampleWithShift=QUICK_SAMPLING,
    )


# ---------------------------------------------------------------- definitions


def test_object_info_lists_every_node_with_documented_inputs(pack: ComfyUIHost) -> None:
    """/object_info has every node under Side-Step, with the documented inputs and outputs and a tooltip on each."""
    info = pack.object_info()
    for node_id, names in NODE_INPUTS.items():
        node = info[node_id]
        assert node["category"] == "Side-Step" and node["display_name"] and node["description"]
        assert node["python_module"].startswith("custom_nodes.side_step")
        order = node["input_order"]["required"] + node["input_order"].get("optional", [])
        assert order[: len(names)] == names, node_id  # settings declared later follow (tests/test_defaults.py)
        assert node["output"] == NODE_OUTPUTS[node_id]
        for section in ("required", "optional"):
            for name, (_, options) in node["input"].get(section, {}).items():
                assert len(options.get("tooltip", "")) > 20, f"{node_id}.{name} has no tooltip"
    models = info["SideStepLoadCheckpoint"]["input"]["required"]["model"][1]["options"]
    assert models == [COMFY_TURBO, TURBO, BASE, "my-custom-finetune  [custom, base: turbo]"]


def test_widget_defaults_are_the_core_defaults(pack: ComfyUIHost) -> None:
    """The widgets start from the core dataclasses' defaults."""
    info = pack.object_info()

    def default(node_id: str, name: str) -> Any:
        inputs = info[node_id]["input"]
        return {**inputs["required"], **inputs.get("optional", {})}[name][1]["default"]

    adapter, lokr, encode, train = LoraConfig(), LokrConfig(), EncodeConfig("in", "out"), TrainConfig(output_dir="out")
    configure = "SideStepConfigureAdapter"
    assert info[configure]["input"]["required"]["adapter_type"][1]["options"] == ["lora", "lokr", "loha", "oft"]
    assert [default(configure, name) for name in ("adapter_type", "rank", "alpha", "dropout", "weight_decompose")] == [
        adapter.kind, adapter.rank, adapter.alpha, adapter.dropout, adapter.use_dora,
    ]
    assert [default(configure, name) for name in ("lokr_factor", "lokr_decompose_both", "target")] == [
        -1 if lokr.factor is None else lokr.factor, lokr.decompose_both, adapter.target,
    ]
    from sidestep.adapters.config import CUSTOM_TARGET, TARGET_PRESETS

    assert info[configure]["input"]["optional"]["target"][1]["options"] == [*TARGET_PRESETS, CUSTOM_TARGET]
    encode_node = "SideStepEncodeDataset"
    assert [default(encode_node, name) for name in ("max_duration", "normalize", "skip_existing")] == [
        encode.max_duration, encode.normalize, encode.skip_existing,
    ]
    for name in ("epochs", "learning_rate", "optimizer", "scheduler", "batch_size", "save_every", "seed", "precision"):
        assert default("SideStepTrainAdapter", name) == getattr(train, name), name


def test_bad_choices_are_refused_before_anything_runs(pack: ComfyUIHost) -> None:
    """A model that is not there, a missing GPU, an unsafe run name and a vanished adapter file are refused with a
    clear reason."""
    graph = EXAMPLE_GRAPHS["train_lora_turbo"]
    prompt = {
        "1": substitute({"1": graph["1"]}, "SideStepLoadCheckpoint", model="acestep-v15-sft  [official sft]")["1"],
        "9": substitute({"9": graph["1"]}, "SideStepLoadCheckpoint", device="cuda")["9"],
        "2": substitute({"2": graph["2"]}, "SideStepEncodeDataset", model=["9", 0])["2"],
        "3": graph["3"],
        "4": substitute({"4": graph["4"]}, "SideStepTrainAdapter", run_name="../elsewhere")["4"],
        "5": substitute({"5": graph["5"]}, "SideStepLoadAdapter", adapter_file="output/sidestep/gone/final")["5"],
        "6": graph["6"],
        "7": graph["7"],
    }
    with pytest.raises(PromptRejected) as rejected:
        pack.queue(prompt)
    errors = {node: [error["details"] for error in entry["errors"]] for node, entry in rejected.value.body["node_errors"].items()}
    assert "acestep-v15-sft" in errors["1"][0] and "models/acestep" in errors["1"][0]
    assert "no CUDA GPU" in errors["9"][0]
    assert "plain folder name" in errors["4"][0]
    assert "not on disk" in errors["5"][0]


def test_examples_open_without_missing_nodes(pack: ComfyUIHost, browser_page: Frontend) -> None:
    """Every shipped example loads in the real frontend with all its node types known and every link intact."""
    for name in EXAMPLE_GRAPHS:
        workflow = load_example(name)
        browser_page.load_workflow(workflow)
        loaded = browser_page.page.evaluate(
            """() => window.app.graph.nodes.map((n) => [n.type, !!window.LiteGraph.registered_node_types[n.type]])"""
        )
        assert sorted(t for t, _ in loaded) == sorted(node["type"] for node in workflow["nodes"]), name
        assert all(known for _, known in loaded), f"{name}: missing nodes {[t for t, k in loaded if not k]}"
        assert "Note" in [node["type"] for node in workflow["nodes"]], f"{name} has no explanatory note"


# ---------------------------------------------------------------- train a LoRA on turbo and hear it


def test_train_lora_turbo_writes_the_documented_layout(pack: ComfyUIHost, lora_run: Run) -> None:
    """Dataset, adapter (final + per-epoch checkpoints + TensorBoard) and the ComfyUI-native export are on disk."""
    manifest = pack.output_dir / "sidestep" / "datasets" / "my_songs_turbo" / "manifest.json"
    assert manifest.is_file()
    out = run_folder(pack, LORA_RUN)
    assert {p.name for p in (out / "final").iterdir()} == {"adapter_config.json", "adapter_model.safetensors"}
    for epoch in (1, 2):
        assert (out / "checkpoints" / f"epoch_{epoch}" / "training_state.pt").is_file()
    assert any((out / "runs").rglob("events.out.tfevents.*"))
    _, metadata = header(out / "final" / "adapter_model.safetensors")
    assert (metadata["ss_variant"], metadata["ss_base"], metadata["ss_epoch"], metadata["ss_shift"]) == ("turbo", "turbo", "2", "3.0")
    keys, _ = header(comfy_lora(pack, LORA_RUN))
    assert keys and all(key.startswith("base_model.model.layers.") for key in keys)
    assert any(key.endswith(".alpha") for key in keys) and any(key.endswith(".lora_A.weight") for key in keys)


def test_train_lora_turbo_saves_a_song_of_the_requested_length(pack: ComfyUIHost, lora_run: Run) -> None:
    """The native Save Audio node wrote a FLAC that decodes to the sampled duration."""
    assert_song(saved_flac(pack, lora_run), SAMPLE_SECONDS)


def test_train_lora_turbo_reports_progress_over_the_websocket(lora_run: Run) -> None:
    """Per-clip encode events (with the rejected file), training events and ComfyUI progress reach the client."""
    encode = lora_run.events("sidestep.encode", "2")
    assert [event["file"] for event in encode] == ["broken.wav", "song0.wav"]
    assert encode[-1]["index"] == encode[-1]["total"] == 2
    assert [source for source, _ in encode[-1]["rejected"]] == ["broken.wav"]
    summary = lora_run.entry["outputs"]["2"]["text"][0]
    assert "rejected broken.wav" in summary and "1 clip " in summary
    # The GPU memory estimate is reported before training starts, and stays in the node's text.
    notes = [event["message"] for event in lora_run.events("sidestep.progress", "4") if event["kind"] == "note"]
    assert notes[0].startswith("Estimated GPU memory") and "Estimated GPU memory" in lora_run.entry["outputs"]["4"]["text"][0]
    # The validation loss is scored before the first step and at the end of every epoch (tests/test_learning.py).
    assert kinds(lora_run) == [
        "validation", "step", "epoch", "validation", "checkpoint", "step", "epoch", "validation", "checkpoint", "finished",
    ]
    steps = [event for event in lora_run.events("sidestep.progress", "4") if event["kind"] == "step"]
    assert [(e["step"], e["total_steps"], e["epoch"]) for e in steps] == [(1, 2, 0), (2, 2, 1)]
    assert all(isinstance(e["loss"], float) and e["lr"] >= 0 and e["grad_norm"] is not None for e in steps)
    assert lora_run.events("progress", "4") and lora_run.events("progress", "6")


def test_requeue_reuses_the_finished_adapter(pack: ComfyUIHost, lora_run: Run) -> None:
    """Queueing the same graph again does not train again; the adapter files are left untouched."""
    out = run_folder(pack, LORA_RUN)
    before = mtimes(out)
    again = run_prompt(pack, lora_run.prompt)
    assert again.entry["status"]["status_str"] == "success"
    assert "step" not in kinds(again)
    assert mtimes(out) == before
    assert "reused" in again.entry["outputs"]["4"]["text"][0]
    export = comfy_lora(pack, LORA_RUN).stat().st_mtime_ns
    third = run_prompt(pack, lora_run.prompt)
    (cached,) = third.events("execution_cached")
    assert {"4", "6"} <= set(cached["nodes"]), "an unchanged graph with its adapter on disk is served from the cache"
    assert comfy_lora(pack, LORA_RUN).stat().st_mtime_ns == export


def test_deleting_the_adapter_runs_again_into_one_run_per_folder(pack: ComfyUIHost, lora_run: Run) -> None:
    """With the finished adapter gone, the same graph runs again (the fingerprint sees the missing folder), and the
    folder's one-run rule answers: the earlier run's checkpoints are named with the ways on; overwrite trains anew."""
    prompt = {node_id: node for node_id, node in lora_run.prompt.items() if node_id in ("1", "2", "3", "4")}
    prompt = substitute(prompt, "SideStepTrainAdapter", run_name="retrain_check", epochs=1)
    first = run_prompt(pack, prompt)
    assert first.entry["status"]["status_str"] == "success" and "step" in kinds(first)
    out = run_folder(pack, "retrain_check")
    final = out / "final"
    for file in final.iterdir():
        file.unlink()
    final.rmdir()
    second = run_prompt(pack, prompt)
    assert second.entry["status"]["status_str"] == "error" and "step" not in kinds(second)
    (error,) = second.events("execution_error")
    message = error["exception_message"]
    assert f"The run folder {out} already holds a run (LoRA rank 64, alpha 128 on attention" in message, message
    assert "newest checkpoint epoch_1 after epoch 1 of 1" in message
    assert "continue it with `resume_from` latest, start over with `overwrite`" in message
    third = run_prompt(pack, substitute(prompt, "SideStepTrainAdapter", overwrite=True))
    assert third.entry["status"]["status_str"] == "success" and "step" in kinds(third)
    assert (final / "adapter_model.safetensors").is_file()


# ---------------------------------------------------------------- load an existing adapter and generate


def test_generate_with_adapter_from_disk(pack: ComfyUIHost, browser_page: Frontend, lora_run: Run) -> None:
    """The adapter trained above, picked from Load Adapter's dropdown, generates a song."""
    options = pack.object_info()["SideStepLoadAdapter"]["input"]["required"]["adapter_file"][1]["options"]
    assert f"output/sidestep/{LORA_RUN}/final" in options
    assert f"output/sidestep/{LORA_RUN}/checkpoints/epoch_2" in options
    assert f"loras/sidestep_{LORA_RUN}.safetensors" in options
    run = run_example(pack, browser_page, "generate_with_adapter", SideStepSampleWithShift=QUICK_SAMPLING)
    assert_song(saved_flac(pack, run), SAMPLE_SECONDS)
    assert "lora adapter" in run.entry["outputs"]["5"]["text"][0]


def test_stacked_adapters_and_a_foreign_shift_warn_in_the_node(pack: ComfyUIHost, lora_run: Run) -> None:
    """Two stacked adapters (our folder + the models/loras export) sample; a shift the adapter was not trained for
    is reported in Sample with Shift's text output."""
    graph = EXAMPLE_GRAPHS["generate_with_adapter"]
    prompt = {
        "1": graph["1"],
        "5": substitute({"5": graph["5"]}, "SideStepLoadAdapter", strength=0.5)["5"],
        "8": substitute(
            {"8": graph["5"]}, "SideStepLoadAdapter",
            model=["5", 0], adapter_file=f"loras/sidestep_{LORA_RUN}.safetensors", strength=0.5,
        )["8"],
        "6": substitute({"6": graph["6"]}, "SideStepSampleWithShift", model=["8", 0], shift=2.0, **QUICK_SAMPLING)["6"],
        "7": graph["7"],
    }
    run = run_prompt(pack, prompt)
    assert run.entry["status"]["status_str"] == "success", run.entry["status"]
    assert "Shift 2 differs from the shift 3" in run.entry["outputs"]["6"]["text"][0]
    assert_song(saved_flac(pack, run), SAMPLE_SECONDS)


# ---------------------------------------------------------------- resume a run


def test_resume_continues_from_the_latest_checkpoint(pack: ComfyUIHost, browser_page: Frontend, lora_run: Run) -> None:
    """resume_from 'latest' continues the run from epoch 2: the step count goes on and epoch 3 is written."""
    run = run_example(
        pack, browser_page, "resume_training",
        SideStepTrainAdapter={"epochs": 3, "save_every": 1}, SideStepSampleWithShift=QUICK_SAMPLING,
    )
    steps = [event for event in run.events("sidestep.progress", "4") if event["kind"] == "step"]
    assert [(e["step"], e["epoch"]) for e in steps] == [(3, 2)]
    out = run_folder(pack, LORA_RUN)
    assert (out / "checkpoints" / "epoch_3" / "training_state.pt").is_file()
    _, metadata = header(out / "final" / "adapter_model.safetensors")
    assert (metadata["ss_epoch"], metadata["ss_steps"]) == ("3", "3")
    assert_song(saved_flac(pack, run), SAMPLE_SECONDS)


# ---------------------------------------------------------------- train a LoKR on base with previews


def test_train_lokr_base_with_previews(pack: ComfyUIHost, browser_page: Frontend) -> None:
    """A LoKR trains on the base model, writes a preview song, exports LyCORIS keys, and its song is saved."""
    run = run_example(
        pack, browser_page, "train_lokr_base_previews",
        SideStepTrainAdapter={"epochs": 2, "save_every": 1, "preview_every": 2},
        SideStepSampleWithShift={**QUICK_SAMPLING, "steps": 8},
    )
    out = run_folder(pack, LOKR_RUN)
    _, metadata = header(out / "final" / "lokr_weights.safetensors")
    assert (metadata["ss_variant"], metadata["ss_base"], metadata["ss_shift"]) == ("base", "base", "1.0")
    previews = [event for event in run.events("sidestep.progress", "4") if event["kind"] == "preview"]
    assert [Path(event["preview_path"]).name for event in previews] == ["epoch_2.flac"]
    assert_song(out / "previews" / "epoch_2.flac", 10.0)
    keys, _ = header(comfy_lora(pack, LOKR_RUN))
    assert keys and all(key.startswith("lycoris_layers_") for key in keys)
    options = pack.object_info()["SideStepLoadAdapter"]["input"]["required"]["adapter_file"][1]["options"]
    assert f"output/sidestep/{LOKR_RUN}/final" in options and f"loras/sidestep_{LOKR_RUN}.safetensors" in options
    assert_song(saved_flac(pack, run), SAMPLE_SECONDS)


# ---------------------------------------------------------------- Cancel


def test_cancel_during_training_leaves_a_checkpoint_and_a_usable_adapter(pack: ComfyUIHost, lora_run: Run) -> None:
    """/interrupt mid-run: the prompt ends as interrupted after a checkpoint and final/ were saved and exported."""
    prompt = {node_id: node for node_id, node in lora_run.prompt.items() if node_id in ("1", "2", "3", "4")}
    prompt = substitute(prompt, "SideStepTrainAdapter", run_name="cancelled", epochs=10_000, save_every=10_000)
    is_step: Callable[[dict[str, Any]], bool] = lambda data: data.get("kind") == "step"  # noqa: E731
    with pack.events() as events:
        prompt_id = pack.queue(prompt, events.client_id)
        events.wait_for("sidestep.progress", is_step, timeout=120)
        pack.interrupt()
        events.wait_for("execution_interrupted", lambda data: data["prompt_id"] == prompt_id, timeout=60)
        stopped = events.wait_for("sidestep.progress", lambda data: data.get("kind") == "stopped", timeout=5)
    entry = pack.wait(prompt_id, timeout=30)
    assert entry["status"]["status_str"] == "error"
    assert stopped["step"] < 10_000
    out = run_folder(pack, "cancelled")
    assert list((out / "checkpoints").glob("epoch_*/training_state.pt"))
    adapter = load_adapter(out / "final")
    assert adapter.kind == "lora" and adapter.modules
    assert comfy_lora(pack, "cancelled").is_file()
