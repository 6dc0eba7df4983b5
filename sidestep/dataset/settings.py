"""Encode Dataset settings (a light module: nodes import it at ComfyUI start-up without loading the models)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import DatasetError
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
    max_duration: float = 0.0
    normalize: str = "none"
    skip_existing: bool = True
    min_seconds: float = 1.0
    custom_tag: str = ""
    tag_position: str | None = None
    vae_chunk_seconds: float = 30.0
    vae_overlap_seconds: float = 2.0

    def __post_init__(self) -> None:
        if self.normalize not in NORMALIZE_MODES:
            raise DatasetError(f"normalize={self.normalize!r} is not one of {', '.join(NORMALIZE_MODES)}.")
        if self.tag_position is not None and self.tag_position not in TAG_POSITIONS:
            raise DatasetError(f"tag_position={self.tag_position!r} is not one of {', '.join(TAG_POSITIONS)}.")
        if self.max_duration and self.max_duration < self.min_seconds:
            raise DatasetError(f"max_duration ({self.max_duration} s) is shorter than min_seconds ({self.min_seconds} s).")
