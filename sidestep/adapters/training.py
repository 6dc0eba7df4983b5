"""Attach a trainable adapter of any kind to the DiT decoder (base weights frozen, never written to).

Each kind's module under `kinds/` says how it attaches (LoRA/DoRA through PEFT on the decoder itself; LoKR, LoHA and
OFT as a LyCORIS network restricted to exactly the target Linear layers); all keep working under the decoder's own
gradient checkpointing. `TrainableAdapter` is the form the trainer holds.
"""

from __future__ import annotations

from torch import nn

from .config import AdapterConfig
from .kinds import kind_of
from .kinds.base import TrainableAdapter
from .targets import target_modules

__all__ = ["TrainableAdapter", "attach_trainable_adapter"]


def attach_trainable_adapter(decoder: nn.Module, config: AdapterConfig) -> TrainableAdapter:
    """Freeze `decoder` and attach a fresh adapter of `config.kind` to its target layers (base weights untouched)."""
    return kind_of(config).attach(decoder, config, target_modules(decoder, config))
