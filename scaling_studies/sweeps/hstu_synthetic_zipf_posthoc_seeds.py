"""Post-hoc seeds 1 and 2 of the hstu_synthetic_zipf frontier run at 1e13 (D = 64); not part of the pre-registered
test, written beside the other post-hoc runs:

    lrm-sweep scaling_studies/sweeps/hstu_synthetic_zipf_posthoc_seeds.py --out scaling_studies/results/hstu_synthetic_zipf/posthoc --parallel 2
"""
from scaling_studies.sweeps.hstu_synthetic_zipf_posthoc import SEEDS as SWEEP  # noqa: F401
