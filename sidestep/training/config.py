"""Training settings, with every default in one place."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..errors import TrainingError
from ..settings import setting
from ..variants import Schedule, variant_defaults

OPTIMIZERS = ("adamw", "adamw8bit", "prodigy", "adafactor")
SCHEDULERS = ("constant", "linear", "cosine", "cosine_restarts")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
TIMESTEP_MODES = ("auto", "discrete", "continuous")
CONTINUOUS_DRAWS = ("max_of_two", "single")
# The automatic validation split: hold out this share of the songs (at least one, at most VALIDATION_MAX_SONGS) when
# the dataset has VALIDATION_MIN_SONGS songs or more; below that, the training songs themselves are the reference.
VALIDATION_OFF = "none"
VALIDATION_FRACTION = 0.1
VALIDATION_MIN_SONGS = 10
VALIDATION_MAX_SONGS = 8


@dataclass
class TrainConfig:
    """How to train: schedule, optimisation, precision, checkpoints, logging and previews."""

    output_dir: str
    epochs: int = 10
    learning_rate: float = 1e-4
    optimizer: str = "adamw"
    weight_decay: float = 0.01
    scheduler: str = "cosine"
    warmup_steps: int = 0
    restarts: int = 2
    batch_size: int = 1
    gradient_accumulation: int = 1
    max_grad_norm: float = 1.0
    precision: str = "auto"
    gradient_checkpointing: bool = True
    seed: int = 42
    save_every: int = 1
    timestep_mode: str = "auto"
    continuous_draws: str = "max_of_two"
    cfg_ratio: float | None = None
    min_snr_gamma: float | None = None
    max_latent_frames: int | None = 1500
    num_workers: int = 0
    nan_patience: int = 5
    shift: float | None = None
    num_inference_steps: int | None = None
    log_every: int = 1
    preview_every: int = 0
    preview_caption: str = ""
    resume_from: str | None = None
    log_dir: str | None = None
    validation: str | None = setting(
        None,
        help=f"songs held out for the validation loss: '{VALIDATION_OFF}', a fraction such as 0.1, or song names "
        "separated by commas",
        auto=f"{VALIDATION_FRACTION:.0%} of the songs (at most {VALIDATION_MAX_SONGS}) when the dataset has "
        f"{VALIDATION_MIN_SONGS} or more, else the training songs themselves as a reference",
        flags=("--validation",),
    )
    validation_every: int = setting(
        0, help="optimiser steps between validation losses; 0 = at the end of every epoch", min=0, flags=("--validation-every",)
    )
    ema_decay: float = setting(
        0.0,
        help="keep an exponential moving average of the adapter weights with this decay (e.g. 0.999) and use it for "
        "validation, previews, checkpoints and the final adapter; 0 = off",
        min=0.0,
        max=0.99999,
        flags=("--ema-decay",),
    )
    final_from_best: bool = setting(
        False,
        help="write final/ from the saved checkpoint with the lowest validation loss instead of the last epoch",
        flags=("--final-from-best",),
    )

    def __post_init__(self) -> None:
        choices = {
            "optimizer": OPTIMIZERS,
            "scheduler": SCHEDULERS,
            "precision": PRECISIONS,
            "timestep_mode": TIMESTEP_MODES,
            "continuous_draws": CONTINUOUS_DRAWS,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise TrainingError(f"{name}={getattr(self, name)!r} is not one of {', '.join(allowed)}.")
        positive = ("epochs", "batch_size", "gradient_accumulation", "save_every", "nan_patience", "log_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise TrainingError(f"{name} must be at least 1 (got {getattr(self, name)}).")
        if self.learning_rate <= 0:
            raise TrainingError(f"learning_rate must be positive (got {self.learning_rate}).")
        if self.cfg_ratio is not None and not 0.0 <= self.cfg_ratio < 1.0:
            raise TrainingError(f"cfg_ratio must be in [0, 1) (got {self.cfg_ratio}).")
        if self.validation_every < 0:
            raise TrainingError(f"validation_every must be 0 (each epoch) or more (got {self.validation_every}).")
        if not 0.0 <= self.ema_decay < 1.0:
            raise TrainingError(f"ema_decay must be in [0, 1) (got {self.ema_decay}); 0 turns the average off, 0.999 is usual.")
        validation_fraction(self.validation)

    def held_out_songs(self) -> tuple[str, ...]:
        """The song names `validation` lists (empty when it is auto, off or a fraction)."""
        if self.validation is None or validation_fraction(self.validation) is not None:
            return ()
        if self.validation.strip().lower() == VALIDATION_OFF:
            return ()
        return tuple(name.strip() for name in self.validation.split(",") if name.strip())

    def resolved_timestep_mode(self, base: str) -> str:
        """discrete for turbo, continuous for base/sft, unless set explicitly."""
        if self.timestep_mode != "auto":
            return self.timestep_mode
        return variant_defaults(base).timestep_mode

    def resolved_cfg_ratio(self, base: str) -> float:
        """15 % condition dropout for base/sft, none for turbo, unless set explicitly."""
        if self.cfg_ratio is not None:
            return self.cfg_ratio
        return variant_defaults(base).cfg_ratio

    def inference_defaults(self, base: str) -> Schedule:
        """The schedule the adapter is meant to be sampled with (the variant's unless set)."""
        default = variant_defaults(base).schedule
        return Schedule(self.shift if self.shift is not None else default.shift, self.num_inference_steps or default.steps)

    def to_dict(self) -> dict[str, Any]:
        """Plain dictionary (for metadata and the training state)."""
        return dataclasses.asdict(self)


def validation_fraction(choice: str | None) -> float | None:
    """The share of songs `validation` holds out when it is a number (None otherwise); TrainingError when the number
    is not between 0 and 1."""
    if choice is None:
        return None
    try:
        fraction = float(choice)
    except ValueError:
        return None
    if not 0.0 < fraction < 1.0:
        raise TrainingError(
            f"validation={choice!r}: a fraction of the songs must be between 0 and 1 (e.g. 0.1), or write "
            f"'{VALIDATION_OFF}' or song names."
        )
    return fraction
