"""What to generate (a light module: the CLI and the nodes build their options from it without loading models)."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import SamplingError
from .settings import setting
from .variants import default_schedule, per_base

GUIDANCE_MODES = ("apg", "cfg")


@dataclass
class GenerationRequest:
    """What to generate; None fields mean "auto" (from the adapter's metadata, else the variant's defaults)."""

    caption: str
    lyrics: str = setting("", help="Lyrics with section tags such as [Verse] and [Chorus]; empty or [Instrumental]: no vocals.", node=False)
    language: str = setting("unknown", help="Language code of the lyrics (en, zh, ja, ...); unknown lets the model guess.", node=False)
    # The Sample with Shift node shows the settings below (after caption, lyrics, language) in this order: append new
    # ones at the end.
    duration: float = setting(30.0, help="Length of each song in seconds.", min=1.0, max=600.0, step=1.0)
    bpm: int | None = setting(None, help="Tempo in beats per minute.", min=1, max=300, auto="left to the model", none_aliases=(0,))
    keyscale: str = setting("", help="Key and scale, e.g. 'C Major' or 'F# minor'; empty leaves it to the model.")
    timesignature: str = setting("", help="Beats per bar, e.g. '4' or '3'; empty leaves it to the model.")
    seed: int = setting(
        0, help="Random seed of the starting noise; song i of a batch uses seed + i.", min=0, max=2**63 - 1,
        widget={"control_after_generate": True},
    )
    steps: int | None = setting(
        None, help=f"Sampling steps (turbo always uses {default_schedule('turbo').steps}).", min=1, max=200,
        auto=f"the adapter's, else the variant's: {per_base(lambda v: v.schedule.steps)}", none_aliases=(0,),
    )
    shift: float | None = setting(
        None, help="Timestep shift; one the adapter was not trained for is the most common cause of bad audio.",
        min=0.0, max=20.0, step=0.1, none_aliases=(0,),
        auto=f"the adapter's, else the variant's: {per_base(lambda v: v.schedule.shift)}",
    )
    guidance: float | None = setting(
        None, help="Guidance scale (1 = off).", min=0.0, max=30.0, step=0.1,
        auto=f"the variant's: {per_base(lambda v: v.guidance)}",
    )
    batch_size: int = setting(1, help="How many songs to generate at once (NAME_1, NAME_2, ...).", min=1, max=16)
    guidance_mode: str = setting(GUIDANCE_MODES[0], choices=GUIDANCE_MODES, help="Guidance for base/sft.", node=False)

    def __post_init__(self) -> None:
        if not 1.0 <= self.duration <= 600.0:
            raise SamplingError(f"duration must be between 1 and 600 seconds (got {self.duration}).")
        if self.batch_size < 1:
            raise SamplingError(f"batch_size must be at least 1 (got {self.batch_size}).")
        if self.guidance_mode not in GUIDANCE_MODES:
            raise SamplingError(f"guidance_mode must be 'apg' or 'cfg' (got {self.guidance_mode!r}).")
