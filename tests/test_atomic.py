"""Atomic writes are durable: the file is synced before its rename and its folder after it (checked with strace)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

WRITE = "import sys; from pathlib import Path; from sidestep.atomic import write_text_atomic; write_text_atomic(Path(sys.argv[1]), 'hi')"


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
def test_the_file_is_synced_before_the_rename_and_the_folder_after(tmp_path):
    target, log = tmp_path / "out" / "note.txt", tmp_path / "trace"
    traced = subprocess.run(
        ["strace", "-f", "-y", "-e", "trace=fsync,rename,renameat,renameat2", "-o", str(log), sys.executable, "-c", WRITE, str(target)],
        check=False, capture_output=True, text=True, timeout=300,
    )
    if traced.returncode != 0 and "ptrace" in traced.stderr:
        pytest.skip(f"strace cannot trace here: {traced.stderr.strip()}")
    assert traced.returncode == 0, traced.stderr
    assert target.read_text() == "hi"
    calls = [line.split(None, 1)[1] for line in log.read_text().splitlines() if str(target.parent) in line]
    synced_file = next(i for i, call in enumerate(calls) if call.startswith("fsync(") and "/.note.txt." in call)
    renamed = next(i for i, call in enumerate(calls) if call.startswith("rename") and f'"{target}"' in call)
    synced_folder = next(i for i, call in enumerate(calls) if call.startswith("fsync(") and f"<{target.parent}>" in call)
    assert synced_file < renamed < synced_folder, calls
