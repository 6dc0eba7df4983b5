"""Read any adapter form from disk into a LoadedAdapter (safetensors only; nothing is unpickled).

Accepted: a PEFT LoRA folder (adapter_config.json + adapter_model.safetensors, written by PEFT, Side-Step or the
ACE-Step trainer), a LoKR `lokr_weights.safetensors` or a folder holding it, a run folder holding `final/`, a
`checkpoints/epoch_N/` folder or the `training_state.pt` inside one (its folder is used), and single ComfyUI-style
`.safetensors` files (`base_model.model.<module>.lora_A/.lora_B` or `.lora_down/.lora_up`, optional `.alpha`;
`lycoris_<module>.lokr_*` + `.alpha`).
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from ..errors import AdapterError
from ..training.layout import FINAL_FOLDER, STATE_FILE, RunLayout, epoch_folders
from .keys import (
    ALPHA_PART,
    LOKR_CONFIG_KEY,
    LOKR_PARTS,
    LOKR_WEIGHTS_FILE,
    PEFT_CONFIG_FILE,
    PEFT_WEIGHTS_FILE,
    first_few,
    split_key,
)
from .loaded import LoadedAdapter, LokrWeights, LoraWeights, ModuleWeights

_EXPECTED = (
    f"a LoRA folder ({PEFT_CONFIG_FILE} + {PEFT_WEIGHTS_FILE}), a LoKR {LOKR_WEIGHTS_FILE} (or its folder), "
    "a checkpoints/epoch_N folder, or a single ComfyUI-style .safetensors file"
)


def resolve_adapter_path(path: str | Path) -> Path:
    """The weights file behind any accepted path form; AdapterError when there is none (or it is not a regular file)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise AdapterError(f"Adapter {path} does not exist (or is a broken link). Pass {_EXPECTED}.")
    if path.is_file() and path.name == STATE_FILE:
        path = path.parent
    if path.is_dir():
        for name in (PEFT_WEIGHTS_FILE, LOKR_WEIGHTS_FILE):
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


def _peft_config(folder: Path) -> dict[str, Any] | None:
    """The PEFT adapter_config.json beside the weights (checked), or None when there is none."""
    config_path = folder / PEFT_CONFIG_FILE
    if not config_path.is_file():
        return None
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as error:
        raise AdapterError(f"{config_path} is not valid JSON ({error}). Restore it from the training output.") from error
    if not isinstance(config, dict):
        raise AdapterError(f"{config_path} is not a PEFT adapter config. Restore it from the training output.")
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise AdapterError(f"{config_path} describes a {peft_type} adapter; only PEFT LoRA folders are supported.")
    problem = _peft_config_problem(config)
    if problem:
        raise AdapterError(f"{config_path}: {problem}. Fix that value or restore the file from the training output.")
    return config


def _is_number(value: Any, whole: bool = False) -> bool:
    """A finite number above 0 (a whole one when `whole`); booleans are not numbers."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (whole and not isinstance(value, int)):
        return False
    return math.isfinite(value) and value > 0


def _peft_config_problem(config: dict[str, Any]) -> str | None:
    """What is wrong with the settings of a PEFT config that loading uses (r, lora_alpha, alpha_pattern, use_rslora)."""
    if "r" in config and not _is_number(config["r"], whole=True):
        return f'"r" is {config["r"]!r}, not a whole number above 0'
    if "lora_alpha" in config and not _is_number(config["lora_alpha"]):
        return f'"lora_alpha" is {config["lora_alpha"]!r}, not a finite number above 0'
    if not isinstance(config.get("use_rslora", False), bool):
        return f'"use_rslora" is {config["use_rslora"]!r}, not true or false'
    patterns = config.get("alpha_pattern") or {}
    if not isinstance(patterns, dict):
        return f'"alpha_pattern" is {patterns!r}, not an object of module pattern → alpha'
    for key, value in patterns.items():
        try:
            re.compile(key)
        except re.error as error:
            return f'"alpha_pattern" key {key!r} is not a valid regular expression ({error})'
        if not _is_number(value):
            return f'"alpha_pattern" gives {key!r} the alpha {value!r}, not a finite number above 0'
    return None


def _group(tensors: dict[str, torch.Tensor], path: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Tensors grouped by module → part; AdapterError listing keys that are not adapter tensors."""
    groups: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
    unknown = []
    for key, tensor in tensors.items():
        split = split_key(key)
        if split is None:
            unknown.append(key)
        else:
            groups[split[0]][split[1]] = tensor
    if unknown:
        raise AdapterError(
            f"Adapter {path} has keys that are not LoRA/LoKR tensors: {first_few(unknown)}. "
            "Only PEFT, kohya/ComfyUI and LyCORIS key names are understood."
        )
    return groups


def _lora_scale(module: str, rank: int, parts: dict[str, torch.Tensor], config: dict[str, Any] | None) -> float:
    """Scale of one LoRA module: its `.alpha` / rank, else PEFT's lora_alpha / r (or / √r with rsLoRA), else 1."""
    if ALPHA_PART in parts:
        return float(parts[ALPHA_PART]) / rank
    if config is None:
        return 1.0
    # PEFT's alpha_pattern: a key matches a module whose path ends with it (keys may be regular expressions).
    patterns = config.get("alpha_pattern") or {}
    matched = [key for key in patterns if re.match(rf"(.*\.)?({key})$", module)]
    alpha = float(patterns[matched[0]] if matched else config.get("lora_alpha", 8))
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


def _lora(module: str, parts: dict[str, torch.Tensor], config: dict[str, Any] | None, path: Path) -> LoraWeights:
    """One module's LoRA factors, checked for completeness and matching ranks."""
    if "down" not in parts or "up" not in parts:
        raise AdapterError(f"Adapter {path}: module {module} has only one of its two LoRA matrices (A/down, B/up).")
    down, up = parts["down"], parts["up"]
    if down.dim() != 2 or up.dim() != 2:
        raise AdapterError(f"Adapter {path}: module {module} is not a Linear-layer LoRA (factor shapes {tuple(down.shape)}, {tuple(up.shape)}).")
    if down.shape[0] != up.shape[1]:
        raise AdapterError(
            f"Adapter {path}: LoRA rank mismatch in {module}: A/down has rank {down.shape[0]} but B/up has rank {up.shape[1]}."
        )
    magnitude = parts.get("magnitude")
    return LoraWeights(down, up, _lora_scale(module, down.shape[0], parts, config), None if magnitude is None else magnitude.flatten())


def _lokr(module: str, parts: dict[str, torch.Tensor], path: Path) -> LokrWeights:
    """One module's LoKR factors, checked for completeness, 2-D shapes and matching ranks."""
    factors = {name: parts[name] for name in LOKR_PARTS if name in parts and name != "dora_scale"}
    for side in ("lokr_w1", "lokr_w2"):
        if side not in factors and not {f"{side}_a", f"{side}_b"} <= factors.keys():
            raise AdapterError(f"Adapter {path}: LoKR module {module} lacks {side} (or the {side}_a/{side}_b pair).")
    flat = [name for name, tensor in factors.items() if name != "lokr_t2" and tensor.dim() != 2]
    if flat:
        raise AdapterError(f"Adapter {path}: {module} is not a Linear-layer LoKR ({', '.join(flat)} not 2-D).")
    mismatched = []
    if "lokr_w1" not in factors and factors["lokr_w1_a"].shape[1] != factors["lokr_w1_b"].shape[0]:
        mismatched.append("lokr_w1_a/lokr_w1_b")
    if "lokr_w2" not in factors:
        a, b, t2 = factors["lokr_w2_a"], factors["lokr_w2_b"], factors.get("lokr_t2")
        # Plain pair: a [out2, r] @ b [r, in2]; Tucker: core t2 [r1, r2, ...] with a [r1, out2] and b [r2, in2].
        if t2 is None and a.shape[1] != b.shape[0] or t2 is not None and (t2.dim() < 2 or (a.shape[0], b.shape[0]) != t2.shape[:2]):
            mismatched.append("lokr_w2_a/lokr_w2_b" + ("/lokr_t2" if t2 is not None else ""))
    if mismatched:
        shapes = ", ".join(f"{name} {tuple(factors[name].shape)}" for group in mismatched for name in group.split("/"))
        raise AdapterError(f"Adapter {path}: LoKR rank mismatch in {module}: {shapes}.")
    magnitude = parts.get("dora_scale")
    if magnitude is not None and magnitude.dim() == 2 and magnitude.shape[1] != 1:
        raise AdapterError(
            f"Adapter {path}: {module} uses weight decomposition on the input axis, which is not supported; "
            "retrain with LyCORIS' default (output axis)."
        )
    alpha = float(parts[ALPHA_PART]) if ALPHA_PART in parts else None
    return LokrWeights(factors, alpha, None if magnitude is None else magnitude.flatten())


def _modules(groups: dict[str, dict[str, torch.Tensor]], config: dict[str, Any] | None, path: Path) -> dict[str, ModuleWeights]:
    """Per-module weights of one kind; AdapterError for modules that are neither, both, or files that mix kinds."""
    modules: dict[str, ModuleWeights] = {}
    for module, parts in groups.items():
        lokr = any(name in parts for name in LOKR_PARTS if name != "dora_scale")
        lora = any(name in parts for name in ("down", "up", "magnitude"))
        if lokr and not lora:
            modules[module] = _lokr(module, parts, path)
        elif lora and not lokr and "dora_scale" not in parts:
            modules[module] = _lora(module, parts, config, path)
        elif lora and not lokr:
            raise AdapterError(
                f"Adapter {path}: {module} is a LoRA with a ComfyUI-style dora_scale, which is not supported. "
                "Use the PEFT DoRA folder the trainer wrote."
            )
        else:
            found = ", ".join(sorted(parts))
            raise AdapterError(f"Adapter {path}: {module} has no complete LoRA or LoKR weights (found {found}).")
    if len({type(weights) for weights in modules.values()}) > 1:
        raise AdapterError(f"Adapter {path} mixes LoRA and LoKR modules; load them as two adapters.")
    return modules


def _lokr_config(metadata: dict[str, str]) -> dict[str, Any]:
    """The LoKR hyper-parameters a trainer stored as JSON in the file's metadata ({} when absent or unreadable)."""
    try:
        config = json.loads(metadata.get(LOKR_CONFIG_KEY) or "{}")
    except ValueError:
        return {}
    return config if isinstance(config, dict) else {}


def _declared(modules: dict[str, ModuleWeights], config: dict[str, Any] | None, metadata: dict[str, str]) -> tuple[int | None, float | None]:
    """The (rank, alpha) an adapter declares: its PEFT config or LoKR metadata (values that are not numbers are
    ignored), else read off its first module."""
    first = next(iter(modules.values()))
    if isinstance(first, LoraWeights):
        if config is not None:
            return config.get("r", first.rank), float(config.get("lora_alpha", 8))
        return first.rank, first.scale * first.rank
    lokr = _lokr_config(metadata)
    rank, alpha = lokr.get("linear_dim"), lokr.get("linear_alpha")
    return (rank if _is_number(rank, whole=True) else first.rank), (float(alpha) if _is_number(alpha) else first.alpha)


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
    kind = "lokr" if isinstance(next(iter(modules.values())), LokrWeights) else "lora"
    rank, alpha = _declared(modules, peft_config, header)
    return LoadedAdapter(source=source, kind=kind, modules=modules, rank=rank, alpha=alpha, header=header)


def load_adapter(path: str | Path) -> LoadedAdapter:
    """Read any accepted adapter form (see the module docstring); AdapterError says what is wrong and where."""
    weights_path = resolve_adapter_path(path)
    config = _peft_config(weights_path.parent) if weights_path.name == PEFT_WEIGHTS_FILE else None
    tensors, header = _read(weights_path)
    adapter = adapter_from_tensors(tensors, header, weights_path, config)
    with_alpha = sum(split_key(key)[1] == ALPHA_PART for key in tensors)
    if adapter.kind == "lora" and config is None and weights_path.name == PEFT_WEIGHTS_FILE and with_alpha < len(adapter.modules):
        raise AdapterError(
            f"Adapter folder {weights_path.parent} has {PEFT_WEIGHTS_FILE} but no {PEFT_CONFIG_FILE}, so its scale "
            f"(lora_alpha / r) is unknown and loading it would give the wrong strength. Put the {PEFT_CONFIG_FILE} "
            "saved with it back beside it."
        )
    return adapter


def run_adapter_folders(run: str | Path) -> list[Path]:
    """A run folder's final adapter and its epoch checkpoints (oldest first) that hold adapter weights."""
    layout = RunLayout(Path(run))
    candidates = [layout.final, *epoch_folders(layout.checkpoints)]
    return [folder for folder in candidates if any((folder / name).is_file() for name in (PEFT_WEIGHTS_FILE, LOKR_WEIGHTS_FILE))]
