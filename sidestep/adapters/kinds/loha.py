"""LoHA (LyCORIS): settings, training on the decoder, `loha_weights.safetensors` with its settings in the header,
ΔW = alpha / dim · (w1_a @ w1_b) ⊙ (w2_a @ w2_b) and ComfyUI's `lycoris_<module>.hada_*` + `.alpha` keys.

The Hadamard product of two rank-`dim` products reaches rank dim² with the parameters of a rank-2·dim LoRA, so a
small `dim` (8-32) already adapts a layer broadly. ComfyUI's `weight_adapter/loha.py` uses the same scale rule (alpha /
the rank of w1_b), so the tensors go out unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import AdapterError
from ...settings import setting
from ..config import AdapterConfig, check_flag, check_positive_int, check_positive_number
from ..loaded import ModuleWeights
from .base import TrainableAdapter, stored_alpha
from .lycoris import LycorisAdapter, LycorisKind, comfy_tensors, output_magnitude

LOHA_WEIGHTS_FILE = "loha_weights.safetensors"
LOHA_CONFIG_KEY = "loha_config"
_FACTORS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")


@dataclass(frozen=True, kw_only=True)
class LohaConfig(AdapterConfig):
    """A LoHA (LyCORIS): dim (the rank of each of the two products), alpha (scale = alpha / dim) and weight
    decomposition."""

    kind: ClassVar[str] = "loha"
    linear_dim: int = setting(
        32, help="LoHA dimension: rank of each of its two products (the update reaches rank dim²; 8-32 is typical)",
        min=1, max=1024, flags=("--loha-linear-dim",), node="loha_dim",
    )
    linear_alpha: float = setting(
        32, help="LoHA alpha (scale = alpha / dim)", min=0.01, max=4096.0, step=1.0, flags=("--loha-linear-alpha",),
        node="loha_alpha",
    )
    weight_decompose: bool = setting(
        False, help="LoHA: weight decomposition (DoRA-style; not exportable to ComfyUI)", flags=("--loha-weight-decompose",),
        node="weight_decompose",
    )

    def _check_settings(self) -> None:
        check_positive_int("linear_dim", self.linear_dim)
        check_positive_number("linear_alpha", self.linear_alpha)
        check_flag("weight_decompose", self.weight_decompose)

    @property
    def decomposes_weight(self) -> bool:
        return self.weight_decompose

    def shape_signature(self) -> tuple:
        return (self.kind, self.linear_dim, self.weight_decompose, self.target, tuple(self.custom_modules))

    def describe(self) -> str:
        extra = ", weight-decomposed" if self.weight_decompose else ""
        return f"LoHA dim {self.linear_dim}, alpha {self.linear_alpha:g}{extra} on {self._where()}"

    def _settings(self) -> dict[str, Any]:
        return {"linear_dim": self.linear_dim, "linear_alpha": self.linear_alpha, "weight_decompose": self.weight_decompose}


@dataclass(frozen=True)
class LohaWeights(ModuleWeights):
    """ΔW = scale · (w1_a @ w1_b) ⊙ (w2_a @ w2_b) (LyCORIS names in `factors`), scale = alpha / dim (1 without an
    alpha); `magnitude` [out] is LyCORIS weight decomposition."""

    kind: ClassVar[str] = "loha"
    factors: dict[str, torch.Tensor]
    alpha: float | None
    magnitude: torch.Tensor | None = None

    @property
    def rank(self) -> int:
        return self.factors["hada_w1_b"].shape[0]

    @property
    def scale(self) -> float:
        return 1.0 if self.alpha is None else self.alpha / self.rank

    @property
    def shape(self) -> tuple[int, int]:
        return self.factors["hada_w1_a"].shape[0], self.factors["hada_w1_b"].shape[1]

    def delta(self, base: torch.Tensor | None = None) -> torch.Tensor:
        return _product({name: tensor.float() for name, tensor in self.factors.items()}, self.scale)

    def delta_x(self, device: torch.device) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        factors, scale = {name: tensor.float().to(device) for name, tensor in self.factors.items()}, self.scale

        def delta_x(x: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
            # A Hadamard product has no cheaper factored form: ΔW is rebuilt per call (never kept for every layer).
            return F.linear(x, _product(factors, scale).to(x.device, x.dtype))

        return delta_x

    def comfy_tensors(self, module: str) -> dict[str, torch.Tensor]:
        return comfy_tensors(module, self.factors, self.alpha)


def _product(factors: Mapping[str, torch.Tensor], scale: float) -> torch.Tensor:
    """scale · (w1_a @ w1_b) ⊙ (w2_a @ w2_b)."""
    return (factors["hada_w1_a"] @ factors["hada_w1_b"]) * (factors["hada_w2_a"] @ factors["hada_w2_b"]) * scale


class LohaKind(LycorisKind):
    name = "loha"
    config_key = LOHA_CONFIG_KEY
    config = LohaConfig
    weights_file = LOHA_WEIGHTS_FILE
    parts = {name: name for name in (*_FACTORS, "hada_t1", "hada_t2", "dora_scale")}
    shared_parts = frozenset({"dora_scale"})
    summary = (
        "loha: Hadamard product of two low-rank pairs (LyCORIS); reaches a high rank with few parameters, for "
        "styles that a LoRA of the same size underfits (dim 8-32)."
    )

    def attach(self, decoder: nn.Module, config: AdapterConfig, modules: list[str]) -> TrainableAdapter:
        # As for LoKR: bypass mode adds ΔW·x in the input's dtype; weight decomposition needs LyCORIS' rebuild mode.
        network = {
            "linear_dim": config.linear_dim, "linear_alpha": config.linear_alpha, "algo": "loha",
            "dora_wd": config.weight_decompose, "bypass_mode": not config.weight_decompose,
        }
        stored = {
            "algo": "loha", "linear_dim": config.linear_dim, "linear_alpha": config.linear_alpha,
            "weight_decompose": config.weight_decompose, "bypass_mode": not config.weight_decompose,
        }
        return LycorisAdapter(decoder, config, modules, network, stored, LOHA_CONFIG_KEY, LOHA_WEIGHTS_FILE)

    def read_module(
        self, module: str, parts: dict[str, torch.Tensor], path: Path, peft_config: dict[str, Any] | None
    ) -> LohaWeights:
        if "hada_t1" in parts or "hada_t2" in parts:
            raise AdapterError(f"Adapter {path}: {module} is a convolution (Tucker) LoHA; only Linear-layer LoHAs fit the decoder.")
        missing = [name for name in _FACTORS if name not in parts]
        if missing:
            raise AdapterError(f"Adapter {path}: LoHA module {module} lacks {', '.join(missing)}.")
        factors = {name: parts[name] for name in _FACTORS}
        flat = [name for name, tensor in factors.items() if tensor.dim() != 2]
        if flat:
            raise AdapterError(f"Adapter {path}: {module} is not a Linear-layer LoHA ({', '.join(flat)} not 2-D).")
        (w1a, w1b, w2a, w2b) = factors.values()
        if w1a.shape[1] != w1b.shape[0] or w2a.shape[1] != w2b.shape[0] or (w1a.shape[0], w1b.shape[1]) != (w2a.shape[0], w2b.shape[1]):
            shapes = ", ".join(f"{name} {tuple(tensor.shape)}" for name, tensor in factors.items())
            raise AdapterError(f"Adapter {path}: LoHA shape mismatch in {module}: {shapes}.")
        return LohaWeights(factors, stored_alpha(parts), output_magnitude(module, parts, path))



KIND = LohaKind()
