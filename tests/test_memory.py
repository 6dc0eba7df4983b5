"""With SIDESTEP_LOW_MEMORY=1 the trainer process hands large freed blocks back to the system; by default it does not."""

from __future__ import annotations

import ctypes.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Runs a tiny real Trainer in a fresh process and asks glibc, before training and at every step, whether a 16 MB block
# allocated right after another was freed is memory-mapped (it is not under glibc's default dynamic threshold).
PROBE = r"""
import ctypes, json, sys
from pathlib import Path
import torch
from benchmarks.models import ADAPTERS, VARIANT, frozen_model, size_config, write_dataset
from sidestep.training.config import TrainConfig
from sidestep.training.loop import RunIdentity, Trainer

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

libc = ctypes.CDLL(sys.argv[2])
libc.mallinfo2.restype = MallInfo2

def mapped_after_free(size=16 << 20):
    first = torch.empty(size // 4)
    del first
    before = libc.mallinfo2().hblkhd
    second = torch.empty(size // 4)
    return libc.mallinfo2().hblkhd - before >= size

work = Path(sys.argv[1])
config = size_config("tiny")
answer = {"before": mapped_after_free(), "steps": []}
dataset = write_dataset(work / "data", config, frames=50, clips=1)
settings = TrainConfig(output_dir=str(work / "out"), epochs=2, save_every=2, max_latent_frames=None)
record = lambda event: answer["steps"].append(mapped_after_free()) if event.kind == "step" else None
model = frozen_model(config, torch.bfloat16, torch.device("cpu"))
Trainer(model, dataset, ADAPTERS["lora"], settings, RunIdentity(VARIANT, "turbo"), callback=record).run()
print(json.dumps(answer))
"""


def _glibc() -> str | None:
    name = ctypes.util.find_library("c")
    try:
        return name if name and hasattr(ctypes.CDLL(name), "mallinfo2") else None
    except OSError:
        return None


@pytest.mark.skipif(_glibc() is None, reason="the mechanism and its probe need glibc ≥ 2.33")
@pytest.mark.parametrize("keep, expected", [(None, False), ("1", True)], ids=["default", "low-memory"])
def test_trainer_returns_freed_blocks_to_the_system(tmp_path, keep, expected):
    chosen = ("MALLOC_", "GLIBC_TUNABLES", "SIDESTEP_LOW_MEMORY")  # a user's allocator settings would override ours
    environment = {key: value for key, value in os.environ.items() if not key.startswith(chosen)}
    environment["PYTHONPATH"] = os.pathsep.join([str(ROOT), environment.get("PYTHONPATH", "")])
    if keep is not None:
        environment["SIDESTEP_LOW_MEMORY"] = keep
    command = [sys.executable, "-c", PROBE, str(tmp_path), _glibc()]
    done = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["before"] is False  # glibc's default keeps the freed block in its heap: the probe can tell
    assert answer["steps"] and all(mapped is expected for mapped in answer["steps"])
