"""Checkpoints: the adapter files plus `training_state.pt`, written atomically, and resume from them."""

from __future__ import annotations

import errno
import random
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import replace_synced, staging_folder, torch_save_atomic
from ..errors import TrainingError
from .layout import FINAL_FOLDER, STATE_FILE, RunLayout, complete_checkpoints

STATE_FORMAT = 1
RETIRED_MARK = ".old."  # `.NAME.old.XXXX/dir` holds a folder moved aside while its replacement moves in
RETIRED_ENTRY = "dir"
LOW_SPACE_BYTES = 1 << 20


@dataclass
class Progress:
    """Where a run is: completed epochs, batches consumed in the current epoch, optimiser steps taken."""

    epoch: int = 0
    batch_in_epoch: int = 0
    global_step: int = 0
    smoothed_loss: float | None = None
    nan_streak: int = 0
    validation: list[list[float]] = field(default_factory=list)  # [step, validation loss], oldest first
    checkpoint_losses: list[list[float]] = field(default_factory=list)  # [epoch, validation loss] of saved checkpoints

    def validated_at(self, step: int) -> float | None:
        """The validation loss measured at `step`, if it was."""
        return self.validation[-1][1] if self.validation and self.validation[-1][0] == step else None

    def best(self) -> tuple[int, float] | None:
        """(epoch, validation loss) of the saved checkpoint with the lowest validation loss (the earliest on a tie)."""
        if not self.checkpoint_losses:
            return None
        epoch, loss = min(self.checkpoint_losses, key=lambda pair: (pair[1], pair[0]))
        return int(epoch), loss


def process_rng() -> dict[str, Any]:
    """The process-wide generators' states (torch CPU and CUDA, Python, NumPy) as tensors and plain values."""
    numpy_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *numpy_state[2:]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_process_rng(state: dict[str, Any]) -> None:
    """Put back what `process_rng` recorded."""
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuples(state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def capture_rng(generator: torch.Generator) -> dict[str, Any]:
    """Every random state training depends on, as tensors and plain values (loadable with weights_only)."""
    return {**process_rng(), "generator": generator.get_state()}


def restore_rng(state: dict[str, Any], generator: torch.Generator) -> None:
    """Put back what `capture_rng` recorded."""
    restore_process_rng(state)
    generator.set_state(state["generator"])


def _as_tuples(value: Any) -> Any:
    return tuple(_as_tuples(item) for item in value) if isinstance(value, (list, tuple)) else value


def write_checkpoint_dir(final_dir: Path, fill: Callable[[Path], None], run_dir: Path) -> None:
    """Build a checkpoint folder beside `final_dir` with `fill(temporary_dir)`, then swap it into place.

    An existing `final_dir` is first moved aside into `.NAME.old.*/dir` (put back by `recover_run_folder` if a kill
    lands between the two moves). A full disk or another write failure becomes a TrainingError that names the folder
    and the newest intact checkpoint of `run_dir` to resume from.
    """
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_folder(final_dir)
    try:
        fill(staging)
        if final_dir.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}{RETIRED_MARK}", dir=final_dir.parent))
            replace_synced(final_dir, retired / RETIRED_ENTRY)
            replace_synced(staging, final_dir)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            replace_synced(staging, final_dir)
    except Exception as error:
        full = _disk_full(error, final_dir.parent)
        shutil.rmtree(staging, ignore_errors=True)
        if full or isinstance(error, OSError):
            raise TrainingError(_write_failure(final_dir, run_dir, error, full)) from error
        raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _disk_full(error: BaseException, folder: Path) -> bool:
    """Whether a write failed for lack of space: ENOSPC/EDQUOT anywhere in the error chain, or (for libraries that
    hide the errno, like torch.save) almost no space left where it was writing."""
    seen = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(text in str(seen) for text in ("No space left", "os error 28", "Disk quota exceeded")):
            return True
        seen = seen.__cause__ or seen.__context__
    try:
        return shutil.disk_usage(folder).free < LOW_SPACE_BYTES
    except OSError:
        return False


def _write_failure(final_dir: Path, run_dir: Path, error: BaseException, full: bool) -> str:
    """What failed, why, and the intact checkpoint to resume from."""
    what = "the final adapter" if final_dir.name == FINAL_FOLDER else "checkpoint"
    why = f"the disk holding {run_dir} is full" if full else f"{error}"
    fix = "free some space" if full else "fix that"
    latest = latest_checkpoint(run_dir)
    resume = (
        f"then resume from {latest} (the newest intact checkpoint)"
        if latest is not None
        else "then start the run again (no checkpoint was written yet)"
    )
    return f"Could not write {what} {final_dir}: {why}. Nothing was half-written; {fix}, {resume}."


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
    """Read `training_state.pt` safely (tensors and plain containers only) and check that it is complete."""
    path = folder / STATE_FILE
    if path.stat().st_size == 0:
        raise TrainingError(f"{path} is empty (0 bytes), so it cannot be resumed. Resume from an earlier checkpoint.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several unrelated types for corrupt or unsafe files
        detail = str(exc).strip() or type(exc).__name__
        raise TrainingError(f"Cannot read {path}: {detail}. Resume from an earlier checkpoint.") from exc
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise TrainingError(f"{path} is not a Side-Step for ComfyUI training state (format {STATE_FORMAT}).")
    problem = _state_problem(state)
    if problem:
        raise TrainingError(f"{path} is damaged: {problem}. Resume from an earlier checkpoint, or start a new run.")
    return state


def _state_problem(state: dict[str, Any]) -> str | None:
    """What is missing or malformed in a loaded training state (None when it is complete)."""
    for key, kind in (("progress", dict), ("adapter", dict), ("adapter_config", dict), ("optimizer", dict),
                      ("scheduler", dict), ("rng", dict)):
        if not isinstance(state.get(key), kind):
            return f"'{key}' is missing or not a {kind.__name__}"
    progress = state["progress"]
    for key in ("epoch", "batch_in_epoch", "global_step"):
        value = progress.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return f"progress '{key}' is {value!r}, not a whole number of at least 0"
    world = state.get("world_size", 1)
    if isinstance(world, bool) or not isinstance(world, int) or world < 1:
        return f"'world_size' is {world!r}, not a number of processes"
    return None


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete `checkpoints/epoch_N` folder of a run, if any."""
    found = complete_checkpoints(RunLayout(output_dir).checkpoints)
    return found[-1] if found else None
