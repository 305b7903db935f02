#!/usr/bin/env bash
# The foundation issue's one open target on a lent GPU, in one call (under 10 minutes on an H100/H200): HSTU-large
# on ML-1M, position bias only, against the published HSTU-large. From the repo root there:
#
#   bash bench/gpu_ml1m_tune.sh
#
# carrying .whl (README "Running on a GPU") and stores (stores/ml-1m-loo-val and stores/ml-1m-reference, built
# here by `lrm-preprocess --dataset ml-1m --data_root ../shared/datasets --out stores/ml-1m-<protocol>
# --protocol <protocol>`). Step 1: the validation sweep scaling_studies/sweeps/hstu_large_ml1m_tune.py (dropout ×
# learning rate, loo-val, nine runs side by side). Step 2, only if every sweep run finished: the point with the
# best validation NDCG@10 (the rule written in the sweep file before any run) trained under the reference
# protocol, seeds 42, 1 and 2 side by side, and its test numbers beside the published ones ($OUT/summary.log).
# The sweep's result lines and the reference runs (logs, results, parameters) come back in $OUT. Limits:
# SWEEP_LIMIT (380 s) + REF_LIMIT (160 s) + set-up fit one 600 s call; if the sweep is cut at its limit, nothing is
# chosen and the result lines so far come back. Rehearsed on CPU (2 steps a run, 200 eval users; .whl moved aside):
#   SWEEP=<a copy of the sweep with train.num_steps=2, eval.max_users=200> PARALLEL=3 SWEEP_LIMIT=1200 \
#   REF_EXTRA="--config.train.num_steps=2 --config.eval.max_users=200" OUT=/tmp/reh bash bench/gpu_ml1m_tune.sh
set -uo pipefail
SWEEP_LIMIT="${SWEEP_LIMIT:-380}"
REF_LIMIT="${REF_LIMIT:-160}"
source bench/gpu_common.sh  # wheels, environment, `step`, the env step
SWEEP="${SWEEP:-scaling_studies/sweeps/hstu_large_ml1m_tune.py}"
REF_EXTRA="${REF_EXTRA:-}"  # extra --config.a.b=v flags for the reference runs (a CPU rehearsal shortens them)
TUNE="${TUNE:-/tmp/lrm_ml1m_tune}"
RUNS="${RUNS:-/tmp/lrm_ml1m_ref}"
mkdir -p "$RUNS"
for s in ml-1m-loo-val ml-1m-reference; do
  [[ -d stores/$s ]] || { echo "no stores/$s: build it where the data is and carry stores" >&2; exit 2; }
done

XLA_PYTHON_CLIENT_PREALLOCATE=false step sweep "$SWEEP_LIMIT" python3 -m scaling_studies.launch_sweep "$SWEEP" \
  --out "$TUNE" --parallel "${PARALLEL:-9}"
cp "$TUNE/results.jsonl" "$OUT/tune_results.jsonl" 2>/dev/null
if ! python3 -m scaling_studies.launch_sweep "$SWEEP" --out "$TUNE" --best valid_ndcg@10 >"$OUT/choice.txt" 2>&1; then
  cat "$OUT/choice.txt"
  echo "== no choice: the sweep is not complete; its result lines so far are in $OUT (reference runs not started)"
  exit 1
fi
cat "$OUT/choice.txt"
# The chosen point's values of the swept keys only (its other overrides are the sweep's loo-val settings).
flags=$(tail -1 "$OUT/choice.txt" | python3 -c "
import json, sys
from scaling_studies.launch_sweep import load_sweep
chosen = json.load(sys.stdin)
print(' '.join(f'--config.{k}={chosen[k]}' for k in load_sweep('$SWEEP').axes))")
echo "== reference protocol, seeds 42 1 2, with $flags ($(date -u +%T))"
for seed in 42 1 2; do  # the tuned recipe itself (its protocol is the reference's), with the chosen values
  XLA_PYTHON_CLIENT_PREALLOCATE=false timeout -s TERM -k 30 "$REF_LIMIT" python3 -m launch.train \
    --config configs/hstu_large_ml1m_tuned.py --workdir "$RUNS/ref_s$seed" --config.data.store_root=stores \
    --config.seed=$seed $flags $REF_EXTRA >"$RUNS/ref_s$seed.log" 2>&1 &
done
wait
step summary 60 python3 -c "
import json, pathlib, sys
from bench.quality import format_table
from bench.published import PUBLISHED
rows = [('ml-1m', r['protocol'], 'hstu_large', f'lrm (no time bias), seed {s}, step {r[\"best_step\"]}', r['test'])
        for s in (42, 1, 2) for p in [pathlib.Path('$RUNS', f'ref_s{s}', 'results.json')] if p.exists()
        for r in [json.loads(p.read_text())]]
rows += [('ml-1m', 'reference', 'hstu_large', src, m) for src, m in PUBLISHED[('ml-1m', 'hstu_large')]]
print(format_table(rows))
sys.exit(0 if len(rows) == 4 else 1)"
# Back (16 MiB a file): the sweep runs' logs and metrics (not their parameters), the reference runs whole less their
# rolling checkpoints (their best/ parameters, ~1.3 MB each, for `bench.compare --rescore_here`).
{ (cd / && find "${TUNE#/}/runs" -maxdepth 2 -type f \( -name '*.json' -o -name '*.jsonl' -o -name launch.log \));
  echo "${RUNS#/}"; } >/tmp/lrm_tune_tarlist
tar -czf "$OUT/runs.tar.gz" --exclude=checkpoints -C / -T /tmp/lrm_tune_tarlist || failed=1
exit $failed
