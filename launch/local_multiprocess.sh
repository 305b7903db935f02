#!/usr/bin/env bash
# N processes on localhost, each with D fake CPU devices, joined by jax.distributed: the multi-host code path
# (per-process data shares, process-local batches, cross-process collectives) on one machine.
#
#   launch/local_multiprocess.sh [--dry_run] [--port P] NUM_PROCESSES DEVICES_PER_PROCESS -- <lrm-train flags>
#   e.g. launch/local_multiprocess.sh 2 4 -- --config configs/tiny.py --workdir runs/mh --config.mesh.ici='(2,2,2)'
#
# Process 0 logs to the terminal; every process's full log is in $LOG_DIR (default: a temp dir). Exits non-zero
# if any process fails.
set -euo pipefail
DRY_RUN=0
PORT=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry_run) DRY_RUN=1; shift ;;
    --port) PORT="$2"; shift 2 ;;
    *) break ;;
  esac
done
if [[ $# -lt 3 || "$3" != "--" ]]; then
  echo "usage: $0 [--dry_run] [--port P] NUM_PROCESSES DEVICES_PER_PROCESS -- <lrm-train flags>" >&2
  exit 2
fi
NUM="$1"; DEVICES="$2"; shift 3
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
[[ -x "$PYTHON" ]] || PYTHON=python3
if [[ -z "$PORT" ]]; then
  PORT=$("$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("localhost", 0)); print(s.getsockname()[1])')
fi
LOG_DIR="${LOG_DIR:-$(mktemp -d)}"
# The caller's other XLA flags are kept; only the fake device count is this launcher's.
OTHER_XLA_FLAGS=""
for flag in ${XLA_FLAGS:-}; do
  [[ $flag == --xla_force_host_platform_device_count=* ]] || OTHER_XLA_FLAGS+="$flag "
done
CHILD_XLA_FLAGS="${OTHER_XLA_FLAGS}--xla_force_host_platform_device_count=$DEVICES"
cmd_for() {
  printf 'PYTHONPATH=%q JAX_PLATFORMS=cpu XLA_FLAGS=%q %q -m launch.train' "$ROOT" "$CHILD_XLA_FLAGS" "$PYTHON"
  printf ' %q' "$@" "--config.distributed.coordinator_address=localhost:$PORT" \
    "--config.distributed.num_processes=$NUM" "--config.distributed.process_id=$PROC"
}
if [[ $DRY_RUN == 1 ]]; then
  for ((PROC = 0; PROC < NUM; PROC++)); do echo "$(cmd_for "$@")"; done
  exit 0
fi
pids=()
for ((PROC = 0; PROC < NUM; PROC++)); do
  PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" JAX_PLATFORMS=cpu XLA_FLAGS="$CHILD_XLA_FLAGS" \
    "$PYTHON" -m launch.train "$@" "--config.distributed.coordinator_address=localhost:$PORT" \
    "--config.distributed.num_processes=$NUM" "--config.distributed.process_id=$PROC" \
    >"$LOG_DIR/process_$PROC.log" 2>&1 &
  pids+=($!)
done
status=0
for ((PROC = 0; PROC < NUM; PROC++)); do
  if ! wait "${pids[$PROC]}"; then
    status=1
    echo "process $PROC failed; its log ($LOG_DIR/process_$PROC.log) ends with:" >&2
    tail -n 30 "$LOG_DIR/process_$PROC.log" >&2
  fi
done
cat "$LOG_DIR/process_0.log"
exit $status
