"""Encode Dataset settings (a light module: nodes import it at ComfyUI start-up without loading the models)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import DatasetError
from ..settings import setting
from .sidecars import TAG_POSITIONS

NORMALIZE_MODES = ("none", "peak", "loudness")


@dataclass
class EncodeConfig:
    """What to encode and how: folders, chunking, normalisation, re-run behaviour and trigger tag.

    `max_duration` 0 keeps songs whole (the trainer crops them); otherwise songs are cut into clips of at most that
    many seconds. Files shorter than `min_seconds` are rejected, and a shorter last clip is dropped.
    """

    audio_dir: str
    output_dir: str
    # The Encode Dataset node shows these settings in this order: append new ones at the end.
    max_duration: float = setting(
        0.0, help="Cut longer songs into clips of at most this many seconds; 0 keeps every song whole.",
        min=0.0, max=600.0, step=1.0,
    )
    normalize: str = setting(
        "none", choices=NORMALIZE_MODES,
        help="Loudness treatment before encoding: none, peak (to -1 dBFS) or loudness (integrated LUFS).",
    )
    skip_existing: bool = setting(
        True, flags=("--force",),
        help="Reuse clips already encoded from unchanged songs with the same settings; off (--force) re-encodes all.",
    )
    min_seconds: float = setting(1.0, help="Reject clips shorter than this many seconds.", min=0.0, node=False)
    custom_tag: str = setting(
        "", flags=("--trigger",), node="trigger_word",
        help="Optional tag added to every caption (e.g. 'sks_style'); use it in prompts to call up the adapter.",
    )
    tag_position: str | None = setting(
        None, choices=TAG_POSITIONS, node="trigger_position", help="Where the trigger word goes in each caption.",
        auto="the dataset JSON's choice, else prepend",
    )
    vae_chunk_seconds: float = 30.0
    vae_overlap_seconds: float = 2.0

    def __post_init__(self) -> None:
        if self.normalize not in NORMALIZE_MODES:
            raise DatasetError(f"normalize={self.normalize!r} is not one of {', '.join(NORMALIZE_MODES)}.")
        if self.tag_position is not None and self.tag_position not in TAG_POSITIONS:
            raise DatasetError(f"tag_position={self.tag_position!r} is not one of {', '.join(TAG_POSITIONS)}.")
        if self.max_duration and self.max_duration < self.min_seconds:
            raise DatasetError(f"max_duration ({self.max_duration} s) is shorter than min_seconds ({self.min_seconds} s).")
