"""What one benchmark run measures, how often, and where it keeps its scratch files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .timing import Repeats


@dataclass(frozen=True)
class RunSettings:
    """Sizes and suites to run, repetitions, scratch folder; `quick` shrinks slow figures, `long` adds 10-min encoding.

    `peak_tflops` overrides the GPU's dense bf16 peak that MFU is measured against (None: looked up by card name).
    """

    sizes: tuple[str, ...]
    suites: tuple[str, ...]
    repeats: Repeats
    workdir: Path
    quick: bool = False
    long: bool = False
    peak_tflops: float | None = None
