"""A loaded adapter: per-module LoRA or LoKR factors and the weight delta ΔW each one stands for."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch

from .metadata import AdapterMetadata


@dataclass(frozen=True)
class LoraWeights:
    """ΔW = scale · up @ down (PEFT: lora_B @ lora_A); `magnitude` [out] makes it DoRA."""

    down: torch.Tensor
    up: torch.Tensor
    scale: float
    magnitude: torch.Tensor | None = None

    @property
    def rank(self) -> int:
        """Inner dimension of the factors."""
        return self.down.shape[0]

    @property
    def shape(self) -> tuple[int, int]:
        """(out_features, in_features) of the Linear layer this fits."""
        return self.up.shape[0], self.down.shape[1]

    def delta(self) -> torch.Tensor:
        """The plain (non-DoRA) ΔW in fp32."""
        return self.scale * (self.up.float() @ self.down.float())


@dataclass(frozen=True)
class LokrWeights:
    """ΔW = scale · kron(w1, w2), each side stored whole or as a low-rank pair (LyCORIS names in `factors`).

    The scale follows LyCORIS and ComfyUI alike: alpha / dim when either side is a low-rank pair (dim = that pair's
    rank, w2's when both are), otherwise 1. `magnitude` [out] is LyCORIS weight decomposition (DoRA on the output axis).
    """

    factors: dict[str, torch.Tensor]
    alpha: float | None
    magnitude: torch.Tensor | None = None

    def w1(self) -> torch.Tensor:
        """The left Kronecker factor [out1, in1] in fp32."""
        if "lokr_w1" in self.factors:
            return self.factors["lokr_w1"].float().contiguous()
        return self.factors["lokr_w1_a"].float() @ self.factors["lokr_w1_b"].float()

    def w2(self) -> torch.Tensor:
        """The right Kronecker factor [out2, in2] in fp32 (a Tucker core is contracted, trailing 1x1 dims dropped)."""
        f = self.factors
        if "lokr_w2" in f:
            w2 = f["lokr_w2"].float()
        elif "lokr_t2" in f:
            w2 = torch.einsum("ij...,jr,ip->pr...", f["lokr_t2"].float(), f["lokr_w2_b"].float(), f["lokr_w2_a"].float())
        else:
            w2 = f["lokr_w2_a"].float() @ f["lokr_w2_b"].float()
        return w2.flatten(1).contiguous()

    @property
    def rank(self) -> int | None:
        """The low-rank dimension, or None when both sides are stored whole."""
        for name in ("lokr_w2_b", "lokr_w1_b"):
            if name in self.factors:
                return self.factors[name].shape[0]
        return None

    @property
    def scale(self) -> float:
        """alpha / rank when a side is decomposed and alpha is known, else 1.0."""
        rank = self.rank
        return self.alpha / rank if rank is not None and self.alpha is not None else 1.0

    @property
    def shape(self) -> tuple[int, int]:
        """(out_features, in_features) of the Linear layer this fits."""
        w1, w2 = self.w1(), self.w2()
        return w1.shape[0] * w2.shape[0], w1.shape[1] * w2.shape[1]

    def delta(self) -> torch.Tensor:
        """The plain (non-decomposed) ΔW in fp32."""
        return self.scale * torch.kron(self.w1(), self.w2())


ModuleWeights = LoraWeights | LokrWeights


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
