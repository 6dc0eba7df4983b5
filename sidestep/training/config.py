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
    overwrite: bool = setting(
        False,
        help="start over in a run folder that holds an earlier run: delete what is in it first (else such a folder is "
        "refused unless resuming)",
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
