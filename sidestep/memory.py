"""Process memory behaviour: hand large freed blocks back to the system, so the resident peak is what is really live.

glibc raises its mmap threshold (up to 32 MB) after the first large block is freed and then serves such blocks from a
heap that it rarely shrinks: per-layer weight casts and activations leave the process gigabytes above its live memory.
Fixing the threshold (what `MALLOC_MMAP_THRESHOLD_=131072` does at start-up) maps every large block and unmaps it on
free. Opt-in (SIDESTEP_LOW_MEMORY=1): on the CPU it keeps the resident peak at what is live but makes training steps
markedly slower, since every large block is then mapped and page-faulted afresh. Applied when training or encoding
starts, in any process (ComfyUI included).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
THRESHOLD_BYTES = 128 * 1024
# Set to 1 to hand freed memory back at once (lower peak, slower steps); a user's own MALLOC_* variables always win.
ENABLE_VARIABLE = "SIDESTEP_LOW_MEMORY"
_USER_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def return_freed_memory() -> bool:
    """Fix glibc's mmap and trim thresholds at 128 kB when asked to; True if they are set now, False otherwise."""
    chosen = any(name in os.environ for name in _USER_VARIABLES) or "malloc" in os.environ.get("GLIBC_TUNABLES", "")
    if chosen or os.environ.get(ENABLE_VARIABLE) != "1":
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS, Windows): nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, THRESHOLD_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, THRESHOLD_BYTES))
