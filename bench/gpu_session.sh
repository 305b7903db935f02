#!/usr/bin/env bash
# The GPU checks that fit one call of a lent GPU machine (under 10 minutes on an H100/H200), prepared ahead so a
# session with a GPU spends its device time measuring, not writing commands. From the repo root there:
#
#   bash bench/gpu_session.sh
#
# carrying .whl (grain, ml-collections, array-record, tensorboardX, portpicker, importlib-resources wheels for
# the machine's Python: README "Running on a GPU"), stores/ (beauty-loo-val and ml-1m-reference, built here by
# `python -m bench.throughput`) and, for the time-bias pair, stores_ts/ml-1m-reference (the timestamped users
# 1-2999 of ML-1M: README "The time bias, measured again"). Nothing under the data root is needed there.
#
# Phase 1 (side by side; the GPU is far from full with these models): the Pallas kernel tests compiled with
# Triton (tests/test_pallas_attention.py runs the GPU cases compiled when jax's default backend is a GPU) and
# four HSTU-large ML-1M trainings under the reference protocol (bench.quality): full data with the fused kernels
# and with the XLA reference (same recipe as the CPU run in the README), and the timestamped half with and
# without the time bias. Phase 2, alone on the GPU so the timings are clean: bench.attention, bench.throughput,
# bench.profile_step (where a training step's time goes), bench.loss (gather vs dense item scoring).
# Each step has its own time limit and log under $OUT (default /tmp/lrm_gpu); a failing step does not stop the
# later ones, and the exit status says whether any failed. The run folders (less their rolling checkpoints) come
# back in $OUT/runs.tar.gz for bench.compare.
set -uo pipefail
TRAIN_LIMIT="${TRAIN_LIMIT:-270}"
source bench/gpu_common.sh  # wheels, environment, `step`, the env step

RUNS=/tmp/lrm_gpu_runs
mkdir -p "$RUNS"
train() {  # train NAME STORE_ROOT --set ...: one HSTU-large ML-1M reference-recipe run (README's CPU command)
  local name=$1 store=$2
  shift 2
  [[ -d $store/ml-1m-reference ]] || { echo "no $store/ml-1m-reference: $name not run" >"$RUNS/$name.log"; return; }
  XLA_PYTHON_CLIENT_PREALLOCATE=false timeout -s TERM -k 30 "$TRAIN_LIMIT" python3 -m bench.quality \
    --datasets ml-1m --models hstu_large --out "$RUNS/$name" --set data.pack=True --set train.batch_size=80 \
    --set data.store_root="$store" "$@" >"$RUNS/$name.log" 2>&1
  echo "== $name: exit $? ($(date -u +%T))" >>"$RUNS/$name.log"
}

echo "== phase 1 ($(date -u +%T)): kernel tests beside four trainings (limit ${TRAIN_LIMIT}s each)"
train ml1m_pallas stores --set model.attention_impl=pallas &
train ml1m_xla stores --set model.attention_impl=xla &
train half_tb stores_ts --set model.attention_impl=pallas &
train half_notb stores_ts --set model.attention_impl=pallas --set model.use_time_bias=False &
XLA_PYTHON_CLIENT_PREALLOCATE=false step kernels 240 python3 -m pytest -q -p no:cacheprovider \
  tests/test_pallas_attention.py -k "gpu_kernel or dispatch or softmax_and_dropout or bad_arguments or hstu_model"
wait
for log in "$RUNS"/*.log; do
  echo "== $(basename "$log")"; grep -v "^step\|it/s\|ETA" "$log" | tail -25
done >"$OUT/trainings.log" 2>&1
grep -q "exit 0" "$RUNS/ml1m_pallas.log" || failed=1
tar -czf "$OUT/runs.tar.gz" -C "$RUNS" --exclude=checkpoints . || failed=1

echo "== phase 2 ($(date -u +%T)): timings, alone on the GPU"
step attention 120 python3 -m bench.attention --L 256,1024,4096 --hd 256
if [[ -d stores/beauty-loo-val && -d stores/ml-1m-reference ]]; then
  step throughput 150 python3 -m bench.throughput --recipes hstu_beauty,hstu_ml1m --steps 20 \
    --attention_impls pallas,xla --store_root stores
  # Where the recipes' 12-35 ms steps go (2026-12-04: ~0.1% MFU, the attention kernels changed nothing).
  step profile 120 python3 -m bench.profile_step --recipe hstu_ml1m --set data.pack=True --steps 5 \
    --store_root stores --out /tmp/lrm_profile
  # Where dense item scoring stops paying on a GPU (lrm.losses.DENSE_SCORING_MAX_RATIO was set on CPU).
  step loss 120 python3 -m bench.loss --recipes hstu_ml1m,hstu_beauty --ratios 16,64,256,1024 --store_root stores
fi
exit $failed
