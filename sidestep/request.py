"""What to generate (a light module: the CLI and the nodes build their options from it without loading models)."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import SamplingError

GUIDANCE_MODES = ("apg", "cfg")


@dataclass
class GenerationRequest:
    """What to generate; 0 / None fields mean "auto" (from the adapter's metadata, else the variant's defaults)."""

    caption: str
    lyrics: str = ""
    language: str = "unknown"
    duration: float = 30.0
    bpm: int | None = None
    keyscale: str = ""
    timesignature: str = ""
    seed: int = 0
    batch_size: int = 1
    steps: int = 0
    shift: float = 0.0
    guidance: float | None = None
    guidance_mode: str = GUIDANCE_MODES[0]

    def __post_init__(self) -> None:
        if not 1.0 <= self.duration <= 600.0:
            raise SamplingError(f"duration must be between 1 and 600 seconds (got {self.duration}).")
        if self.batch_size < 1:
            raise SamplingError(f"batch_size must be at least 1 (got {self.batch_size}).")
        if self.guidance_mode not in GUIDANCE_MODES:
            raise SamplingError(f"guidance_mode must be 'apg' or 'cfg' (got {self.guidance_mode!r}).")
