"""Listing a ComfyUI models/ folder full of other models: time and memory of `list_models` as the folder grows.

    python -m benchmarks.model_listing [--files 50 200 800] [--keys 1500]

Each foreign file is a real safetensors file (sparse on disk) whose header looks like a large model's (`--keys` tensor
names, e.g. an SDXL checkpoint has ~2,500, a 7B language model ~300, Flux ~800), beside the tiny ACE-Step set.
Prints, per folder size: the first and a repeated listing's wall time, and the Python memory the listing still holds
afterwards and at its peak (tracemalloc)."""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import tracemalloc
from pathlib import Path

from sidestep.bundle import list_models
from sidestep.tiny_models import make_tiny_comfy_install


def write_foreign(path: Path, keys: int, index: int) -> None:
    """A safetensors file whose header names `keys` bf16 tensors of another model; the data is a sparse hole."""
    header, offset = {}, 0
    for key in range(keys):
        size = 2 * 4096 * 64
        header[f"model.diffusion_model.input_blocks.{key}.{index}.weight"] = {"dtype": "BF16", "shape": [4096, 64], "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as file:
        file.write(len(raw).to_bytes(8, "little") + raw)
        file.truncate(8 + len(raw) + offset)


def measure(models: Path) -> dict[str, float]:
    """Seconds of a first and a repeated listing; MB held after it and at its peak."""
    tracemalloc.start()
    start = time.perf_counter()
    entries = list_models(models)
    first = time.perf_counter() - start
    start = time.perf_counter()
    list_models(models)
    repeat = time.perf_counter() - start
    held, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert entries, "the tiny ACE-Step set must be listed"
    return {"first_s": first, "repeat_s": repeat, "held_mb": held / 1e6, "peak_mb": peak / 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, nargs="+", default=[50, 200, 800])
    parser.add_argument("--keys", type=int, default=1500)
    args = parser.parse_args()
    print(f"{'files':>6} {'first s':>8} {'repeat s':>9} {'held MB':>8} {'peak MB':>8}")
    for count in args.files:
        with tempfile.TemporaryDirectory() as folder:
            models = make_tiny_comfy_install(Path(folder) / "ComfyUI")
            for index in range(count):
                kind = "checkpoints" if index % 2 else "diffusion_models"
                write_foreign(models / kind / f"foreign_{index:04d}.safetensors", args.keys, index)
            row = measure(models)
        print(f"{count:>6} {row['first_s']:>8.2f} {row['repeat_s']:>9.2f} {row['held_mb']:>8.1f} {row['peak_mb']:>8.1f}", flush=True)


if __name__ == "__main__":
    main()
