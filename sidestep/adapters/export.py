"""A LoadedAdapter in ComfyUI's key format: in memory (for ModelPatcher patches) or as one .safetensors file that
ComfyUI's own LoraLoaderModelOnly applies to ACE-Step 1.5.

Each kind writes its own keys (`ModuleWeights.comfy_tensors`: LoRA `base_model.model.<module>.lora_A/.lora_B` +
`.alpha`, the LyCORIS kinds `lycoris_<module_with_underscores>.<their tensors>` + `.alpha`). DoRA / weight
decomposition is refused: ComfyUI normalises by the base weight's norm instead of the adapted weight's, so it would not
reproduce the trained result.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError

from ..atomic import save_safetensors_atomic
from ..errors import AdapterError
from .keys import lycoris_name, peft_name
from .loaded import LoadedAdapter

COMFY_DECODER_PREFIX = "diffusion_model.decoder."  # ComfyUI's ACE-Step 1.5 MODEL: the DiT's decoder weights
COMFY_WEIGHT_SUFFIX = ".weight"


def comfy_tensors(adapter: LoadedAdapter) -> dict[str, torch.Tensor]:
    """ComfyUI key → tensor for every module; AdapterError for DoRA / weight decomposition."""
    if adapter.decomposes_weight:
        raise AdapterError(
            f"Adapter {adapter.source} uses DoRA / weight decomposition, which ComfyUI's LoRA loader cannot reproduce "
            "(it normalises by the base weight instead of the adapted one). Load it with Side-Step's Load Adapter "
            "node instead, or retrain without DoRA to export."
        )
    tensors: dict[str, torch.Tensor] = {}
    for module, weights in adapter.modules.items():
        tensors.update(weights.comfy_tensors(module))
    return tensors


def comfy_key_map(model_state_keys: list[str]) -> dict[str, str]:
    """Adapter key prefix (PEFT `base_model.model.<module>`, LyCORIS `lycoris_<module>`) → the weight key of ComfyUI's
    native ACE-Step 1.5 MODEL it patches, as ComfyUI's LoRA loader takes it."""
    key_map = {}
    for key in model_state_keys:
        if key.startswith(COMFY_DECODER_PREFIX) and key.endswith(COMFY_WEIGHT_SUFFIX):
            module = key[len(COMFY_DECODER_PREFIX) : -len(COMFY_WEIGHT_SUFFIX)]
            key_map[peft_name(module)] = key
            key_map[lycoris_name(module)] = key
    return key_map


def export_comfy(adapter: LoadedAdapter, out_file: str | Path) -> Path:
    """Write `adapter` (its header included) as a ComfyUI single file; returns its path."""
    out_file = Path(out_file).expanduser()
    if out_file.suffix.lower() != ".safetensors":
        raise AdapterError(f"Export target {out_file} must end in .safetensors (ComfyUI lists only those as LoRAs).")
    tensors = comfy_tensors(adapter)
    try:
        save_safetensors_atomic(tensors, out_file, {**adapter.header, "format": "pt"})
    except (OSError, SafetensorError) as error:
        raise AdapterError(
            f"Cannot write {out_file} ({getattr(error, 'strerror', None) or error}). Choose a file in a folder you can write to, "
            "on a disk with free space."
        ) from error
    return out_file
