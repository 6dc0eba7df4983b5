"""Atomic file writes: a killed process never leaves a half-written file under the final name."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file


FILE_MODE = 0o644
FOLDER_MODE = 0o755


def staging_folder(final: Path) -> Path:
    """A new, empty hidden folder beside `final`, readable like an ordinary folder, to fill and then move into place."""
    folder = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    os.chmod(folder, FOLDER_MODE)
    return folder


def sync_file(path: str | Path) -> None:
    """Flush a file's data to the disk (so a rename after it never exposes an empty file after a power cut)."""
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def sync_folder(folder: str | Path) -> None:
    """Flush a folder's entries (renames, new names) to the disk."""
    handle = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def replace_synced(source: str | Path, target: str | Path) -> None:
    """`os.replace(source, target)`, then sync the target's folder so the rename survives a power cut."""
    os.replace(source, target)
    sync_folder(Path(target).parent)


def write_atomic(path: Path, write: Callable[[str], None], mode: int | None = None) -> None:
    """Call `write(temporary_path)` for a temporary file beside `path`, sync it, then move it into place with
    permissions `mode` (default 0644)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        write(temporary)
        os.chmod(temporary, FILE_MODE if mode is None else mode)
        sync_file(temporary)
        replace_synced(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def save_safetensors_atomic(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file atomically (tensors are made contiguous and moved to the CPU)."""
    cpu = {name: tensor.detach().contiguous().cpu() for name, tensor in tensors.items()}
    write_atomic(path, lambda temporary: save_file(cpu, temporary, metadata=metadata))


def write_text_atomic(path: Path, text: str, mode: int | None = None) -> None:
    """Write a UTF-8 text file atomically (permissions `mode`, default 0644)."""
    write_atomic(path, lambda temporary: Path(temporary).write_text(text, encoding="utf-8"), mode)


def torch_save_atomic(obj: object, path: Path) -> None:
    """`torch.save` atomically (for training state made only of tensors and plain containers)."""
    write_atomic(path, lambda temporary: torch.save(obj, temporary))
