"""Which of the decoder's Linear layers an AdapterConfig adapts."""

from __future__ import annotations

from torch import nn

from ..errors import AdapterError
from .config import CUSTOM_TARGET, TARGET_PRESETS, AdapterConfig
from .keys import first_few


def linear_modules(decoder: nn.Module) -> dict[str, nn.Linear]:
    """Every Linear layer of the decoder by its path (`layers.0.self_attn.q_proj`), in module order."""
    return {name: module for name, module in decoder.named_modules() if isinstance(module, nn.Linear)}


def _matches(entry: str, name: str) -> bool:
    """A custom entry names a module when it is the full path or a dot-separated tail of it."""
    return name == entry or name.endswith("." + entry)


def _valid_names(names: list[str]) -> str:
    """The forms a custom entry may take, listed from the decoder's own module names."""
    short = dict.fromkeys(name.rsplit(".", 1)[-1] for name in names)
    qualified = dict.fromkeys(".".join(name.split(".")[-2:]) for name in names if name.count(".") >= 2)
    layers = sorted({int(name.split(".")[1]) for name in names if name.startswith("layers.")})
    span = f" (layers 0-{layers[-1]})" if layers else ""
    return (
        f"short names {', '.join(short)}; block-qualified names {', '.join(qualified)}; "
        f"or full paths such as {names[0]}{span}"
    )


def target_modules(decoder: nn.Module, config: AdapterConfig) -> list[str]:
    """Full paths (relative to the decoder) of the Linear layers `config` adapts; AdapterError for unknown names."""
    linears = list(linear_modules(decoder))
    if config.target == CUSTOM_TARGET:
        unknown = [entry for entry in config.custom_modules if not any(_matches(entry.strip(), n) for n in linears)]
        if unknown:
            raise AdapterError(
                f"Custom adapter targets {first_few(unknown)} name no Linear layer of the decoder. "
                f"Use {_valid_names(linears)}."
            )
        entries = [entry.strip() for entry in config.custom_modules]
        chosen = [name for name in linears if any(_matches(entry, name) for entry in entries)]
    else:
        suffixes = TARGET_PRESETS[config.target]
        chosen = [name for name in linears if name.startswith("layers.") and name.split(".", 2)[-1] in suffixes]
    if not chosen:
        raise AdapterError(f"Adapter target {config.target!r} selects no Linear layer of this decoder.")
    return chosen
