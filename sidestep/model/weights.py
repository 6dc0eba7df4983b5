"""Reading and writing official-format weight files (single or sharded safetensors), with name/shape checks."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import safe_open

from ..errors import CheckpointError, WeightMismatchError

SINGLE_FILE = "model.safetensors"
SHARD_INDEX = "model.safetensors.index.json"


def weight_files(folder: Path) -> dict[str, Path]:
    """Map every tensor name to the safetensors file holding it (single file or sharded index)."""
    index_path = folder / SHARD_INDEX
    if index_path.is_file():
        try:
            weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, ValueError, KeyError) as exc:
            raise CheckpointError(f"Cannot read the shard index {index_path}: {exc}. Re-download the model.") from exc
        files = {name: folder / shard for name, shard in weight_map.items()}
        missing = sorted({str(path) for path in files.values() if not path.is_file()})
        if missing:
            raise CheckpointError(f"{index_path} lists shards that are missing: {', '.join(missing[:3])}.")
        return files
    single = folder / SINGLE_FILE
    if not single.is_file():
        raise CheckpointError(
            f"No {SINGLE_FILE} (or {SHARD_INDEX}) in {folder}. A model folder holds config.json and the weights; "
            "re-download the model or point at the right folder."
        )
    with safe_open(str(single), framework="pt") as handle:
        return {name: single for name in handle.keys()}


def check_names_and_shapes(
    expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]], source: str
) -> None:
    """Raise WeightMismatchError listing the first few missing, unexpected or wrongly shaped tensors."""
    problems = [f"missing {name} {list(shape)}" for name, shape in expected.items() if name not in found]
    problems += [f"unexpected {name} {list(shape)}" for name, shape in found.items() if name not in expected]
    problems += [
        f"{name}: file has {list(found[name])}, config needs {list(shape)}"
        for name, shape in expected.items()
        if name in found and tuple(found[name]) != tuple(shape)
    ]
    if problems:
        shown = "; ".join(problems[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise WeightMismatchError(
            f"The weights in {source} do not fit the model its config.json describes: {shown}{more}. "
            "The config and weights must come from the same ACE-Step 1.5 checkpoint."
        )


def file_shapes(files: dict[str, Path]) -> dict[str, tuple[int, ...]]:
    """Shapes of every tensor named in `files`, read from the safetensors headers only."""
    shapes: dict[str, tuple[int, ...]] = {}
    for path in sorted(set(files.values())):
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():
                shapes[name] = tuple(handle.get_slice(name).get_shape())
    return shapes


def read_tensors(
    files: dict[str, Path], names: Iterable[str], dtype: torch.dtype | None, device: torch.device | str
) -> dict[str, torch.Tensor]:
    """Load the named tensors, cast floating ones to `dtype`, and move them to `device`."""
    by_file: dict[Path, list[str]] = {}
    for name in names:
        by_file.setdefault(files[name], []).append(name)
    tensors: dict[str, torch.Tensor] = {}
    for path, wanted in by_file.items():
        with safe_open(str(path), framework="pt") as handle:
            for name in wanted:
                tensor = handle.get_tensor(name)
                if dtype is not None and tensor.is_floating_point():
                    tensor = tensor.to(dtype)
                tensors[name] = tensor.to(device)
    return tensors
