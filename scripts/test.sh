#!/usr/bin/env bash
# Set up the test stack (fast when already done), then run pytest; arguments go to pytest (default: tests/).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh test

if [[ $# -eq 0 ]]; then
    set -- tests
fi
status=0
.venv/bin/python -m pytest "$@" || status=$?
if [[ $status -eq 5 ]]; then
    echo "[test] pytest collected no tests: treated as a failure" >&2
    exit 1
fi
exit "$status"
