"""Keep what a native decoder prints on the process's stderr out of the output, and hand its messages to the caller.

libmpg123 (inside libsndfile) writes notes such as `Note: Illegal Audio-MPEG-Header …` straight to file descriptor 2,
where Python's warnings and logging cannot catch them. `decoder_messages_into` points fd 2 at a temporary file for the
length of one decode. fd 2 belongs to the whole process, so inside ComfyUI other threads may write there meanwhile: a
lock lets one capture run at a time, Python's own stderr is flushed before and after, and every captured line that is
not a decoder message is written back to the real stderr when the block ends (late, but never lost).
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_STDERR = 2
_LOCK = threading.Lock()
# libmpg123's messages: "Note: …", "Warning: …", "Error: …" and its "[src/libmpg123/x.c:f():123] error: …" lines.
_DECODER_LINE = re.compile(rb"(Note|Warning|Error): |\[\S*mpg123\S*\] ")


def _flush_python_stderr() -> None:
    """Write out what Python has buffered for stderr, so that it lands on the stderr it was meant for."""
    for stream in (sys.stderr, sys.__stderr__):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass


@contextmanager
def decoder_messages_into(messages: list[str]) -> Iterator[None]:
    """Inside the block, what is written to fd 2 is captured; on exit the decoder's lines are appended to
    `messages` (without their line ends) and any other line goes on to the real stderr."""
    with _LOCK:
        try:
            saved = os.dup(_STDERR)
        except OSError:  # no fd 2 (a detached process): nothing can be printed there anyway
            saved = None
        if saved is None:
            yield
            return
        with tempfile.TemporaryFile() as capture:
            _flush_python_stderr()
            os.dup2(capture.fileno(), _STDERR)
            try:
                yield
            finally:
                _flush_python_stderr()
                os.dup2(saved, _STDERR)
                os.close(saved)
                capture.seek(0)
                _sort_out(capture.read(), messages)


def _sort_out(captured: bytes, messages: list[str]) -> None:
    """Append the decoder's lines of `captured` to `messages`; write the other lines to stderr as they were."""
    others = []
    for line in captured.splitlines(keepends=True):
        if _DECODER_LINE.match(line):
            messages.append(line.decode("utf-8", "replace").rstrip("\r\n"))
        else:
            others.append(line)
    data = b"".join(others)
    while data:
        data = data[os.write(_STDERR, data) :]
