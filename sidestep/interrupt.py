"""Ctrl-C (SIGINT) and SIGTERM on the command line: the trainer's own stop — finish the step, save, then end."""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from .training.events import StopSignal

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def stop_on_signals(stop: StopSignal, stream: TextIO | None = None) -> Iterator[list[int]]:
    """While inside, SIGINT/SIGTERM request `stop` instead of killing the process; a second one says the save is under
    way and waits for it. Yields the signals received, in order (the exit status is 128 + the first)."""
    received: list[int] = []

    def handle(signum: int, _frame: object) -> None:
        received.append(signum)  # first: a signal that lands while this one is handled sees it
        name = signal.Signals(signum).name
        out = stream or sys.stderr
        if len(received) > 1:
            out.write(f"\n{name} again: waiting for the checkpoint and final adapter to be saved (a half-written "
                      "checkpoint would be useless); the run ends by itself in a moment.\n")
        else:
            out.write(f"\n{name}: finishing the current step, then saving a checkpoint and the final adapter ...\n")
        out.flush()
        stop.request(f"stopped by {name}")

    previous = {number: signal.signal(number, handle) for number in STOP_SIGNALS}
    try:
        yield received
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
