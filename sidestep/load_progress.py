"""transformers' weight progress bars, shown only for models large enough to take a while to load.

A bar that opens and closes at once (the tiny models of the demo and tests, or a small LM) is noise on the terminal
and in ComfyUI's console. Loads of weights under `BAR_FROM_BYTES`, and the writing of tiny models, run with
transformers' bars switched off; the setting is restored when the last such quiet stretch ends, so work on other
threads keeps what the user chose.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

BAR_FROM_BYTES = 1 << 30  # 1 GiB of weights: seconds to read even from a fast disk
_LOCK = threading.Lock()
_quiet_loads = 0
_was_enabled = False


def weight_bytes(folder: Path) -> int:
    """Total size of the weight files (safetensors, bin) in a model folder."""
    return sum(path.stat().st_size for pattern in ("*.safetensors", "*.bin") for path in Path(folder).glob(pattern))


@contextmanager
def load_progress(folder: Path) -> Iterator[None]:
    """Around a transformers `from_pretrained` of `folder`: its progress bars only when the weights are large."""
    if weight_bytes(folder) >= BAR_FROM_BYTES:
        yield
        return
    with quiet_progress():
        yield


@contextmanager
def quiet_progress() -> Iterator[None]:
    """transformers' progress bars off for the duration (nested and threaded uses share one saved setting)."""
    from transformers.utils import logging

    global _quiet_loads, _was_enabled
    with _LOCK:
        if _quiet_loads == 0:
            _was_enabled = logging.is_progress_bar_enabled()
            logging.disable_progress_bar()
        _quiet_loads += 1
    try:
        yield
    finally:
        with _LOCK:
            _quiet_loads -= 1
            if _quiet_loads == 0 and _was_enabled:
                logging.enable_progress_bar()
