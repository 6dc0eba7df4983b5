"""One writer per run folder: an exclusive lock held for the whole run, repair of what a killed writer left, and
one run per folder over time (what an earlier run left, and emptying the folder for a fresh start)."""

from __future__ import annotations

import fcntl
import json
import os
import re
import shlex
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Self

from ..atomic import replace_synced
from ..errors import TrainingError
from .checkpoints import RETIRED_ENTRY, RETIRED_MARK
from .layout import LOCK_FILE, RunLayout

_RETIRED = re.compile(rf"^\.(?P<name>.+){re.escape(RETIRED_MARK)}[^.]+$")
_STAGING = re.compile(r"^\..+\.tmp$")


class RunLock:
    """An exclusive `flock` on `RUN/.sidestep.lock`, which names its holder; the kernel drops it when the holder dies."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = RunLayout(self.run_dir).lock
        self._handle: int | None = None
        self.warnings: list[str] = []

    def acquire(self) -> Self:
        """Take the lock, or raise TrainingError naming the process that holds it."""
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            handle = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        except OSError as error:
            raise TrainingError(
                f"Cannot write to the run folder {self.run_dir} ({error.strerror or error}); choose a folder you can write to."
            ) from error
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe_holder(os.pread(handle, 4096, 0))
            os.close(handle)
            raise TrainingError(
                f"Another training run is writing to {self.run_dir} ({holder}). Wait for it to finish or stop it, "
                "or choose another output folder; two runs in one folder would overwrite each other's checkpoints."
            ) from None
        except OSError as error:  # a file system without locks (some network mounts): run, but say so
            os.close(handle)
            self.warnings.append(
                f"{self.run_dir} cannot be locked ({error.strerror or error}); make sure no other run writes to it"
            )
            return self
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "command": shlex.join([os.path.basename(sys.executable), *sys.argv]),
        }
        os.ftruncate(handle, 0)
        os.pwrite(handle, (json.dumps(holder) + "\n").encode("utf-8"), 0)
        self._handle = handle
        return self

    def release(self) -> None:
        """Give the lock up (the file stays, emptied, for the next run)."""
        if self._handle is not None:
            os.ftruncate(self._handle, 0)
            os.close(self._handle)
            self._handle = None

    def __enter__(self) -> Self:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def _describe_holder(raw: bytes) -> str:
    """'pid 12 on host, since …, running: …' from a lock file's content (what is known of it)."""
    try:
        holder = json.loads(raw.decode("utf-8"))
        return f"pid {holder['pid']} on {holder['host']}, since {holder['started']}, running: {holder['command']}"
    except (ValueError, KeyError, TypeError):
        return "a process that is still starting"


def recover_run_folder(run_dir: str | Path) -> list[str]:
    """Repair a run folder after a kill (call while holding its lock): put back a folder that was moved aside while
    its replacement moved in, and delete unfinished staging folders and files. Returns one line per repair."""
    notes = []
    layout = RunLayout(run_dir)
    for folder in (layout.root, layout.checkpoints):
        if not folder.is_dir():
            continue
        for entry in sorted(folder.iterdir()):
            retired = _RETIRED.match(entry.name)
            if retired and entry.is_dir() and not entry.is_symlink():
                target, kept = folder / retired["name"], entry / RETIRED_ENTRY
                if kept.is_dir() and not target.exists():
                    replace_synced(kept, target)
                    notes.append(f"put back {target}, which an interrupted save had moved aside")
                shutil.rmtree(entry, ignore_errors=True)
            elif _STAGING.match(entry.name):
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
                notes.append(f"removed {entry}, left unfinished by an interrupted save")
    return notes


def earlier_run_files(run_dir: str | Path) -> list[Path]:
    """What an earlier run left in a run folder (everything but the lock file), sorted; empty for a new folder."""
    root = Path(run_dir)
    return sorted(entry for entry in root.iterdir() if entry.name != LOCK_FILE) if root.is_dir() else []


def empty_run_folder(run_dir: str | Path) -> list[Path]:
    """Delete what an earlier run left in `run_dir` (call while holding its lock). Returns what was deleted."""
    removed = earlier_run_files(run_dir)
    for entry in removed:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    return removed
