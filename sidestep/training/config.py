"""Training settings, with every default in one place."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..errors import TrainingError
from ..settings import setting
from ..variants import FRAMES_PER_SECOND, Schedule, per_base, variant_defaults
from .layout import EPOCH_PREFIX, PREVIEW_SUFFIX, PREVIEWS_FOLDER

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
    # The Train Adapter node shows the settings below in this order (saved workflows keep their widget order):
    # append new settings at the end; `node=False` ones are CLI-only.
    epochs: int = setting(10, help="Passes over the whole dataset.", min=1, max=100_000)
    learning_rate: float = setting(
        1e-4, help="Step size: 1e-4 suits LoRA with AdamW; Prodigy expects 1.0 (on resume the checkpoint's is kept).",
        min=0.0000001, max=10.0, step=0.0000001, flags=("--lr", "--learning-rate"),
    )
    optimizer: str = setting(
        "adamw", choices=OPTIMIZERS, flags=("--optimizer", "--optimizer-type"),
        help="adamw; adamw8bit (needs bitsandbytes); prodigy (needs prodigyopt, learning rate 1.0); adafactor.",
    )
    scheduler: str = setting(
        "cosine", choices=SCHEDULERS, flags=("--scheduler", "--scheduler-type"),
        help="How the learning rate changes over the run (after warm-up).",
    )
    warmup_steps: int = setting(0, help="Optimiser steps during which the learning rate ramps up from 0.", min=0, max=100_000)
    batch_size: int = setting(1, help="Clips per forward pass.", min=1, max=64)
    gradient_accumulation: int = setting(
        1, help="Batches summed per optimiser step (effective batch = batch_size x this).", min=1, max=1024
    )
    timestep_mode: str = setting(
        "auto", choices=TIMESTEP_MODES, help="How training draws timesteps.",
        auto="the 8 discrete turbo timesteps for turbo, continuous logit-normal for base/sft",
    )
    cfg_ratio: float | None = setting(
        None, help="Share of samples trained without their caption (for guidance).", min=0.0, max=0.99, step=0.01,
        auto=per_base(lambda v: v.cfg_ratio),
    )
    save_every: int = setting(
        1, help="Write checkpoints/epoch_N (adapter + training state) every this many epochs.", min=1, max=100_000
    )
    seed: int = setting(
        42, help="Seed of every random choice in training (kept fixed: a new seed would mean a new run).",
        min=0, max=2**31 - 1, widget={"control_after_generate": False},
    )
    resume_from: str | None = setting(
        None, help=(
            "Continue a run: 'latest' (this run's newest checkpoint) or a checkpoint folder such as checkpoints/epoch_5 "
            "(relative paths are inside the run) or the training_state.pt inside it."
        ), auto="start fresh",
    )
    gradient_checkpointing: bool = setting(
        True, help="Recompute activations in the backward pass: much less memory, about 30% slower."
    )
    precision: str = setting("auto", choices=PRECISIONS, help="Compute precision.", auto="bf16 on CUDA and on CPUs with bf16 units (AMX, AVX-512 BF16), fp32 on other CPUs")
    preview_caption: str = setting(
        "", help="Caption of the preview songs; empty uses the first clip's caption from the dataset."
    )
    preview_every: int = setting(
        0, help=f"Every this many epochs, generate a short preview song, "
        f"{PREVIEWS_FOLDER}/{EPOCH_PREFIX}N{PREVIEW_SUFFIX}; 0 = off.", min=0, max=100_000
    )
    weight_decay: float = setting(0.01, help="AdamW weight decay.", min=0.0, node=False)
    restarts: int = setting(2, help="Restarts of the cosine_restarts schedule.", min=1, node=False)
    continuous_draws: str = setting(
        "max_of_two", choices=CONTINUOUS_DRAWS, node=False,
        help="Continuous timesteps: the larger of two draws (official) or one.",
    )
    min_snr_gamma: float | None = setting(
        None, help="Min-SNR loss weighting gamma.", min=0.0, auto="off", node=False
    )
    max_latent_frames: int | None = setting(
        1500, help=f"Random crop length in {FRAMES_PER_SECOND} Hz frames.", min=1, auto="whole clips",
        none_aliases=(0,), node=False,
    )
    num_workers: int = setting(0, help="Data loader worker processes.", min=0, node=False)
    nan_patience: int = setting(5, help="Non-finite losses in a row before training stops.", min=1, node=False)
    shift: float | None = setting(
        None, help="Timestep shift recorded for inference.", min=0.0, auto=per_base(lambda v: v.schedule.shift), node=False
    )
    num_inference_steps: int | None = setting(
        None, help="Sampling steps recorded for inference.", min=1, auto=per_base(lambda v: v.schedule.steps),
        none_aliases=(0,), node=False,
    )
    log_every: int = setting(1, help="Log the loss every this many optimiser steps.", min=1, node=False)
    log_dir: str | None = setting(None, help="TensorBoard folder.", auto="OUT/runs", node=False)
    max_grad_norm: float = setting(1.0, help="Gradient clipping: the largest gradient norm an update may have.", min=0.0, max=1000.0, step=0.01)
    validation: str | None = setting(
        None,
        help=f"Songs held out for the validation loss: '{VALIDATION_OFF}', a fraction such as 0.1, or song names "
        "separated by commas.",
        auto=f"{VALIDATION_FRACTION:.0%} of the songs (at most {VALIDATION_MAX_SONGS}) when the dataset has "
        f"{VALIDATION_MIN_SONGS} or more, else the training songs themselves as a reference",
        flags=("--validation",),
    )
    validation_every: int = setting(
        0, help="Optimiser steps between validation losses; 0 = at the end of every epoch.", min=0, flags=("--validation-every",)
    )
    ema_decay: float = setting(
        0.0,
        help="Keep an exponential moving average of the adapter weights with this decay (e.g. 0.999) and use it for "
        "validation, previews, checkpoints and the final adapter; 0 = off.",
        min=0.0,
        max=0.99999,
        flags=("--ema-decay",),
    )
    final_from_best: bool = setting(
        False,
        help="Write final/ from the saved checkpoint with the lowest validation loss instead of the last epoch.",
        flags=("--final-from-best",),
    )
    overwrite: bool = setting(
        False,
        help="Start over in a run folder that holds an earlier run: delete what is in it first (else such a folder is "
        "refused unless resuming).",
        flags=("--overwrite",),
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
