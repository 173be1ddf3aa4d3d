#!/usr/bin/env bash
# One-shot proof of the CUDA path on a lent GPU machine. Prepared and dry-run on a
# CPU first, because device time is scarce (about 15 minutes a session, start-up included).
#
#   bash scripts/gpu_proof.sh DATA_DIR OUT_DIR
#
# DATA_DIR is NEU-CLS, or its lossless PNG copy (scripts/png_copy.py) where the 78 MB of BMPs
# cannot travel. Runs from the repository root with PYTHONPATH=. (the GPU machine has torch,
# torchvision, onnx, onnxscript, onnxruntime, rich and pytest-benchmark, and no pip access).
# Every step runs under its own time limit and its exit code is recorded; a failing step does
# not stop the later ones, because one run has to tell us everything that breaks.
#
# Environment knobs (for the CPU dry run): DEVICE (default cuda), EPOCHS (default 3),
# EXTRA (more `bench run` flags), TS_EXTRA (more `bench train-speed` flags), BUDGET_S
# (whole-script budget, default 540).
set -uo pipefail
cd "$(dirname "$0")/.."

DATA=${1:?usage: gpu_proof.sh DATA_DIR OUT_DIR}
OUTDIR=${2:?usage: gpu_proof.sh DATA_DIR OUT_DIR}
DEVICE=${DEVICE:-cuda}
EPOCHS=${EPOCHS:-3}
EXTRA=${EXTRA:-}
BUDGET_S=${BUDGET_S:-540}
EXPECTED_PIXEL_DIGEST=452d74bde902b69a4bf863978f94bdff5d83cfa42511097073b8855fce6b444f

export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
export NEU_CACHE_DIR=${NEU_CACHE_DIR:-$(mktemp -d)}
WORK=$(mktemp -d)
RUN=$WORK/run
mkdir -p "$OUTDIR"
SUMMARY=$OUTDIR/summary.txt
T0=$(date +%s)

left() { echo $((BUDGET_S - ($(date +%s) - T0))); }

# step NAME LIMIT_S CMD...: run CMD with a time limit, log to $WORK/NAME.log, record rc + time.
step() {
    local name=$1 limit=$2 t rc
    shift 2
    if [ "$(left)" -lt 20 ]; then
        echo "step $name: SKIPPED (budget spent)" | tee -a "$SUMMARY"
        return
    fi
    [ "$limit" -gt "$(left)" ] && limit=$(left)
    t=$(date +%s)
    timeout -k 10 "$limit" "$@" >"$WORK/$name.log" 2>&1
    rc=$?
    echo "step $name: rc=$rc in $(($(date +%s) - t)) s (limit $limit s)" | tee -a "$SUMMARY"
    tail -n 25 "$WORK/$name.log"
}

{
    echo "# gpu_proof $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "commit: $(cat .gpu_commit 2>/dev/null || git rev-parse HEAD 2>/dev/null || echo unknown)"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 || true
    python3 - <<'EOF'
import platform, torch, torchvision
print("python", platform.python_version(), "| torch", torch.__version__,
      "| torchvision", torchvision.__version__, "| cuda", torch.version.cuda,
      "| cudnn", torch.backends.cudnn.version())
for mod in ("onnx", "onnxscript", "onnxruntime"):
    try:
        m = __import__(mod); print(mod, m.__version__)
    except Exception as e:  # recorded, not fatal: the steps below say what it breaks
        print(mod, "MISSING", e)
import onnxruntime
print("ort providers", onnxruntime.get_available_providers())
if torch.cuda.is_available():
    print("gpu", torch.cuda.get_device_name(), "bf16", torch.cuda.is_bf16_supported())
from bench.cpu import cpu_isa, isa_label
print("cpu isa", isa_label(), cpu_isa())
EOF
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2) x $(nproc)"
} 2>&1 | tee "$SUMMARY"

# 1. The data arrived intact: the same pixels as the BMPs on the CPU machine.
digest=$(python3 scripts/png_copy.py "$DATA")
if [ "$digest" = "$EXPECTED_PIXEL_DIGEST" ]; then
    echo "data: pixel digest matches the BMP original ($digest)" | tee -a "$SUMMARY"
else
    echo "data: PIXEL DIGEST MISMATCH $digest != $EXPECTED_PIXEL_DIGEST" | tee -a "$SUMMARY"
fi
step inspect 60 python3 -m neu inspect "$DATA" --json

# 2. The product's main job: all four models, default recipe (AMP on CUDA), speed rows (eager
#    FP32, AMP + channels_last, largest batch), export of all four, parity with ORT on CPU.
# shellcheck disable=SC2086
step run 360 python3 -m bench run --models all --epochs "$EPOCHS" --weights none \
    --device "$DEVICE" --data "$DATA" --export all --out "$RUN" \
    --speed-rounds 2 --speed-min-seconds 0.5 $EXTRA

# 3. Where the training step's time goes at the recipe's batch: fp32 vs AMP vs compiled, the
#    same steps interleaved in one process (run 1 found batch-32 training launch-bound).
step trainspeed 120 python3 -m bench train-speed --models all --device "$DEVICE" \
    --precisions fp32,auto --steps 20 --warmup-steps 3 --out "$WORK/trainspeed.json" ${TS_EXTRA:-}
# Compilation takes a minute or more per model: one model, bounded on its own.
step compile 120 python3 -m bench train-speed --models resnet50 --device "$DEVICE" \
    --precisions auto,auto+compile --steps 20 --warmup-steps 3 \
    --out "$WORK/trainspeed-compile.json" ${TS_EXTRA:-}

# 4. The tests, with CUDA present: needs_cuda tests run here and nowhere else.
step tests 150 python3 -m pytest tests -q -x --benchmark-disable -p no:cacheprovider \
    -m "needs_cuda or not slow"

echo "total: $(($(date +%s) - T0)) s" | tee -a "$SUMMARY"

# Bring back what a reader needs; checkpoints and ONNX files stay (hundreds of MB).
cp "$WORK"/run.log "$WORK"/trainspeed.log "$WORK"/compile.log "$WORK"/tests.log "$OUTDIR"/ 2>/dev/null
cp "$RUN"/results.json "$RUN"/report.md "$OUTDIR"/ 2>/dev/null
tar -C "$WORK" -czf "$OUTDIR/run.tgz" --exclude='*.pt' --exclude='*.onnx' \
    --exclude='*.onnx.data' . 2>/dev/null
ls -la "$OUTDIR"
