"""The hstu_synthetic_zipf study carried one decade further on a GPU: the pre-registered runs at 1e14 FLOPs.

The fit is every finished run of that study, 1e10 to 1e13 FLOPs (its own results.jsonl, whose 1e13 runs were its
pre-registered test, and its posthoc/ runs), copied into scaling_studies/results/hstu_synthetic_zipf_1e14/; the
prediction for 1e14 (10x the largest fitted budget) was written there by `python -m scaling_studies.report
--predict 1e14` and committed before any of these runs started. They are 10x the 1e13 runs: about 6.5 core-hours
on the 2-core CPU, so they run there across sessions (the command below; a stopped sweep resumes its runs from
their checkpoints), or in one call on a lent GPU (`bash bench/gpu_zipf_1e14.sh`).

The recipe is the fitted runs' (configs/hstu_synthetic.py: batch 32 packed rows, full softmax, WSD, the study's LR
rule, steps from the budget), with three differences that do not change what is measured:
- data: the same process drawn for 6M users instead of 1M (`synthetic-zipf-6m`). Users are pure functions of
  (seed, index), so its first 1M users are the fitted runs' data and its first 20k, the evaluated ones, are the
  same validation events; 6M users hold ~122M training events, so the 1e14 runs, like the fitted ones, never see
  an event twice (D = 64 needs ~97M).
- `model.attention_impl=xla`, the path the CPU runs took (on a GPU "auto" picks the Pallas kernels), and the GPU
  script sets JAX_DEFAULT_MATMUL_PRECISION=highest, so f32 matrix products are not TF32 as XLA's GPU default is.
- a checkpoint every 10,000 steps, so a run cut by the lease's end resumes exactly in the next call.

Widths chosen before the runs: the IsoFLOP minima moved from D ~ 38 (N ~ 95k, 1e12) to D ~ 52 (N ~ 140k, 1e13;
a parabola through D = 32/48/64), ~1.5x in N per decade, which puts N* near 210k (D ~ 72) at 1e14; D = 64, 96 and
128 (173k, 291k, 428k parameters) bracket it, as the 1e13 grid did. The observed frontier CE at 1e14 is the lowest
of the three.

    lrm-sweep scaling_studies/sweeps/hstu_synthetic_zipf_1e14.py --out scaling_studies/results/hstu_synthetic_zipf_1e14 --parallel 3
"""
import dataclasses

from scaling_studies.sweeps.hstu_synthetic_zipf import SYNTHETIC_ZIPF, isoflop

SYNTHETIC_ZIPF_6M = dataclasses.replace(SYNTHETIC_ZIPF, num_users=6_000_000, name="synthetic-zipf-6m")
BUDGET = 1e14
SWEEP = isoflop([BUDGET], [64, 96, 128], {}, synthetic=SYNTHETIC_ZIPF_6M,
                extra={"model.attention_impl": "xla", "checkpoint.every_steps": 10_000})
