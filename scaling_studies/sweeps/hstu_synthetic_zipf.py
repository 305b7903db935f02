"""IsoFLOP study of HSTU on synthetic data with Zipf-distributed personas (configs/hstu_synthetic.py with
`data.dataset=synthetic-zipf`; data_pipeline/datasets/synthetic.py, 1M users, about 20M events, so no run repeats
an event).

Why a second synthetic study: the first (hstu_synthetic: 8 equally likely personas) has a finite, small structure
to learn; its frontier fell 0.44 nats from 1e12 to 1e13 FLOPs to within 0.14 of the Bayes floor, faster than a
power law allows, so its pre-registered 1e13 prediction missed by 3.4% and L(C) refitted with the 1e13 runs
predicts 4.38 nats at 1e14, below the floor (4.454). Here 4,096 personas with P(k) ∝ (k+1)^-1.3 (5 personas
hold half the users, 244 hold 90%, 2,701 hold 99%) leave a long tail of rarer structure to learn. Everything else
(items, topics, lengths, seed, model, LR rule, token accounting) is the first study's, so the runs' lengths and
steps are identical.

Five budgets 10^(1/2) apart over 1e10-1e12 FLOPs, six widths per budget (D = 4..128: the first study's best
width at its two smallest budgets was its smallest, 8), three seeds at 1e10 and 3.16e10 for the noise floor. The
held-out runs (`HELD_OUT`, 1e13 = 10x the largest fitted budget) were added to this file with the prediction for
them (scaling_studies/results/hstu_synthetic_zipf/prediction.json), in the same commit, before they ran.

    lrm-sweep scaling_studies/sweeps/hstu_synthetic_zipf.py --out scaling_studies/results/hstu_synthetic_zipf --parallel 2
"""
import dataclasses

from data_pipeline.datasets.synthetic import SyntheticConfig
from scaling_studies.sweeps import Sweep
from scaling_studies.sweeps.hstu_synthetic import LR_RULE, SYNTHETIC

SYNTHETIC_ZIPF = dataclasses.replace(SYNTHETIC, num_personas=4096, persona_zipf=1.3, name="synthetic-zipf")
BUDGETS = [1e10, 10 ** 10.5, 1e11, 10 ** 11.5, 1e12]
WIDTHS = [4, 8, 16, 32, 64, 128]


def isoflop(budgets: list[float], widths: list[int], seeds_at: dict[float, list[int]], *,
            synthetic: SyntheticConfig = SYNTHETIC_ZIPF, extra: dict | None = None) -> Sweep:
    """This study's IsoFLOP runs at `budgets` (the held-out budget and the 1e14 extension use the same function;
    the extension's larger draw of the same process is `synthetic`, its run-only settings `extra`)."""
    return Sweep(
        name="hstu_synthetic_zipf",
        config_file="configs/hstu_synthetic.py",
        overrides={"data.dataset": synthetic.name, "data.store_root": "stores", "eval.max_users": 20_000,
                   **(extra or {})},
        budgets=budgets,
        sizes=[{"model.embed_dim": d, "model.head_dim": max(d // 2, 1)} for d in widths],
        seeds=[0],
        seeds_at_budgets=seeds_at,
        tokens_per_step=1346.5,  # the first study's: same lengths, same packing (32 rows of 51 slots)
        n_eff=13.59,
        num_items=SYNTHETIC_ZIPF.num_items,
        lr_rule=LR_RULE,
        synthetic=synthetic,
    )


SWEEP = isoflop(BUDGETS, WIDTHS, {10 ** 10: [0, 1, 2], 10 ** 10.5: [0, 1, 2]})

# Pre-registered held-out runs at 10x the largest fitted budget, chosen before they ran: the IsoFLOP minima moved
# from N* ~ 49k (1e11) to ~ 85k (3.16e11) and ~ 105k (1e12; D* between 32 and 64), at most ~3x per decade, which
# puts N* at or below ~300k at 1e13 (D <~ 100); D = 64, 96, 128 (173k, 291k, 428k parameters) bracket it, as in
# the first study. The observed frontier CE at 1e13 is the lowest of the three.
HELD_OUT_BUDGET = 1e13
HELD_OUT = isoflop([HELD_OUT_BUDGET], [64, 96, 128], {})
