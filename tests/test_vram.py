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
from benchmarks.models import write_dataset
from benchmarks.vram_table import XL
from sidestep.adapters.kinds.lora import LoraConfig
from sidestep.model.config import AceStepConfig
from sidestep.tiny_models import tiny_model_config
from sidestep.training.vram import GIB, estimate_training_vram

MARGIN = 0.10  # the estimate's stated accuracy against the measured live peak (docs/performance.md)
# The real 2B and XL widths, a quarter of the 2B's, and a tiny width the real bf16 step runs fast.
WIDTHS = {
    "full": AceStepConfig(is_turbo=True),
    "small": AceStepConfig(hidden_size=512, intermediate_size=1536, num_attention_heads=8, num_key_value_heads=4, head_dim=64, is_turbo=True),
    "xl": XL,
    "tiny": AceStepConfig(hidden_size=128, intermediate_size=384, num_attention_heads=4, num_key_value_heads=2, head_dim=32, is_turbo=True),
}


def model(width: str, layers: int) -> AceStepConfig:
    """The DiT config of `width` with `layers` layers."""
    return dataclasses.replace(WIDTHS[width], num_hidden_layers=layers, layer_types=None)


def lora(rank: int) -> LoraConfig:
    return LoraConfig(rank=rank, alpha=2 * rank, target="attention_mlp")


@functools.cache
def measured(width: str, layers: int, rank: int, storage: str, checkpointing: bool, seconds: float, fake: bool = True) -> int:
    """The live-tensor peak (bytes) of two real trainer steps, LoRA on attention + MLP."""
    return measure_step_peak(model(width, layers), lora(rank), storage, checkpointing, seconds, fake=fake).total_bytes


def estimated(width: str, layers: int, rank: int, storage: str, checkpointing: bool, seconds: float) -> int:
    return estimate_training_vram(model(width, layers), lora(rank), "adamw", checkpointing, storage, seconds).live_bytes


def test_fake_tensors_count_exactly_the_bytes_the_real_step_keeps_alive() -> None:
    """The full-width counts run over fake tensors (no arithmetic); at a small width the real bf16 step agrees."""
    for storage, checkpointing in (("bf16", True), ("fp8", False)):
        settings = ("tiny", 2, 8, storage, checkpointing, 2.0)
        assert measured(*settings, fake=True) == measured(*settings, fake=False)


@pytest.mark.parametrize(
    "settings",
    [
        ("small", 2, 16, "bf16", True, 30.0),
        ("small", 2, 64, "fp8", False, 60.0),
        ("full", 1, 64, "bf16", True, 30.0),
        ("full", 1, 16, "bf16", False, 30.0),
        ("full", 1, 16, "fp8", True, 60.0),
        ("xl", 1, 64, "bf16", False, 60.0),
    ],
    ids=["small-r16-bf16-ckpt-30s", "small-r64-fp8-60s", "full-r64-bf16-ckpt-30s", "full-r16-bf16-30s", "full-r16-fp8-ckpt-60s", "xl-r64-bf16-60s"],
)
def test_the_estimate_is_within_its_margin_of_the_measured_live_peak(settings) -> None:
    real, estimate = measured(*settings), estimated(*settings)
    assert abs(estimate - real) <= MARGIN * real, f"estimate {estimate / GIB:.3f} GiB, measured {real / GIB:.3f} GiB"


def test_each_full_width_layer_adds_what_the_estimate_says() -> None:
    """Without checkpointing every layer keeps its activations: the second layer's measured cost is the estimated one."""
    one, two = ("full", 1, 16, "bf16", False, 30.0), ("full", 2, 16, "bf16", False, 30.0)
    real, estimate = measured(*two) - measured(*one), estimated(*two) - estimated(*one)
    assert abs(estimate - real) <= MARGIN * real, f"estimate {estimate / 1e6:.1f} MB, measured {real / 1e6:.1f} MB per layer"


def test_dry_run_prints_the_estimate_and_trains_nothing(tiny_root: Path, tmp_path: Path) -> None:
    """The estimate for the flags given and the dataset's longest clip; no run folder appears."""
    dataset = write_dataset(tmp_path / "tensors", tiny_model_config("turbo"), frames=250, clips=2)
    out = tmp_path / "run"
    args = ["train", "--checkpoint-dir", str(tiny_root), "--dataset-dir", str(dataset), "--output-dir", str(out),
            "--rank", "8", "--optimizer", "adamw8bit", "--dry-run"]
    done = subprocess.run([sys.executable, "-m", "sidestep", *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    for part in ("Estimated GPU memory", "frozen weights", "adapter + grads + optimiser state", "activations", "allocator"):
        assert part in done.stdout
    assert "10 s clips, batch 1, adamw8bit, checkpointing on" in done.stdout
    assert "Dry run" in done.stdout and not out.exists()
