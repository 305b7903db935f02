"""The pre-registered held-out runs of the hstu_beauty study: 1e13 FLOPs (10x its largest fitted budget),
widths 16, 32 and 64, launched only after scaling_studies/results/hstu_beauty/prediction.json was committed.

    lrm-sweep scaling_studies/sweeps/hstu_beauty_heldout.py --out scaling_studies/results/hstu_beauty
"""
from scaling_studies.sweeps.hstu_beauty import HELD_OUT as SWEEP  # noqa: F401
