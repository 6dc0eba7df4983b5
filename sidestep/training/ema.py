"""An exponential moving average of the adapter weights, kept in fp32 beside the trained ones."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from ..errors import TrainingError


class AdapterEMA:
    """shadow ← d·shadow + (1 − d)·weights after every optimiser step, with d = min(decay, (1 + n) / (10 + n)) at the
    n-th update, so the early average is not stuck at the initial weights."""

    def __init__(self, parameters: Sequence[torch.nn.Parameter], decay: float) -> None:
        self.parameters = list(parameters)
        self.decay = decay
        self.updates = 0
        self.shadow = [p.detach().float().clone() for p in self.parameters]

    @torch.no_grad()
    def update(self) -> None:
        """Move the average one step towards the current weights."""
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for shadow, parameter in zip(self.shadow, self.parameters):
            shadow.lerp_(parameter.detach().float(), 1.0 - decay)
        self.updates += 1

    def state_dict(self) -> dict:
        """The average and its update count (tensors and plain values, for training_state.pt)."""
        return {"decay": self.decay, "updates": self.updates, "shadow": [s.detach().cpu().clone() for s in self.shadow]}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` saved; TrainingError when it does not fit these parameters."""
        shadow = state.get("shadow")
        if not isinstance(shadow, list) or [tuple(s.shape) for s in shadow] != [tuple(s.shape) for s in self.shadow]:
            raise TrainingError("The checkpoint's weight average does not fit this adapter.")
        self.updates = int(state["updates"])
        for own, saved in zip(self.shadow, shadow):
            own.copy_(saved)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """The averaged weights in the adapter while the block runs; the trained ones afterwards (exactly)."""
        with torch.no_grad():
            trained = [p.detach().clone() for p in self.parameters]
            for parameter, shadow in zip(self.parameters, self.shadow):
                parameter.copy_(shadow)
        try:
            yield
        finally:
            with torch.no_grad():
                for parameter, saved in zip(self.parameters, trained):
                    parameter.copy_(saved)
