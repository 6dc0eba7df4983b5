"""ACE-Step 1.5 variant facts and defaults, each stated once: audio rates, schedules, guidance, training draws, auto rules.

A light module (torch is imported only by the auto rules): the CLI and the nodes read it while building their options.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from .errors import ConfigError, UnknownBaseModelError

if TYPE_CHECKING:
    import torch

SAMPLE_RATE = 48_000  # Hz, stereo, what the VAE reads and writes
FRAMES_PER_SECOND = 25  # latent frames per second of audio (1920 samples each)
BASE_MODELS = ("turbo", "base", "sft")
TURBO_STEPS = 8
TURBO_SHIFTS = (1.0, 2.0, 3.0)  # the shifts the turbo model was distilled with
# The turbo model's discrete training timesteps: its 8 sampling steps at shift 3.
TURBO_TIMESTEPS_SHIFT3 = (1.0, 0.9545454545454546, 0.9, 0.8333333333333334, 0.75, 0.6428571428571429, 0.5, 0.3)
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}  # choice → torch dtype name
# Weight storage choices: the dtypes, and fp8 (the DiT's Linear weights in e4m3 with per-channel scales; the rest kept).
STORAGE = {**DTYPES, "fp8": "float8_e4m3fn"}


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


def per_base(pick: Callable[[VariantDefaults], float]) -> str:
    """One default for every base, for help texts and tooltips: 'turbo 8, base 50, sft 50'."""
    return ", ".join(f"{base} {pick(variant_defaults(base)):g}" for base in BASE_MODELS)


def config_defaults(config: type) -> dict[str, Any]:
    """A settings dataclass's defaults by field name, the one place the CLI's and the nodes' defaults come from."""
    return {
        field.name: field.default if field.default_factory is dataclasses.MISSING else field.default_factory()
        for field in dataclasses.fields(config)
        if field.default is not dataclasses.MISSING or field.default_factory is not dataclasses.MISSING
    }


def resolve_device(choice: str = "auto") -> torch.device:
    """'auto' → CUDA when available, else the CPU; otherwise the named device."""
    import torch

    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if torch.device(choice).type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"`device` is {choice} but no CUDA device is available here (no NVIDIA GPU, driver or CUDA build of "
            "torch). Use `device` auto (CUDA when available, else the CPU) or cpu."
        )
    return torch.device(choice)


@functools.cache
def cpu_has_bf16_units() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AMX or AVX-512 BF16), asked of torch once per process."""
    import torch

    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)


def resolve_dtype(choice: str, device: torch.device | str) -> torch.dtype:
    """The dtype products run in: 'auto' → bf16 on CUDA and on CPUs with bf16 units (AMX, AVX-512 BF16), fp32 on other
    CPUs (they run bf16 products several times slower); else bf16/fp16/fp32."""
    import torch

    if choice == "auto":
        kind = torch.device(device).type
        fast = kind == "cuda" or (kind == "cpu" and cpu_has_bf16_units())
        return torch.bfloat16 if fast else torch.float32
    return getattr(torch, DTYPES[choice])


def resolve_storage(choice: str) -> torch.dtype | None:
    """The dtype frozen weights are kept in: 'auto' → None, each tensor's own as the checkpoint stores it (bf16 files
    stay bf16, fp32 files fp32, on every device; layers upcast per product); else the named dtype (fp8: see STORAGE)."""
    import torch

    return None if choice == "auto" else getattr(torch, STORAGE[choice])


def inference_dtype(stored: torch.dtype | None, device: torch.device | str) -> torch.dtype:
    """The dtype a forward pass without autocast runs in over weights stored in `stored` (None: the checkpoint's own):
    fp32 for fp32 weights, bf16/fp16 ones on CUDA in their own dtype, otherwise the automatic precision."""
    import torch

    if stored == torch.float32 or (torch.device(device).type == "cuda" and stored in (torch.bfloat16, torch.float16)):
        return stored
    return resolve_dtype("auto", device)
