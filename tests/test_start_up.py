"""A start in a second: the command line and the core modules the nodes import load without the heavy libraries
(diffusers, transformers, peft, lycoris, tensorboard); each command imports what it needs when it runs."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

HEAVY = ("diffusers", "transformers", "peft", "lycoris", "tensorboard")
NODES = Path(__file__).resolve().parent.parent / "nodes"


def heavy_after(code: str) -> list[str]:
    """The heavy libraries a fresh interpreter holds after running `code`."""
    probe = f"{code}\nimport sys\nprint('loaded:', *(name for name in {HEAVY!r} if name in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return done.stdout.splitlines()[-1].split()[1:]


def test_the_command_line_and_its_parser_load_without_heavy_libraries():
    assert heavy_after("import sidestep.cli\nsidestep.cli.build_parser()") == []


def test_sidestep_models_lists_without_heavy_libraries(tiny_root):
    code = f"from sidestep.cli import main\nassert main(['models', {str(tiny_root)!r}]) == 0"
    assert heavy_after(code) == []


def test_the_core_modules_the_nodes_import_at_load_are_light():
    modules = sorted({
        node.module
        for path in NODES.glob("*.py")
        for node in ast.parse(path.read_text(encoding="utf-8")).body
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sidestep")
    })
    assert "sidestep.training.layout" in modules  # the nodes' imports were found
    assert heavy_after("\n".join(f"import {name}" for name in modules)) == []
