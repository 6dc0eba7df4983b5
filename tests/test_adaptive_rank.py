"""Adaptive rank: the measured map (budget, bounds, seed, what the loss ignores), training with it (per-module ranks,
bit-exact resume, PEFT and our loader) and `sidestep analyse` — on the tiny model tree with the real trainer."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from peft import PeftModel

from sidestep.adapters.adaptive import (
    RANK_MAP_FILE,
    AdaptiveRankSettings,
    ModuleStats,
    allocate_ranks,
    build_rank_map,
    config_from_rank_map,
)
from sidestep.adapters.config import AdapterConfig, LoraConfig
from sidestep.adapters.files import load_adapter
from sidestep.bundle import open_checkpoint
from sidestep.cli import main
from sidestep.dataset.encode import EncodeConfig, encode_dataset
from sidestep.dataset.loader import collate_clips
from sidestep.dataset.tensors import load_clip
from sidestep.errors import AdapterError, TrainingError
from sidestep.training.config import TrainConfig
from sidestep.training.events import StopSignal
from sidestep.training.loop import RunIdentity
from sidestep.training.objective import flow_matching_loss
from sidestep.training.rank_analysis import analyse_ranks, measure_modules
from tests.test_training import adapter_tensors, load_model, make_trainer, songs  # noqa: F401 (songs: a fixture)

TURBO = "acestep-v15-turbo"
LORA = LoraConfig(rank=4, alpha=8)
SETTINGS = AdaptiveRankSettings(batches=3, min_rank=2, max_rank=8)
IDENTITY = RunIdentity(variant="turbo", base="turbo", model_name=TURBO)


@pytest.fixture(scope="module")
def dataset(tiny_root, songs, tmp_path_factory) -> Path:  # noqa: F811
    folder = tmp_path_factory.mktemp("adaptive-data")
    encode_dataset(open_checkpoint(tiny_root, TURBO), EncodeConfig(str(songs), str(folder)))
    return folder


@pytest.fixture(scope="module")
def rank_map(tiny_root, dataset):
    return analyse_ranks(open_checkpoint(tiny_root, TURBO), dataset, LORA, SETTINGS, TrainConfig(output_dir="", seed=3))


def stats(name: str, fisher: float, spectrum: list[float], shape=(16, 16)) -> ModuleStats:
    total = sum(spectrum)
    return ModuleStats(name, shape, fisher, tuple(fisher * value / total for value in spectrum) if total else ())


def test_allocation_stays_within_budget_and_bounds_and_skips_what_adds_nothing():
    generator = random.Random(0)
    for _ in range(200):
        modules = [
            stats(f"m{i}", generator.choice([0.0, generator.random()]), sorted((generator.random() for _ in range(12)), reverse=True),
                  (generator.choice([8, 16, 48]), generator.choice([8, 16, 48])))
            for i in range(generator.randint(1, 12))
        ]
        budget, low = generator.randint(1, 2000), generator.randint(1, 4)
        high = generator.randint(low, 12)
        ranks = allocate_ranks(modules, budget, low, high)
        assert sum(ranks[m.name] * m.cost for m in modules) <= budget
        assert all(rank == 0 or low <= rank <= high for rank in ranks.values())
        assert all(ranks[m.name] == 0 for m in modules if m.fisher == 0)


def test_allocation_follows_fisher_and_the_directions_it_needs():
    flat = [1.0] * 8
    ranks = allocate_ranks([stats("cared", 10.0, flat), stats("ignored", 1.0, flat), stats("dead", 0.0, flat)], 12 * 32, 2, 8)
    assert ranks["cared"] > ranks["ignored"] > 0 and ranks["dead"] == 0
    # The same Fisher information: one module holds it in one direction, the other spread over eight.
    ranks = allocate_ranks([stats("one", 1.0, [1.0] + [0.001] * 7), stats("many", 1.0, flat)], 8 * 32, 1, 8)
    assert ranks["many"] > ranks["one"]


def test_map_respects_its_budget_and_bounds_and_is_the_same_for_the_same_seed(tiny_root, dataset, rank_map):
    uniform = LORA.rank * sum(module.cost for module in rank_map.modules)
    assert rank_map.budget == uniform and 0 < rank_map.used <= uniform
    assert all(rank == 0 or SETTINGS.min_rank <= rank <= SETTINGS.max_rank for rank in rank_map.ranks.values())
    assert len({rank for rank in rank_map.ranks.values()}) > 1, "every module got the same rank"
    again = analyse_ranks(open_checkpoint(tiny_root, TURBO), dataset, LORA, SETTINGS, TrainConfig(output_dir="", seed=3))
    assert again.to_json() == rank_map.to_json()
    halved = build_rank_map(list(rank_map.modules), LORA, AdaptiveRankSettings(rank_budget=uniform // 2, min_rank=2, max_rank=8),
                            rank_map.model, rank_map.dataset_hash)
    assert halved.used <= uniform // 2 and sum(halved.ranks.values()) < sum(rank_map.ranks.values())


def test_modules_the_loss_ignores_get_no_rank(tiny_root, dataset):
    """With layer 0's self-attention output projection zeroed, its q/k/v cannot change the loss."""
    model = load_model(tiny_root, TURBO)
    with torch.no_grad():
        model.decoder.layers[0].self_attn.o_proj.weight.zero_()
    measured, dataset_hash = measure_modules(model, dataset, LORA, TrainConfig(output_dir="", seed=3), IDENTITY, SETTINGS)
    ranks = build_rank_map(measured, LORA, SETTINGS, {}, dataset_hash).ranks
    ignored = [f"layers.0.self_attn.{name}" for name in ("q_proj", "k_proj", "v_proj")]
    fisher = {module.name: module.fisher for module in measured}
    assert all(fisher[name] == 0 for name in ignored)
    assert all(ranks[name] == 0 for name in ignored)
    assert ranks["layers.0.self_attn.o_proj"] > 0 and sum(ranks.values()) > 0


def test_training_with_the_map_has_its_ranks_resumes_bit_exact_and_loads_everywhere(tiny_root, dataset, rank_map, tmp_path):
    config = rank_map.adapter_config(LORA)
    expected = dict(rank_map.pairs())
    full = make_trainer(tiny_root, dataset, tmp_path / "full", adapter=config, epochs=2)
    full.run()
    saved = load_adapter(tmp_path / "full" / "final")
    assert {module: weights.rank for module, weights in saved.modules.items()} == expected
    assert all(weights.scale == pytest.approx(LORA.alpha / LORA.rank) for weights in saved.modules.values())
    assert saved.metadata.adapter_config == config

    stop = StopSignal()
    part = make_trainer(tiny_root, dataset, tmp_path / "part", adapter=config, epochs=2, stop=stop,
                        callback=lambda event: event.kind == "step" and event.step == 3 and stop.request("test"))
    result = part.run()
    assert result.status == "stopped"
    make_trainer(tiny_root, dataset, tmp_path / "part", adapter=config, epochs=2, resume_from=str(result.last_checkpoint)).run()
    want, got = adapter_tensors(tmp_path / "full" / "final"), adapter_tensors(tmp_path / "part" / "final")
    assert want.keys() == got.keys() and all(torch.equal(want[key], got[key]) for key in want)

    uniform = make_trainer(tiny_root, dataset, tmp_path / "part", adapter=LORA, epochs=4, resume_from=str(result.last_checkpoint))
    with pytest.raises(TrainingError, match="adaptive rank"):
        uniform.run()

    # ACE-Step's own loader is PEFT's: it rebuilds every module at its rank and reproduces the trained forward.
    batch = collate_clips([load_clip(next(dataset.glob("*.safetensors")))])
    noise, t = torch.randn(batch["target_latents"].shape, generator=torch.Generator().manual_seed(5)), torch.tensor([0.5])
    with torch.no_grad():
        trained = flow_matching_loss(full.model.decoder, batch, noise, t)
        peft = PeftModel.from_pretrained(load_model(tiny_root, TURBO).decoder, str(tmp_path / "full" / "final"))
        ranks = {name.removeprefix("base_model.model."): module.r["default"] for name, module in peft.named_modules() if hasattr(module, "r")}
        assert ranks == expected
        torch.testing.assert_close(flow_matching_loss(peft.base_model.model, batch, noise, t), trained, rtol=1e-5, atol=1e-6)


def test_rank_map_settings_round_trip_and_bad_values_are_refused():
    config = LoraConfig(rank=4, alpha=8, rank_map=(("layers.0.self_attn.q_proj", 2),))
    assert AdapterConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert "rank_map" not in LORA.to_dict()
    assert config.shape_signature() != LORA.shape_signature()
    for bad in ((("layers.0.self_attn.q_proj", 0),), (("", 2),), ("abc",), ((("x", 2.5)),)):
        with pytest.raises(AdapterError, match="rank_map"):
            LoraConfig(rank_map=bad)
    with pytest.raises(AdapterError, match="max_rank"):
        AdaptiveRankSettings(min_rank=8, max_rank=4)


def test_analyse_on_the_command_line_then_train_with_the_map(tiny_root, dataset, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    for path in dataset.iterdir():
        (data / path.name).write_bytes(path.read_bytes())
    model = ["--checkpoint-dir", str(tiny_root), "--model-variant", "turbo"]
    assert main(["analyse", *model, "--dataset-dir", str(data), "--rank", "4", "--alpha", "8", "--batches", "2",
                 "--min-rank", "2", "--max-rank", "6", "--rank-budget", "3000"]) == 0
    printed = capsys.readouterr().out
    written = json.loads((data / RANK_MAP_FILE).read_text())
    assert "Adaptive rank:" in printed and str(data / RANK_MAP_FILE) in printed
    assert written["budget"]["parameters"] == 3000 and 0 < written["budget"]["used"] <= 3000
    assert written["settings"] == {"batches": 2, "rank_budget": 3000, "min_rank": 2, "max_rank": 6}
    assert all(entry["rank"] == 0 or 2 <= entry["rank"] <= 6 for entry in written["modules"].values())
    assert main(["train", *model, "--dataset-dir", str(data), "--output-dir", str(tmp_path / "run"), "--rank", "4",
                 "--alpha", "8", "--rank-map", "auto", "--epochs", "1"]) == 0
    trained = load_adapter(tmp_path / "run" / "final")
    assert {module: weights.rank for module, weights in trained.modules.items()} == {
        name: entry["rank"] for name, entry in written["modules"].items() if entry["rank"]
    }


def test_a_broken_rank_map_is_named_with_the_fix(tiny_root, dataset, tmp_path, capsys):
    broken = tmp_path / RANK_MAP_FILE
    for text, message in (("{", "cannot be read as JSON"), ('{"format": "x"}', "not a Side-Step rank map")):
        broken.write_text(text)
        with pytest.raises(AdapterError, match=message):
            config_from_rank_map(broken, LORA)
    assert main(["train", "--checkpoint-dir", str(tiny_root), "--dataset-dir", str(dataset), "--output-dir",
                 str(tmp_path / "run"), "--rank-map", str(tmp_path / "missing.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
    valid = json.loads(json.dumps({"format": "sidestep-rank-map", "adapter": {"target": "attention", "uniform_rank": 4, "alpha": 8},
                                   "modules": {"layers.9.self_attn.q_proj": {"rank": 2}}}))
    broken.write_text(json.dumps(valid))
    trainer = make_trainer(tiny_root, dataset, tmp_path / "out", adapter=config_from_rank_map(broken, LORA), epochs=1)
    with pytest.raises(AdapterError, match="layers.9.self_attn.q_proj"):
        trainer.run()
