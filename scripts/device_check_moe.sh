#!/usr/bin/env bash
# GPU checks of the MoE layer (issue 5), run on one NVIDIA H100 through the session's device tool
# (CI has no GPU). Three steps, each under its own time limit so one failure does not hide the rest:
#   1. tests/test_moe.py on the GPU: every single-device path (bucketed, blocked, ragged_dot) and more
#      against the NumPy loop reference, outputs and gradients, float32 matmuls at highest precision;
#   2. scripts/bench_moe.py at GPU scale (d_model 1024, 16k tokens, bfloat16): MoE (auto = bucketed) vs
#      dense-equivalent vs one-hot, the grouped GEMM alone (bucketed, blocked, ragged_dot, per-expert
#      loop, dense), and the layer with --impl=ragged and with --impl=pallas (parallel/moe/pallas_gemm.py:
#      rows read by index in the kernel; its first GPU run: tiles not tuned yet), and Comet's overlap
#      PREDICTED on one GPU (--overlap=predict: each chunk's compute measured for C = 1..8, the exchange
#      modelled over the cost model's link bandwidth for 8-way expert parallelism);
#   3. a MoE LM trained for 300 steps by scripts/train_lm.py with the async-collective XLA flags set
#      (parallel/xla_flags.py), which XLA would reject at start-up if it did not know them.
# Figures land in $OUT (the device tool's output folder; ./device_out elsewhere). The step limits add up
# to 7 minutes (90 + 180 + 60 + 60 s, and 30 s for start-up), inside the device tool's 8-minute budget.
set -u
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=1
OUT=${OUT:-device_out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import jax, flax, optax, orbax.checkpoint as o; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"

echo "== 0. does this XLA know every async-collective flag? (it aborts on an unknown one)"
FLAGS=$(python3 -c "from parallel import xla_flags; print(' '.join(xla_flags.GPU_FLAGS))")
xla_ok() { XLA_FLAGS="$1" python3 -c "import jax.numpy as j; j.ones(1).block_until_ready()" >/dev/null 2>&1; }
if xla_ok "$FLAGS"; then echo "all known: $FLAGS"; else
  export JAXSYS_NO_ASYNC_FLAGS=1
  for f in $FLAGS; do xla_ok "$f" && echo "known   $f" || echo "UNKNOWN $f"; done
fi

echo "== 1. tests/test_moe.py on the GPU"
JAX_PLATFORMS=cuda JAX_DEFAULT_MATMUL_PRECISION=highest timeout 90 \
  python3 -m pytest -q -p no:cacheprovider tests/test_moe.py -k "not bad_input" 2>&1 | tail -15

echo "== 2. bench_moe at GPU scale"
# (the README's H100 figures came from four shorter runs: this step's first version ran past its limit)
GPU_SCALE="--d_model=1024 --tokens=16384 --dtype=bfloat16 --repeats=5"
timeout 180 python3 -m scripts.bench_moe $GPU_SCALE --overlap=predict --out="$OUT/bench_moe_gpu.json" 2>&1 \
  | grep -v "^[IW][0-9]"
timeout 60 python3 -m scripts.bench_moe $GPU_SCALE --impl=pallas --grouped=none \
  --out="$OUT/bench_moe_gpu_pallas.json" 2>&1 | grep -v "^[IW][0-9]"

echo "== 3. MoE LM on the GPU with the async-collective flags"
timeout 60 python3 -m scripts.train_lm --workdir=/tmp/moe_lm --moe_num_experts=8 --moe_top_k=2 --steps=300 \
  --eval_every=300 --log_every=100 2>&1 | grep -i "xla_flags\|async\|step\|loss\|error\|Unknown" | tail -12
cp /tmp/moe_lm/summary.json "$OUT/train_lm_moe_gpu_summary.json" 2>/dev/null
echo "== done"
