"""What the LyCORIS kinds (LoKR, LoHA, OFT) share: a LyCORIS network on exactly the target layers, trained and saved
as one `<kind>_weights.safetensors` with the kind's settings as JSON in its header. LyCORIS loads only when one is built."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...errors import AdapterError
from ..config import AdapterConfig
from ..keys import first_few, lycoris_name
from ..loaded import ModuleWeights
from .base import AdapterKind, TrainableAdapter, declared_number, lycoris_metadata, save_weights


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
    from lycoris import LycorisNetwork

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


class LycorisAdapter(TrainableAdapter):
    """A LyCORIS network whose preset names exactly the target layers; `network` holds the `create_lycoris`
    arguments, `stored` the settings written as JSON under `config_key` in the weights file's header."""

    def __init__(
        self,
        decoder: nn.Module,
        config: AdapterConfig,
        modules: list[str],
        network: Mapping[str, Any],
        stored: Mapping[str, Any],
        config_key: str,
        weights_file: str,
    ) -> None:
        from lycoris import create_lycoris

        super().__init__(decoder, config, modules)
        self.stored, self.config_key, self.weights_file = dict(stored), config_key, weights_file
        with _plain_lycoris_log(), _lycoris_targets(modules):
            self.network = create_lycoris(decoder, 1.0, **network)
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

    def _header(self, metadata: Mapping[str, str]) -> dict[str, str]:
        return {**metadata, "format": "pt", self.config_key: json.dumps({**self.stored, "target_modules": list(self.modules)})}

    def save(self, folder: str | Path, metadata: Mapping[str, str]) -> Path:
        return save_weights(self, folder, self.weights_file, metadata)


def output_magnitude(module: str, parts: Mapping[str, torch.Tensor], path: Path) -> torch.Tensor | None:
    """A LyCORIS weight-decomposition magnitude (`dora_scale`) as [out]; AdapterError for one on the input axis."""
    magnitude = parts.get("dora_scale")
    if magnitude is not None and magnitude.dim() == 2 and magnitude.shape[1] != 1:
        raise AdapterError(
            f"Adapter {path}: {module} uses weight decomposition on the input axis, which is not supported; "
            "retrain with LyCORIS' default (output axis)."
        )
    return None if magnitude is None else magnitude.flatten()


class LycorisKind(AdapterKind):
    """A LyCORIS kind whose header JSON (under `config_key`) declares its size as linear_dim and linear_alpha."""

    config_key: str

    def declared(
        self, modules: dict[str, ModuleWeights], peft_config: dict[str, Any] | None, header: Mapping[str, str], path: Path
    ) -> tuple[int | None, float | None]:
        first = next(iter(modules.values()))
        stored = lycoris_metadata(header, self.config_key, path)
        rank = declared_number(stored, "linear_dim", self.config_key, path, whole=True)
        alpha = declared_number(stored, "linear_alpha", self.config_key, path)
        return (first.rank if rank is None else rank), (first.alpha if alpha is None else float(alpha))


def comfy_tensors(module: str, factors: Mapping[str, torch.Tensor], alpha: float | None) -> dict[str, torch.Tensor]:
    """A LyCORIS module's tensors under ComfyUI's keys: `lycoris_<module>.<factor>` and `.alpha` when it has one."""
    prefix = lycoris_name(module)
    tensors = {f"{prefix}.{name}": tensor for name, tensor in factors.items()}
    if alpha is not None:
        tensors[f"{prefix}.alpha"] = torch.tensor(alpha, dtype=torch.float32)
    return tensors
