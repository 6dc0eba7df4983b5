"""Adaptive rank's analysis against one training step: resident peak (and CUDA's allocator peak) of each, one fresh
process per figure, same model, clip and rank (LoRA r64 on attention+MLP, bf16 weights, checkpointing on).

`python -m benchmarks.adaptive_rank [--sizes tiny,small]` prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .memory import cuda_peak_gb, peak_resident_gb, reset_peak

RANK = 64
FRAMES = 750  # a 30 s clip
BATCHES = 2


def measure(task: str, size: str, work: Path) -> dict:
    """In this process: build the model and a one-clip dataset, then either train two steps or analyse two clips."""
    from sidestep.adapters.adaptive import AdaptiveRankSettings
    from sidestep.adapters.config import LoraConfig
    from sidestep.training.config import TrainConfig
    from sidestep.training.loop import RunIdentity, Trainer
    from sidestep.training.rank_analysis import measure_modules

    from .models import STORAGE, VARIANT, benchmark_device, frozen_model, size_config, write_dataset

    config = size_config(size)
    model = frozen_model(config, STORAGE["bf16"], benchmark_device())
    dataset = write_dataset(work / "data", config, FRAMES, clips=1)
    adapter = LoraConfig(rank=RANK, alpha=2 * RANK, target="attention_mlp")
    settings = TrainConfig(output_dir=str(work / "out"), epochs=BATCHES, save_every=BATCHES, max_latent_frames=None)
    identity = RunIdentity(VARIANT, "turbo")
    resident = peak_resident_gb()
    reset_peak()
    started = time.perf_counter()
    if task == "train":
        Trainer(model, dataset, adapter, settings, identity).run()
    else:
        measure_modules(model, dataset, adapter, settings, identity, AdaptiveRankSettings(batches=BATCHES))
    return {"peak_gb": peak_resident_gb(), "before_gb": resident, "cuda_peak_gb": cuda_peak_gb(),
            "seconds": time.perf_counter() - started}


def fresh(task: str, size: str) -> dict:
    """`measure` in a fresh process."""
    with tempfile.TemporaryDirectory(prefix="sidestep-adaptive-") as work:
        command = [sys.executable, "-m", "benchmarks.adaptive_rank", "--worker", task, "--sizes", size, "--workdir", work]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(done.stderr[-3000:])
        return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="tiny,small")
    parser.add_argument("--worker", choices=("train", "analyse"))
    parser.add_argument("--workdir")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.worker, args.sizes, Path(args.workdir))))
        return 0
    print(f"| size | what ({BATCHES} clips of {FRAMES} frames, LoRA r{RANK} attn+MLP) | peak RSS GB | CUDA peak GB | seconds |")
    print("|---|---|---|---|---|")
    for size in args.sizes.split(","):
        for task, what in (("train", f"Trainer.run, {BATCHES} steps"), ("analyse", f"rank analysis, {BATCHES} clips, probe r{2 * RANK}")):
            answer = fresh(task, size)
            cuda = "-" if answer["cuda_peak_gb"] is None else f"{answer['cuda_peak_gb']:.2f}"
            print(f"| {size} | {what} | {answer['peak_gb']:.2f} (model {answer['before_gb']:.2f}) | {cuda} | {answer['seconds']:.1f} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
