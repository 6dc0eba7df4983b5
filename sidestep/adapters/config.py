"""`LoraConfig` and `LokrConfig`: the one place for adapter kinds, hyper-parameter defaults, target presets and their
validation; both share `AdapterConfig`'s target selection."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from typing import Any, ClassVar

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


@dataclass(frozen=True, kw_only=True)
class AdapterConfig(ABC):
    """Which of the decoder's Linear layers an adapter adapts; `LoraConfig` and `LokrConfig` add their own settings.

    `target` is a preset from TARGET_PRESETS or "custom" with `custom_modules`, each entry a short name ("q_proj",
    every layer's self- and cross-attention q_proj), a block-qualified name ("self_attn.q_proj", "mlp.up_proj") or a
    full path relative to the decoder ("layers.0.self_attn.q_proj"); see `targets.target_modules`.
    """

    kind: ClassVar[str]
    target: str = "attention"
    custom_modules: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self._check_settings()
        self._check_target()

    @abstractmethod
    def _check_settings(self) -> None:
        """Validate the kind's own settings."""

    @abstractmethod
    def shape_signature(self) -> tuple:
        """Everything that decides the trainable tensors' names and shapes (two configs with equal signatures resume)."""

    @abstractmethod
    def describe(self) -> str:
        """Short human description, e.g. 'LoRA rank 64, alpha 128 on attention'."""

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

    @property
    @abstractmethod
    def decomposes_weight(self) -> bool:
        """True for DoRA / LyCORIS weight decomposition, which ComfyUI's LoRA loader cannot reproduce."""

    def _where(self) -> str:
        """The target preset, or the custom modules, for descriptions."""
        return ", ".join(self.custom_modules) if self.target == CUSTOM_TARGET else self.target

    @abstractmethod
    def _settings(self) -> dict[str, Any]:
        """Both kinds' settings in the saved order (the other kind's as the Configure node always wrote them)."""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict: kind, both kinds' settings (the same keys as before the kinds were split), target."""
        return {"kind": self.kind, **self._settings(), "target": self.target, "custom_modules": list(self.custom_modules)}

    @staticmethod
    def from_dict(data: dict[str, Any]) -> "AdapterConfig":
        """Build a LoraConfig or LokrConfig from `to_dict()` output (by "kind", default lora); the other kind's
        settings are ignored; unknown keys or kinds raise AdapterError."""
        kinds = {config.kind: config for config in (LoraConfig, LokrConfig)}
        known = {"kind", *(field.name for config in kinds.values() for field in fields(config))}
        unknown = sorted(set(data) - known)
        if unknown:
            raise AdapterError(f"Unknown adapter settings {unknown}; valid settings are {sorted(known)}.")
        kind = data.get("kind", "lora")
        if kind not in kinds:
            raise AdapterError(f"Adapter kind must be one of {', '.join(KINDS)}, got {kind!r}.")
        own = {field.name for field in fields(kinds[kind])}
        values = {key: value for key, value in data.items() if key in own}
        if "custom_modules" in values and not isinstance(values["custom_modules"], str):
            values["custom_modules"] = tuple(values["custom_modules"])
        if isinstance(values.get("rank_map"), list):
            values["rank_map"] = tuple(tuple(entry) if isinstance(entry, list) else entry for entry in values["rank_map"])
        return kinds[kind](**values)


@dataclass(frozen=True, kw_only=True)
class LoraConfig(AdapterConfig):
    """A LoRA (PEFT): rank, alpha (scale = alpha / rank), dropout on the adapter's input, and DoRA.

    `rank_map` (from adaptive rank, `adaptive.RankMap`) gives each adapted module its own rank, as (module path, rank)
    pairs; the adapter then adapts exactly those modules, each at the scale alpha / rank.
    """

    kind: ClassVar[str] = "lora"
    rank: int = 64
    alpha: float = 128
    dropout: float = 0.0
    use_dora: bool = False
    rank_map: tuple[tuple[str, int], ...] = ()

    def _check_settings(self) -> None:
        _positive_int("rank", self.rank)
        _positive_number("alpha", self.alpha)
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise AdapterError(f"Adapter setting dropout must be at least 0 and below 1, got {self.dropout!r}.")
        _flag("use_dora", self.use_dora)
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


@dataclass(frozen=True, kw_only=True)
class LokrConfig(AdapterConfig):
    """A LoKR (LyCORIS): linear_dim/linear_alpha, the Kronecker factor (-1 automatic), decompose_both, use_tucker and
    weight decomposition. `use_tucker` only changes convolution layers in LyCORIS, so on the decoder's Linear targets
    it trains exactly like `use_tucker=False`."""

    kind: ClassVar[str] = "lokr"
    linear_dim: int = 64
    linear_alpha: float = 128
    factor: int = -1
    decompose_both: bool = False
    use_tucker: bool = False
    weight_decompose: bool = False

    def _check_settings(self) -> None:
        _positive_int("linear_dim", self.linear_dim)
        _positive_number("linear_alpha", self.linear_alpha)
        if isinstance(self.factor, bool) or not isinstance(self.factor, int) or (self.factor <= 0 and self.factor != -1):
            raise AdapterError(f"LoKR factor must be -1 (automatic) or a whole number above 0, got {self.factor!r}.")
        for name in ("decompose_both", "use_tucker", "weight_decompose"):
            _flag(name, getattr(self, name))

    @property
    def decomposes_weight(self) -> bool:
        return self.weight_decompose

    def shape_signature(self) -> tuple:
        shape = (self.linear_dim, self.factor, self.decompose_both, self.weight_decompose)
        return (self.kind, *shape, self.target, tuple(self.custom_modules))

    def describe(self) -> str:
        extra = (", both factors decomposed" if self.decompose_both else "") + (
            ", weight-decomposed" if self.weight_decompose else ""
        )
        return f"LoKR dim {self.linear_dim}, alpha {self.linear_alpha:g}, factor {self.factor}{extra} on {self._where()}"

    def _settings(self) -> dict[str, Any]:
        return {
            "rank": self.linear_dim, "alpha": self.linear_alpha, "dropout": 0.0, "use_dora": False,
            "linear_dim": self.linear_dim, "linear_alpha": self.linear_alpha, "factor": self.factor,
            "decompose_both": self.decompose_both, "use_tucker": self.use_tucker, "weight_decompose": self.weight_decompose,
        }
