"""`LoraConfig` and `LokrConfig`: the one place for adapter kinds, hyper-parameter defaults, target presets and their
validation; both share `AdapterConfig`'s target selection."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from ..errors import AdapterError
from ..settings import setting

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
AUTO_FACTOR = -1  # LyCORIS's and the saved settings' spelling of an automatic LoKR factor


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
    target: str = setting(
        "attention", choices=(*TARGET_PRESETS, CUSTOM_TARGET),
        help=(
            "Which layers of every DiT block to adapt: attention (self + cross), attention_mlp, self_attention, "
            "cross_attention, or custom (see custom_modules)."
        ),
    )
    custom_modules: tuple[str, ...] = setting(
        (), flags=("--target-modules",),
        help=(
            "With target 'custom': layer names, e.g. 'q_proj, v_proj', 'cross_attn.o_proj' or "
            "'layers.0.self_attn.q_proj' (on the CLI they choose target custom)."
        ),
    )

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
    def from_dict(data: dict[str, Any]) -> AdapterConfig:
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
        if values.get("factor") == AUTO_FACTOR:
            values["factor"] = None
        return kinds[kind](**values)


@dataclass(frozen=True, kw_only=True)
class LoraConfig(AdapterConfig):
    """A LoRA (PEFT): rank, alpha (scale = alpha / rank), dropout on the adapter's input, and DoRA."""

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
            "DoRA for LoRA / weight decomposition for LoKR. Often better quality, but ComfyUI's native LoRA loader "
            "cannot reproduce it, so no models/loras export is written."
        ),
    )

    def _check_settings(self) -> None:
        _positive_int("rank", self.rank)
        _positive_number("alpha", self.alpha)
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise AdapterError(f"Adapter setting dropout must be at least 0 and below 1, got {self.dropout!r}.")
        _flag("use_dora", self.use_dora)

    @property
    def decomposes_weight(self) -> bool:
        return self.use_dora

    def shape_signature(self) -> tuple:
        return (self.kind, self.rank, self.use_dora, self.target, tuple(self.custom_modules))

    def describe(self) -> str:
        extra = " with DoRA" if self.use_dora else ""
        return f"LoRA rank {self.rank}, alpha {self.alpha:g}{extra} on {self._where()}"

    def _settings(self) -> dict[str, Any]:
        return {
            "rank": self.rank, "alpha": self.alpha, "dropout": self.dropout, "use_dora": self.use_dora,
            "linear_dim": self.rank, "linear_alpha": self.alpha, "factor": AUTO_FACTOR, "decompose_both": False,
            "use_tucker": False, "weight_decompose": False,
        }


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
        flags=("--lokr-factor",), node="lokr_factor",
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
        _positive_int("linear_dim", self.linear_dim)
        _positive_number("linear_alpha", self.linear_alpha)
        if self.factor is not None:
            _positive_int("factor", self.factor)
        for name in ("decompose_both", "use_tucker", "weight_decompose"):
            _flag(name, getattr(self, name))

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
