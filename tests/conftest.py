"""Session fixtures shared by the core tests."""

from __future__ import annotations

import gc
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sidestep.cli import main
from sidestep.demo import write_demo_songs
from sidestep.memory import trim_freed_memory
from sidestep.tiny_models import make_tiny_checkpoints


@pytest.fixture(scope="module", autouse=True)
def hand_back_freed_memory() -> Iterator[None]:
    """After each test module, what its tests freed goes back to the system: glibc would keep it in the heap, and the
    next modules (and the servers and commands they start) would run beside it (measured: 4.9 GB kept after
    tests/comfyui/test_comfy_objects.py, 1.0 GB once handed back)."""
    yield
    gc.collect()
    trim_freed_memory()


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny but complete ACE-Step 1.5 checkpoint tree, built once per test session (treat it as read-only)."""
    return make_tiny_checkpoints(tmp_path_factory.mktemp("tiny") / "checkpoints")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[[str], Path | None]]:
    """`small_disk("256k")` mounts a tmpfs of that size (unmounted after the test) where root may mount one, else None."""
    mounted: list[Path] = []

    def mount(size: str) -> Path | None:
        point = tmp_path / f"disk{len(mounted)}"
        point.mkdir()
        if shutil.which("mount") is None or os.geteuid() != 0:
            return None
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)], check=False, capture_output=True)
        if done.returncode != 0:
            return None
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], check=True)


@pytest.fixture(scope="module")
def encoded(tiny_root, tmp_path_factory) -> Path:
    """The demo's synthetic songs, encoded with `sidestep encode` for the tiny turbo model."""
    songs = write_demo_songs(tmp_path_factory.mktemp("songs"), seconds=1.0)
    out = tmp_path_factory.mktemp("tensors")
    assert main(["encode", "--checkpoint-dir", str(tiny_root), "--dataset-dir", str(songs), "--output-dir", str(out)]) == 0
    return out
