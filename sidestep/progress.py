"""A terminal progress bar for training events (the CLI's view of what the nodes show in the canvas)."""

from __future__ import annotations

import sys
from typing import TextIO

from .training.events import TrainingEvent

BAR_WIDTH = 28


def format_seconds(seconds: float | None) -> str:
    """h:mm:ss (or m:ss) for durations; '?' when unknown."""
    if seconds is None:
        return "?"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_step(event: TrainingEvent) -> str:
    """One status line: bar, step, epoch, loss (smoothed), lr, speed, elapsed and ETA."""
    done = event.step / event.total_steps if event.total_steps else 0.0
    filled = int(done * BAR_WIDTH)
    bar = "#" * filled + "-" * (BAR_WIDTH - filled)
    parts = [f"[{bar}] step {event.step}/{event.total_steps}", f"epoch {event.epoch + 1}/{event.total_epochs}"]
    if event.loss is not None:
        parts.append(f"loss {event.loss:.4f} ({event.smoothed_loss:.4f})")
    if event.lr is not None:
        parts.append(f"lr {event.lr:.2e}")
    if event.samples_per_second:
        parts.append(f"{event.samples_per_second:.2f} samples/s")
    parts.append(f"{format_seconds(event.elapsed_seconds)} elapsed, ETA {format_seconds(event.eta_seconds)}")
    return "  ".join(parts)


def best_text(event: TrainingEvent) -> str:
    """' (best: epoch 3, 0.4213)' when a checkpoint has a validation loss, else ''."""
    if event.best_epoch is None:
        return ""
    return f" (best: epoch {event.best_epoch}, {event.best_val_loss:.4f})"


class ProgressPrinter:
    """Training callback: redraws one line on a terminal, prints whole lines otherwise, and reports milestones."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self.interactive = self.stream.isatty()

    def __call__(self, event: TrainingEvent) -> None:
        if event.kind == "step":
            line = format_step(event)
            if self.interactive:
                self.stream.write("\r" + line[:200])
            else:
                self.stream.write(line + "\n")
        elif event.kind == "validation":
            self._line(f"validation loss {event.val_loss:.4f} at step {event.step}{best_text(event)}")
        elif event.kind == "checkpoint":
            self._line(f"checkpoint saved: {event.checkpoint_path}")
        elif event.kind == "preview":
            self._line(f"preview (epoch {event.epoch}): {event.preview_path}")
        elif event.kind in ("finished", "stopped"):
            self._line(f"{event.kind}: adapter in {event.adapter_path}" + (f" ({event.message})" if event.message else ""))
        elif event.kind in ("failed", "note"):
            self._line(f"{event.kind}: {event.message}")
        self.stream.flush()

    def _line(self, text: str) -> None:
        self.stream.write(("\n" if self.interactive else "") + text + "\n")
