"""Tensor key conventions every kind shares (PEFT and LyCORIS module prefixes, `.alpha`); each kind's file names and
key suffixes are in its module under `kinds/`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

PEFT_PREFIX = "base_model.model."
DECODER_PREFIX = "decoder."
LYCORIS_PREFIX = "lycoris_"

ALPHA_PART = "alpha"


def split_key(key: str, parts: Mapping[str, str]) -> tuple[str, str] | None:
    """`(module, part)` of a tensor key by its suffix in `parts` (suffix → part; `.alpha` always), the module
    normalised (PEFT prefix and an extra `decoder.` dropped); LyCORIS flat names keep their `lycoris_` prefix. None when
    the suffix is not an adapter tensor."""
    for suffix in sorted([*parts, ALPHA_PART], key=len, reverse=True):
        if key.endswith("." + suffix):
            module = key[: -len(suffix) - 1]
            break
    else:
        return None
    module = module.removeprefix(PEFT_PREFIX).removeprefix(DECODER_PREFIX)
    part = parts.get(suffix, ALPHA_PART)
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
