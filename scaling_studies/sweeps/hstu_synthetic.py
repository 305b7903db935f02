"""IsoFLOP study of HSTU on fresh synthetic data (configs/hstu_synthetic.py; data from
data_pipeline/datasets/synthetic.py, 1M users, about 20M events, so no run ever repeats an event).

Five budgets 10^(1/2) apart over 1e10-1e12 FLOPs (two orders of magnitude), five widths per budget
(D = 8..128, two blocks, two heads of D/2), three seeds at 1e10 and 3.16e10 for the noise floor. The held-out
runs (`HELD_OUT`) at 1e13 FLOPs (10x the largest fitted budget) are launched only after the prediction for them
is committed (scaling_studies/results/hstu_synthetic/prediction.json).
"""
from data_pipeline.datasets.synthetic import SyntheticConfig
from scaling_studies.sweeps import LRRule, Sweep

SYNTHETIC = SyntheticConfig(num_users=1_000_000, name="synthetic-scaling")
BUDGETS = [1e10, 10 ** 10.5, 1e11, 10 ** 11.5, 1e12]
WIDTHS = [8, 16, 32, 64, 128]
HELD_OUT_BUDGET = 1e13

_BASE = {"data.store_root": "stores", "eval.max_users": 20_000}


def _sizes(widths):
    return [{"model.embed_dim": d, "model.head_dim": d // 2} for d in widths]


def _sweep(name, budgets, widths, seeds_at):
    return Sweep(
        name=name,
        config_file="configs/hstu_synthetic.py",
        overrides=_BASE,
        budgets=budgets,
        sizes=_sizes(widths),
        seeds=[0],
        seeds_at_budgets=seeds_at,
        tokens_per_step=1346.5,  # 32 packed rows of 51 slots (pipeline.train_epoch_size on this data)
        n_eff=13.59,  # lrm.flops.causal_n_eff of the train rows
        num_items=SYNTHETIC.num_items,
        lr_rule=LR_RULE,
        synthetic=SYNTHETIC,
    )


# Fitted to an LR check (400 steps, widths 8 and 64, LR 1e-3/3e-3/1e-2; lr_check.json beside the results): the
# best LR barely moves with width (D=8: 1e-2; D=64: 3e-3 ≈ 1e-2), as expected when the item table, whose
# muP LR is width-independent, holds most parameters; a 1/sqrt(width) rule sits between the two optima.
LR_RULE = LRRule(base_lr=6e-3, base_width=64, warmup_fraction=0.05, width_exponent=0.5)
SWEEP = _sweep("hstu_synthetic", BUDGETS, WIDTHS, {10 ** 10: [0, 1, 2], 10 ** 10.5: [0, 1, 2]})

# Pre-registered held-out runs at 10x the largest fitted budget, chosen before they ran: the IsoFLOP minima moved
# from D~25 (3.16e11) to D~42 (1e12), about 2.8x per decade, which puts D* near 120 at 1e13; widths 64, 96 and 128
# bracket it. The observed frontier CE at 1e13 is the lowest of the three (prediction.json, committed first).
HELD_OUT = _sweep("hstu_synthetic", [HELD_OUT_BUDGET], [64, 96, 128], {})
