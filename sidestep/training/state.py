"""Checkpoints: the adapter files plus `training_state.pt`, written atomically, and resume from them."""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import staging_folder, torch_save_atomic
from ..errors import TrainingError

STATE_FILE = "training_state.pt"
STATE_FORMAT = 1


@dataclass
class Progress:
    """Where a run is: completed epochs, batches consumed in the current epoch, optimiser steps taken."""

    epoch: int = 0
    batch_in_epoch: int = 0
    global_step: int = 0
    smoothed_loss: float | None = None
    nan_streak: int = 0


def capture_rng(generator: torch.Generator) -> dict[str, Any]:
    """Every random state training depends on, as tensors and plain values (loadable with weights_only)."""
    numpy_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *numpy_state[2:]],
        "generator": generator.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any], generator: torch.Generator) -> None:
    """Put back what `capture_rng` recorded."""
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuples(state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    generator.set_state(state["generator"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuples(value: Any) -> Any:
    return tuple(_as_tuples(item) for item in value) if isinstance(value, (list, tuple)) else value


def write_checkpoint_dir(final_dir: Path, fill: "callable") -> None:
    """Build a checkpoint folder beside `final_dir` with `fill(temporary_dir)`, then swap it into place."""
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_folder(final_dir)
    try:
        fill(staging)
        if final_dir.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.old.", dir=final_dir.parent))
            os.replace(final_dir, retired / "dir")
            os.replace(staging, final_dir)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, final_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def save_training_state(folder: Path, state: dict[str, Any]) -> None:
    """Write `training_state.pt` (format tag added) atomically into `folder`."""
    torch_save_atomic({"format": STATE_FORMAT, **state}, folder / STATE_FILE)


def resolve_resume_path(path: str | Path) -> Path:
    """The checkpoint folder named by `path` (the folder itself or the training_state.pt inside it)."""
    path = Path(path)
    if path.is_file() and path.name == STATE_FILE:
        path = path.parent
    if not (path / STATE_FILE).is_file():
        raise TrainingError(
            f"Cannot resume from {path}: it holds no {STATE_FILE}. Point at a folder such as OUT/checkpoints/epoch_N "
            "(or the training_state.pt inside it)."
        )
    return path


def load_training_state(folder: Path) -> dict[str, Any]:
    """Read `training_state.pt` safely (tensors and plain containers only)."""
    path = folder / STATE_FILE
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several unrelated types for corrupt or unsafe files
        raise TrainingError(f"Cannot read {path}: {exc}. Resume from an earlier checkpoint.") from exc
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise TrainingError(f"{path} is not a Side-Step for ComfyUI training state (format {STATE_FORMAT}).")
    return state


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete `checkpoints/epoch_N` folder of a run, if any."""
    folder = Path(output_dir) / "checkpoints"
    candidates = []
    for child in folder.glob("epoch_*"):
        suffix = child.name.removeprefix("epoch_")
        if suffix.isdigit() and (child / STATE_FILE).is_file():
            candidates.append((int(suffix), child))
    return max(candidates)[1] if candidates else None
