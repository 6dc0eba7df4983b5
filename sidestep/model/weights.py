"""Reading official-layout weights (a model folder's single or sharded safetensors, or one prefixed part of a ComfyUI
file), with name/shape checks. Tensors are read one at a time, so no second full copy of a model is ever held."""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from ..errors import CheckpointError, WeightMismatchError
from ..memory import release_pages
from ..model_files import DOWNLOAD_AGAIN, read_header, readable_path, shown
from .layers import SCALE_SUFFIX, quantize_fp8

SINGLE_FILE = "model.safetensors"
SHARD_INDEX = "model.safetensors.index.json"


@dataclass(frozen=True)
class WeightIndex:
    """Where every official tensor name is stored: the safetensors file, under `prefix` + name."""

    files: dict[str, Path]
    prefix: str = ""

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Shapes of every indexed tensor, read from the safetensors headers only."""
        shapes: dict[str, tuple[int, ...]] = {}
        for path in sorted(set(self.files.values())):
            for key, shape in read_header(path).shapes.items():
                if key.startswith(self.prefix):
                    shapes[key[len(self.prefix) :]] = shape
        return shapes

    def read(
        self, names: Iterable[str], dtype: torch.dtype | None, device: torch.device | str, fp8: Collection[str] = ()
    ) -> dict[str, torch.Tensor]:
        """Load the named tensors one by one, cast floating ones to `dtype` (None: keep each one's own) and move them to
        `device`; the Linear weights named in `fp8` are stored as e4m3 with their scales (`<layer>.weight_scale`)."""
        by_file: dict[Path, list[str]] = {}
        for name in names:
            by_file.setdefault(self.files[name], []).append(name)
        tensors: dict[str, torch.Tensor] = {}
        for path, wanted in by_file.items():
            try:
                with readable_path(path) as readable, safe_open(readable, framework="pt") as handle:
                    for name in wanted:
                        stored = tensor = handle.get_tensor(self.prefix + name)
                        if name in fp8:
                            tensor, scale = quantize_fp8(tensor)
                            tensors[name.removesuffix(".weight") + SCALE_SUFFIX] = scale.to(device)
                        elif dtype is not None and tensor.is_floating_point():
                            tensor = tensor.to(dtype)
                        tensors[name] = tensor.to(device)
                        if tensors[name].data_ptr() != stored.data_ptr():  # converted or moved: the file's pages go
                            release_pages(stored)
            except (OSError, SafetensorError) as exc:
                read_header(path)  # names the reason when the header tells it
                raise CheckpointError(f"Cannot read the tensors of {shown(path)}: {exc}. {DOWNLOAD_AGAIN}") from exc
        return tensors


def file_keys(path: Path) -> list[str]:
    """Every tensor name in a safetensors file (header only); CheckpointError saying why when it cannot be used."""
    return list(read_header(path).shapes)


def file_index(path: Path, prefix: str = "") -> WeightIndex:
    """Index the tensors stored under `prefix` in one safetensors file (a ComfyUI diffusion model or checkpoint)."""
    names = [key[len(prefix) :] for key in file_keys(path) if key.startswith(prefix)]
    if not names:
        raise CheckpointError(f"{shown(path)} holds no tensors under {prefix!r}; it is not the file it was taken for.")
    return WeightIndex({name: path for name in names}, prefix)


def folder_index(folder: Path) -> WeightIndex:
    """Index an official model folder's weights (model.safetensors or a sharded index)."""
    return WeightIndex(weight_files(folder))


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
    return {name: single for name in file_keys(single)}


CONFIG_MISMATCH_FIX = "The config and weights must come from the same ACE-Step 1.5 checkpoint."


def check_names_and_shapes(
    expected: dict[str, tuple[int, ...]],
    found: dict[str, tuple[int, ...]],
    source: str,
    fix: str = CONFIG_MISMATCH_FIX,
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
            f"The weights in {source} do not fit the model its config describes: {shown}{more}. {fix}"
        )
