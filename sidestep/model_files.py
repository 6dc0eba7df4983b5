"""What a safetensors model file holds, read from its header alone (nothing is ever unpickled), and the plain reason
when a file cannot be used: a partial or zero-filled download, a renamed pickle, a tensor type we cannot read, a
dangling link, a file we may not read."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .errors import CheckpointError

# The tensor types safetensors reads into torch tensors (its format's names).
READABLE_DTYPES = frozenset(
    {"BOOL", "U8", "I8", "U16", "I16", "U32", "I32", "U64", "I64", "F16", "BF16", "F32", "F64", "C64",
     "F8_E4M3", "F8_E5M2", "F8_E4M3FNUZ", "F8_E5M2FNUZ"}
)
HEADER_LIMIT = 100_000_000  # safetensors refuses larger headers
DOWNLOAD_AGAIN = "Download it again (compare its size with the size on the download page)."
# ACE-Step 1.5 file and folder names as published: acestep_v1.5_*, ace_step_1.5_*_aio, qwen_0.6b_ace15, ace_1.5_vae.
_ACE_NAME = re.compile(r"ace[-_ ]?step|ace[-_ ]?v?1[._]5|ace15", re.IGNORECASE)
_PICKLE_STARTS = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")
_NOT_MODELS = ((b"version ", "a Git LFS pointer (the download fetched the link, not the file)"), (b"<", "a web page (HTML)"))


def shown(path: str | Path) -> str:
    """A path or name as text that prints anywhere: bytes that are not UTF-8 appear as \\xNN."""
    return os.fsencode(str(path)).decode("utf-8", "backslashreplace")


def looks_like_ace_step(name: str) -> bool:
    """Whether a file or folder name says ACE-Step (1.5)."""
    return bool(_ACE_NAME.search(name))


@dataclass(frozen=True)
class Header:
    """Tensor shapes and types and the metadata of a safetensors file."""

    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, str]
    metadata: dict[str, str]


class UnusableFile(CheckpointError):
    """A model file that is there but cannot be used: which file, why, and what to do."""

    def __init__(self, path: Path, reason: str, fix: str) -> None:
        self.path, self.reason, self.fix = path, shown(reason), shown(fix)
        super().__init__(f"{shown(path)} cannot be used: {self.reason}. {self.fix}")


@dataclass(frozen=True)
class SkippedFile:
    """A file or folder that looks like ACE-Step 1.5 but was left out of the model list, with the reason."""

    name: str
    path: Path
    reason: str
    fix: str
    variant: str | None = None  # the official variant its name claims (turbo, xl-sft, ...), if any

    @property
    def message(self) -> str:
        return f"{shown(self.path)} cannot be used: {self.reason}. {self.fix}"

    @classmethod
    def of(cls, name: str, error: UnusableFile, variant: str | None = None) -> SkippedFile:
        return cls(name, error.path, error.reason, error.fix, variant)


def describe_skipped(skipped: list[SkippedFile]) -> str:
    """The 'skipped, because …' lines for files that look like ACE-Step 1.5 but cannot be used."""
    return "\n".join(f"{shown(s.name)}  skipped, because {s.reason}. {s.fix}  ({shown(s.path)})" for s in skipped)


def _unreadable(path: Path, error: OSError) -> UnusableFile:
    """The reason an OSError gives, in words a user can act on."""
    if isinstance(error, FileNotFoundError) and path.is_symlink():
        return UnusableFile(
            path, f"it is a link to {shown(os.readlink(path))}, which does not exist",
            "Connect the drive it points to, or make the link point at the file again.",
        )
    if isinstance(error, PermissionError):
        return UnusableFile(
            path, "this user may not read it (permission denied)",
            "Let this user read it (chmod a+r on the file, a+x on its folders) or run as its owner.",
        )
    return UnusableFile(path, f"it cannot be opened ({error.strerror or error})", "Check the file and the folders above it.")


def header_bytes(path: Path) -> tuple[bytes, int]:
    """The raw JSON header of a safetensors file and the file's size; UnusableFile when there is none to read."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            start = handle.read(8)
            length = int.from_bytes(start, "little") if len(start) == 8 else 0
            raw = handle.read(length) if 0 < length <= min(HEADER_LIMIT, size - 8) else b""
    except OSError as error:
        raise _unreadable(path, error) from error
    if start.startswith(_PICKLE_STARTS):
        raise UnusableFile(
            path, "it is a PyTorch pickle (.pt/.ckpt) renamed to .safetensors, and Side-Step never opens pickles",
            "Download the .safetensors version of this model.",
        )
    if raw.strip(b"\0"):
        return raw, size
    if size < 8:
        raise UnusableFile(path, f"it is only {size} bytes long (an interrupted download)", DOWNLOAD_AGAIN)
    if not start.strip(b"\0") or raw:
        raise UnusableFile(path, "it is filled with zero bytes (an interrupted download)", DOWNLOAD_AGAIN)
    if length <= HEADER_LIMIT:
        raise UnusableFile(path, f"it is cut short: its header alone needs {length + 8:,} bytes, the file has {size:,}", DOWNLOAD_AGAIN)
    for start_of, what in _NOT_MODELS:
        if start.startswith(start_of):
            raise UnusableFile(path, f"it is {what}, not the model", DOWNLOAD_AGAIN)
    raise UnusableFile(path, "it does not start with a safetensors header", "Use a .safetensors model file.")


def read_header(path: Path) -> Header:
    """The checked header of a safetensors file; UnusableFile says what is wrong with it."""
    return parse_header(path, *header_bytes(path))


def parse_header(path: Path, raw: bytes, size: int) -> Header:
    """Check a header's JSON: every tensor's type readable and its bytes inside the file."""
    try:
        table = json.loads(raw)
    except ValueError:
        table = None
    if not isinstance(table, dict):
        raise UnusableFile(path, "its header is not a safetensors header (a damaged file)", DOWNLOAD_AGAIN)
    metadata = table.pop("__metadata__", None)
    metadata = metadata if isinstance(metadata, dict) else {}
    shapes: dict[str, tuple[int, ...]] = {}
    dtypes: dict[str, str] = {}
    end = 0
    for name, info in table.items():
        try:
            dtype, shape, (_, last) = info["dtype"], tuple(int(n) for n in info["shape"]), info["data_offsets"]
            end = max(end, int(last))
        except (TypeError, KeyError, ValueError):
            raise UnusableFile(path, f"the entry of tensor {name!r} in its header is damaged", DOWNLOAD_AGAIN) from None
        if dtype not in READABLE_DTYPES:
            raise UnusableFile(
                path, f"tensor {name} is stored as {dtype!r}, a number type Side-Step's safetensors cannot read",
                "Use a bf16, fp16 or fp32 copy of this model (ComfyUI's repackaged ACE-Step files are bf16).",
            )
        shapes[name], dtypes[name] = shape, dtype
    needed = 8 + len(raw) + end
    if needed > size:
        raise UnusableFile(path, f"it is cut short: {size:,} of its {needed:,} bytes are there (an interrupted download)", DOWNLOAD_AGAIN)
    return Header(shapes, dtypes, {str(key): str(value) for key, value in metadata.items()})


@contextmanager
def readable_path(path: Path) -> Iterator[str]:
    """A name safetensors and tokenizers can open for a file or folder: the path itself, or for a name that is not
    UTF-8 (which they refuse) the /proc/self/fd entry of the opened file or folder."""
    text = str(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        pass
    else:
        yield text
        return
    if not Path("/proc/self/fd").is_dir():
        raise UnusableFile(path, "its name is not valid UTF-8", "Rename it (or its folder) with plain UTF-8 characters.")
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError as error:
        raise _unreadable(path, error) from error
    try:
        yield f"/proc/self/fd/{descriptor}"
    finally:
        os.close(descriptor)
