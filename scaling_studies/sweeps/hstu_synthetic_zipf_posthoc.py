"""Post-hoc runs of the hstu_synthetic_zipf study, NOT part of its pre-registered test: 1e13 FLOPs at widths 32
and 48, below the held-out grid. The held-out frontier landed on its smallest width (D = 64: 5.104, D = 96: 5.148,
D = 128: 5.18), so the 1e13 frontier may lie lower than the pre-registered observation; these runs measure how
much. Written to their own folder, so the study's report keeps comparing the prediction with the runs chosen
before it.

    lrm-sweep scaling_studies/sweeps/hstu_synthetic_zipf_posthoc.py --out scaling_studies/results/hstu_synthetic_zipf/posthoc --parallel 2
"""
from scaling_studies.sweeps.hstu_synthetic_zipf import HELD_OUT_BUDGET, isoflop

SWEEP = isoflop([HELD_OUT_BUDGET], [32, 48], {})

# Two more seeds of the pre-registered frontier run (D = 64 at 1e13), for the seed spread at that budget; run by
# hstu_synthetic_zipf_posthoc_seeds.py (which exports it as SWEEP) with the same --out.
SEEDS = isoflop([HELD_OUT_BUDGET], [64], {HELD_OUT_BUDGET: [1, 2]})
