# Sourced by the bench/gpu_*.sh scripts: the set-up every call on a lent GPU machine needs, and `step`.
# Installs the carried .whl/ wheels (README "Running on a GPU"), keeps the kernels as they ship (not the CPU
# suite's LLVM -O0), ignores any data root (the carried stores are used as they are) and defines
#   step NAME SECONDS COMMAND...   run COMMAND under a time limit, logged to $OUT/NAME.log; a failure sets failed=1
OUT="${OUT:-/tmp/lrm_gpu}"
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "installing .whl/ failed" >&2; exit 2; }
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1 LRM_TEST_XLA_OPTIMIZE=1
unset LRM_DATA_DIR
failed=0

step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit}s, $(date -u +%T)): $*" | tee "$OUT/$name.log"
  timeout -k 15 "$limit" "$@" 2>&1 | tee -a "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc ($(date -u +%T))" | tee -a "$OUT/$name.log"
  [[ $rc == 0 ]] || failed=1
}

step env 60 bash -c 'nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv;
  python3 -c "import jax, flax, optax, orbax.checkpoint, grain, ml_collections, triton; print(\"jax\", jax.__version__, \"flax\", flax.__version__, \"triton\", triton.__version__, jax.devices())"'
