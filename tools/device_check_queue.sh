#!/usr/bin/env bash
# One device call for GPU queue items 1 and 2 (issue 36): tools/device_check_moe.sh, then the whole tour
# (`python -m scripts.tour` with the platform's defaults) under what is left of the call, its summary
# rewritten after each step so a cut tour still returns the finished steps. The image lacks mctx, OR-Tools and
# mnist1d: their wheels travel in .whl/ (download command in tools/device_check_jssp.sh, plus
# mctx==0.0.71 and mnist1d==0.0.2.post1). Device call:
#   run(command="bash tools/device_check_queue.sh", carry=[".whl"], timeout_s=600)
# On CPU: bash tools/device_check_queue.sh --smoke (tour cut at TOUR_S seconds).
set -u
if command -v nvidia-smi >/dev/null && ls .whl/*.whl >/dev/null 2>&1; then  # on the GPU machine only
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=1
OUT=${OUT:-device_out}; mkdir -p "$OUT"; PY=${PY:-python3}; START=$(date +%s)
bash tools/device_check_moe.sh "$@" 2>&1 | tee "$OUT/device_check_moe.log"
TOUR_S=${TOUR_S:-$((575 - ($(date +%s) - START)))}
echo "== tour, ${TOUR_S} s left"
rm -rf /tmp/tour_gpu
# SIGINT only preempts the training step in progress (it checkpoints and returns; the tour goes on to its next
# step): KILL follows 15 s later, and the summary keeps every step finished by then
timeout -s INT -k 15 "$TOUR_S" $PY -m scripts.tour --workdir=/tmp/tour_gpu 2>&1 | grep -v "^[IW][0-9]\{4\}" | tail -40
cp /tmp/tour_gpu/tour_summary.json "$OUT/tour_summary_gpu.json" 2>/dev/null
echo "== queue done after $(($(date +%s) - START)) s"
