"""Scaling-law fits recover known constants (inside their bootstrap intervals) from noisy synthetic results."""
from __future__ import annotations

import numpy as np
import pytest

from scaling_studies import fit

RESAMPLES = 200  # the default is 1000; fewer here keeps the test fast


@pytest.mark.xfail(strict=True, reason=(
    "known limitation (issue 6 open): the run-bootstrap 95% interval for E under-covers. Refitting 40 noise "
    "seeds of this data gives a true spread of E of 0.020 against a bootstrap spread of ~0.014 (coverage "
    "~80%): Huber with delta=1e-3 below the 0.003 noise acts like least-absolute-deviation. This seed's E "
    "error is 1.9 true spreads. Fix the interval method (parametric or simulation-calibrated bootstrap)."))
def test_chinchilla_fit_recovers_constants_within_intervals():
    rng = np.random.default_rng(0)
    truth = {"E": 1.7, "A": 400.0, "B": 400.0, "alpha": 0.34, "beta": 0.28}
    N = np.repeat(np.logspace(5, 8, 8), 5)
    D = np.tile(np.logspace(7, 10, 5), 8)
    L = (truth["E"] + truth["A"] / N ** truth["alpha"] + truth["B"] / D ** truth["beta"])
    L = L * np.exp(rng.normal(0, 0.003, len(N)))
    f = fit.fit_chinchilla(N, D, L, resamples=RESAMPLES)
    assert f.convergence["converged"] and f.convergence["resamples_converged"] > 0.95
    for k, v in truth.items():
        lo, hi = f.intervals[k]
        assert lo <= v <= hi, (k, v, f.intervals[k], f.params[k])


def test_compute_law_frontier_isoflop_and_prediction():
    rng = np.random.default_rng(1)
    E, A, alpha = 2.0, 3e3, 0.25
    C = np.logspace(15, 19, 12)
    L = (E + A * C ** -alpha) * np.exp(rng.normal(0, 0.003, len(C)))
    # Dominated runs above the frontier are dropped by compute_frontier.
    C_all = np.concatenate([C, C * 1.5])
    L_all = np.concatenate([L, L * 1.2])
    front = fit.compute_frontier(C_all, L_all)
    assert set(front) <= set(range(len(C))) and len(front) >= 8
    g = fit.fit_compute_law(C_all[front], L_all[front], resamples=RESAMPLES)
    for k, v in {"E": E, "A": A, "alpha": alpha}.items():
        assert g.intervals[k][0] <= v <= g.intervals[k][1], (k, v, g.intervals[k])
    p = fit.predict(g, [1e20])
    true = E + A * 1e20 ** -alpha
    assert p["lower"] <= true <= p["upper"] and abs(p["prediction"] / true - 1) < 0.02
    # IsoFLOP: L(N, D) with C = 6ND; the optimum N* ∝ C^(β/(α+β)).
    a_, b_ = 0.34, 0.28
    budgets, Ns, Ds, Ls = [], [], [], []
    for c in np.logspace(16, 19, 4):
        n_opt = (a_ * 400 / (b_ * 400) * (c / 6) ** b_) ** (1 / (a_ + b_))
        for n in n_opt * np.logspace(-0.6, 0.6, 7):
            d = c / (6 * n)
            budgets.append(c), Ns.append(n), Ds.append(d)
            Ls.append((1.7 + 400 / n ** a_ + 400 / d ** b_) * np.exp(rng.normal(0, 0.001)))
    iso = fit.fit_isoflop(np.array(budgets), np.array(Ns), np.array(Ds), np.array(Ls), resamples=RESAMPLES)
    assert iso["intervals_95"]["p_N"][0] <= b_ / (a_ + b_) <= iso["intervals_95"]["p_N"][1], iso
    assert abs(iso["p_N_plus_p_D"] - 1) < 1e-6  # D = C/(6N) exactly here
