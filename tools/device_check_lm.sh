#!/usr/bin/env bash
# Issue 16's device check: train_lm against nanoGPT on one H100/H200, both sides in one run, in under
# 8 minutes (tools/device_check_lm.py says which parts). nanoGPT's pinned copy travels as .peer:
#   here, once:  cp -r ../shared/peers/nanogpt .peer && echo /.peer/ >> .git/info/exclude
#   device tool: carry [".peer"], command: bash tools/device_check_lm.sh
# Writes $OUT/device_check_lm.json (rewritten after each part) and $OUT/device_check_lm.log (every output).
set -u
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=1
OUT=${OUT:-device_out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv,noheader
python3 -c "import jax, flax, optax, torch; print('jax', jax.__version__, 'flax', flax.__version__, 'torch', torch.__version__, jax.devices())"
python3 -m tools.device_check_lm --peer_dir=.peer --out="$OUT/device_check_lm.json" "$@"
