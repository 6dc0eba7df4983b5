"""What an adapter kind plugs in: `AdapterKind` (settings, attaching for training, reading its files) and
`TrainableAdapter` (the form attached to the decoder while it trains). Each kind's module under `kinds/` implements
both, with its `ModuleWeights` (ΔW, ComfyUI keys) and its settings dataclass; `kinds/__init__.py` registers them."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from ...atomic import save_safetensors_atomic
from ...errors import AdapterError
from ..config import AdapterConfig, is_number
from ..keys import ALPHA_PART, first_few
from ..loaded import LoadedAdapter, ModuleWeights


class TrainableAdapter(ABC):
    """An adapter attached to a decoder for training: its parameters, resumable weights, saving, a LoadedAdapter copy."""

    def __init__(self, decoder: nn.Module, config: AdapterConfig, modules: list[str]) -> None:
        self.decoder = decoder
        self.config = config
        self.modules = modules
        decoder.requires_grad_(False)

    @abstractmethod
    def parameters(self) -> list[nn.Parameter]:
        """The trainable adapter parameters (nothing of the base model)."""

    @abstractmethod
    def state_dict(self) -> dict[str, torch.Tensor]:
        """The adapter weights under the names they are saved with (detached, sharing storage)."""

    @abstractmethod
    def _load(self, state: Mapping[str, torch.Tensor]) -> None:
        """Copy already-checked weights into the adapter."""

    @abstractmethod
    def _header(self, metadata: Mapping[str, str]) -> dict[str, str]:
        """The safetensors header of the weights file: `metadata` plus what loading needs."""

    @abstractmethod
    def save(self, folder: str | Path, metadata: Mapping[str, str]) -> Path:
        """Write the adapter files into `folder` (atomically, `metadata` in the safetensors header); returns the folder."""

    def loaded(self, source: Path, metadata: Mapping[str, str] | None = None) -> LoadedAdapter:
        """A snapshot of the current weights as a LoadedAdapter (what saving to `source` and loading it back gives)."""
        from ..files import adapter_from_tensors

        tensors = {key: value.detach().to("cpu", copy=True) for key, value in self.state_dict().items()}
        return adapter_from_tensors(tensors, self._header(metadata or {}), Path(source), self._peft_config())

    def _peft_config(self) -> dict | None:
        """The PEFT adapter_config.json saved beside the weights (LoRA only)."""
        return None

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore weights from `state_dict()` output (for resume); AdapterError naming missing/extra/misshaped keys."""
        own = self.state_dict()
        problems = [f"missing {key}" for key in own if key not in state]
        problems += [f"unexpected {key}" for key in state if key not in own]
        problems += [
            f"{key} {tuple(state[key].shape)} instead of {tuple(own[key].shape)}"
            for key in own
            if key in state and tuple(state[key].shape) != tuple(own[key].shape)
        ]
        if problems:
            raise AdapterError(
                f"Saved adapter weights do not fit this {self.config.describe()}: {first_few(problems)}."
            )
        self._load(state)


class AdapterKind(ABC):
    """One adapter kind as the rest of the code asks for it: its name, settings class, Side-Step weights file, the
    tensor-key suffixes that make it, how it attaches for training and how one module of its files is read."""

    name: ClassVar[str]
    config: ClassVar[type[AdapterConfig]]
    weights_file: ClassVar[str]
    # Tensor-key suffix (after "<module>.") → the part's name; "alpha" is shared by every kind and not listed.
    parts: ClassVar[Mapping[str, str]]
    # Parts that may sit beside another kind's (LyCORIS weight decomposition), so they do not name the kind.
    shared_parts: ClassVar[frozenset[str]] = frozenset()
    # When to pick the kind: one sentence for the Configure node's tooltip and `--help`.
    summary: ClassVar[str]

    def owns(self, parts: Mapping[str, torch.Tensor]) -> bool:
        """True when a module's parts include one that only this kind has."""
        return any(part in parts for part in set(self.parts.values()) - self.shared_parts)

    @abstractmethod
    def attach(self, decoder: nn.Module, config: AdapterConfig, modules: list[str]) -> TrainableAdapter:
        """A fresh trainable adapter of this kind on exactly `modules` (paths inside `decoder`)."""

    def folder_config(self, weights_path: Path) -> dict[str, Any] | None:
        """A settings file the kind keeps beside its weights file (PEFT's adapter_config.json), checked; None when none."""
        return None

    @abstractmethod
    def read_module(
        self, module: str, parts: dict[str, torch.Tensor], path: Path, peft_config: dict[str, Any] | None
    ) -> ModuleWeights:
        """One module's weights from its parts, checked (AdapterError naming `path` and the module)."""

    @abstractmethod
    def declared(
        self, modules: dict[str, ModuleWeights], peft_config: dict[str, Any] | None, header: Mapping[str, str], path: Path
    ) -> tuple[int | None, float | None]:
        """The (rank, alpha) the adapter declares: its metadata (checked, AdapterError naming `path`), else read off
        its first module."""

    def check_loaded(self, path: Path, peft_config: dict[str, Any] | None, modules: int, with_alpha: int) -> None:
        """AdapterError when a file read from `path` cannot be used as it is (`with_alpha` of `modules` carry `.alpha`)."""


def stored_alpha(parts: Mapping[str, torch.Tensor]) -> float | None:
    """The module's `.alpha` value, None when it has none."""
    return float(parts[ALPHA_PART]) if ALPHA_PART in parts else None


def lycoris_metadata(header: Mapping[str, str], key: str, path: Path) -> dict[str, Any]:
    """The hyper-parameters a LyCORIS kind stored as JSON under `key` in the header ({} when absent); AdapterError
    naming `path` when it is not a JSON object."""
    raw = header.get(key)
    if not raw:
        return {}
    try:
        config = json.loads(raw)
    except (ValueError, RecursionError) as error:
        raise AdapterError(f"Adapter {path}: its {key} metadata is not valid JSON ({error}). Re-save or re-export it.") from error
    if not isinstance(config, dict):
        raise AdapterError(f"Adapter {path}: its {key} metadata is not a JSON object. Re-save or re-export it.")
    return config


def declared_number(config: Mapping[str, Any], name: str, key: str, path: Path, whole: bool = False) -> Any:
    """`config[name]` when it is a finite number above 0 (whole when `whole`), None when absent; AdapterError naming
    `path` and the value otherwise."""
    if name not in config:
        return None
    value = config[name]
    if not is_number(value, whole):
        what = "a whole number above 0" if whole else "a finite number above 0"
        raise AdapterError(
            f"Adapter {path}: its {key} metadata gives {name} = {value!r}, not {what}. "
            "Fix that value or re-save the adapter from its training run."
        )
    return value


def save_weights(adapter: TrainableAdapter, folder: str | Path, name: str, metadata: Mapping[str, str]) -> Path:
    """Write `adapter`'s weights as `folder/name` with its header (atomically); returns the folder."""
    folder = Path(folder)
    save_safetensors_atomic(adapter.state_dict(), folder / name, adapter._header(metadata))
    return folder
