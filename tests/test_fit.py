"""Scaling-law fits recover known constants (inside their bootstrap intervals) from noisy synthetic results."""
from __future__ import annotations

import numpy as np
import pytest

from scaling_studies import fit

RESAMPLES = 200  # the default is 1000; fewer here keeps the test fast


def test_chinchilla_fit_recovers_constants_within_intervals():
    """Parametric-bootstrap 95% intervals (scaling_studies/fit.py) on the 8x5 design with 0.003 log noise.

    Measured coverage (`python -m scaling_studies.coverage --law chinchilla --seeds 100 --resamples 400`):
    E 98%, A 95%, B 98%, alpha 96%, beta 98%, and 94% for the prediction interval of one new run at
    (1e9, 1e11) (standard error 2.2 points). The run bootstrap this replaces covered E ~80%. A calibrated
    interval still misses 1 draw in 20: seed 0 is one for E (its E is 1.9 true spreads off and its residual
    scale 20% low), so the test asks each constant to be covered in at least 3 of 4 seeds (a 95% interval
    fails that with probability 1.4%).
    """
    truth = {"E": 1.7, "A": 400.0, "B": 400.0, "alpha": 0.34, "beta": 0.28}
    N = np.repeat(np.logspace(5, 8, 8), 5)
    D = np.tile(np.logspace(7, 10, 5), 8)
    clean = truth["E"] + truth["A"] / N ** truth["alpha"] + truth["B"] / D ** truth["beta"]
    covered = {k: 0 for k in truth}
    for seed in range(4):
        L = clean * np.exp(np.random.default_rng(seed).normal(0, 0.003, len(N)))
        f = fit.fit_chinchilla(N, D, L, resamples=RESAMPLES, seed=seed)
        assert f.convergence["converged"] and f.convergence["resamples_converged"] > 0.95, f.convergence
        # 35 residual degrees of freedom: the robust scale is within ±35% of the true 0.003 (3 standard errors).
        assert f.noise[1] == 35 and 0.65 * 0.003 < f.noise[0] < 1.35 * 0.003, f.noise
        for k, v in truth.items():
            lo, hi = f.intervals[k]
            covered[k] += lo <= v <= hi
    assert all(c >= 3 for c in covered.values()), covered


def test_noise_scale_is_robust_and_prediction_interval_includes_observation_noise():
    rng = np.random.default_rng(3)
    r = rng.normal(0, 0.01, 400)
    sigma, dof = fit.robust_scale(r, 5)
    assert dof == 395 and abs(sigma / 0.01 - 1) < 0.1
    r[0] = 1.0  # one diverged run: 100 sigmas
    assert abs(fit.robust_scale(r, 5)[0] / 0.01 - 1) < 0.1  # winsorised: barely moves (plain RMS would be 5x)
    assert fit.pooled_noise((0.02, 2), None, (0.01, 6)) == (pytest.approx(np.sqrt((2 * 4e-4 + 6 * 1e-4) / 8)), 8)
    with pytest.raises(ValueError, match="no degree of freedom"):
        fit.robust_scale(np.zeros(3), 3)
    # Few residual degrees of freedom: sigma* = sigma*sqrt(dof/chi2) has the t-like spread (median ~ sigma).
    draws = fit.draw_sigmas(1.0, 2, 20000, rng)
    assert 1.1 < np.median(draws) < 1.3 and np.percentile(draws, 97.5) > 4  # sqrt(2/chi2_2): median 1.20

    C = np.logspace(15, 19, 12)
    L = (2.0 + 3e3 * C ** -0.25) * np.exp(rng.normal(0, 0.003, len(C)))
    g = fit.fit_compute_law(C, L, resamples=RESAMPLES)
    p = fit.predict(g, [1e20])
    _, boot = fit.curve(g, np.array([1e20]))
    law_lo, law_hi = np.percentile(boot[:, 0], [2.5, 97.5])
    # The prediction interval holds the law's band AND one run's noise: wider than either alone.
    assert p["lower"] < law_lo and p["upper"] > law_hi
    assert (p["upper"] - p["lower"]) / p["prediction"] > 2 * 1.96 * g.noise[0] * 0.9
    # Pooling a seed-noise floor with many degrees of freedom narrows sigma*'s spread, not its centre.
    pooled = fit.fit_compute_law(C, L, resamples=RESAMPLES, noise=(g.noise[0], 200))
    assert pooled.noise[1] == 209 and np.std(pooled.sigma_samples) < np.std(g.sigma_samples)


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
    # Coverage of this interval over 200 noise seeds (scaling_studies.coverage --law isoflop): 94%.
    assert iso["intervals_95"]["p_N"][0] <= b_ / (a_ + b_) <= iso["intervals_95"]["p_N"][1], iso
    assert abs(iso["p_N_plus_p_D"] - 1) < 1e-6  # D = C/(6N) exactly here
    assert iso["noise_dof"] == 4 * (7 - 3) and len(iso["parabolas"]["N"]) == 4


def test_profile_e_keeps_the_true_e_and_rejects_far_ones():
    """`profile_e` on the 8x5 design with 0.003 log noise: the free fit is fit_chinchilla's, the truth is kept
    and E 30% off either way is rejected. Measured over 40 seeds: LR at the true E above 3.84 in 0 of them
    (max 3.65, mean 0.7: the Gaussian sparsity makes it conservative), LR at E = 1.2 and 2.0 at least 88 and 46."""
    truth = {"E": 1.7, "A": 400.0, "B": 400.0, "alpha": 0.34, "beta": 0.28}
    N = np.repeat(np.logspace(5, 8, 8), 5)
    D = np.tile(np.logspace(7, 10, 5), 8)
    clean = truth["E"] + truth["A"] / N ** truth["alpha"] + truth["B"] / D ** truth["beta"]
    kept = 0
    for seed in range(4):
        L = clean * np.exp(np.random.default_rng(seed).normal(0, 0.003, len(N)))
        f = fit.fit_chinchilla(N, D, L, resamples=1, seed=seed)
        prof = fit.profile_e([N, D], L, [1.2, truth["E"], f.params["E"], 2.0])
        assert prof["converged_free"] and all(r["converged"] for r in prof["rows"]), prof
        assert prof["E_free"] == pytest.approx(f.params["E"], rel=1e-6)
        assert prof["objective_free"] == pytest.approx(f.convergence["objective"], rel=1e-9)
        low, true_row, at_fit, high = prof["rows"]
        assert abs(at_fit["lr"]) < 1e-3 and at_fit["rms_log_residual"] == pytest.approx(prof["rms_log_residual_free"])
        assert low["lr"] > 20 * fit.CHI2_1_95 and high["lr"] > 10 * fit.CHI2_1_95, (low, high)
        assert low["objective"] > true_row["objective"] >= prof["objective_free"] - 1e-15
        kept += true_row["lr"] <= fit.CHI2_1_95
    assert kept >= 3, kept
    with pytest.raises(ValueError, match="E values must be finite and > 0"):
        fit.profile_e([N, D], clean, [0.0])
    with pytest.raises(ValueError, match="features and losses must be finite"):
        fit.profile_e([N, D], np.where(np.arange(len(N)) == 3, np.nan, clean), [1.7])


def test_best_start_prefers_the_converged_start_among_those_tied_at_the_optimum():
    # Row 0: three starts at the same optimum up to rounding; the lowest-bits one stalled (gnorm 1e-9).
    # Row 1: a clearly better objective wins even with a larger gradient. Row 2: nothing finite.
    obj = np.array([[6.1647e-05 + 2e-18, 6.1647e-05, 6.1647e-05 + 1e-18, 7e-05],
                    [1.0, 0.5, np.nan, 0.5 + 1e-3],
                    [np.nan, np.inf, np.nan, np.inf]])
    gnorm = np.array([[1e-12, 1.1e-9, 3e-13, 1e-15],
                      [1e-15, 1e-6, 1e-15, 1e-15],
                      [1.0, 1.0, 1.0, 1.0]])
    assert fit._best_start(obj, gnorm).tolist() == [2, 1, 0]
    # a NaN gradient norm at the optimum is not preferred; all NaN falls back to the plain argmin
    assert fit._best_start(obj[:1], np.array([[np.nan, np.nan, 1e-9, 0.0]])).tolist() == [2]
    assert fit._best_start(obj[:1], np.full((1, 4), np.nan)).tolist() == [1]
