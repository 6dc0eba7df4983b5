"""The adapter registry: every kind Side-Step trains and reads, one module each, and the one place the rest of the
code asks about kinds (by name, by a settings object, by a module's tensors).

A new kind is one module under `kinds/` (settings dataclass, `ModuleWeights`, trainable form, `AdapterKind`) and one
line in `_MODULES`. Importing the registry stays cheap: PEFT and LyCORIS load only when an adapter is attached.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ...errors import AdapterError
from ..config import AdapterConfig
from . import loha, lokr, lora, oft
from .base import AdapterKind

_MODULES = (lora, lokr, loha, oft)
KINDS: dict[str, AdapterKind] = {module.KIND.name: module.KIND for module in _MODULES}
# Tensor-key suffix → part name over every kind (for grouping a file's keys by module).
PARTS: dict[str, str] = {suffix: part for kind in KINDS.values() for suffix, part in kind.parts.items()}


def kind_named(name: str) -> AdapterKind:
    """The kind called `name`; AdapterError listing the kinds otherwise."""
    if name not in KINDS:
        raise AdapterError(f"Adapter kind must be one of {', '.join(KINDS)}, got {name!r}.")
    return KINDS[name]


def kind_of(config: AdapterConfig) -> AdapterKind:
    """The kind a settings object belongs to."""
    return kind_named(config.kind)


def kinds_owning(parts: Mapping[str, torch.Tensor]) -> list[AdapterKind]:
    """The kinds whose own parts appear among one module's parts (one for a well-formed module)."""
    return [kind for kind in KINDS.values() if kind.owns(parts)]
