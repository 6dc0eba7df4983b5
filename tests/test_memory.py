"""The CPU trainer hands the free pages inside glibc's heap back to the system before every DiT layer and after every
step (by default and with SIDESTEP_LOW_MEMORY=1); with SIDESTEP_LOW_MEMORY=0 glibc keeps them resident."""

from __future__ import annotations

import ctypes.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Runs a tiny real Trainer in a fresh process. Before training it leaves 64 MB of freed blocks inside glibc's main heap
# (64 kB blocks, below the mmap threshold; the last one stays allocated so the heap's top cannot shrink them away); at
# every step, and before the last DiT layer first runs (after the first layer, before any step), it asks the kernel
# (mincore) which share of those pages is still resident.
PROBE = r"""
import ctypes, json, mmap, sys
from pathlib import Path
import torch
from benchmarks.models import ADAPTERS, VARIANT, frozen_model, size_config, write_dataset
from sidestep.training.config import TrainConfig
from sidestep.training.loop import RunIdentity, Trainer

libc = ctypes.CDLL(sys.argv[2], use_errno=True)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p)
PAGE, BLOCK, COUNT = mmap.PAGESIZE, 64 << 10, 1024

work = Path(sys.argv[1])
config = size_config("tiny")
dataset = write_dataset(work / "data", config, frames=50, clips=1)
settings = TrainConfig(output_dir=str(work / "out"), epochs=2, save_every=2, max_latent_frames=None)
model = frozen_model(config, torch.bfloat16, torch.device("cpu"))

blocks = [libc.malloc(BLOCK) for _ in range(COUNT + 1)]
for block in blocks:
    ctypes.memset(block, 1, BLOCK)  # make every page resident
start, end = -(-min(blocks[:COUNT]) // PAGE) * PAGE, max(blocks[:COUNT]) // PAGE * PAGE
for block in blocks[:COUNT]:
    libc.free(block)

def resident_share():
    pages = (end - start) // PAGE
    vector = ctypes.create_string_buffer(pages)
    assert libc.mincore(start, end - start, vector) == 0, ctypes.get_errno()
    return sum(byte & 1 for byte in vector.raw) / pages

answer = {"contiguous": end - start > COUNT * BLOCK // 2, "before": resident_share(), "steps": [], "layer": []}
# Registered before the trainer's own hooks, so it runs before the trim of the layer it watches.
model.decoder.layers[-1].register_forward_pre_hook(lambda *_: answer["layer"].append(resident_share()))
record = lambda event: answer["steps"].append(resident_share()) if event.kind == "step" else None
Trainer(model, dataset, ADAPTERS["lora"], settings, RunIdentity(VARIANT, "turbo"), callback=record).run()
print(json.dumps(answer))
"""


def _glibc() -> str | None:
    name = ctypes.util.find_library("c")
    try:
        return name if name and hasattr(ctypes.CDLL(name), "malloc_trim") else None
    except OSError:
        return None


@pytest.mark.skipif(_glibc() is None, reason="the mechanism and its probe need glibc")
@pytest.mark.parametrize("setting, trimmed", [(None, True), ("1", True), ("0", False)], ids=["default", "low", "off"])
def test_trainer_hands_freed_heap_pages_back(tmp_path, setting, trimmed):
    chosen = ("MALLOC_", "GLIBC_TUNABLES", "SIDESTEP_LOW_MEMORY")  # a user's allocator settings would override ours
    environment = {key: value for key, value in os.environ.items() if not key.startswith(chosen)}
    environment["PYTHONPATH"] = os.pathsep.join([str(ROOT), environment.get("PYTHONPATH", "")])
    if setting is not None:
        environment["SIDESTEP_LOW_MEMORY"] = setting
    command = [sys.executable, "-c", PROBE, str(tmp_path), _glibc()]
    done = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["contiguous"] and answer["before"] == 1.0  # glibc kept the freed blocks resident: the probe can tell
    assert len(answer["steps"]) == 2 and len(answer["layer"]) > 2  # forward and recomputed, both steps
    # Trimmed: the freed pages the tiny trainer has not reused since are gone, already inside the first forward pass
    # (only the per-layer trim can have run by then); untrimmed: all still resident.
    assert (answer["layer"][0] < 0.5) is trimmed, answer["layer"]
    assert all((share < 0.5) is trimmed for share in answer["steps"]), answer["steps"]
