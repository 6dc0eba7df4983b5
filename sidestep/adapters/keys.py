"""Adapter file names and tensor key conventions (PEFT, LyCORIS, ComfyUI), shared by saving, loading and export."""

from __future__ import annotations

from collections.abc import Iterable

PEFT_CONFIG_FILE = "adapter_config.json"
PEFT_WEIGHTS_FILE = "adapter_model.safetensors"
LOKR_WEIGHTS_FILE = "lokr_weights.safetensors"
LOKR_CONFIG_KEY = "lokr_config"

PEFT_PREFIX = "base_model.model."
DECODER_PREFIX = "decoder."
LYCORIS_PREFIX = "lycoris_"

# Key suffix (after "<module>.") → the role of the tensor. LoRA: PEFT names with and without the adapter name,
# kohya/ComfyUI lora_down/lora_up, PEFT's DoRA magnitude. LoKR: LyCORIS names. "alpha" is shared.
LORA_PARTS = {
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
LOKR_PARTS = {
    name: name for name in ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2", "dora_scale")
}
ALPHA_PART = "alpha"
_SUFFIXES = sorted([*LORA_PARTS, *LOKR_PARTS, ALPHA_PART], key=len, reverse=True)


def split_key(key: str) -> tuple[str, str] | None:
    """`(module, part)` of a tensor key, the module normalised (PEFT prefix and an extra `decoder.` dropped);
    LyCORIS flat names keep their `lycoris_` prefix. None when the suffix is not an adapter tensor."""
    for suffix in _SUFFIXES:
        if key.endswith("." + suffix):
            module = key[: -len(suffix) - 1]
            break
    else:
        return None
    module = module.removeprefix(PEFT_PREFIX).removeprefix(DECODER_PREFIX)
    part = LORA_PARTS.get(suffix) or LOKR_PARTS.get(suffix) or ALPHA_PART
    return (module, part) if module else None


def is_flat_name(module: str) -> bool:
    """True for a LyCORIS flat module name (`lycoris_layers_0_self_attn_q_proj`) rather than a decoder path."""
    return module.startswith(LYCORIS_PREFIX)


def lycoris_name(module: str) -> str:
    """The LyCORIS/ComfyUI flat name of a module (`layers.0.self_attn.q_proj` → `lycoris_layers_0_self_attn_q_proj`)."""
    return module if is_flat_name(module) else LYCORIS_PREFIX + module.replace(".", "_")


def peft_name(module: str) -> str:
    """The PEFT/ComfyUI key prefix of a module: `base_model.model.<path>` (flat LyCORIS names stay as they are)."""
    return module if is_flat_name(module) else PEFT_PREFIX + module


def first_few(names: Iterable[str], limit: int = 5) -> str:
    """'a, b, c and 4 more' — a short list of offending names for error messages."""
    names = list(names)
    shown = ", ".join(names[:limit])
    return f"{shown} and {len(names) - limit} more" if len(names) > limit else shown
