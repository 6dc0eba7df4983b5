"""Process memory behaviour: hand freed memory back to the system, so the resident peak stays near what is live.

glibc serves blocks under its mmap threshold (raised up to 32 MB after the first large block is freed) from a heap
that it rarely shrinks, and the holes one transformer layer's freed activations leave are seldom reused by the next
layer's: measured on a full-size CPU training step, the resident set grows by 2 GB over the forward pass while what
is allocated grows by 0.15 GB. By default the CPU trainer therefore calls `trim_freed_memory` (glibc
`malloc_trim(0)`: the free pages inside the heap go back to the system, ~10 ms on a 5 GB heap) before every DiT layer
runs, forward and recomputed, and after every optimiser step. `SIDESTEP_LOW_MEMORY=1` also fixes the mmap threshold
at 128 kB when training or encoding starts (what `MALLOC_MMAP_THRESHOLD_=131072` does): every large block is then
mapped and unmapped, but on the CPU steps get markedly slower (each block is page-faulted afresh).
`SIDESTEP_LOW_MEMORY=0` keeps glibc's behaviour untouched. A user's own MALLOC_* variables or glibc malloc tunables
always win (then nothing is changed); without glibc (musl, macOS, Windows) nothing is changed either. Any process
(ComfyUI included).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys
from collections.abc import Callable, Iterable
from typing import Any

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
THRESHOLD_BYTES = 128 * 1024
# "1": lowest peak (fixed mmap threshold and trimming, slower steps); "0": glibc's own behaviour; unset: trimming.
ENABLE_VARIABLE = "SIDESTEP_LOW_MEMORY"
_USER_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The C library if it is glibc (it has mallopt and malloc_trim), else None."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt.argtypes, libc.mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
        libc.malloc_trim.argtypes, libc.malloc_trim.restype = (ctypes.c_size_t,), ctypes.c_int
    except (OSError, AttributeError):  # not glibc: nothing to tune
        return None
    return libc


def _left_to_us(setting: str) -> ctypes.CDLL | None:
    """glibc, when SIDESTEP_LOW_MEMORY allows `setting` ("trim" or "low") and the user chose no malloc settings."""
    chosen = any(name in os.environ for name in _USER_VARIABLES) or "malloc" in os.environ.get("GLIBC_TUNABLES", "")
    wanted = os.environ.get(ENABLE_VARIABLE, "")
    if chosen or wanted == "0" or (setting == "low" and wanted != "1"):
        return None
    return _glibc()


def return_freed_memory() -> bool:
    """Fix glibc's mmap and trim thresholds at 128 kB when asked to (=1); True if they are set now, False otherwise."""
    libc = _left_to_us("low")
    return libc is not None and bool(libc.mallopt(M_MMAP_THRESHOLD, THRESHOLD_BYTES)) and bool(
        libc.mallopt(M_TRIM_THRESHOLD, THRESHOLD_BYTES)
    )


def trim_freed_memory() -> bool:
    """Hand the free pages inside glibc's heaps back to the system (unless opted out); True if it ran."""
    libc = _left_to_us("trim")
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


def trim_before_each(modules: Iterable[Any]) -> Callable[[], None]:
    """Trim before each of `modules` (torch modules) runs, forward or recomputed; returns what removes the hooks.

    Nothing is hooked when trimming is opted out or glibc is absent.
    """
    if _left_to_us("trim") is None:
        return lambda: None

    def trim(*_: Any) -> None:  # a pre-hook's return value would replace the module's inputs
        trim_freed_memory()

    handles = [module.register_forward_pre_hook(trim) for module in modules]
    return lambda: [handle.remove() for handle in handles]


MADV_DONTNEED = 4  # Linux's madvise advice: drop these pages (a file mapping's are read again if touched)
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@functools.cache
def _madvise() -> Callable[[int, int, int], int] | None:
    """The C library's madvise on Linux, else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        madvise = ctypes.CDLL(None).madvise
    except (OSError, AttributeError):
        return None
    madvise.argtypes, madvise.restype = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int), ctypes.c_int
    return madvise


def release_pages(tensor: Any) -> None:
    """Drop the memory pages lying wholly inside `tensor`'s bytes, for a tensor about to be discarded.

    safetensors hands out tensors that are views of one mapping of the whole file, which lives while any tensor read
    through it does: every page of a tensor converted on reading (fp8, another dtype) would otherwise stay resident
    beside its converted copy until the last tensor from that file is gone. Only pages no other tensor shares are
    dropped; nothing happens without Linux.
    """
    madvise = _madvise()
    if madvise is None or tensor.device.type != "cpu":
        return
    start = tensor.data_ptr()
    first, last = -(-start // _PAGE) * _PAGE, (start + tensor.numel() * tensor.element_size()) // _PAGE * _PAGE
    if last > first:
        madvise(first, last - first, MADV_DONTNEED)
