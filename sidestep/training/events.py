"""What the trainer reports, and how a caller asks it to stop."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class TrainingEvent:
    """One progress report; `kind` is step, epoch, validation, checkpoint, preview, note, finished, stopped or failed.
    `val_loss` is the validation loss just measured (validation, checkpoint); `best_epoch` / `best_val_loss` name the
    saved checkpoint with the lowest validation loss so far."""

    kind: str
    step: int = 0
    total_steps: int = 0
    epoch: int = 0
    total_epochs: int = 0
    loss: float | None = None
    smoothed_loss: float | None = None
    lr: float | None = None
    grad_norm: float | None = None
    samples_per_second: float | None = None
    elapsed_seconds: float = 0.0
    eta_seconds: float | None = None
    checkpoint_path: str | None = None
    adapter_path: str | None = None
    preview_path: str | None = None
    message: str = ""
    val_loss: float | None = None
    best_epoch: int | None = None
    best_val_loss: float | None = None


EventCallback = Callable[[TrainingEvent], None]


class StopSignal:
    """A cooperative stop request the trainer checks after every optimiser step (thread-safe)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = ""

    def request(self, reason: str = "stop requested") -> None:
        """Ask the running training to save and return after its current step."""
        self.reason = reason
        self._event.set()

    @property
    def requested(self) -> bool:
        """Whether a stop was requested."""
        return self._event.is_set()
