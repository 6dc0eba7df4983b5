"""A training run's folder layout, defined once (a leaf module: adapters/ and training/ both read it).

    RUN/final/                      the inference-ready adapter
    RUN/checkpoints/epoch_N/        adapter files + training_state.pt
    RUN/runs/                       TensorBoard event files
    RUN/previews/epoch_N.flac       preview songs
    RUN/.sidestep.lock              held by the run that writes the folder
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

FINAL_FOLDER = "final"
CHECKPOINTS_FOLDER = "checkpoints"
EPOCH_PREFIX = "epoch_"
STATE_FILE = "training_state.pt"
TENSORBOARD_FOLDER = "runs"
PREVIEWS_FOLDER = "previews"
PREVIEW_SUFFIX = ".flac"
LOCK_FILE = ".sidestep.lock"
SUMMARY = f"{FINAL_FOLDER}/, {CHECKPOINTS_FOLDER}/{EPOCH_PREFIX}N/, {TENSORBOARD_FOLDER}/ for TensorBoard, {PREVIEWS_FOLDER}/"


@dataclass(frozen=True)
class RunLayout:
    """The paths inside one run folder."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def final(self) -> Path:
        """The inference-ready adapter."""
        return self.root / FINAL_FOLDER

    @property
    def checkpoints(self) -> Path:
        """The folder of the epoch_N checkpoints."""
        return self.root / CHECKPOINTS_FOLDER

    def checkpoint(self, epoch: int) -> Path:
        """The checkpoint written after `epoch` epochs."""
        return self.checkpoints / f"{EPOCH_PREFIX}{epoch}"

    @property
    def tensorboard(self) -> Path:
        """TensorBoard's default log folder."""
        return self.root / TENSORBOARD_FOLDER

    def preview(self, epoch: int | str) -> Path:
        """The preview song generated after `epoch` epochs ('N' names the pattern)."""
        return self.root / PREVIEWS_FOLDER / f"{EPOCH_PREFIX}{epoch}{PREVIEW_SUFFIX}"

    @property
    def lock(self) -> Path:
        """The lock file of the run writing this folder."""
        return self.root / LOCK_FILE


def epoch_folders(folder: Path) -> list[Path]:
    """The `epoch_N` folders directly in `folder` (a run's checkpoints folder), oldest first."""
    found = [(int(child.name.removeprefix(EPOCH_PREFIX)), child) for child in Path(folder).glob(f"{EPOCH_PREFIX}*")
             if child.name.removeprefix(EPOCH_PREFIX).isdigit()]
    return [child for _, child in sorted(found)]


def complete_checkpoints(folder: Path) -> list[Path]:
    """The `epoch_N` folders directly in `folder` that hold a training state, oldest first."""
    return [child for child in epoch_folders(folder) if (child / STATE_FILE).is_file()]
