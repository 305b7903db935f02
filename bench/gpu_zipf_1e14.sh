#!/usr/bin/env bash
# The scaling issue's GPU study in one call (under 10 minutes on an H100/H200): the three pre-registered 1e14-FLOP
# runs of scaling_studies/sweeps/hstu_synthetic_zipf_1e14.py (prediction.json committed before them). From the repo
# root there, carrying only .whl (README "Running on a GPU"):
#
#   bash bench/gpu_zipf_1e14.sh
#
# The sweep launcher writes the 6M-user store itself (every core; about a minute on 16), then trains the three runs
# side by side with f32 products at full precision (XLA's GPU default would be TF32; the fitted runs are CPU f32).
# Back in $OUT: results.jsonl (the study's, with the new lines), the launcher's status, and one archive per run
# (logs, metrics, results, and its checkpoints when the limit cut it, so the next call resumes it: unpack them into
# scaling_studies/results/hstu_synthetic_zipf_1e14/runs/ and run this again). The report is made afterwards where
# the results come back: python -m scaling_studies.report --study scaling_studies/results/hstu_synthetic_zipf_1e14
# --true_entropy_from scaling_studies/sweeps/hstu_synthetic_zipf_1e14.py
# Rehearsed on CPU (a copy of the sweep with a small store and a budget of a few steps; .whl moved aside):
#   SWEEP=/tmp/reh_sweep.py STUDY=/tmp/reh_study LIMIT=900 OUT=/tmp/reh bash bench/gpu_zipf_1e14.sh
set -uo pipefail
LIMIT="${LIMIT:-500}"
source bench/gpu_common.sh  # wheels, environment, `step`, the env step
SWEEP="${SWEEP:-scaling_studies/sweeps/hstu_synthetic_zipf_1e14.py}"
STUDY="${STUDY:-scaling_studies/results/hstu_synthetic_zipf_1e14}"
export JAX_DEFAULT_MATMUL_PRECISION=highest XLA_PYTHON_CLIENT_PREALLOCATE=false

step runs "$LIMIT" python3 -m scaling_studies.launch_sweep "$SWEEP" --out "$STUDY" --parallel 3
cp "$STUDY/results.jsonl" "$OUT/results.jsonl" || failed=1
python3 -m scaling_studies.launch_sweep "$SWEEP" --out "$STUDY" --status 2>&1 | tee "$OUT/status.txt"
for run in "$STUDY"/runs/*/; do  # one archive a run: the copy back takes files of at most 16 MiB
  name=$(basename "$run")
  if [[ -f "$run/results.json" ]]; then  # finished: its parameters are not needed to resume
    tar -czf "$OUT/run-$name.tar.gz" --exclude=checkpoints --exclude=best -C "$STUDY/runs" "$name" || failed=1
  else
    tar -czf "$OUT/run-$name.tar.gz" -C "$STUDY/runs" "$name" || failed=1
  fi
done
exit $failed
