#!/usr/bin/env bash
# GPU queue item 1 (issue 36): the MoE layer's Pallas grouped GEMM on an NVIDIA GPU for the first time, run
# through the session's device tool (CI has no GPU). Steps, each under its own time limit so one failure
# does not hide the rest, each writing its file into $OUT as soon as it ends:
#   0. the card, driver and JAX version; whether this XLA knows every async-collective flag;
#   1. tests/test_moe.py on the GPU: every single-device path (bucketed, blocked, ragged_dot, and the Pallas
#      kernels COMPILED for the GPU, not interpreted) against the NumPy loop reference, outputs and
#      gradients, float32 matmuls at highest precision, and the bf16 Pallas layer against float32;
#   2. scripts/bench_moe.py at the real models' width (d_model 2048, 16k tokens, bfloat16) at three shapes
#      (Mixtral 8 experts top-2, Qwen1.5-MoE 60 top-4, DeepSeekMoE 64 top-6): the layer with auto
#      (= bucketed on GPU), blocked and pallas against dense GEMMs of equal active FLOPs and the one-hot
#      baseline (so: does auto pick the fastest), the grouped GEMM alone (ragged_dot, per-expert loop,
#      blocked, bucketed, pallas) and a sweep of Pallas tiles (BM x BK x BN); a variant that does not lower
#      is reported with its error, the others still timed;
#   3. a MoE LM for 300 steps of scripts/train_lm.py with --moe_impl=pallas.
# Time (limits): 20 s of start-up + 100 + 210 + 75 s = 405 s. On CPU: `bash tools/device_check_moe.sh
# --smoke` runs every step at toy sizes (Pallas in interpret mode) in about 3 minutes.
set -u
SMOKE=0; [ "${1:-}" = "--smoke" ] && SMOKE=1
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=1
OUT=${OUT:-device_out}; mkdir -p "$OUT"; PY=${PY:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
$PY -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"

echo "== 0. does this XLA know every async-collective flag? (it aborts on an unknown one)"
if [ $SMOKE = 0 ]; then
  FLAGS=$($PY -c "from parallel import xla_flags; print(' '.join(xla_flags.GPU_FLAGS))")
  xla_ok() { XLA_FLAGS="$1" $PY -c "import jax.numpy as j; j.ones(1).block_until_ready()" >/dev/null 2>&1; }
  if xla_ok "$FLAGS"; then echo "all known: $FLAGS"; else
    export JAXSYS_NO_ASYNC_FLAGS=1
    for f in $FLAGS; do xla_ok "$f" && echo "known   $f" || echo "UNKNOWN $f"; done
  fi
fi

echo "== 1. tests/test_moe.py on the device (Pallas compiled on a GPU, interpreted elsewhere)"
TESTS="tests/test_moe.py"; [ $SMOKE = 1 ] && TESTS="tests/test_moe.py::test_pallas_layer_in_bfloat16_tracks_float32"
JAX_DEFAULT_MATMUL_PRECISION=highest timeout 100 \
  $PY -m pytest -q -p no:cacheprovider $TESTS -k "not bad_input" 2>&1 | tee "$OUT/test_moe_gpu.log" | tail -15

echo "== 2. bench_moe: three shapes, layer by impl, grouped GEMM, Pallas tiles"
if [ $SMOKE = 1 ]; then
  SCALE="--d_model=32 --tokens=128 --repeats=1"; TILES="16x16x16,32x16x32"
else
  SCALE="--d_model=2048 --tokens=16384 --dtype=bfloat16 --repeats=5"; TILES="64x64x64,128x64x128,128x32x128,64x64x256"
fi
timeout 210 $PY -m scripts.bench_moe $SCALE --models=mixtral,qwen15_moe,deepseek_moe --layer_impls=blocked,pallas \
  --grouped=ragged_dot,blocked,bucketed,pallas,dense_equivalent --pallas_tiles=$TILES \
  --overlap=off --out="$OUT/bench_moe_gpu.json" 2>&1 | grep -v "^[IW][0-9]"

echo "== 3. MoE LM with the Pallas kernels"
STEPS=300; [ $SMOKE = 1 ] && STEPS=4
rm -rf /tmp/moe_lm_pallas
timeout 75 $PY -m scripts.train_lm --workdir=/tmp/moe_lm_pallas --moe_num_experts=8 --moe_top_k=2 --moe_impl=pallas \
  --steps=$STEPS --warmup_steps=$((STEPS / 10)) --eval_every=$STEPS --log_every=$((STEPS / 3 > 0 ? STEPS / 3 : 1)) \
  2>&1 | grep -i "xla_flags\|async\|step\|loss\|error\|Unknown" | tail -8
cp /tmp/moe_lm_pallas/summary.json "$OUT/train_lm_moe_pallas_gpu_summary.json" 2>/dev/null
echo "== moe done"
