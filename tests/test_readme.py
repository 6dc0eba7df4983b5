"""The README's commands run as printed: every `python -m sidestep ...` line parses with the real command line (a
`--help` form prints its help), every `bash scripts/...` names a script that exists, and the README stays a short
user's guide."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from sidestep.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _commands() -> list[str]:
    """The command lines inside the README's ```bash blocks."""
    blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    return [line.strip() for block in blocks for line in block.replace("\\\n", " ").splitlines() if line.strip()]


SIDESTEP = [line for line in _commands() if line.startswith("python -m sidestep ")]


def test_every_readme_command_is_a_sidestep_command_or_a_script() -> None:
    assert SIDESTEP, "the README shows no sidestep commands"
    for line in _commands():
        if line.startswith("bash "):
            assert (ROOT / shlex.split(line)[1]).is_file(), line
        else:
            assert line.startswith("python -m sidestep "), f"a README command no test runs: {line}"


@pytest.mark.parametrize("line", SIDESTEP)
def test_readme_sidestep_commands_parse_as_printed(line: str) -> None:
    """Each command's flags exist and take the values shown (the flows themselves run in tests/test_cli.py)."""
    arguments = shlex.split(line)[3:]
    if "--help" in arguments:
        done = subprocess.run([sys.executable, "-m", "sidestep", *arguments], capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert done.returncode == 0 and "--max-grad-norm" in done.stdout, done.stderr
        return
    namespace = build_parser().parse_args(arguments)
    assert namespace.command == arguments[0]


def test_the_readme_is_a_short_guide_with_its_sections() -> None:
    assert len(README.splitlines()) <= 300
    for section in ("## Is it learning?", "## Choosing an adapter", "**Adaptive rank**", "## Labelling", "## Performance"):
        assert section in README
    assert "docs/performance.md" in README and (ROOT / "docs" / "performance.md").is_file()
    for picture in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", README):
        assert (ROOT / picture).is_file(), picture
