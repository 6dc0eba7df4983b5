"""OFT (LyCORIS diagonal OFT): settings, training on the decoder, `oft_weights.safetensors` with its settings in the
header, W' = R·W with R block-diagonal orthogonal (so ΔW = (R − I)·W depends on the base weight) and ComfyUI's
`lycoris_<module>.oft_blocks` + `.alpha` keys.

Each block of `block_size` output rows is rotated by the Cayley transform R = (I + Q)(I − Q)⁻¹ of Q = B − Bᵀ, as both
LyCORIS (training) and ComfyUI's `weight_adapter/oft.py` compute it, so the blocks go out unchanged. Only the plain
form is trained and read: no norm constraint (LyCORIS stores it relative to the layer's width, ComfyUI reads it as
absolute) and no rescale (ComfyUI's weight patch leaves it out), so both loaders agree on every file we accept.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from ...errors import AdapterError
from ...settings import setting
from ..config import AdapterConfig, check_positive_int
from ..keys import ALPHA_PART, first_few
from ..loaded import ModuleWeights
from .base import TrainableAdapter, declared_number, lycoris_metadata
from .lycoris import LycorisAdapter, LycorisKind, comfy_tensors

OFT_WEIGHTS_FILE = "oft_weights.safetensors"
OFT_CONFIG_KEY = "oft_config"


@dataclass(frozen=True, kw_only=True)
class OftConfig(AdapterConfig):
    """An OFT (LyCORIS diag-oft): the size of the output blocks each rotated by one orthogonal matrix."""

    kind: ClassVar[str] = "oft"
    block_size: int = setting(
        32,
        help="OFT block size: output rows rotated together (LyCORIS uses min(size, out_features / size) when it "
        "divides); larger blocks adapt more freely, with size² / 2 parameters per block",
        min=2, max=1024, flags=("--oft-block-size",), node="oft_block_size",
    )

    def _check_settings(self) -> None:
        check_positive_int("block_size", self.block_size)
        if self.block_size < 2:
            raise AdapterError(f"OFT block_size must be 2 or more (a 1x1 rotation changes nothing), got {self.block_size}.")

    @property
    def decomposes_weight(self) -> bool:
        return False

    def shape_signature(self) -> tuple:
        return (self.kind, self.block_size, self.target, tuple(self.custom_modules))

    def describe(self) -> str:
        return f"OFT block size {self.block_size} on {self._where()}"

    def _settings(self) -> dict[str, Any]:
        return {"block_size": self.block_size}


def _rotation(blocks: torch.Tensor) -> torch.Tensor:
    """R = (I + Q)(I − Q)⁻¹ per block, Q = B − Bᵀ, in fp32 (LyCORIS' and ComfyUI's Cayley transform)."""
    blocks = blocks.float()
    eye = torch.eye(blocks.shape[-1], device=blocks.device)
    q = blocks - blocks.transpose(1, 2)
    return (eye + q) @ (eye - q).inverse()


@dataclass(frozen=True)
class OftWeights(ModuleWeights):
    """Block-diagonal orthogonal R from `blocks` [n, size, size]: W' = R·W per block of output rows, ΔW = (R − I)·W.
    `alpha` is the stored (zero) constraint, kept so the file's `.alpha` goes back out as it came."""

    kind: ClassVar[str] = "oft"
    needs_base_output: ClassVar[bool] = True
    blocks: torch.Tensor
    alpha: float | None = None
    magnitude: torch.Tensor | None = None
    scale: float = 1.0

    @property
    def rank(self) -> int:
        """The block size."""
        return self.blocks.shape[1]

    @property
    def shape(self) -> tuple[int, int | None]:
        """(out_features, None): a rotation fits any input width."""
        return self.blocks.shape[0] * self.blocks.shape[1], None

    def fits(self, shape: tuple[int, int]) -> bool:
        return shape[0] == self.shape[0]

    def _minus_identity(self, device: torch.device | None = None) -> torch.Tensor:
        """R − I per block [n, size, size] in fp32."""
        r = _rotation(self.blocks.to(device))
        return r - torch.eye(r.shape[-1], device=r.device)

    def delta(self, base: torch.Tensor | None = None) -> torch.Tensor:
        if base is None:
            raise AdapterError("An OFT module's weight change depends on the layer's weight; pass it as `base`.")
        n, size = self.blocks.shape[:2]
        # The same contraction as LyCORIS and ComfyUI: W'[k, m] = Σ_n R[k, n, m] · W[k, n].
        return torch.einsum("knm,kni->kmi", self._minus_identity(base.device), base.float().view(n, size, -1)).reshape(base.shape)

    def delta_x(self, device: torch.device) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        minus_identity = self._minus_identity(device)

        def delta_x(_: torch.Tensor, base_out: torch.Tensor) -> torch.Tensor:
            blocks = base_out.unflatten(-1, minus_identity.shape[:2])
            return torch.einsum("knm,...kn->...km", minus_identity.to(base_out.dtype), blocks).flatten(-2)

        return delta_x

    def comfy_tensors(self, module: str) -> dict[str, torch.Tensor]:
        return comfy_tensors(module, {"oft_blocks": self.blocks}, self.alpha)


class OftKind(LycorisKind):
    name = "oft"
    config = OftConfig
    config_key = OFT_CONFIG_KEY
    weights_file = OFT_WEIGHTS_FILE
    parts = {"oft_blocks": "oft_blocks", "rescale": "rescale"}
    summary = (
        "oft: orthogonal rotation of each layer's output blocks (LyCORIS); keeps the weights' norms and angles, so it "
        "drifts least from the base model: for subtle styles and long trainings."
    )

    def attach(self, decoder: nn.Module, config: AdapterConfig, modules: list[str]) -> TrainableAdapter:
        # LyCORIS' bypass mode rotates the layer's whole output, bias included, while a weight patch rotates W only.
        with_bias = [name for name in modules if getattr(decoder.get_submodule(name), "bias", None) is not None]
        if with_bias:
            raise AdapterError(
                f"OFT cannot adapt layers with a bias ({first_few(with_bias)}): their rotation would differ between "
                "training and ComfyUI. Leave them out of custom_modules, or choose another adapter kind."
            )
        network = {"linear_dim": config.block_size, "linear_alpha": 1.0, "algo": "diag-oft", "constraint": 0, "bypass_mode": True}
        stored = {"algo": "diag-oft", "block_size": config.block_size, "constraint": 0, "rescaled": False, "bypass_mode": True}
        return LycorisAdapter(decoder, config, modules, network, stored, OFT_CONFIG_KEY, OFT_WEIGHTS_FILE)

    def read_module(
        self, module: str, parts: dict[str, torch.Tensor], path: Path, peft_config: dict[str, Any] | None
    ) -> OftWeights:
        if "rescale" in parts:
            raise AdapterError(
                f"Adapter {path}: {module} is an OFT with rescale, which ComfyUI's loader leaves out; it is not supported."
            )
        blocks = parts.get("oft_blocks")
        if blocks is None or blocks.dim() != 3 or blocks.shape[1] != blocks.shape[2]:
            found = "none" if blocks is None else tuple(blocks.shape)
            raise AdapterError(f"Adapter {path}: OFT module {module} needs oft_blocks of shape [blocks, size, size] (found {found}).")
        alpha = float(parts[ALPHA_PART]) if ALPHA_PART in parts else None
        if alpha:
            raise AdapterError(
                f"Adapter {path}: {module} is a constrained OFT (alpha {alpha:g}); LyCORIS and ComfyUI read that "
                "constraint differently, so it is not supported. Train it without a constraint."
            )
        return OftWeights(blocks, alpha)

    def declared(
        self, modules: dict[str, ModuleWeights], peft_config: dict[str, Any] | None, header: Mapping[str, str], path: Path
    ) -> tuple[int | None, float | None]:
        size = declared_number(lycoris_metadata(header, OFT_CONFIG_KEY, path), "block_size", OFT_CONFIG_KEY, path, whole=True)
        return (next(iter(modules.values())).rank if size is None else size), None


KIND = OftKind()
