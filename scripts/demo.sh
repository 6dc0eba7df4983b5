#!/usr/bin/env bash
# Set up the runtime only (fast when already done), then run the whole job on the embedded default:
# a tiny model tree and a few synthetic songs → dataset → LoRA (live progress) → a sampled clip.
# Arguments go to `python -m sidestep demo` (e.g. --checkpoint-dir ./checkpoints to use real checkpoints).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh runtime
exec .venv/bin/python -m sidestep demo "$@"
