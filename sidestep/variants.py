"""ACE-Step 1.5 variant facts and defaults, each stated once: audio rates, schedules, guidance, training draws, auto rules."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from .errors import UnknownBaseModelError

SAMPLE_RATE = 48_000  # Hz, stereo, what the VAE reads and writes
FRAMES_PER_SECOND = 25  # latent frames per second of audio (1920 samples each)
BASE_MODELS = ("turbo", "base", "sft")
TURBO_STEPS = 8
TURBO_SHIFTS = (1.0, 2.0, 3.0)  # the shifts the turbo model was distilled with
# The turbo model's discrete training timesteps: its 8 sampling steps at shift 3.
TURBO_TIMESTEPS_SHIFT3 = (1.0, 0.9545454545454546, 0.9, 0.8333333333333334, 0.75, 0.6428571428571429, 0.5, 0.3)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class Schedule(NamedTuple):
    """How to sample: the timestep shift and the number of Euler steps."""

    shift: float
    steps: int


@dataclass(frozen=True)
class VariantDefaults:
    """One base's defaults: its sampling schedule and guidance, its training timestep mode and condition dropout."""

    schedule: Schedule
    guidance: float
    timestep_mode: str
    cfg_ratio: float


_DEFAULTS = {
    "turbo": VariantDefaults(Schedule(shift=3.0, steps=TURBO_STEPS), guidance=1.0, timestep_mode="discrete", cfg_ratio=0.0),
    "base": VariantDefaults(Schedule(shift=1.0, steps=50), guidance=7.0, timestep_mode="continuous", cfg_ratio=0.15),
    "sft": VariantDefaults(Schedule(shift=1.0, steps=50), guidance=7.0, timestep_mode="continuous", cfg_ratio=0.15),
}


def variant_defaults(base: str) -> VariantDefaults:
    """The official defaults of a base (turbo, base or sft); UnknownBaseModelError for anything else."""
    if base not in _DEFAULTS:
        raise UnknownBaseModelError(f"Unknown model variant {base!r}; expected 'turbo', 'base' or 'sft'.")
    return _DEFAULTS[base]


def default_schedule(base: str) -> Schedule:
    """The official sampling schedule: turbo shift 3.0, 8 steps; base and sft shift 1.0, 50 steps."""
    return variant_defaults(base).schedule


def resolve_device(choice: str = "auto") -> torch.device:
    """'auto' → CUDA when available, else the CPU; otherwise the named device."""
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def resolve_dtype(choice: str, device: torch.device | str) -> torch.dtype:
    """'auto' → bf16 on CUDA, fp32 elsewhere (CPUs without bf16 units run bf16 far slower); else bf16/fp16/fp32."""
    if choice == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    return DTYPES[choice]
