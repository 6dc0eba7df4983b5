"""LoKR (LyCORIS): settings, training on the decoder, `lokr_weights.safetensors` with its settings in the header,
ΔW = scale · kron(w1, w2) and ComfyUI's `lycoris_<module>.lokr_*` + `.alpha` keys.

ComfyUI and LyCORIS share the scale rule (alpha / dim only when a side is decomposed), so the factors go out unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from ...errors import AdapterError
from ...settings import setting
from ..config import AdapterConfig, check_flag, check_positive_int, check_positive_number
from ..loaded import ModuleWeights
from .base import TrainableAdapter, stored_alpha
from .lycoris import LycorisAdapter, LycorisKind, comfy_tensors, output_magnitude

LOKR_WEIGHTS_FILE = "lokr_weights.safetensors"
LOKR_CONFIG_KEY = "lokr_config"
AUTO_FACTOR = -1  # LyCORIS's and the saved settings' spelling of an automatic Kronecker factor


@dataclass(frozen=True, kw_only=True)
class LokrConfig(AdapterConfig):
    """A LoKR (LyCORIS): linear_dim/linear_alpha, the Kronecker factor (None automatic), decompose_both, use_tucker and
    weight decomposition. `use_tucker` only changes convolution layers in LyCORIS, so on the decoder's Linear targets
    it trains exactly like `use_tucker=False`."""

    kind: ClassVar[str] = "lokr"
    linear_dim: int = setting(
        64, help="LoKR linear dimension: capacity of the adapter.", min=1, max=1024, flags=("--lokr-linear-dim",), node="rank"
    )
    linear_alpha: float = setting(
        128, help="LoKR scaling, when a factor is decomposed: alpha / dimension.", min=0.01, max=4096.0, step=1.0,
        flags=("--lokr-linear-alpha",), node="alpha",
    )
    factor: int | None = setting(
        None, help="LoKR only: Kronecker factor.", min=1, max=1024, auto="LyCORIS picks one",
        flags=("--lokr-factor",), node="lokr_factor", none_aliases=(AUTO_FACTOR,),
    )
    decompose_both: bool = setting(
        False, help="LoKR only: also split the smaller Kronecker factor into a low-rank pair.",
        flags=("--lokr-decompose-both",), node="lokr_decompose_both",
    )
    use_tucker: bool = setting(
        False, help="LoKR: Tucker decomposition (changes convolutions only, so nothing on the decoder).",
        flags=("--lokr-use-tucker",), node=False,
    )
    weight_decompose: bool = setting(
        False, help="LoKR: weight decomposition (DoRA-style); no models/loras export is written.",
        flags=("--lokr-weight-decompose",), node="weight_decompose",
    )

    def _check_settings(self) -> None:
        check_positive_int("linear_dim", self.linear_dim)
        check_positive_number("linear_alpha", self.linear_alpha)
        if self.factor is not None:
            check_positive_int("factor", self.factor)
        for name in ("decompose_both", "use_tucker", "weight_decompose"):
            check_flag(name, getattr(self, name))

    @property
    def decomposes_weight(self) -> bool:
        return self.weight_decompose

    @property
    def lycoris_factor(self) -> int:
        """The factor as LyCORIS and the saved settings spell it (-1 automatic)."""
        return AUTO_FACTOR if self.factor is None else self.factor

    def shape_signature(self) -> tuple:
        shape = (self.linear_dim, self.factor, self.decompose_both, self.weight_decompose)
        return (self.kind, *shape, self.target, tuple(self.custom_modules))

    def describe(self) -> str:
        extra = (", both factors decomposed" if self.decompose_both else "") + (
            ", weight-decomposed" if self.weight_decompose else ""
        )
        factor = "auto" if self.factor is None else self.factor
        return f"LoKR dim {self.linear_dim}, alpha {self.linear_alpha:g}, factor {factor}{extra} on {self._where()}"

    def _settings(self) -> dict[str, Any]:
        return {
            "rank": self.linear_dim, "alpha": self.linear_alpha, "dropout": 0.0, "use_dora": False,
            "linear_dim": self.linear_dim, "linear_alpha": self.linear_alpha, "factor": self.lycoris_factor,
            "decompose_both": self.decompose_both, "use_tucker": self.use_tucker, "weight_decompose": self.weight_decompose,
        }


@dataclass(frozen=True)
class LokrWeights(ModuleWeights):
    """ΔW = scale · kron(w1, w2), each side stored whole or as a low-rank pair (LyCORIS names in `factors`).

    The scale follows LyCORIS and ComfyUI alike: alpha / dim when either side is a low-rank pair (dim = that pair's
    rank, w2's when both are), otherwise 1. `magnitude` [out] is LyCORIS weight decomposition (DoRA on the output axis).
    """

    kind: ClassVar[str] = "lokr"
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
        w1, w2 = self.w1(), self.w2()
        return w1.shape[0] * w2.shape[0], w1.shape[1] * w2.shape[1]

    def delta(self, base: torch.Tensor | None = None) -> torch.Tensor:
        return self.scale * torch.kron(self.w1(), self.w2())

    def delta_x(self, device: torch.device) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        w1, w2, scale = self.w1().to(device), self.w2().to(device), self.scale

        def delta_x(x: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
            a, b = w1.to(x.device, x.dtype), w2.to(x.device, x.dtype)
            # kron(a, b)·x = a · X · bᵀ with x viewed as X [in1, in2].
            return (a @ x.unflatten(-1, (a.shape[1], b.shape[1])) @ b.T).flatten(-2) * scale

        return delta_x

    def comfy_tensors(self, module: str) -> dict[str, torch.Tensor]:
        return comfy_tensors(module, self.factors, self.alpha)


class LokrKind(LycorisKind):
    name = "lokr"
    config_key = LOKR_CONFIG_KEY
    config = LokrConfig
    weights_file = LOKR_WEIGHTS_FILE
    parts = {name: name for name in ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2", "dora_scale")}
    shared_parts = frozenset({"dora_scale"})
    summary = "lokr: Kronecker-product update (LyCORIS); far smaller files at the same dimension."

    def attach(self, decoder: nn.Module, config: AdapterConfig, modules: list[str]) -> TrainableAdapter:
        # Bypass mode adds ΔW·x in the input's dtype (exact with bf16 base weights); weight decomposition needs the
        # merged weight, which only LyCORIS' rebuild mode computes.
        network = {
            "linear_dim": config.linear_dim, "linear_alpha": config.linear_alpha, "algo": "lokr", "factor": config.lycoris_factor,
            "decompose_both": config.decompose_both, "use_tucker": config.use_tucker, "dora_wd": config.weight_decompose,
            "bypass_mode": not config.weight_decompose,
        }
        stored = {
            "algo": "lokr",
            "linear_dim": config.linear_dim,
            "linear_alpha": config.linear_alpha,
            "factor": config.lycoris_factor,
            "decompose_both": config.decompose_both,
            "use_tucker": config.use_tucker,
            "use_scalar": False,
            "weight_decompose": config.weight_decompose,
            "full_matrix": False,
            "bypass_mode": not config.weight_decompose,
            "rs_lora": False,
            "unbalanced_factorization": False,
        }
        return LycorisAdapter(decoder, config, modules, network, stored, LOKR_CONFIG_KEY, LOKR_WEIGHTS_FILE)

    def read_module(
        self, module: str, parts: dict[str, torch.Tensor], path: Path, peft_config: dict[str, Any] | None
    ) -> LokrWeights:
        factors = {name: parts[name] for name in self.parts if name in parts and name != "dora_scale"}
        for side in ("lokr_w1", "lokr_w2"):
            if side not in factors and not {f"{side}_a", f"{side}_b"} <= factors.keys():
                raise AdapterError(f"Adapter {path}: LoKR module {module} lacks {side} (or the {side}_a/{side}_b pair).")
        flat = [name for name, tensor in factors.items() if name != "lokr_t2" and tensor.dim() != 2]
        if flat:
            raise AdapterError(f"Adapter {path}: {module} is not a Linear-layer LoKR ({', '.join(flat)} not 2-D).")
        mismatched = []
        if "lokr_w1" not in factors and factors["lokr_w1_a"].shape[1] != factors["lokr_w1_b"].shape[0]:
            mismatched.append("lokr_w1_a/lokr_w1_b")
        if "lokr_w2" not in factors:
            a, b, t2 = factors["lokr_w2_a"], factors["lokr_w2_b"], factors.get("lokr_t2")
            # Plain pair: a [out2, r] @ b [r, in2]; Tucker: core t2 [r1, r2, ...] with a [r1, out2] and b [r2, in2].
            if t2 is None and a.shape[1] != b.shape[0] or t2 is not None and (t2.dim() < 2 or (a.shape[0], b.shape[0]) != t2.shape[:2]):
                mismatched.append("lokr_w2_a/lokr_w2_b" + ("/lokr_t2" if t2 is not None else ""))
        if mismatched:
            shapes = ", ".join(f"{name} {tuple(factors[name].shape)}" for group in mismatched for name in group.split("/"))
            raise AdapterError(f"Adapter {path}: LoKR rank mismatch in {module}: {shapes}.")
        return LokrWeights(factors, stored_alpha(parts), output_magnitude(module, parts, path))



KIND = LokrKind()
