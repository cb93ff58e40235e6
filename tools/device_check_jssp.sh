#!/usr/bin/env bash
# GPU part of issue 20 (job shop), run on one NVIDIA H100/H200 through the session's device tool (CI has no
# GPU): self-labelling (Corsini et al. 2024) at SPN's label search, beta = 256 samples per instance, on a
# batch of 32 instances per step, continued from the shipped policy (rl/jssp/trained) for TRAIN_S seconds,
# then the selected policy (validation on the five generated families, never Taillard) evaluated on
# Taillard: greedy on all 80 instances, and the best of 128 samples on 15x15-50x20.
#   1. train: `timeout -s TERM` ends it; SIGTERM checkpoints and exits 0 (rl/jssp/train.py), and a second
#      call with --steps set to the step reached resumes, runs nothing and exports the best validation's
#      parameters to $OUT/policy;
#   2. tune the sampling temperature on 16 generated 15x15 instances (scripts/tune_jssp_sampling.py);
#   3. eval_jssp greedy and best of 128 (JSON per instance in $OUT, a table of mean gaps on stdout).
# Time: at most 30 s of start-up + TRAIN_S (default 150 s) + 40 s of export + 60 s of tuning + 120 + 150 s
# of evaluation (each step under its own timeout) = 550 s, inside the device tool's 10-minute limit; on an
# H200 the tuning and evaluation should take well under their limits. A smoke test on CPU:
#   PY=.venv/bin/python OUT=/tmp/dc TRAIN_S=90 BETA=8 BATCH=2 S128_SIZES=15x15 bash tools/device_check_jssp.sh
# Device call: run(command="bash tools/device_check_jssp.sh", carry=[".whl"], timeout_s=600).
# The H200 image has jax, flax, optax and orbax but not OR-Tools (rl/jssp imports CP-SAT): carry its wheels.
# Here, once: echo /.whl/ >> .git/info/exclude; python3 -m pip download --no-deps --only-binary=:all:
#   --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
#   -d .whl ortools==9.15.6755 immutabledict==4.3.1 protobuf==6.33.6      (30 MB; the device call: carry .whl)
set -u
if command -v nvidia-smi >/dev/null && ls .whl/*.whl >/dev/null 2>&1; then  # on the GPU machine only
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=1
OUT=${OUT:-device_out}; mkdir -p "$OUT"
TRAIN_S=${TRAIN_S:-150}; BETA=${BETA:-256}; BATCH=${BATCH:-32}
S128_SIZES=${S128_SIZES:-15x15,20x15,20x20,30x15,30x20,50x15,50x20}
WORK=${WORK:-/tmp/jssp_sl_gpu}; PY=${PY:-python3}
# Another start or shape, e.g. from scratch: INIT_FROM= LR=2e-4 POLICY_FLAGS="--d_model=64 --mlp_dim=128 --job_layers=3"
INIT_FROM=${INIT_FROM-rl/jssp/trained}; POLICY_FLAGS=${POLICY_FLAGS:-}; LR=${LR:-3e-5}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
$PY -c "import jax; print('jax', jax.__version__, jax.devices())"

TRAIN="$PY -m scripts.train_jssp --workdir=$WORK --algorithm=self_label ${INIT_FROM:+--init_from=$INIT_FROM} $POLICY_FLAGS
  --curriculum=15x15:0,20x20:1,20x15:2 --batch=$BATCH --beta=$BETA --label_temperature=1.0
  --lr=$LR --minibatches=4 --epochs=1 --eval_every=10 --eval_instances=16 --log_every=5 --checkpoint_every=10"
echo "== 1. self-labelling for ${TRAIN_S} s (beta $BETA, batch $BATCH)"
timeout -s TERM "$TRAIN_S" $TRAIN --steps=100000 2>&1 | grep "train step\|validation\|done at\|rror" | tail -30
REACHED=$($PY -c "import json; print(json.load(open('$WORK/summary.json'))['step'])") || exit 1
$TRAIN --steps="$REACHED" --export_dir="$OUT/policy" 2>&1 | grep "exporting\|rror"
cp "$WORK/metrics.jsonl" "$OUT/train_metrics.jsonl"

echo "== 2. sampling temperature"
timeout 60 $PY -m scripts.tune_jssp_sampling --policy_dir="$OUT/policy" --size=15x15 --samples=128 2>&1 \
  | grep -v "^[IW][0-9]" | tail -4
$PY - "$OUT/policy/policy.json" <<'EOF'
import json, sys  # tuning cut short by its timeout: keep the shipped policy's temperature, and say so
info = json.load(open(sys.argv[1]))
if "sampling_temperature" not in info:
    info["sampling_temperature"] = json.load(open("rl/jssp/trained/policy.json"))["sampling_temperature"]
    info["sampling_temperature_from"] = "rl/jssp/trained (tuning did not finish)"
    json.dump(info, open(sys.argv[1], "w"), indent=2)
print("sampling temperature", info["sampling_temperature"], info.get("sampling_temperature_from", "(tuned)"))
EOF

echo "== 3. Taillard: greedy (80 instances), best of 128 ($S128_SIZES)"
timeout 120 $PY -m scripts.eval_jssp --solver=agent --policy_dir="$OUT/policy" --out="$OUT/jssp_eval_greedy.json" 2>&1 \
  | grep -v "^[IW][0-9]" | tail -12
timeout 150 $PY -m scripts.eval_jssp --solver=agent --policy_dir="$OUT/policy" --samples=128 --sizes="$S128_SIZES" \
  --out="$OUT/jssp_eval_s128.json" 2>&1 | grep -v "^[IW][0-9]" | tail -12
echo "== done"
