#!/usr/bin/env bash
# Set up the test stack (fast when already done), then run pytest; arguments go to pytest (default: tests/, and then
# the labelling tests again on the oldest transformers the pack accepts, from .venv/transformers-min).
# The run gets a temporary folder of its own (TMPDIR), removed afterwards; the run fails if it changed ../shared or
# left files in that folder outside pytest's own tmp_path space.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh test

whole_suite=0
if [[ $# -eq 0 ]]; then
    set -- tests
    whole_suite=1
fi
RUN_TMP="$(mktemp -d "${TMPDIR:-/tmp}/sidestep-tests.XXXXXX")"
trap 'rm -rf "$RUN_TMP"' EXIT
SHARED="$ROOT/../shared"
listing() { if [[ -d "$SHARED" ]]; then (cd "$SHARED" && find . 2>/dev/null | LC_ALL=C sort); fi; }
before="$(listing)"
# torch keeps its compile cache in the temporary folder: the run's own, kept apart from what tests leave behind.
export TMPDIR="$RUN_TMP" TORCHINDUCTOR_CACHE_DIR="$RUN_TMP/cache/torchinductor"

status=0
.venv/bin/python -m pytest --basetemp="$RUN_TMP/pytest" "$@" || status=$?
if [[ $status -eq 5 ]]; then
    echo "[test] pytest collected no tests: treated as a failure" >&2
    exit 1
fi
if [[ $whole_suite -eq 1 ]]; then
    minimum=0
    version="$(PYTHONPATH=.venv/transformers-min .venv/bin/python -c 'import transformers; print(transformers.__version__)')"
    echo "[test] the labelling tests on transformers $version"
    PYTHONPATH=.venv/transformers-min .venv/bin/python -m pytest --basetemp="$RUN_TMP/pytest-min" tests/test_labeling.py || minimum=$?
    [[ $status -ne 0 ]] || status=$minimum
fi
if [[ "$(listing)" != "$before" ]]; then
    echo "[test] the run changed $SHARED:" >&2
    diff <(echo "$before") <(listing) >&2 || true
    status=1
fi
leftover="$(find "$RUN_TMP" -mindepth 1 -maxdepth 1 ! -name 'pytest*' ! -name cache)"
if [[ -n "$leftover" ]]; then
    echo "[test] the run left these in its temporary folder (a test or server did not clean up):" >&2
    echo "$leftover" >&2
    status=1
fi
exit "$status"
