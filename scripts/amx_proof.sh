#!/usr/bin/env bash
# The bf16 proof on a CPU with bf16 hardware (AMX or avx512_bf16), in one command, because
# such a machine comes by chance: most CI machines are AVX2-only.
#
#   bash scripts/amx_proof.sh DATA_DIR OUT_DIR [STEPS]
#
# STEPS (default "fidelity sweep trainspeed": the two never measured yet first), each logged
# to OUT_DIR/<step>.log, its exit code and wall time in OUT_DIR/summary.txt; a failing step
# does not stop the next:
#   trainspeed  `bench train-speed`: the four models, fp32 vs auto (bf16 here), same process,
#               the ratio per model (goal: ResNet-50, DenseNet, VGG >= 2.5x).         ~15 min
#   fidelity    ShuffleNetV2, 15 epochs from scratch, --amp off and --amp auto on the same
#               split; auto's test accuracy must lie in the fp32 run's 95% interval.  ~15 min
#   sweep       `bench run --models all`, the default recipe: its wall time, expected
#               and actual, per phase (goal: under 60 minutes; 2 cores of an AVX-512
#               EPYC took ~111 min to train, then ~10-15 min of speed step per large
#               model, docs/results.md).                                         3 h or more
# Runs resume: the same command again after an interruption continues each `bench run`.
# On a CPU without bf16 hardware it stops unless FORCE=1 (then `auto` is fp32 and the figures
# prove nothing about bf16). EXTRA: more flags for every `bench run`, TS_EXTRA for
# `train-speed`; a dry run: FORCE=1 EXTRA="--limit-per-class 10 --image-size 64 --epochs 1".
set -uo pipefail
cd "$(dirname "$0")/.."

DATA=${1:?usage: amx_proof.sh DATA_DIR OUT_DIR [STEPS]}
OUTDIR=${2:?usage: amx_proof.sh DATA_DIR OUT_DIR [STEPS]}
STEPS=${3:-fidelity sweep trainspeed}
PY=${PYTHON:-python}
EXTRA=${EXTRA:-}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
mkdir -p "$OUTDIR"
SUMMARY=$OUTDIR/summary.txt

isa=$($PY -c "from bench.cpu import isa_label, has_bf16_hardware as h; print(isa_label(), '| bf16 hardware:', h())")
{
    echo "# amx_proof $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null)"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs) x $(nproc); $isa"
} | tee -a "$SUMMARY"
if [[ $isa != *"bf16 hardware: True"* && ${FORCE:-0} != 1 ]]; then
    echo "no bf16 hardware here: auto would train in fp32 (FORCE=1 runs anyway)" | tee -a "$SUMMARY"
    exit 3
fi

step() {  # step NAME CMD...: run, log, record rc and wall time
    local name=$1 t rc
    shift
    t=$(date +%s)
    "$@" >"$OUTDIR/$name.log" 2>&1
    rc=$?
    echo "step $name: rc=$rc in $(($(date +%s) - t)) s: $*" | tee -a "$SUMMARY"
}

for s in $STEPS; do
    case $s in
    trainspeed)
        step trainspeed $PY -m bench train-speed --models all --precisions fp32,auto \
            --steps 4 --warmup-steps 1 --device cpu --out "$OUTDIR/trainspeed.json" ${TS_EXTRA:-}
        $PY - "$OUTDIR/trainspeed.json" <<'EOF' | tee -a "$SUMMARY"
import json, sys

res = json.loads(open(sys.argv[1]).read())
print("train-speed,", res["environment"].get("cpu_isa_label"), "(goal: auto >= 2.5x fp32 for "
      "resnet50, densenet121, vgg16_bn)")
for r in res["rows"]:
    print(f"  {r['model']} {r['variant']} ({r['precision']}): {r['train_img_s'] or 0:.2f} img/s, "
          f"{r['vs_fp32'] or 0:.2f}x fp32, contention {r['cpu_contention_pct']}%"
          + (f", error {r['error']}" if r["error"] else ""))
EOF
        ;;
    fidelity)
        for amp in off auto; do
            step "fidelity-$amp" $PY -m bench run --models shufflenet_v2_x1_0 --weights none \
                --epochs 15 --amp "$amp" --device cpu --data "$DATA" --no-speed \
                --export none --out "$OUTDIR/fidelity-$amp" $EXTRA
        done
        $PY - "$OUTDIR" <<'EOF' | tee -a "$SUMMARY"
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
rows = {}
for amp in ("off", "auto"):
    res = json.loads((out / f"fidelity-{amp}" / "results.json").read_text())
    rows[amp] = res["rows"][0]
    rows[amp]["_amp"] = res["precision"]["amp"]
    rows[amp]["_split"] = res["dataset"]["split_hash"]
fp32, auto = rows["off"], rows["auto"]
assert fp32["_split"] == auto["_split"], "the two fidelity runs used different splits"
lo, hi = fp32["test_accuracy_ci95_low"], fp32["test_accuracy_ci95_high"]
inside = lo <= auto["test_accuracy"] <= hi
for k, r in rows.items():
    print(f"fidelity --amp {k} ({r['_amp']}): test accuracy {r['test_accuracy']:.4f} "
          f"({r['test_correct']}/{r['test_images']}), 95% CI [{r['test_accuracy_ci95_low']:.4f}, "
          f"{r['test_accuracy_ci95_high']:.4f}], train {r['train_seconds']:.0f} s, "
          f"{r['train_img_s']:.1f} img/s")
print(f"fidelity: same split {fp32['_split'][:12]}; auto within fp32's 95% interval: "
      f"{'YES' if inside else 'NO'}")
EOF
        ;;
    sweep)
        step sweep $PY -m bench run --models all --device cpu --data "$DATA" \
            --out "$OUTDIR/sweep" $EXTRA
        $PY - "$OUTDIR/sweep/results.json" <<'EOF' | tee -a "$SUMMARY"
import json, sys

from bench.report.markdown import sweep_note

res = json.loads(open(sys.argv[1]).read())
print(sweep_note(res["sweep"]))
for r in res["rows"]:
    print(f"  {r['model']}: {r['status']} test acc {r.get('test_accuracy')}, "
          f"train {r.get('train_seconds') or 0:.0f} s at {r.get('train_img_s') or 0:.1f} img/s "
          f"({r.get('amp')})")
EOF
        ;;
    *) echo "unknown step $s (trainspeed, fidelity, sweep)" | tee -a "$SUMMARY" ;;
    esac
done
