"""LoRA and DoRA (PEFT): settings, training on the decoder, the PEFT folder form, ΔW = scale · up @ down and ComfyUI's
`base_model.model.<module>.lora_A/.lora_B` + `.alpha` keys.

Trained with PEFT's `get_peft_model` on the decoder itself, so the keys read
`base_model.model.layers.0.self_attn.q_proj.lora_A.weight` (what ACE-Step's trainer writes and ComfyUI maps). Files
read: a PEFT folder (adapter_config.json + adapter_model.safetensors) and kohya/ComfyUI `.lora_down/.lora_up` files.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ...atomic import write_text_atomic
from ...errors import AdapterError
from ...settings import setting
from ..config import AdapterConfig, check_flag, check_positive_int, check_positive_number, is_number
from ..keys import ALPHA_PART, peft_name
from ..loaded import ModuleWeights
from .base import AdapterKind, TrainableAdapter, save_weights

PEFT_CONFIG_FILE = "adapter_config.json"
PEFT_WEIGHTS_FILE = "adapter_model.safetensors"


@dataclass(frozen=True, kw_only=True)
class LoraConfig(AdapterConfig):
    """A LoRA (PEFT): rank, alpha (scale = alpha / rank), dropout on the adapter's input, and DoRA.

    `rank_map` (from adaptive rank, `adaptive.RankMap`) gives each adapted module its own rank, as (module path, rank)
    pairs; the adapter then adapts exactly those modules, each at the scale alpha / rank.
    """

    kind: ClassVar[str] = "lora"
    rank: int = setting(64, help="LoRA rank: capacity of the adapter (16-128 is typical).", min=1, max=1024)
    alpha: float = setting(
        128, help="LoRA scaling: the update is multiplied by alpha / rank.", min=0.01, max=4096.0, step=1.0
    )
    dropout: float = setting(
        0.0, help="LoRA only: dropout on the adapter's input during training (0 = off).", min=0.0, max=0.9, step=0.01
    )
    use_dora: bool = setting(
        False, flags=("--dora",), node="weight_decompose",
        help=(
            "DoRA for LoRA / weight decomposition for LoKR and LoHA. Often better quality, but ComfyUI's native LoRA "
            "loader cannot reproduce it, so no models/loras export is written."
        ),
    )
    rank_map: tuple[tuple[str, int], ...] = ()

    def _check_settings(self) -> None:
        check_positive_int("rank", self.rank)
        check_positive_number("alpha", self.alpha)
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise AdapterError(f"Adapter setting dropout must be at least 0 and below 1, got {self.dropout!r}.")
        check_flag("use_dora", self.use_dora)
        entries = self.rank_map
        if not isinstance(entries, tuple) or not all(
            isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], str) and entry[0]
            and not isinstance(entry[1], bool) and isinstance(entry[1], int) and entry[1] > 0
            for entry in entries
        ):
            raise AdapterError(
                f"Adapter setting rank_map must be (module path, rank above 0) pairs, got {entries!r}. "
                "Run the rank analysis again to write a fresh map."
            )

    @property
    def decomposes_weight(self) -> bool:
        return self.use_dora

    def shape_signature(self) -> tuple:
        return (self.kind, self.rank, self.use_dora, self.target, tuple(self.custom_modules), self.rank_map)

    def describe(self) -> str:
        extra = " with DoRA" if self.use_dora else ""
        if self.rank_map:
            ranks = [rank for _, rank in self.rank_map]
            return (
                f"LoRA adaptive rank {min(ranks)}-{max(ranks)} on {len(ranks)} modules of {self._where()} "
                f"(scale alpha/rank {self.alpha:g}/{self.rank}){extra}"
            )
        return f"LoRA rank {self.rank}, alpha {self.alpha:g}{extra} on {self._where()}"

    def _settings(self) -> dict[str, Any]:
        mapped = {"rank_map": [list(entry) for entry in self.rank_map]} if self.rank_map else {}
        return {
            "rank": self.rank, "alpha": self.alpha, "dropout": self.dropout, "use_dora": self.use_dora,
            "linear_dim": self.rank, "linear_alpha": self.alpha, "factor": -1, "decompose_both": False,
            "use_tucker": False, "weight_decompose": False, **mapped,
        }


@dataclass(frozen=True)
class LoraWeights(ModuleWeights):
    """ΔW = scale · up @ down (PEFT: lora_B @ lora_A); `magnitude` [out] makes it DoRA."""

    kind: ClassVar[str] = "lora"
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
        return self.up.shape[0], self.down.shape[1]

    def delta(self, base: torch.Tensor | None = None) -> torch.Tensor:
        return self.scale * (self.up.float() @ self.down.float())

    def delta_x(self, device: torch.device) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        down, up = self.down.float().to(device), self.up.float().to(device)

        def delta_x(x: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
            return F.linear(F.linear(x, down.to(x.device, x.dtype)), up.to(x.device, x.dtype)) * self.scale

        return delta_x

    def comfy_tensors(self, module: str) -> dict[str, torch.Tensor]:
        # `.alpha` = scale · rank, so ComfyUI's alpha / rank reproduces the trained scale at strength 1.0.
        prefix = peft_name(module)
        return {
            f"{prefix}.lora_A.weight": self.down,
            f"{prefix}.lora_B.weight": self.up,
            f"{prefix}.alpha": torch.tensor(self.scale * self.rank, dtype=torch.float32),
        }


@cache
def _fused_lora_linear() -> type:
    """PEFT's LoRA layer for our Linear, with plain LoRA fused (built on first use, so PEFT loads only for training)."""
    from peft.tuners.lora.layer import Linear as PeftLoraLinear

    from ...model.layers import lora_linear

    class _FusedLoraLinear(PeftLoraLinear):
        """PEFT's LoRA layer on our Linear; plain LoRA (one adapter, no dropout, no DoRA, frozen base, no autocast) runs
        fused. Same parameters, names and results as PEFT's layer; only the arithmetic is done in fewer passes."""

        def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
            names = self.active_adapters
            if self.disable_adapters or self.merged or args or kwargs or len(names) != 1 or names[0] not in self.lora_A:
                return super().forward(x, *args, **kwargs)
            name, base = names[0], self.get_base_layer()
            lora_a, lora_b = self.lora_A[name].weight, self.lora_B[name].weight
            frozen = not base.weight.requires_grad and (base.bias is None or not base.bias.requires_grad)
            plain = name not in self.lora_variant and isinstance(self.lora_dropout[name], nn.Identity)
            if not (frozen and plain and x.dtype == lora_a.dtype) or torch.is_autocast_enabled(x.device.type):
                return super().forward(x, *args, **kwargs)
            return lora_linear(x, base.weight, base.bias, lora_a, lora_b, self.scaling[name], base.weight_scale)

    return _FusedLoraLinear


def peft_lora_config(config: LoraConfig, modules: list[str]):
    """The PEFT LoraConfig a LoRA trains with (its saved adapter_config.json is this, in inference mode)."""
    from peft import LoraConfig as PeftLoraConfig

    from ...model.layers import Linear
    from ..adaptive import peft_patterns

    peft_config = PeftLoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        use_dora=config.use_dora,
        target_modules=list(modules),
        bias="none",
        **peft_patterns(config),
    )
    peft_config._register_custom_module({Linear: _fused_lora_linear()})
    return peft_config


class LoraAdapter(TrainableAdapter):
    """LoRA / DoRA through PEFT's `get_peft_model` on the decoder (our Linear layers get the fused layer)."""

    def __init__(self, decoder: nn.Module, config: LoraConfig, modules: list[str]) -> None:
        from peft import get_peft_model

        from ..adaptive import mapped_modules

        modules = mapped_modules(config, modules)
        super().__init__(decoder, config, modules)
        self.peft_config = peft_lora_config(config, modules)
        self.peft_model = get_peft_model(decoder, self.peft_config)

    def parameters(self) -> list[nn.Parameter]:
        return [p for p in self.peft_model.parameters() if p.requires_grad]

    def state_dict(self) -> dict[str, torch.Tensor]:
        from peft import get_peft_model_state_dict

        return {key: value.detach() for key, value in get_peft_model_state_dict(self.peft_model).items()}

    def _load(self, state: Mapping[str, torch.Tensor]) -> None:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(self.peft_model, dict(state))

    def _header(self, metadata: Mapping[str, str]) -> dict[str, str]:
        return {**metadata, "format": "pt"}

    def save(self, folder: str | Path, metadata: Mapping[str, str]) -> Path:
        folder = save_weights(self, folder, PEFT_WEIGHTS_FILE, metadata)
        write_text_atomic(folder / PEFT_CONFIG_FILE, json.dumps(self._peft_config(), indent=2, sort_keys=True) + "\n")
        return folder

    def _peft_config(self) -> dict:
        config = self.peft_config.to_dict()
        config = {key: sorted(value) if isinstance(value, set) else value for key, value in config.items()}
        config["inference_mode"] = True
        return config


def _peft_config_problem(config: dict[str, Any]) -> str | None:
    """What is wrong with the settings of a PEFT config that loading uses (r, lora_alpha, alpha_pattern, use_rslora)."""
    if "r" in config and not is_number(config["r"], whole=True):
        return f'"r" is {config["r"]!r}, not a whole number above 0'
    if "lora_alpha" in config and not is_number(config["lora_alpha"]):
        return f'"lora_alpha" is {config["lora_alpha"]!r}, not a finite number above 0'
    if not isinstance(config.get("use_rslora", False), bool):
        return f'"use_rslora" is {config["use_rslora"]!r}, not true or false'
    patterns = config.get("alpha_pattern") or {}
    if not isinstance(patterns, dict):
        return f'"alpha_pattern" is {patterns!r}, not an object of module pattern → alpha'
    for key, value in patterns.items():
        try:
            re.compile(key)
        except re.error as error:
            return f'"alpha_pattern" key {key!r} is not a valid regular expression ({error})'
        if not is_number(value):
            return f'"alpha_pattern" gives {key!r} the alpha {value!r}, not a finite number above 0'
    return None


def _lora_scale(module: str, rank: int, parts: dict[str, torch.Tensor], config: dict[str, Any] | None) -> float:
    """Scale of one LoRA module: its `.alpha` / rank, else PEFT's lora_alpha / r (or / √r with rsLoRA), else 1."""
    if ALPHA_PART in parts:
        return float(parts[ALPHA_PART]) / rank
    if config is None:
        return 1.0
    # PEFT's alpha_pattern: a key matches a module whose path ends with it (keys may be regular expressions).
    patterns = config.get("alpha_pattern") or {}
    matched = [key for key in patterns if re.match(rf"(.*\.)?({key})$", module)]
    alpha = float(patterns[matched[0]] if matched else config.get("lora_alpha", 8))
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


class LoraKind(AdapterKind):
    name = "lora"
    config = LoraConfig
    weights_file = PEFT_WEIGHTS_FILE
    # PEFT names with and without the adapter name, kohya/ComfyUI lora_down/lora_up, PEFT's DoRA magnitude.
    parts = {
        "lora_A.weight": "down",
        "lora_A.default.weight": "down",
        "lora_down.weight": "down",
        "lora_B.weight": "up",
        "lora_B.default.weight": "up",
        "lora_up.weight": "up",
        "lora_magnitude_vector": "magnitude",
        "lora_magnitude_vector.weight": "magnitude",
        "lora_magnitude_vector.default.weight": "magnitude",
    }
    summary = "lora: low-rank update (PEFT); the default, loads everywhere (ACE-Step, ComfyUI)."

    def attach(self, decoder: nn.Module, config: AdapterConfig, modules: list[str]) -> TrainableAdapter:
        return LoraAdapter(decoder, config, modules)

    def folder_config(self, weights_path: Path) -> dict[str, Any] | None:
        """The PEFT adapter_config.json beside a PEFT weights file (checked), None when there is none."""
        config_path = weights_path.parent / PEFT_CONFIG_FILE
        if weights_path.name != PEFT_WEIGHTS_FILE or not config_path.is_file():
            return None
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as error:
            raise AdapterError(f"{config_path} is not valid JSON ({error}). Restore it from the training output.") from error
        if not isinstance(config, dict):
            raise AdapterError(f"{config_path} is not a PEFT adapter config. Restore it from the training output.")
        peft_type = str(config.get("peft_type", "LORA")).upper()
        if peft_type != "LORA":
            raise AdapterError(f"{config_path} describes a {peft_type} adapter; only PEFT LoRA folders are supported.")
        problem = _peft_config_problem(config)
        if problem:
            raise AdapterError(f"{config_path}: {problem}. Fix that value or restore the file from the training output.")
        return config

    def read_module(
        self, module: str, parts: dict[str, torch.Tensor], path: Path, peft_config: dict[str, Any] | None
    ) -> LoraWeights:
        if "dora_scale" in parts:
            raise AdapterError(
                f"Adapter {path}: {module} is a LoRA with a ComfyUI-style dora_scale, which is not supported. "
                "Use the PEFT DoRA folder the trainer wrote."
            )
        if "down" not in parts or "up" not in parts:
            raise AdapterError(f"Adapter {path}: module {module} has only one of its two LoRA matrices (A/down, B/up).")
        down, up = parts["down"], parts["up"]
        if down.dim() != 2 or up.dim() != 2:
            raise AdapterError(f"Adapter {path}: module {module} is not a Linear-layer LoRA (factor shapes {tuple(down.shape)}, {tuple(up.shape)}).")
        if down.shape[0] != up.shape[1]:
            raise AdapterError(
                f"Adapter {path}: LoRA rank mismatch in {module}: A/down has rank {down.shape[0]} but B/up has rank {up.shape[1]}."
            )
        magnitude = parts.get("magnitude")
        return LoraWeights(down, up, _lora_scale(module, down.shape[0], parts, peft_config), None if magnitude is None else magnitude.flatten())

    def declared(
        self, modules: dict[str, ModuleWeights], peft_config: dict[str, Any] | None, header: Mapping[str, str], path: Path
    ) -> tuple[int | None, float | None]:
        first = next(iter(modules.values()))
        if peft_config is not None:
            return peft_config.get("r", first.rank), float(peft_config.get("lora_alpha", 8))
        return first.rank, first.scale * first.rank

    def check_loaded(self, path: Path, peft_config: dict[str, Any] | None, modules: int, with_alpha: int) -> None:
        """AdapterError for a PEFT weights file whose scale is unknown (no adapter_config.json, not every `.alpha`)."""
        if peft_config is None and path.name == PEFT_WEIGHTS_FILE and with_alpha < modules:
            raise AdapterError(
                f"Adapter folder {path.parent} has {PEFT_WEIGHTS_FILE} but no {PEFT_CONFIG_FILE}, so its scale "
                f"(lora_alpha / r) is unknown and loading it would give the wrong strength. Put the {PEFT_CONFIG_FILE} "
                "saved with it back beside it."
            )


KIND = LoraKind()
