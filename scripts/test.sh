#!/usr/bin/env bash
# Set up the test stack (fast when already done), then run pytest; arguments go to pytest (default: tests/, and then
# the labelling tests again on the oldest transformers the pack accepts, from .venv/transformers-min).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh test

whole_suite=0
if [[ $# -eq 0 ]]; then
    set -- tests
    whole_suite=1
fi
status=0
.venv/bin/python -m pytest "$@" || status=$?
if [[ $status -eq 5 ]]; then
    echo "[test] pytest collected no tests: treated as a failure" >&2
    exit 1
fi
if [[ $whole_suite -eq 1 ]]; then
    export PYTHONPATH=.venv/transformers-min
    echo "[test] the labelling tests on transformers $(.venv/bin/python -c 'import transformers; print(transformers.__version__)')"
    minimum=0
    .venv/bin/python -m pytest tests/test_labeling.py || minimum=$?
    [[ $status -ne 0 ]] || status=$minimum
fi
exit "$status"
