"""A loaded adapter: per-module weights of one kind (`ModuleWeights`, each kind's form) and the record it carries."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import ClassVar

import torch

from .metadata import AdapterMetadata


class ModuleWeights(ABC):
    """One module's trained weights in a kind's own factored form (each kind's module under `kinds/` defines its class).

    `magnitude` [out], when set, is DoRA / LyCORIS weight decomposition on the output axis; `scale` is the factor the
    kind multiplies its product by (1.0 where it has none).
    """

    kind: ClassVar[str]
    # True when ΔW·x needs the base layer's W·x (OFT rotates it), so the sampler computes that once per layer.
    needs_base_output: ClassVar[bool] = False
    magnitude: torch.Tensor | None
    scale: float

    @property
    @abstractmethod
    def shape(self) -> tuple[int, int]:
        """(out_features, in_features) of the Linear layer this fits."""

    def fits(self, shape: tuple[int, int]) -> bool:
        """Whether the module fits a Linear layer of (out_features, in_features)."""
        return tuple(self.shape) == shape

    @property
    @abstractmethod
    def rank(self) -> int | None:
        """The kind's size (rank, dimension or block size) as stored, None where it has none."""

    @abstractmethod
    def delta(self, base: torch.Tensor | None = None) -> torch.Tensor:
        """The plain (non-decomposed) ΔW in fp32; `base` is the layer's weight, which OFT's ΔW depends on."""

    @abstractmethod
    def delta_x(self, device: torch.device) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """A function `(x, W·x) → ΔW·x` with the factors moved to `device` once (no full-size ΔW where avoidable);
        W·x is None unless `needs_base_output`."""

    @abstractmethod
    def comfy_tensors(self, module: str) -> dict[str, torch.Tensor]:
        """This module's tensors under ComfyUI's key names (what `comfy/lora.py` maps and its weight adapters read)."""


@dataclass(frozen=True)
class LoadedAdapter:
    """An adapter in the one form every path shares (read from disk, handed over by training, exported, patched into
    ComfyUI): kind, per-module weights (keyed by decoder path or LyCORIS flat name), the rank/alpha it declares (None
    when unknown) and its safetensors header, whose training record `metadata` reads."""

    source: Path
    kind: str
    modules: dict[str, ModuleWeights]
    rank: int | None
    alpha: float | None
    header: dict[str, str] = field(default_factory=dict)

    @cached_property
    def metadata(self) -> AdapterMetadata:
        """The typed training record in the header (variant, base, shift, steps, ...; empty for foreign files)."""
        return AdapterMetadata.from_header(self.header)

    @property
    def decomposes_weight(self) -> bool:
        """True when any module carries a DoRA / weight-decomposition magnitude."""
        return any(weights.magnitude is not None for weights in self.modules.values())
