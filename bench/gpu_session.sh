#!/usr/bin/env bash
# The GPU checks that fit one call of a lent GPU machine (a few minutes on an H100/H200), prepared ahead so a
# session with a GPU spends its device time measuring, not writing commands. From the repo root there:
#
#   bash bench/gpu_session.sh        # carry .whl (grain, ml-collections and their missing needs, README "GPU")
#                                    # and stores/beauty-loo-val for the throughput table
#
# Steps: versions and device; the GPU Pallas kernel tests compiled with Triton (tests/test_pallas_attention.py
# runs them compiled when jax's default backend is a GPU); bench.attention --quick; bench.throughput on the
# Beauty recipe when its store is there. Each step has its own time limit and log under $OUT (default
# /tmp/lrm_gpu); a failing step does not stop the later ones, and the exit status says whether any failed.
set -uo pipefail
OUT="${OUT:-/tmp/lrm_gpu}"
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "installing .whl/ failed" >&2; exit 2; }
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
# The kernels as they ship: not the CPU test suite's LLVM -O0 (tests/conftest.py).
export PYTHONUNBUFFERED=1 LRM_TEST_XLA_OPTIMIZE=1
failed=0

step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit}s): $*" | tee "$OUT/$name.log"
  timeout "$limit" "$@" 2>&1 | tee -a "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc" | tee -a "$OUT/$name.log"
  [[ $rc == 0 ]] || failed=1
}

step env 60 bash -c 'nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv;
  python3 -c "import jax, flax, optax, orbax.checkpoint, grain, ml_collections; print(\"jax\", jax.__version__, \"flax\", flax.__version__, jax.devices())"'
step kernels 240 python3 -m pytest -q -p no:cacheprovider tests/test_pallas_attention.py \
  -k "gpu_kernel or dispatch or softmax_and_dropout or bad_arguments or hstu_model"
step attention 240 python3 -m bench.attention --quick
if [[ -d stores/beauty-loo-val ]]; then
  step throughput 180 python3 -m bench.throughput --recipes hstu_beauty --steps 20 --store_root stores
fi
exit $failed
