"""Read any adapter form from disk into a LoadedAdapter (safetensors only; nothing is unpickled).

Accepted: each kind's Side-Step folder or its weights file (a PEFT LoRA folder, adapter_config.json +
adapter_model.safetensors, written by PEFT, Side-Step or the ACE-Step trainer; `lokr_weights.safetensors`,
`loha_weights.safetensors`, `oft_weights.safetensors`), a run folder holding `final/`, a
`checkpoints/epoch_N/` folder or the `training_state.pt` inside one (its folder is used), and single ComfyUI-style
`.safetensors` files (`base_model.model.<module>.lora_A/.lora_B` or `.lora_down/.lora_up`, optional `.alpha`;
`lycoris_<module>.lokr_*` + `.alpha`; the other LyCORIS kinds' keys likewise). Each module is read by the kind in
`kinds/` whose key suffixes it has.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from ..errors import AdapterError
from ..training.layout import FINAL_FOLDER, STATE_FILE, RunLayout, epoch_folders
from .keys import ALPHA_PART, first_few, split_key
from .kinds import KINDS, PARTS, kinds_owning
from .loaded import LoadedAdapter, ModuleWeights

# The weights file of each kind's Side-Step folder.
WEIGHT_FILES = tuple(kind.weights_file for kind in KINDS.values())
_EXPECTED = (
    f"an adapter folder (holding {' or '.join(WEIGHT_FILES)}) or one of those files, a checkpoints/epoch_N folder, "
    "or a single ComfyUI-style .safetensors file"
)


def resolve_adapter_path(path: str | Path) -> Path:
    """The weights file behind any accepted path form; AdapterError when there is none (or it is not a regular file)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise AdapterError(f"Adapter {path} does not exist (or is a broken link). Pass {_EXPECTED}.")
    if path.is_file() and path.name == STATE_FILE:
        path = path.parent
    if path.is_dir():
        for name in WEIGHT_FILES:
            if (path / name).is_file():
                return path / name
        if (path / FINAL_FOLDER).is_dir():
            return resolve_adapter_path(path / FINAL_FOLDER)
        try:
            found = sorted(p.name for p in path.iterdir())
        except OSError as error:
            raise AdapterError(f"Adapter folder {path} cannot be listed ({error.strerror or error}). Check its permissions.") from error
        raise AdapterError(
            f"Adapter folder {path} holds no adapter weights (found: {first_few(found) or 'nothing'}). Pass {_EXPECTED}."
        )
    if not path.is_file():
        raise AdapterError(f"Adapter {path} is not a regular file (a FIFO, socket or device?). Pass {_EXPECTED}.")
    if path.suffix.lower() != ".safetensors":
        raise AdapterError(f"Adapter file {path} is not a .safetensors file. Pass {_EXPECTED}.")
    return path


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors (on the CPU) and the header metadata of a safetensors file."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys()}, dict(handle.metadata() or {})
    except (SafetensorError, OSError, ValueError) as error:
        raise AdapterError(f"Adapter file {path} cannot be read as safetensors ({error}). Re-save or re-export it.") from error


def _group(tensors: dict[str, torch.Tensor], path: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Tensors grouped by module → part; AdapterError listing keys that are not adapter tensors."""
    groups: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
    unknown = []
    for key, tensor in tensors.items():
        split = split_key(key, PARTS)
        if split is None:
            unknown.append(key)
        else:
            groups[split[0]][split[1]] = tensor
    if unknown:
        raise AdapterError(
            f"Adapter {path} has keys that are not adapter tensors of any kind ({', '.join(KINDS)}): "
            f"{first_few(unknown)}. Only PEFT, kohya/ComfyUI and LyCORIS key names are understood."
        )
    return groups


def _modules(groups: dict[str, dict[str, torch.Tensor]], config: dict[str, Any] | None, path: Path) -> dict[str, ModuleWeights]:
    """Per-module weights of one kind, each read by the kind whose parts it has; AdapterError for modules that are of
    no kind or several, or files that mix kinds."""
    modules: dict[str, ModuleWeights] = {}
    for module, parts in groups.items():
        owners = kinds_owning(parts)
        if len(owners) != 1:
            found = ", ".join(sorted(parts))
            raise AdapterError(f"Adapter {path}: {module} has no complete weights of one adapter kind (found {found}).")
        modules[module] = owners[0].read_module(module, parts, path, config)
    kinds = sorted({weights.kind for weights in modules.values()})
    if len(kinds) > 1:
        raise AdapterError(f"Adapter {path} mixes {' and '.join(kinds)} modules; load them as separate adapters.")
    return modules


def _check_values(groups: dict[str, dict[str, torch.Tensor]], path: Path) -> None:
    """AdapterError for an empty tensor, an `.alpha` that is not one number, or NaN/infinite weights."""
    for module, parts in groups.items():
        for part, tensor in parts.items():
            if part == ALPHA_PART and tensor.numel() != 1:
                raise AdapterError(
                    f"Adapter {path}: {module}.alpha holds {tensor.numel()} values instead of one. Re-export the adapter."
                )
            if tensor.numel() == 0:
                raise AdapterError(f"Adapter {path}: {module} has an empty {part} tensor (rank 0?). Re-export the adapter.")
            if not bool(torch.isfinite(tensor).all()):
                raise AdapterError(
                    f"Adapter {path}: {module} holds NaN or infinite values in {part} (training diverged?). "
                    "Use an earlier checkpoint, or train again with a lower learning rate."
                )


def _check_scales(modules: dict[str, ModuleWeights], path: Path) -> None:
    """AdapterError when a module's scale (alpha / rank) is not a finite number."""
    for module, weights in modules.items():
        if not math.isfinite(weights.scale):
            raise AdapterError(
                f"Adapter {path}: {module} has the scale {weights.scale} (alpha / rank), which is not finite. "
                "Fix lora_alpha / the .alpha values, or re-export the adapter."
            )


def adapter_from_tensors(
    tensors: dict[str, torch.Tensor], header: dict[str, str], source: Path, peft_config: dict[str, Any] | None = None
) -> LoadedAdapter:
    """A LoadedAdapter from adapter tensors (PEFT, kohya/ComfyUI or LyCORIS names) and their header, all checked;
    `peft_config` (r, lora_alpha, ...) gives LoRA modules without `.alpha` their scale."""
    if not tensors:
        raise AdapterError(f"Adapter file {source} holds no tensors. Re-save or re-export the adapter.")
    groups = _group(tensors, source)
    _check_values(groups, source)
    modules = _modules(groups, peft_config, source)
    _check_scales(modules, source)
    kind = KINDS[next(iter(modules.values())).kind]
    rank, alpha = kind.declared(modules, peft_config, header, source)
    return LoadedAdapter(source=source, kind=kind.name, modules=modules, rank=rank, alpha=alpha, header=header)


def load_adapter(path: str | Path) -> LoadedAdapter:
    """Read any accepted adapter form (see the module docstring); AdapterError says what is wrong and where."""
    weights_path = resolve_adapter_path(path)
    configs = [config for kind in KINDS.values() if (config := kind.folder_config(weights_path)) is not None]
    config = configs[0] if configs else None
    tensors, header = _read(weights_path)
    adapter = adapter_from_tensors(tensors, header, weights_path, config)
    with_alpha = sum(split_key(key, PARTS)[1] == ALPHA_PART for key in tensors)
    KINDS[adapter.kind].check_loaded(weights_path, config, len(adapter.modules), with_alpha)
    return adapter


def run_adapter_folders(run: str | Path) -> list[Path]:
    """A run folder's final adapter and its epoch checkpoints (oldest first) that hold adapter weights."""
    layout = RunLayout(Path(run))
    candidates = [layout.final, *epoch_folders(layout.checkpoints)]
    return [folder for folder in candidates if any((folder / name).is_file() for name in WEIGHT_FILES)]
