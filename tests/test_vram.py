"""The GPU memory estimate against the live-tensor peak of the real trainer step, counted on the CPU under CUDA's dtype
policy (bf16 autocast), at small and full width; and `train --dry-run`, which prints it without training."""

from __future__ import annotations

import dataclasses
import functools
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.live_tensors import measure_step_peak
from sidestep.adapters.kinds.lora import LoraConfig
from sidestep.model.config import AceStepConfig
from sidestep.training.vram import GIB, estimate_training_vram

MARGIN = 0.10  # the estimate's stated accuracy against the measured live peak (docs/performance.md)
FULL = AceStepConfig(is_turbo=True)
SMALL = AceStepConfig(
    hidden_size=512, intermediate_size=1536, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4,
    head_dim=64, is_turbo=True,
)


def layers(config: AceStepConfig, count: int) -> AceStepConfig:
    """`config` with `count` DiT layers."""
    return dataclasses.replace(config, num_hidden_layers=count, layer_types=None)


@functools.cache
def measured(config: AceStepConfig, rank: int, storage: str, checkpointing: bool, seconds: float, fake: bool = True) -> int:
    """The live-tensor peak (bytes) of two real trainer steps, LoRA on attention + MLP."""
    adapter = LoraConfig(rank=rank, alpha=2 * rank, target="attention_mlp")
    return measure_step_peak(config, adapter, storage, checkpointing, seconds, fake=fake).total_bytes


def estimated(config: AceStepConfig, rank: int, storage: str, checkpointing: bool, seconds: float) -> int:
    adapter = LoraConfig(rank=rank, alpha=2 * rank, target="attention_mlp")
    return estimate_training_vram(config, adapter, "adamw", checkpointing, storage, seconds).live_bytes


def test_fake_tensors_count_exactly_the_bytes_the_real_step_keeps_alive() -> None:
    """The full-width counts run over fake tensors (no arithmetic); at a small width the real bf16 step agrees."""
    tiny = AceStepConfig(hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=32, is_turbo=True)
    for storage, checkpointing in (("bf16", True), ("fp8", False)):
        assert measured(tiny, 8, storage, checkpointing, 4.0, fake=True) == measured(tiny, 8, storage, checkpointing, 4.0, fake=False)


@pytest.mark.parametrize(
    ("config", "rank", "storage", "checkpointing", "seconds"),
    [
        (SMALL, 16, "bf16", True, 30.0),
        (SMALL, 64, "fp8", False, 60.0),
        (layers(FULL, 1), 64, "bf16", True, 30.0),
        (layers(FULL, 1), 16, "bf16", False, 30.0),
        (layers(FULL, 1), 16, "fp8", True, 60.0),
    ],
    ids=["small-r16-bf16-ckpt-30s", "small-r64-fp8-60s", "full-r64-bf16-ckpt-30s", "full-r16-bf16-30s", "full-r16-fp8-ckpt-60s"],
)
def test_the_estimate_is_within_its_margin_of_the_measured_live_peak(config, rank, storage, checkpointing, seconds) -> None:
    real, estimate = measured(config, rank, storage, checkpointing, seconds), estimated(config, rank, storage, checkpointing, seconds)
    assert abs(estimate - real) <= MARGIN * real, f"estimate {estimate / GIB:.3f} GiB, measured {real / GIB:.3f} GiB"


def test_each_full_width_layer_adds_what_the_estimate_says() -> None:
    """Without checkpointing every layer keeps its activations: the second layer's measured cost is the estimated one."""
    one, two = layers(FULL, 1), layers(FULL, 2)
    real = measured(two, 16, "bf16", False, 30.0) - measured(one, 16, "bf16", False, 30.0)
    estimate = estimated(two, 16, "bf16", False, 30.0) - estimated(one, 16, "bf16", False, 30.0)
    assert abs(estimate - real) <= MARGIN * real, f"estimate {estimate / 1e6:.1f} MB, measured {real / 1e6:.1f} MB per layer"


def test_dry_run_prints_the_estimate_and_trains_nothing(tiny_root: Path, encoded: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["train", "--checkpoint-dir", str(tiny_root), "--dataset-dir", str(encoded), "--output-dir", str(out),
            "--rank", "8", "--dry-run"]
    done = subprocess.run([sys.executable, "-m", "sidestep", *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    for part in ("Estimated GPU memory", "frozen weights", "adapter + grads + optimiser state", "activations", "allocator"):
        assert part in done.stdout
    assert "Dry run" in done.stdout and not out.exists()
