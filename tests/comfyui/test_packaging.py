"""Packaging of the node pack: requirements.txt matches pyproject.toml, covers every core import, and passes `comfy node validate`."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path
from importlib.metadata import packages_distributions, requires

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from .host import PACK_NAME, REPO_ROOT, ComfyUIHost

PROVIDED_BY_COMFYUI = {"torch"}


def _requirements() -> dict[str, Requirement]:
    """requirements.txt by canonical package name."""
    lines = (REPO_ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines()
    parsed = [Requirement(line) for line in (line.split("#", 1)[0].strip() for line in lines) if line]
    return {canonicalize_name(req.name): req for req in parsed}


def _core_imports() -> set[str]:
    """Top-level names of the third-party modules the core imports at module level."""
    names = set()
    for path in (REPO_ROOT / "sidestep").rglob("*.py"):
        for statement in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(statement, ast.Import):
                names |= {alias.name.split(".")[0] for alias in statement.names}
            elif isinstance(statement, ast.ImportFrom) and statement.level == 0 and statement.module:
                names.add(statement.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"__future__", "sidestep"}


def test_requirements_repeat_the_pyproject_dependencies() -> None:
    """Every pyproject dependency but torch is in requirements.txt with the same version bounds."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    required = _requirements()
    for line in project["dependencies"]:
        dependency = Requirement(line)
        name = canonicalize_name(dependency.name)
        if name in PROVIDED_BY_COMFYUI:
            assert name not in required, f"{name} must not be in requirements.txt (ComfyUI provides it)"
            continue
        assert name in required, f"{name} is a pyproject dependency missing from requirements.txt"
        assert required[name].specifier == dependency.specifier, name


def _with_their_dependencies(names: set[str]) -> set[str]:
    """`names` plus the packages they require (one level: what pip installs along with them)."""
    found = set(names)
    for name in names:
        found |= {canonicalize_name(Requirement(line).name) for line in requires(name) or [] if "extra ==" not in line}
    return found


def test_requirements_cover_every_core_import() -> None:
    """Each third-party module the core imports at load time comes from a listed package, one they pull in, or torch."""
    owners = packages_distributions()
    listed = _with_their_dependencies(set(_requirements()) | PROVIDED_BY_COMFYUI)
    for module in sorted(_core_imports()):
        distributions = {canonicalize_name(name) for name in owners.get(module, [])}
        assert distributions & listed, f"the core imports {module!r} (from {distributions}) but requirements.txt lacks it"


def test_comfy_node_validate_passes() -> None:
    """The Comfy Registry's own check of pyproject.toml ([project] + [tool.comfy]) and its security scan."""
    comfy = Path(sys.executable).with_name("comfy")
    done = subprocess.run(
        [str(comfy), "--skip-prompt", "--no-enable-telemetry", "node", "validate"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "All validation checks passed" in done.stdout + done.stderr


def test_the_nodes_use_the_packs_own_core_when_another_sidestep_comes_first(tmp_path: Path) -> None:
    """ComfyUI imports the pack as a package and the nodes import the core relatively: a foreign `sidestep` first on
    the server's path (here one that refuses to be imported) changes nothing."""
    foreign = tmp_path / "elsewhere" / "sidestep"
    foreign.mkdir(parents=True)
    (foreign / "__init__.py").write_text('raise ImportError("a foreign sidestep package was imported")\n', encoding="utf-8")
    with ComfyUIHost(name="comfyui-foreign-sidestep", env={"PYTHONPATH": str(foreign.parent)}) as host:
        assert not host.custom_node_import_failed(PACK_NAME), host.log_tail()
        train = host.object_info()["SideStepTrainAdapter"]
        assert "max_grad_norm" in train["input_order"]["optional"]  # a setting only this pack's core declares
        assert "foreign sidestep" not in host.log_text()
