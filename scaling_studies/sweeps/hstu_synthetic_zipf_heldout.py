"""The pre-registered held-out runs of the hstu_synthetic_zipf study: 1e13 FLOPs (10x its largest fitted budget),
widths 64, 96 and 128, launched only after scaling_studies/results/hstu_synthetic_zipf/prediction.json was committed.

    lrm-sweep scaling_studies/sweeps/hstu_synthetic_zipf_heldout.py --out scaling_studies/results/hstu_synthetic_zipf
"""
from scaling_studies.sweeps.hstu_synthetic_zipf import HELD_OUT as SWEEP  # noqa: F401
