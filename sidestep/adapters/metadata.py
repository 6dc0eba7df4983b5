"""`AdapterMetadata`: what an adapter records about its training, typed, and its safetensors-header form.

The header keys are namespaced in kohya's `ss_*` style (`ss_variant`, `ss_shift`, `ss_epoch`, `ss_steps`, ...);
`from_header` also reads the bare keys (`variant`, `shift`, `epochs`, ...) that older Side-Step adapters carry.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import AdapterError
from .config import AdapterConfig

# Field → (header key written, bare key older adapters carry).
_KEYS = {
    "sidestep_version": ("ss_sidestep_version", "sidestep_version"),
    "model_name": ("ss_model_name", "model_name"),
    "variant": ("ss_variant", "variant"),
    "base": ("ss_base", "base"),
    "shift": ("ss_shift", "shift"),
    "num_inference_steps": ("ss_num_inference_steps", "num_inference_steps"),
    "dataset_hash": ("ss_dataset_hash", "dataset_hash"),
    "epochs": ("ss_epoch", "epochs"),
    "global_step": ("ss_steps", "global_step"),
    "timestep_mode": ("ss_timestep_mode", "timestep_mode"),
    "cfg_ratio": ("ss_cfg_ratio", "cfg_ratio"),
    "adapter_config": ("ss_adapter_config", "adapter_config"),
    "train_config": ("ss_train_config", "train_config"),
    "validation": ("ss_validation", "validation"),
}
_JSON = ("train_config", "validation")
_FLOATS = ("shift", "cfg_ratio")
_INTS = ("num_inference_steps", "epochs", "global_step")
_ABOVE_ZERO = ("shift", "num_inference_steps")


@dataclass(frozen=True)
class AdapterMetadata:
    """The model an adapter was trained on (name, variant, base), how to sample it (shift, steps), the data and the
    settings; None / "" where unknown. `notes` lists header values that could not be read (not written back)."""

    sidestep_version: str = ""
    model_name: str = ""
    variant: str = ""
    base: str = ""
    shift: float | None = None
    num_inference_steps: int | None = None
    dataset_hash: str = ""
    epochs: int | None = None
    global_step: int | None = None
    timestep_mode: str = ""
    cfg_ratio: float | None = None
    adapter_config: AdapterConfig | None = None
    train_config: dict[str, Any] | None = None
    # The validation loss record: the scored songs, these weights' epoch and loss, the best epoch, the history.
    validation: dict[str, Any] | None = None
    notes: tuple[str, ...] = field(default=(), compare=False)

    def to_header(self) -> dict[str, str]:
        """The namespaced string entries for a safetensors header (unknown values left out)."""
        header = {}
        for name, (key, _) in _KEYS.items():
            value = getattr(self, name)
            if value is None or value == "":
                continue
            if name == "adapter_config":
                value = json.dumps(value.to_dict())
            elif name in _JSON:
                value = json.dumps(value)
            header[key] = str(value)
        return header

    @classmethod
    def from_header(cls, header: Mapping[str, str]) -> AdapterMetadata:
        """Read a safetensors header (namespaced keys first, then the bare ones); unreadable values become None and
        a note."""
        values: dict[str, Any] = {}
        notes: list[str] = []
        for name, (key, bare) in _KEYS.items():
            raw = header.get(key, header.get(bare))
            if raw is None or raw == "":
                continue
            value = _parse(name, raw)
            if value is None:
                notes.append(f"Ignored the adapter's unreadable {bare} value {raw!r}.")
            else:
                values[name] = value
        return cls(**values, notes=tuple(notes))

    def mismatch_warnings(self, name: str, variant: str | None, base: str | None, is_turbo: bool | None) -> list[str]:
        """One note per difference from the model (`base` unknown: its is_turbo is used): the base (turbo/base/sft),
        and the variant where it says more than the base (e.g. xl-turbo against turbo)."""
        notes = []
        same_as_base = self.variant == self.base and variant == base
        if variant and self.variant and self.variant != variant and not same_as_base:
            notes.append(f"Adapter {name} was trained on variant {self.variant}, this model is {variant}.")
        advice = " Expect poor audio; load the matching model."
        if base and self.base and self.base != base:
            notes.append(f"Adapter {name} was trained on a {self.base} model, this model is {base}.{advice}")
        elif not base and self.base and is_turbo is not None and (self.base == "turbo") != is_turbo:
            model_kind = "turbo" if is_turbo else "non-turbo (base/sft)"
            notes.append(f"Adapter {name} was trained on a {self.base} model, this model is {model_kind}.{advice}")
        return notes


def _parse(name: str, raw: str) -> Any:
    """One header value as its field's type, or None when it cannot be read as one."""
    if name in _FLOATS or name in _INTS:
        try:
            number = float(raw)
        except (TypeError, ValueError):
            return None
        if not math.isfinite(number) or number < 0 or (name in _ABOVE_ZERO and number == 0):
            return None
        if name in _INTS:
            return int(number) if number.is_integer() else None
        return number
    if name == "adapter_config" or name in _JSON:
        try:
            data = json.loads(raw)
            return AdapterConfig.from_dict(data) if name == "adapter_config" else (data if isinstance(data, dict) else None)
        except (ValueError, TypeError, AttributeError, RecursionError, AdapterError):
            return None
    return str(raw)
