"""Wall-clock repetitions and a description of the machine they ran on."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import torch

from .report import Stat

Key = TypeVar("Key")


@dataclass(frozen=True)
class Repeats:
    """How often each figure is measured: untimed warm-up calls, then timed repetitions."""

    warmup: int = 1
    repeats: int = 3


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def seconds(fn: Callable[[], object]) -> float:
    """Wall time of one call (device work included)."""
    _synchronize()
    started = time.perf_counter()
    fn()
    _synchronize()
    return time.perf_counter() - started


def measure_in_turns(calls: dict[Key, Callable[[], object]], plan: Repeats) -> dict[Key, Stat]:
    """Time several calls taking turns (every round runs each once), so a busy spell on a shared machine hits all alike.

    Each call gets `plan.warmup` untimed rounds, then `plan.repeats` timed ones.
    """
    for _ in range(plan.warmup):
        for fn in calls.values():
            seconds(fn)
    times: dict[Key, list[float]] = {name: [] for name in calls}
    for _ in range(plan.repeats):
        for name, fn in calls.items():
            times[name].append(seconds(fn))
    return {name: Stat.of(values) for name, values in times.items()}


def measure(fn: Callable[[], object], plan: Repeats) -> Stat:
    """Median, minimum and maximum wall time of `plan.repeats` calls after `plan.warmup` untimed ones."""
    return measure_in_turns({"call": fn}, plan)["call"]


def _cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def load_average() -> float:
    """The one-minute load average (how busy the machine was; 0.0 where the OS does not tell)."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else 0.0


def environment() -> dict[str, Any]:
    """Device, CPU, thread count, library versions, start time and load, for labelling every figure."""
    cuda = torch.cuda.is_available()
    return {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "cpu": f"{_cpu_name()}, {os.cpu_count()} logical cores",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_before": load_average(),
        "load_after": None,
    }
