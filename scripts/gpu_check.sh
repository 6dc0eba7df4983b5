#!/usr/bin/env bash
# On a CUDA machine (under 10 minutes): golden parity on the GPU within bf16/TF32 tolerances, a tiny train → resume →
# sample round trip through the CLI on CUDA, then the full-size benchmarks that fill the README's measured GPU table.
# SIDESTEP_CHECK_DEVICE=cpu runs the same checks on the CPU (to try the script itself); the benchmarks then are skipped.
# Usage: bash scripts/gpu_check.sh [OUT_DIR]   (default: a temporary folder; the benchmark JSON goes to OUT_DIR/results)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
DEVICE="${SIDESTEP_CHECK_DEVICE:-cuda}"
OUT="${1:-$(mktemp -d)}"
mkdir -p "$OUT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

if [[ "$DEVICE" == cuda ]] && ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "[gpu_check] no CUDA device visible to torch; nothing measured (the README's GPU table stays estimated)" >&2
    exit 2
fi
[[ "$DEVICE" == cuda ]] && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"

echo "[gpu_check] 1/3 golden parity on $DEVICE"
DEVICE="$DEVICE" timeout 120 "$PYTHON" - <<'EOF'
import os
import torch
from tests.test_model import FIXTURES, vectors, with_prefix
from sidestep.model import TRAINING_PARTS, AceStepConditionGenerationModel
from sidestep.training.objective import drop_condition, masked_mse, noisy_latents

device = torch.device(os.environ["DEVICE"])
torch.backends.cuda.matmul.allow_tf32 = True  # what a user's run gets; TF32 and bf16 tolerances below
for variant in ("turbo", "base"):
    model = AceStepConditionGenerationModel.from_pretrained(FIXTURES / variant, dtype=None, device=device, parts=TRAINING_PARTS)
    data = {k: v.to(device) for k, v in with_prefix(vectors(variant, "training"), "fixed/").items()}
    for precision, loss_rtol, velocity_rel in ((torch.float32, 1e-3, 2e-3), (torch.bfloat16, 2e-3, 0.02)):
        with torch.autocast(device.type, dtype=precision, enabled=precision != torch.float32):
            states = drop_condition(data["in/encoder_hidden_states"], data["in/cfg_keep_mask"], model.null_condition_emb)
            velocity, _ = model.decoder(
                hidden_states=noisy_latents(data["in/x0"], data["in/noise"], data["in/t"]), timestep=data["in/t"],
                timestep_r=data["in/t"], attention_mask=data["in/attention_mask"], encoder_hidden_states=states,
                encoder_attention_mask=data["in/encoder_attention_mask"], context_latents=data["in/context_latents"],
            )
        loss, _ = masked_mse(velocity.float(), data["in/noise"] - data["in/x0"])
        loss_error = float((loss - data["out/loss"]).abs() / data["out/loss"])
        drift = float((velocity.float() - data["out/velocity"]).norm() / data["out/velocity"].norm())
        print(f"{variant} {precision}: loss rel {loss_error:.2e} (≤ {loss_rtol:g}), velocity rel L2 {drift:.2e} (≤ {velocity_rel:g})")
        assert loss_error <= loss_rtol and drift <= velocity_rel, "golden parity outside the tolerance"
EOF

echo "[gpu_check] 2/3 tiny train → resume → sample through the CLI on $DEVICE"
WORK="$OUT/tiny"
rm -rf "$WORK" && mkdir -p "$WORK/songs"
"$PYTHON" -c "from pathlib import Path; from benchmarks.encoding import write_song; [write_song(Path('$WORK/songs/song{}.wav'.format(i)), 6.0, i) for i in range(2)]"
sidestep() { timeout 150 "$PYTHON" -m sidestep "$@"; }
sidestep make-tiny-checkpoints "$WORK/checkpoints"
common=(--checkpoint-dir "$WORK/checkpoints" --model-variant acestep-v15-turbo --device "$DEVICE")
sidestep encode "${common[@]}" --dataset-dir "$WORK/songs" --output-dir "$WORK/tensors"
train=(train "${common[@]}" --dataset-dir "$WORK/tensors" --output-dir "$WORK/run" --rank 4 --alpha 8 --save-every 1)
sidestep "${train[@]}" --epochs 1
sidestep "${train[@]}" --epochs 2 --resume-from "$WORK/run/checkpoints/epoch_1"
sidestep sample "${common[@]}" --adapter "$WORK/run/final" --duration 4 --out "$WORK/song.wav"
test -s "$WORK/song.wav"

if [[ "$DEVICE" == cuda ]]; then
    echo "[gpu_check] 3/3 full-size benchmarks (trainer rows fill the VRAM table; steps give bf16 step time)"
    timeout 330 "$PYTHON" -m benchmarks --sizes full --suites trainer,steps --quick --output-dir "$OUT/results"
    echo "[gpu_check] done: replace 'estimated' in the README's VRAM table with the figures in $OUT/results"
else
    echo "[gpu_check] done on $DEVICE (no benchmarks without CUDA)"
fi
