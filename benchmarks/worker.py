"""One configuration in a fresh process: `python -m benchmarks.worker TASK PARAMS_JSON ANSWER_PATH`.

Tasks: `train` runs the real Trainer for a few steps on a synthetic clip and reports step times, checkpoint save
times, file sizes and the resident peak during the steps and during saving; `encode` runs the real dataset encoder
over an audio folder and reports its wall time and resident peak; `label` labels an audio folder with an LM file.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

from sidestep.atomic import write_text_atomic

from .memory import cuda_peak_gb, peak_resident_gb, reset_peak, resident_gb


def _file_sizes(folder: Path) -> dict[str, int]:
    """Bytes of every file directly inside `folder`."""
    return {path.name: path.stat().st_size for path in sorted(folder.iterdir()) if path.is_file()}


def train(params: dict[str, Any]) -> dict[str, Any]:
    """Train `params["steps"]` steps (one clip per step, one checkpoint at the end) and measure every phase."""
    # Imported here so each task's process holds (and is measured with) only the libraries it uses.
    from sidestep.training.config import TrainConfig
    from sidestep.training.events import TrainingEvent
    from sidestep.training.layout import RunLayout
    from sidestep.training.loop import RunIdentity, Trainer

    from .models import ADAPTERS, STORAGE, VARIANT, benchmark_device, frozen_model, size_config, write_dataset

    config = size_config(params["size"])
    work = Path(params["workdir"])
    steps = params["steps"]
    model = frozen_model(config, STORAGE[params["storage"]], benchmark_device())
    resident_model = resident_gb()
    dataset = write_dataset(work / "data", config, params["frames"], clips=1)
    layout = RunLayout(work / "out")
    settings = TrainConfig(
        output_dir=str(layout.root),
        optimizer=params["optimizer"],
        epochs=steps,
        save_every=steps,
        scheduler="constant",
        max_latent_frames=None,
        gradient_checkpointing=params["checkpointing"],
        precision=params["precision"],
    )
    events: list[tuple[TrainingEvent, float, float, float | None]] = []
    record = lambda event: events.append((event, time.perf_counter(), peak_resident_gb(), cuda_peak_gb()))
    reset_peak()
    adapter = ADAPTERS[params["kind"]]
    if adapter.kind == "lora":
        adapter = dataclasses.replace(adapter, rank=params["rank"], alpha=2 * params["rank"])
    trainer = Trainer(model, dataset, adapter, settings, RunIdentity(VARIANT, "turbo"), callback=record)
    trainer.run()
    steps_done = [event.elapsed_seconds for event, *_ in events if event.kind == "step"]
    moments = {event.kind: (moment, peak, cuda) for event, moment, peak, cuda in events}
    end_of_steps = moments["epoch"]
    return {
        "resident_model_gb": resident_model,
        "adapter_parameters": sum(p.numel() for p in trainer.adapter.parameters()),
        "step_seconds": [b - a for a, b in zip([0.0, *steps_done], steps_done)],
        "losses": [event.loss for event, *_ in events if event.kind == "step"],
        "checkpoint_seconds": moments["checkpoint"][0] - end_of_steps[0],
        "final_seconds": moments["finished"][0] - moments["checkpoint"][0],
        "peak_steps_gb": end_of_steps[1],
        "peak_total_gb": moments["finished"][1],
        "cuda_peak_steps_gb": end_of_steps[2],
        "checkpoint_files": _file_sizes(layout.checkpoint(steps)),
        "final_files": _file_sizes(layout.final),
    }


def encode(params: dict[str, Any]) -> dict[str, Any]:
    """Encode every song in `params["audio_dir"]` with the model tree at `params["root"]`."""
    from sidestep.bundle import open_checkpoint
    from sidestep.dataset.encode import EncodeConfig, encode_dataset

    from .models import benchmark_device

    bundle = open_checkpoint(params["root"], params["model"], device=benchmark_device())
    reset_peak()
    started = time.perf_counter()
    result = encode_dataset(bundle, EncodeConfig(params["audio_dir"], params["output_dir"], skip_existing=False))
    return {
        "seconds": time.perf_counter() - started,
        "audio_seconds": sum(clip.duration for clip in result.manifest.clips),
        "peak_gb": peak_resident_gb(),
        "cuda_peak_gb": cuda_peak_gb(),
    }


def label(params: dict[str, Any]) -> dict[str, Any]:
    """Label every song in `params["audio_dir"]` with the LM file `params["lm"]`, timing the phases."""
    from sidestep.bundle import open_checkpoint
    from sidestep.labeling.label import LabelConfig, label_songs
    from sidestep.variants import resolve_dtype

    from .models import benchmark_device

    device = benchmark_device()
    bundle = open_checkpoint(params["root"], params["model"], device=device)
    moments: dict[str, float] = {}
    record = lambda event: moments.setdefault(event.status, time.perf_counter())
    reset_peak()
    started = time.perf_counter()
    config = LabelConfig(params["audio_dir"], params["lm"], params["tokenizer"], overwrite="all")
    dtype = resolve_dtype("auto", device)
    label_songs(bundle, config, callback=record, device=device, dtype=dtype)
    return {
        "seconds": time.perf_counter() - started,
        "codes_seconds": moments["generating"] - started,
        "generate_seconds": moments["labelled"] - moments["generating"],
        "peak_gb": peak_resident_gb(),
        "cuda_peak_gb": cuda_peak_gb(),
    }


TASKS = {"train": train, "encode": encode, "label": label}


def main(argv: list[str]) -> int:
    """Run one task and write its JSON answer atomically."""
    task, params, answer = argv
    write_text_atomic(Path(answer), json.dumps(TASKS[task](json.loads(params))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
