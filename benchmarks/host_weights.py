"""Training over weights a host holds: what building the private training DiT costs when ComfyUI's MODEL (its weights
created in inference mode, as ComfyUI runs its loaders) is trained through ACE-Step from ComfyUI models.

The host's DiT is random, built under `torch.inference_mode()` in bf16 (or fp8 as UNETLoader's fp8 weight_dtype holds
it); the figure is the resident memory the training DiT adds and the bytes of it not shared with the host.

`python -m benchmarks.host_weights [--sizes small,full] [--dtype bf16|fp8]` prints a Markdown table.
"""

from __future__ import annotations

import argparse
import time

import torch


def measure(size: str, storage: str) -> dict:
    """Resident GB before and after `with_own_dit`, the bytes it copied and the seconds it took."""
    from pathlib import Path

    from sidestep.bundle import AceStepBundle, StateDictSource
    from sidestep.memory import trim_freed_memory
    from sidestep.model import TRAINING_PARTS
    from sidestep.model_folders import ModelEntry

    from .memory import GB, resident_gb
    from .models import STORAGE, VARIANT, frozen_model, size_config

    config = size_config(size)
    with torch.inference_mode():
        host = frozen_model(config, STORAGE[storage], torch.device("cpu")).state_dict()
    entry = ModelEntry("host", Path("host"), True, VARIANT, "turbo", False, True, 0.0, 1.0, config)
    bundle = AceStepBundle(entry=entry, base="turbo", source=StateDictSource(lambda: host, None, None, None))
    trim_freed_memory()
    before = resident_gb()
    start = time.perf_counter()
    own = bundle.with_own_dit(TRAINING_PARTS).dit(TRAINING_PARTS)
    seconds = time.perf_counter() - start
    shared = {tensor.untyped_storage().data_ptr() for tensor in host.values()}
    copied = sum(t.untyped_storage().nbytes() for t in own.state_dict().values() if t.untyped_storage().data_ptr() not in shared)
    return {
        "host_gb": sum(tensor.nbytes for tensor in host.values()) / GB,
        "added_gb": resident_gb() - before,
        "copied_gb": copied / GB,
        "seconds": seconds,
    }


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.host_weights", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="small,full")
    parser.add_argument("--dtype", choices=("bf16", "fp8"), default="bf16")
    args = parser.parse_args()
    print(f"| size | host DiT ({args.dtype}, training parts) | resident added by the training DiT | copied | built in |")
    print("|---|---|---|---|---|")
    for size in args.sizes.split(","):
        answer = measure(size, args.dtype)
        print(f"| {size} | {answer['host_gb']:.2f} GB | {answer['added_gb']:+.2f} GB | {answer['copied_gb']:.2f} GB | "
              f"{answer['seconds']:.2f} s |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
