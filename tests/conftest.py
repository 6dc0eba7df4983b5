"""Session fixtures shared by the core tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidestep.testing import make_tiny_checkpoints


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny but complete ACE-Step 1.5 checkpoint tree, built once per test session (treat it as read-only)."""
    return make_tiny_checkpoints(tmp_path_factory.mktemp("tiny") / "checkpoints")
