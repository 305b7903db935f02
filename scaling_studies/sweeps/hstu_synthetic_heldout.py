"""The pre-registered held-out runs of the hstu_synthetic study: 1e13 FLOPs (10x its largest fitted budget),
widths 64, 96 and 128, launched only after scaling_studies/results/hstu_synthetic/prediction.json was committed.

    lrm-sweep scaling_studies/sweeps/hstu_synthetic_heldout.py --out scaling_studies/results/hstu_synthetic
"""
from scaling_studies.sweeps.hstu_synthetic import HELD_OUT as SWEEP  # noqa: F401
