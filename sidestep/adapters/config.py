"""`AdapterConfig`: what every adapter kind's settings share (target selection, validation helpers, the saved dict form).

Each kind's own settings dataclass lives in its module under `kinds/` (`LoraConfig` in `kinds/lora.py`, ...); the
registry there (`kinds.KINDS`) is where the rest of the code finds them."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from ..errors import AdapterError
from ..settings import declared, setting

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


def is_number(value: Any, whole: bool = False) -> bool:
    """A finite number above 0 (a whole one when `whole`); booleans are not numbers."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (whole and not isinstance(value, int)):
        return False
    return math.isfinite(value) and value > 0


def check_positive_int(name: str, value: Any) -> None:
    """Raise AdapterError unless `value` is a whole number above zero."""
    if not is_number(value, whole=True):
        raise AdapterError(f"Adapter setting {name} must be a whole number above 0, got {value!r}.")


def check_positive_number(name: str, value: Any) -> None:
    """Raise AdapterError unless `value` is a finite number above zero."""
    if not is_number(value):
        raise AdapterError(f"Adapter setting {name} must be a number above 0, got {value!r}.")


def check_flag(name: str, value: Any) -> None:
    """Raise AdapterError unless `value` is True or False."""
    if not isinstance(value, bool):
        raise AdapterError(f"Adapter setting {name} must be true or false, got {value!r}.")


@dataclass(frozen=True, kw_only=True)
class AdapterConfig(ABC):
    """Which of the decoder's Linear layers an adapter adapts; each kind's config adds its own settings.

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
        """The kind's settings in the saved order (LoRA and LoKR also write each other's, as they always did)."""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict: kind, the kind's settings, target."""
        return {"kind": self.kind, **self._settings(), "target": self.target, "custom_modules": list(self.custom_modules)}

    @staticmethod
    def from_dict(data: dict[str, Any]) -> AdapterConfig:
        """Build the kind's config from `to_dict()` output (by "kind", default lora); other kinds' settings are
        ignored; unknown keys or kinds raise AdapterError."""
        from .kinds import KINDS, kind_named

        known = {"kind", *(field.name for kind in KINDS.values() for field in fields(kind.config))}
        unknown = sorted(set(data) - known)
        if unknown:
            raise AdapterError(f"Unknown adapter settings {unknown}; valid settings are {sorted(known)}.")
        config = kind_named(data.get("kind", "lora")).config
        own = {field.name for field in fields(config)}
        values = {key: _frozen(value) for key, value in data.items() if key in own}  # JSON lists as tuples
        for name, (_, declaration) in declared(config).items():
            if name in values and not isinstance(values[name], (bool, list)) and values[name] in declaration.none_aliases:
                values[name] = None  # a saved spelling of auto (e.g. LoKR's factor -1)
        return config(**values)


def _frozen(value: Any) -> Any:
    """A JSON list (of lists) as the tuples a frozen settings object holds."""
    return tuple(_frozen(item) for item in value) if isinstance(value, list) else value


def __getattr__(name: str) -> Any:
    """The kinds' names and configs as this module always offered them (`KINDS`, `LoraConfig`, `LokrConfig`, ...)."""
    from . import kinds

    if name == "KINDS":
        return tuple(kinds.KINDS)
    configs = {kind.config.__name__: kind.config for kind in kinds.KINDS.values()}
    if name in configs:
        return configs[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
