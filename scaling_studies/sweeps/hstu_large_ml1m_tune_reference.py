"""Step 2 of the ML-1M HSTU-large tuning (`hstu_large_ml1m_tune.py` is step 1): the point step 1 chose, trained
under the **reference** protocol with seeds 42, 1 and 2, for the comparison with the published HSTU-large.

Why a sweep: on the CPU the three 101-epoch runs span sessions, and a sweep resumes them (SIGTERM checkpoints
them; the same command goes on). The chosen point is read from step 1's results when this file is loaded, by
step 1's written rule (the best validation NDCG@10; `reference_sweep` there): only the swept keys' values are
taken, the rest is `configs/hstu_large_ml1m_tuned.py` as it is. Loading this file is an error until every step-1
run is done, so nothing starts on a partial grid. Step 1's directory is `runs/ml1m_tune`, or `LRM_ML1M_TUNE_OUT`.

    lrm-sweep scaling_studies/sweeps/hstu_large_ml1m_tune.py --out runs/ml1m_tune --parallel 2 --cpus_per_run 1
    lrm-sweep scaling_studies/sweeps/hstu_large_ml1m_tune_reference.py --out runs/ml1m_tune_reference --parallel 3
    python -m bench.ml1m_tune --tune runs/ml1m_tune --reference runs/ml1m_tune_reference   # both steps' tables
"""
import os
from pathlib import Path

from scaling_studies.sweeps.hstu_large_ml1m_tune import reference_sweep

SWEEP = reference_sweep(Path(os.environ.get("LRM_ML1M_TUNE_OUT", "runs/ml1m_tune")))
