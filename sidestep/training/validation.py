"""The validation loss: held-out songs (or the training songs as a reference) scored with fixed noises on a fixed
timestep grid, without gradients or condition dropout, so the same adapter weights always give the same number."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from ..dataset.loader import DatasetIndex, _seeded, collate_clips
from ..dataset.tensors import load_clip
from ..errors import TrainingError
from ..variants import TURBO_STEPS, TURBO_TIMESTEPS_SHIFT3
from .config import (
    VALIDATION_FRACTION,
    VALIDATION_MAX_SONGS,
    VALIDATION_MIN_SONGS,
    VALIDATION_OFF,
    TrainConfig,
    validation_fraction,
)

REFERENCE_MAX_CLIPS = 8  # training clips scored when no song can be held out
GRID_SIZE = TURBO_STEPS  # continuous models are scored at as many timesteps as turbo has
_SPLIT_SALT = 0x5EED_5A11  # seeds of the split and of the noises, apart from every training draw
_NOISE_SALT = 0x0015E


@dataclass(frozen=True)
class ValidationSplit:
    """Which clips train and which are scored; `held_out` False: the scored clips are training clips (a reference)."""

    training: tuple[Path, ...]
    scored: tuple[Path, ...]
    held_out: bool
    songs: tuple[str, ...] = ()

    def describe(self) -> str:
        """One line for the log and the widget: what the validation loss measures."""
        if not self.scored:
            return "validation: off"
        if self.held_out:
            return (
                f"validation: {len(self.songs)} held-out song(s) ({', '.join(self.songs)}), {len(self.scored)} clip(s), "
                f"not trained on"
            )
        return (
            f"validation: the dataset has fewer than {VALIDATION_MIN_SONGS} songs, so {len(self.scored)} training clip(s) "
            "are the reference (the curve shows fitting, not generalisation)"
        )

    def record(self) -> dict:
        """The split as plain values (kept in the training state and the adapter metadata)."""
        return {"held_out": self.held_out, "songs": list(self.songs), "clips": [path.name for path in self.scored]}


def song_names(index: DatasetIndex) -> list[str]:
    """The song each clip file of a dataset comes from (a song's chunks share it): its source file's stem."""
    if index.manifest is None:
        return [path.stem for path in index.files]
    return [Path(clip.source).stem for clip in index.manifest.clips]


def split_dataset(index: DatasetIndex, config: TrainConfig) -> ValidationSplit:
    """Hold songs out as `config.validation` says (auto: a few when there are enough, else a reference)."""
    files = tuple(index.files)
    choice = (config.validation or "").strip()
    if choice.lower() == VALIDATION_OFF:
        return ValidationSplit(files, (), False)
    names = song_names(index)
    songs = list(dict.fromkeys(names))
    chosen = config.held_out_songs()
    if chosen:
        unknown = [name for name in chosen if name not in songs]
        if unknown:
            raise TrainingError(
                f"validation names song(s) {', '.join(unknown)} that the dataset in {index.folder} does not hold; "
                f"its songs are {', '.join(songs[:12])}{' ...' if len(songs) > 12 else ''}."
            )
    else:
        fraction = validation_fraction(choice or None)
        if fraction is None and len(songs) < VALIDATION_MIN_SONGS:
            return ValidationSplit(files, files[:REFERENCE_MAX_CLIPS], False)
        count = max(1, round(len(songs) * (fraction or VALIDATION_FRACTION)))
        if fraction is None:
            count = min(count, VALIDATION_MAX_SONGS)
        order = torch.randperm(len(songs), generator=_seeded(config.seed, _SPLIT_SALT)).tolist()
        chosen = tuple(sorted(songs[i] for i in order[:count]))
    if len(chosen) >= len(songs):
        raise TrainingError(
            f"validation={config.validation!r} holds out every song of {index.folder}, leaving none to train on; "
            "hold out fewer."
        )
    scored = tuple(path for path, name in zip(files, names) if name in chosen)
    training = tuple(path for path, name in zip(files, names) if name not in chosen)
    return ValidationSplit(training, scored, True, tuple(chosen))


def training_index(index: DatasetIndex, split: ValidationSplit) -> DatasetIndex:
    """The dataset the optimiser sees: without the held-out clips."""
    return dataclasses.replace(index, files=split.training) if split.held_out else index


def timestep_grid(mode: str, mu: float, sigma: float, two_draws: bool) -> tuple[float, ...]:
    """The fixed timesteps of the validation loss: turbo's 8 discrete ones, or evenly spaced quantiles of the
    logit-normal training distribution (of the larger of two draws when training takes it)."""
    if mode == "discrete":
        return TURBO_TIMESTEPS_SHIFT3
    quantiles = (torch.arange(GRID_SIZE, dtype=torch.float64) + 0.5) / GRID_SIZE
    normal = torch.special.ndtri(quantiles.sqrt() if two_draws else quantiles)
    return tuple(float(t) for t in torch.sigmoid(normal * sigma + mu).flip(0))


@dataclass(frozen=True)
class ValidationLoss:
    """The mean loss over every scored clip and timestep, and the mean at each timestep of the grid."""

    loss: float
    by_timestep: dict[float, float]

    def scalars(self) -> dict[str, float]:
        """TensorBoard tags: val/loss and one val/t_<timestep> per band of the grid."""
        return {"val/loss": self.loss, **{f"val/t_{t:.3f}": value for t, value in self.by_timestep.items()}}


class Validator:
    """Scores the adapter on fixed clips (first `max_frames` frames), noises and timesteps: each clip once per timestep
    of the grid, in one batch."""

    def __init__(self, split: ValidationSplit, grid: tuple[float, ...], seed: int, max_frames: int | None) -> None:
        self.grid = grid
        self.clips = []
        for position, path in enumerate(split.scored):
            clip = load_clip(path)
            if max_frames:
                for key in ("target_latents", "attention_mask", "context_latents"):
                    clip[key] = clip[key][:max_frames]
            batch = collate_clips([clip] * len(grid))
            noises = torch.randn(batch["target_latents"].shape, generator=_seeded(seed, _NOISE_SALT, position))
            self.clips.append((batch, noises))

    def __bool__(self) -> bool:
        return bool(self.clips)

    @torch.no_grad()
    def evaluate(self, step) -> ValidationLoss:
        """The validation loss of the weights now in the model (`step`: the run's TrainingStep; plain MSE, every
        condition kept)."""
        t = torch.tensor(self.grid, dtype=torch.float32)
        total = torch.zeros(len(self.grid), dtype=torch.float64)
        for batch, noises in self.clips:
            total += step.loss(batch, noises, t, per_sample=True).double().cpu()
        by_timestep = {value: float(loss) / len(self.clips) for value, loss in zip(self.grid, total)}
        return ValidationLoss(sum(by_timestep.values()) / len(by_timestep), by_timestep)
