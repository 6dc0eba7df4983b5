"""Peak memory: the process's resident high-water mark (and CUDA's allocator peak), one fresh process per figure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

GB = 1e9
_REPOSITORY = Path(__file__).resolve().parents[1]


def _status_kb(field: str) -> int:
    """A `VmRSS`/`VmHWM`-style field of /proc/self/status, in kB."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field} field; peak memory needs Linux.")


def resident_gb() -> float:
    """Current resident set size of this process."""
    return _status_kb("VmRSS") * 1e3 / GB


def peak_resident_gb() -> float:
    """Resident high-water mark since the process started or since `reset_peak`."""
    return _status_kb("VmHWM") * 1e3 / GB


def reset_peak() -> None:
    """Restart both high-water marks from the current usage (Linux `clear_refs` 5; CUDA's peak statistics)."""
    with open("/proc/self/clear_refs", "w", encoding="ascii") as clear:
        clear.write("5")
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def cuda_peak_gb() -> float | None:
    """`torch.cuda.max_memory_allocated` in GB, or None without CUDA."""
    return torch.cuda.max_memory_allocated() / GB if torch.cuda.is_available() else None


def run_worker(
    task: str, params: dict[str, Any], environment: dict[str, str] | None = None, timeout: float = 3600.0
) -> dict[str, Any]:
    """Run `python -m benchmarks.worker TASK` in a fresh process (with extra `environment`) and return its JSON."""
    with tempfile.TemporaryDirectory(prefix="sidestep-bench-") as scratch:
        answer = Path(scratch) / "answer.json"
        command = [sys.executable, "-m", "benchmarks.worker", task, json.dumps(params), str(answer)]
        # The parent's thread count, so every figure of a run uses the same number of threads.
        environment = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), **(environment or {})}
        done = subprocess.run(command, cwd=_REPOSITORY, env=environment, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0 or not answer.is_file():
            tail = "\n".join(done.stderr.strip().splitlines()[-15:])
            raise RuntimeError(f"benchmark worker '{task}' failed (exit code {done.returncode}):\n{tail}")
        return json.loads(answer.read_text(encoding="utf-8"))
