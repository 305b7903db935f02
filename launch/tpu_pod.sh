#!/usr/bin/env bash
# Run the same lrm-train command on every worker of a Cloud TPU VM pod slice (gcloud ... ssh --worker=all).
# JAX finds the other workers by itself (jax.distributed.initialize() with no arguments on a TPU pod).
#
#   launch/tpu_pod.sh [--dry_run] [--project P] TPU_NAME ZONE -- <lrm-train flags>
#   e.g. launch/tpu_pod.sh my-v5e-64 us-west4-a -- --config configs/hstu_large_ml20m.py \
#          --workdir gs://bucket/runs/ml20m --config.mesh.ici='(1,-1,4)'
#
# The repository must be at $LRM_REMOTE_DIR (default ~/lrm) with its venv on every worker; one way:
#   gcloud compute tpus tpu-vm ssh TPU_NAME --zone ZONE --worker=all \
#     --command 'git clone <repo url> ~/lrm && cd ~/lrm && make install'
set -euo pipefail
DRY_RUN=0
PROJECT_ARGS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry_run) DRY_RUN=1; shift ;;
    --project) PROJECT_ARGS=(--project "$2"); shift 2 ;;
    *) break ;;
  esac
done
if [[ $# -lt 3 || "$3" != "--" ]]; then
  echo "usage: $0 [--dry_run] [--project P] TPU_NAME ZONE -- <lrm-train flags>" >&2
  exit 2
fi
TPU_NAME="$1"; ZONE="$2"; shift 3
REMOTE_DIR="${LRM_REMOTE_DIR:-~/lrm}"
TRAIN="cd $REMOTE_DIR && .venv/bin/python -m launch.train$(printf ' %q' "$@")"
CMD=(gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" "${PROJECT_ARGS[@]}" --worker=all --command "$TRAIN")
if [[ $DRY_RUN == 1 ]]; then
  printf '%q ' "${CMD[@]}"; echo
  exit 0
fi
exec "${CMD[@]}"
