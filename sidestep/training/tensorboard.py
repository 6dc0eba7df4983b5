"""TensorBoard scalars for a run (loss, lr, grad_norm, epoch_loss), written by rank 0 only."""

from __future__ import annotations

from pathlib import Path


class RunLogger:
    """Writes scalars under `log_dir`; a disabled logger writes nothing."""

    def __init__(self, log_dir: Path, enabled: bool = True, purge_step: int | None = None) -> None:
        """`purge_step` (on resume): TensorBoard drops what earlier event files logged from that step on."""
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            log_dir.mkdir(parents=True, exist_ok=True)
            self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    def scalars(self, step: int, **values: float) -> None:
        """Record each named value at `step`."""
        if self.writer is None:
            return
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)

    def close(self) -> None:
        """Flush and close the event file."""
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
