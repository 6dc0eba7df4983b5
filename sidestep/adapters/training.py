"""Attach a trainable LoRA (PEFT) or LoKR (LyCORIS) adapter to the DiT decoder, save it, and take it off again.

Base weights are frozen and never written to. LoRA is PEFT applied to the decoder itself, so its keys read
`base_model.model.layers.0.self_attn.q_proj.lora_A.weight` (what ACE-Step's trainer writes and ComfyUI maps);
LoKR is a LyCORIS network restricted to exactly the target Linear layers, keys `lycoris_layers_0_self_attn_q_proj.*`.
Both keep working under the decoder's own gradient checkpointing.
"""

from __future__ import annotations

import json
import logging
import sys
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
from lycoris import LycorisNetwork, create_lycoris
from peft import LoraConfig as PeftLoraConfig
from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from peft.tuners.lora.layer import Linear as PeftLoraLinear
from torch import nn

from ..atomic import save_safetensors_atomic, write_text_atomic
from ..errors import AdapterError
from ..model.layers import Linear, lora_linear
from .config import AdapterConfig, LokrConfig, LoraConfig
from .files import adapter_from_tensors
from .loaded import LoadedAdapter
from .keys import LOKR_CONFIG_KEY, LOKR_WEIGHTS_FILE, PEFT_CONFIG_FILE, PEFT_WEIGHTS_FILE, first_few, lycoris_name
from .targets import target_modules


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


class _FusedLoraLinear(PeftLoraLinear):
    """PEFT's LoRA layer on our Linear; plain LoRA (one adapter, no dropout, no DoRA, frozen base, no autocast) runs fused.

    Same parameters, names and results as PEFT's layer; only the arithmetic is done in fewer passes (`lora_linear`).
    """

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


class LoraAdapter(TrainableAdapter):
    """LoRA / DoRA through PEFT's `get_peft_model` on the decoder (our Linear layers get `_FusedLoraLinear`)."""

    def __init__(self, decoder: nn.Module, config: LoraConfig, modules: list[str]) -> None:
        super().__init__(decoder, config, modules)
        self.peft_config = PeftLoraConfig(
            r=config.rank,
            lora_alpha=config.alpha,
            lora_dropout=config.dropout,
            use_dora=config.use_dora,
            target_modules=list(modules),
            bias="none",
        )
        self.peft_config._register_custom_module({Linear: _FusedLoraLinear})
        self.peft_model = get_peft_model(decoder, self.peft_config)

    def parameters(self) -> list[nn.Parameter]:
        return [p for p in self.peft_model.parameters() if p.requires_grad]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {key: value.detach() for key, value in get_peft_model_state_dict(self.peft_model).items()}

    def _load(self, state: Mapping[str, torch.Tensor]) -> None:
        set_peft_model_state_dict(self.peft_model, dict(state))

    def _header(self, metadata: Mapping[str, str]) -> dict[str, str]:
        return {**metadata, "format": "pt"}

    def save(self, folder: str | Path, metadata: Mapping[str, str]) -> Path:
        folder = Path(folder)
        save_safetensors_atomic(self.state_dict(), folder / PEFT_WEIGHTS_FILE, self._header(metadata))
        write_text_atomic(folder / PEFT_CONFIG_FILE, json.dumps(self._peft_config(), indent=2, sort_keys=True) + "\n")
        return folder

    def _peft_config(self) -> dict:
        config = self.peft_config.to_dict()
        config = {key: sorted(value) if isinstance(value, set) else value for key, value in config.items()}
        config["inference_mode"] = True
        return config


@contextmanager
def _plain_lycoris_log() -> Iterator[None]:
    """LyCORIS' warnings as plain text (its own handler writes colour codes into log files), without its chatter.

    Dropped as well: "lora_dim N is too large ... using full matrix mode", which LyCORIS prints for the usual LoKR
    settings (dimension 64, automatic factor) on every model size, the 2.4 B one included: it is how LoKR runs here.
    """
    from lycoris.logging import logger

    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("LyCORIS %(levelname)s: %(message)s"))
    handler.addFilter(lambda record: record.levelno >= logging.WARNING and "using full matrix mode" not in record.getMessage())
    saved, logger.handlers = logger.handlers, [handler]
    try:
        yield
    finally:
        logger.handlers = saved


# The class attributes LycorisNetwork.apply_preset sets: LyCORIS keeps its target selection on the class.
_LYCORIS_PRESET_ATTRIBUTES = (
    "ENABLE_CONV", "TARGET_REPLACE_MODULE", "TARGET_REPLACE_NAME", "MODULE_ALGO_MAP", "NAME_ALGO_MAP", "LORA_PREFIX",
    "USE_FNMATCH", "TARGET_EXCLUDE_NAME",
)


@contextmanager
def _lycoris_targets(modules: list[str]) -> Iterator[None]:
    """LyCORIS set to adapt exactly `modules` while the block runs, its class attributes as they were afterwards."""
    saved = {name: getattr(LycorisNetwork, name) for name in _LYCORIS_PRESET_ATTRIBUTES}
    try:
        LycorisNetwork.apply_preset(
            {
                "enable_conv": False,
                "target_module": [],
                "target_name": list(modules),
                "module_algo_map": {},
                "name_algo_map": {},
                "use_fnmatch": True,
                "exclude_name": [],
                "lora_prefix": "lycoris",
            }
        )
        yield
    finally:
        for name, value in saved.items():
            setattr(LycorisNetwork, name, value)


class LokrAdapter(TrainableAdapter):
    """LoKR through a LyCORIS network whose preset names exactly the target layers."""

    def __init__(self, decoder: nn.Module, config: LokrConfig, modules: list[str]) -> None:
        super().__init__(decoder, config, modules)
        # Bypass mode adds ΔW·x in the input's dtype (exact with bf16 base weights); weight decomposition needs the
        # merged weight, which only LyCORIS' rebuild mode computes.
        with _plain_lycoris_log(), _lycoris_targets(modules):
            self.network = create_lycoris(
                decoder,
                1.0,
                linear_dim=config.linear_dim,
                linear_alpha=config.linear_alpha,
                algo="lokr",
                factor=config.factor,
                decompose_both=config.decompose_both,
                use_tucker=config.use_tucker,
                dora_wd=config.weight_decompose,
                bypass_mode=not config.weight_decompose,
            )
        created = [module.lora_name for module in self.network.loras]
        if created != [lycoris_name(name) for name in modules]:
            raise AdapterError(f"LyCORIS adapted {first_few(created)} instead of the requested {first_few(modules)}.")
        self.network.apply_to()
        device = next(decoder.parameters()).device
        self.network.to(device)

    def parameters(self) -> list[nn.Parameter]:
        return [p for p in self.network.parameters() if p.requires_grad]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {key: value.detach() for key, value in self.network.state_dict().items()}

    def _load(self, state: Mapping[str, torch.Tensor]) -> None:
        self.network.load_state_dict(dict(state), strict=True)

    def _lokr_config(self) -> dict:
        """The LoKR hyper-parameters and target modules stored in the weights file's metadata."""
        config = self.config
        return {
            "algo": "lokr",
            "linear_dim": config.linear_dim,
            "linear_alpha": config.linear_alpha,
            "factor": config.factor,
            "decompose_both": config.decompose_both,
            "use_tucker": config.use_tucker,
            "use_scalar": False,
            "weight_decompose": config.weight_decompose,
            "full_matrix": False,
            "bypass_mode": not config.weight_decompose,
            "rs_lora": False,
            "unbalanced_factorization": False,
            "target_modules": list(self.modules),
        }

    def _header(self, metadata: Mapping[str, str]) -> dict[str, str]:
        return {**metadata, "format": "pt", LOKR_CONFIG_KEY: json.dumps(self._lokr_config())}

    def save(self, folder: str | Path, metadata: Mapping[str, str]) -> Path:
        folder = Path(folder)
        save_safetensors_atomic(self.state_dict(), folder / LOKR_WEIGHTS_FILE, self._header(metadata))
        return folder


def attach_trainable_adapter(decoder: nn.Module, config: AdapterConfig) -> TrainableAdapter:
    """Freeze `decoder` and attach a fresh adapter of `config.kind` to its target layers (base weights untouched)."""
    modules = target_modules(decoder, config)
    return LoraAdapter(decoder, config, modules) if isinstance(config, LoraConfig) else LokrAdapter(decoder, config, modules)
