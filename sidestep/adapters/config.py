"""`AdapterConfig`: the one place for adapter kinds, hyper-parameter defaults, target presets and their validation."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from ..errors import AdapterError

KINDS = ("lora", "lokr")
ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_PROJECTIONS = ("gate_proj", "up_proj", "down_proj")
_SELF = tuple(f"self_attn.{name}" for name in ATTENTION_PROJECTIONS)
_CROSS = tuple(f"cross_attn.{name}" for name in ATTENTION_PROJECTIONS)
_MLP = tuple(f"mlp.{name}" for name in MLP_PROJECTIONS)

# Preset name → the Linear layers it adapts inside every DiT layer (`layers.<i>.<suffix>`).
TARGET_PRESETS: dict[str, tuple[str, ...]] = {
    "attention": _SELF + _CROSS,
    "attention_mlp": _SELF + _CROSS + _MLP,
    "self_attention": _SELF,
    "cross_attention": _CROSS,
}
CUSTOM_TARGET = "custom"


def _positive_int(name: str, value: Any) -> None:
    """Raise AdapterError unless `value` is a whole number above zero."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise AdapterError(f"Adapter setting {name} must be a whole number above 0, got {value!r}.")


def _positive_number(name: str, value: Any) -> None:
    """Raise AdapterError unless `value` is a finite number above zero."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise AdapterError(f"Adapter setting {name} must be a number above 0, got {value!r}.")


def _flag(name: str, value: Any) -> None:
    """Raise AdapterError unless `value` is True or False."""
    if not isinstance(value, bool):
        raise AdapterError(f"Adapter setting {name} must be true or false, got {value!r}.")


@dataclass(frozen=True)
class AdapterConfig:
    """What adapter to train and where.

    `kind` "lora" uses rank/alpha/dropout/use_dora (PEFT); "lokr" uses linear_dim/linear_alpha/factor/decompose_both/
    use_tucker/weight_decompose (LyCORIS); the other kind's fields are ignored. `use_tucker` only changes convolution
    layers in LyCORIS, so on the decoder's Linear targets it trains exactly like `use_tucker=False`.
    `target` is a preset from TARGET_PRESETS or "custom" with `custom_modules`, each entry a short name ("q_proj",
    every layer's self- and cross-attention q_proj), a block-qualified name ("self_attn.q_proj", "mlp.up_proj") or a
    full path relative to the decoder ("layers.0.self_attn.q_proj"); see `targets.target_modules`.
    """

    kind: str = "lora"
    rank: int = 64
    alpha: float = 128
    dropout: float = 0.0
    use_dora: bool = False
    linear_dim: int = 64
    linear_alpha: float = 128
    factor: int = -1
    decompose_both: bool = False
    use_tucker: bool = False
    weight_decompose: bool = False
    target: str = "attention"
    custom_modules: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise AdapterError(f"Adapter kind must be one of {', '.join(KINDS)}, got {self.kind!r}.")
        _positive_int("rank", self.rank)
        _positive_number("alpha", self.alpha)
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise AdapterError(f"Adapter setting dropout must be at least 0 and below 1, got {self.dropout!r}.")
        _positive_int("linear_dim", self.linear_dim)
        _positive_number("linear_alpha", self.linear_alpha)
        if isinstance(self.factor, bool) or not isinstance(self.factor, int) or (self.factor <= 0 and self.factor != -1):
            raise AdapterError(f"LoKR factor must be -1 (automatic) or a whole number above 0, got {self.factor!r}.")
        for name in ("use_dora", "decompose_both", "use_tucker", "weight_decompose"):
            _flag(name, getattr(self, name))
        self._check_target()

    def _check_target(self) -> None:
        """Validate the preset name and the custom module list (their existence is checked against a decoder later)."""
        choices = [*TARGET_PRESETS, CUSTOM_TARGET]
        if self.target not in choices:
            raise AdapterError(f"Adapter target must be one of {', '.join(choices)}, got {self.target!r}.")
        modules = self.custom_modules
        if isinstance(modules, str) or not all(isinstance(name, str) and name.strip() for name in modules):
            raise AdapterError(f"custom_modules must be a list of module names, got {modules!r}.")
        if self.target == CUSTOM_TARGET and not modules:
            raise AdapterError(
                "Adapter target 'custom' needs custom_modules, e.g. ['q_proj', 'v_proj'] or ['layers.0.self_attn.q_proj']."
            )
        if self.target != CUSTOM_TARGET and modules:
            raise AdapterError(
                f"custom_modules is only used with target 'custom', but target is {self.target!r}. "
                "Choose target 'custom' or clear custom_modules."
            )

    def shape_signature(self) -> tuple:
        """Everything that decides the trainable tensors' names and shapes (two configs with equal signatures resume)."""
        if self.kind == "lora":
            shape = (self.rank, self.use_dora)
        else:
            shape = (self.linear_dim, self.factor, self.decompose_both, self.weight_decompose)
        return (self.kind, *shape, self.target, tuple(self.custom_modules))

    def describe(self) -> str:
        """Short human description, e.g. 'LoRA rank 64, alpha 128 on attention'."""
        where = ", ".join(self.custom_modules) if self.target == CUSTOM_TARGET else self.target
        if self.kind == "lora":
            extra = " with DoRA" if self.use_dora else ""
            return f"LoRA rank {self.rank}, alpha {self.alpha:g}{extra} on {where}"
        extra = (", both factors decomposed" if self.decompose_both else "") + (
            ", weight-decomposed" if self.weight_decompose else ""
        )
        return f"LoKR dim {self.linear_dim}, alpha {self.linear_alpha:g}, factor {self.factor}{extra} on {where}"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict of every field."""
        data = asdict(self)
        data["custom_modules"] = list(self.custom_modules)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "AdapterConfig":
        """Build from `to_dict()` output; unknown keys raise AdapterError."""
        known = {field.name for field in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise AdapterError(f"Unknown adapter settings {unknown}; valid settings are {sorted(known)}.")
        values = dict(data)
        if "custom_modules" in values and not isinstance(values["custom_modules"], str):
            values["custom_modules"] = tuple(values["custom_modules"])
        return cls(**values)
