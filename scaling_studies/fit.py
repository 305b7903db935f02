"""Scaling-law fits with bootstrap uncertainty (method: docs SCALING.md).

- `fit_compute_law`: L(C) = E + A·C^(−α) on the compute frontier.
- `fit_chinchilla`: L(N, D) = E + A/N^α + B/D^β.
Both fit log L = LSE(a_i − α_i·log X_i, e) (Chinchilla's parameterisation, A = e^a, E = e^e) with a Huber
loss (δ = 1e-3) on the log residuals SUMMED over runs, by L-BFGS from a grid of starts; the best start wins.
L-BFGS is optax's (jax), in float64 (`_x64`), stopped on the gradient norm; the (bootstrap resample × start)
problems are solved in one vmapped, jitted loop.
- `fit_isoflop`: per budget a parabola of loss in log N (and log D) → N*(C), D*(C), then N* = a·C^p.
Every constant gets a percentile bootstrap interval over runs; `predict` gives an interval for a new config
that combines the parameter spread with the fit's residual noise.
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

HUBER_DELTA = 1e-3
DEFAULT_RESAMPLES = 1000
BOOT_E_FRACTIONS = (0.3, 0.7, 0.95)  # of the smallest loss: extra E starts per resample


def _huber(r, delta):
    a = jnp.abs(r)
    return jnp.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


def _log_pred(theta, logx_NxM):
    """theta = [a_1..a_M, alpha_1..alpha_M, e]: log L = LSE(a_i − α_i·x_i, e)."""
    m = logx_NxM.shape[1]
    terms = theta[:m] - theta[m:2 * m] * logx_NxM
    return jax.nn.logsumexp(jnp.concatenate([terms, jnp.broadcast_to(theta[2 * m], terms[:, :1].shape)], 1), 1)


def _objective(theta, logx_NxM, logy_N, w_N, delta):
    return jnp.sum(w_N * _huber(_log_pred(theta, logx_NxM) - logy_N, delta))


def _x64():
    """Context in which jax computes in float64 (the fits need it: see `_lbfgs_many`)."""
    ctx = getattr(jax, "enable_x64", None)
    if ctx is None:  # older jax spelled it jax.experimental.enable_x64
        from jax.experimental import enable_x64 as ctx
    return ctx(True)


@jax.jit
def _lbfgs_many(theta0_SxP, logx_NxM, logy_RxN, w_RxN, delta, max_iter, gtol):
    """Minimise every (resample r, start s) problem; returns thetas [R,S,P], objectives, grad norms, converged.

    Runs in float64 (call inside `_x64()`) so that a gradient-norm stopping rule is reachable: in float32 the
    gradient at the optimum is rounding noise and only a relative-decrease rule can stop the loop.
    """

    def solve(theta0, logy_N, w_N):
        f = lambda th: _objective(th, logx_NxM, logy_N, w_N, delta)  # noqa: E731
        opt = optax.lbfgs()
        vg = optax.value_and_grad_from_state(f)

        def body(carry):
            th, state, it, _ = carry
            value, grad = vg(th, state=state)
            updates, state = opt.update(grad, state, th, value=value, grad=grad, value_fn=f)
            return optax.apply_updates(th, updates), state, it + 1, optax.tree.norm(grad)

        def cond(carry):
            _, _, it, gnorm = carry
            return (it < max_iter) & (gnorm > gtol)

        th, _, _, _ = jax.lax.while_loop(cond, body, (theta0, opt.init(theta0), 0, jnp.inf))
        value, grad = jax.value_and_grad(f)(th)
        gnorm = optax.tree.norm(grad)
        return th, value, gnorm, gnorm <= gtol

    per_start = jax.vmap(solve, in_axes=(0, None, None))
    return jax.vmap(per_start, in_axes=(None, 0, 0))(theta0_SxP, logy_RxN, w_RxN)


@dataclasses.dataclass
class LawFit:
    """A fitted law: point estimates, bootstrap samples and intervals, convergence report."""

    names: list[str]
    params: dict[str, float]
    samples: dict[str, np.ndarray]  # bootstrap draws per constant
    intervals: dict[str, tuple[float, float]]  # 95% percentile intervals
    convergence: dict
    log_residuals: np.ndarray
    center_logx: np.ndarray  # features were centred by this before fitting
    theta: np.ndarray
    theta_samples: np.ndarray

    def to_json(self) -> dict:
        return {"params": self.params, "intervals_95": {k: list(v) for k, v in self.intervals.items()},
                "convergence": self.convergence, "residual_std": float(np.std(self.log_residuals)),
                "num_resamples": int(len(self.theta_samples))}


def _start_grid(logx_NxM: np.ndarray, y: np.ndarray) -> np.ndarray:
    m = logx_NxM.shape[1]
    span = max(float(y.max() - y.min()), 1e-3)
    es = np.log(y.min()) + np.log([0.3, 0.7, 0.95])
    alphas = [0.15, 0.4, 0.8]
    amps = np.log(span) + np.array([-1.0, 0.5])
    starts = []
    for e in es:
        for al in itertools.product(alphas, repeat=m):
            for a in itertools.product(amps, repeat=m):
                starts.append(list(a) + list(al) + [e])
    return np.asarray(starts, np.float64)


def _fit_lse(logx_NxM: np.ndarray, y_N: np.ndarray, term_names: Sequence[tuple[str, str]], *, resamples: int,
             seed: int, max_iter: int = 2000) -> LawFit:
    n, m = logx_NxM.shape
    if n < 2 * m + 2:
        raise ValueError(f"fit: {n} runs for {2 * m + 1} constants; need at least {2 * m + 2}")
    if np.any(~np.isfinite(y_N)) or np.any(y_N <= 0):
        raise ValueError(f"fit: losses must be finite and > 0, got {y_N[~np.isfinite(y_N) | (y_N <= 0)][:5]}")
    center = logx_NxM.mean(axis=0)
    # Each run's Huber gradient is at most δ·|features|: stop when the summed gradient is 1e-8 of that scale.
    gtol = 1e-8 * HUBER_DELTA * n
    rng = np.random.default_rng(seed)
    grid = _start_grid(logx_NxM, y_N)
    with _x64():
        x = jnp.asarray(logx_NxM - center, jnp.float64)
        logy = np.log(y_N)
        th, obj, gnorm, ok = (np.asarray(a) for a in _lbfgs_many(
            jnp.asarray(grid), x, jnp.asarray(logy[None]), jnp.ones((1, n)), HUBER_DELTA, max_iter, gtol))
        obj = np.where(np.isfinite(obj[0]), obj[0], np.inf)
        best = int(obj.argmin())
        theta = th[0, best]
        near = np.abs(obj - obj[best]) <= 1e-6 * abs(obj[best]) + 1e-12
        fitted = np.asarray(_log_pred(jnp.asarray(theta), x))
        resid = fitted - logy
        # Bootstrap over runs (SCALING.md): multinomial run weights. Residual and smoothed-residual bootstraps
        # were tried: same E spread (see the issue 6 report), so the spec's pairs bootstrap stays.
        w_R = rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(np.float64)
        # Resample starts: the full-data optimum, and it with E moved to each grid E; the best objective wins.
        starts = np.repeat(theta[None], 1 + len(BOOT_E_FRACTIONS), 0)
        starts[1:, 2 * m] = np.log(y_N.min()) + np.log(BOOT_E_FRACTIONS)
        bth, bobj, _, bok = (np.asarray(a) for a in _lbfgs_many(
            jnp.asarray(starts), x, jnp.broadcast_to(logy, w_R.shape), jnp.asarray(w_R), HUBER_DELTA, max_iter, gtol))
    pick = np.where(np.isfinite(bobj), bobj, np.inf).argmin(1)
    theta_R = bth[np.arange(resamples), pick]
    resample_ok = bok[np.arange(resamples), pick]

    def constants(t):
        out = {"E": float(np.exp(t[2 * m]))}
        for i, (amp, exp_) in enumerate(term_names):
            out[exp_] = float(t[m + i])
            out[amp] = float(np.exp(t[i] + t[m + i] * center[i]))  # undo the centring of log X
        return out

    params = constants(theta)
    draws = [constants(t) for t in theta_R]
    samples = {k: np.array([d[k] for d in draws]) for k in params}
    intervals = {k: (float(np.nanpercentile(v, 2.5)), float(np.nanpercentile(v, 97.5))) for k, v in samples.items()}
    convergence = {"objective": float(obj[best]), "grad_norm": float(gnorm[0, best]), "grad_tol": gtol,
                   "converged": bool(ok[0, best]), "starts": int(len(grid)), "starts_reaching_best": int(near.sum()),
                   "resamples_converged": float(np.mean(resample_ok))}
    return LawFit(list(params), params, samples, intervals, convergence, resid, center, theta, theta_R)


def fit_chinchilla(N: np.ndarray, D: np.ndarray, loss: np.ndarray, *, resamples: int = DEFAULT_RESAMPLES,
                   seed: int = 0) -> LawFit:
    """L(N, D) = E + A/N^α + B/D^β (N parameters, D training tokens)."""
    logx = np.log(np.column_stack([np.asarray(N, float), np.asarray(D, float)]))
    return _fit_lse(logx, np.asarray(loss, float), [("A", "alpha"), ("B", "beta")], resamples=resamples, seed=seed)


def compute_frontier(C: np.ndarray, loss: np.ndarray, budget: np.ndarray | None = None) -> np.ndarray:
    """Indices of the compute-efficient runs: the best run per budget if budgets are given, else every run
    that beats all runs of smaller compute."""
    C, loss = np.asarray(C, float), np.asarray(loss, float)
    if budget is not None:
        budget = np.asarray(budget)
        return np.array(sorted((np.flatnonzero(budget == b)[np.argmin(loss[budget == b])] for b in np.unique(budget)),
                               key=lambda i: C[i]))
    keep, best = [], np.inf
    for i in np.argsort(C):
        if loss[i] < best:
            keep.append(i)
            best = loss[i]
    return np.array(keep)


def fit_compute_law(C: np.ndarray, loss: np.ndarray, *, resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> LawFit:
    """L(C) = E + A·C^(−α), fitted to the points given (pass the frontier)."""
    return _fit_lse(np.log(np.asarray(C, float))[:, None], np.asarray(loss, float), [("A", "alpha")],
                    resamples=resamples, seed=seed)


def predict(fit: LawFit, X: Sequence[float], *, level: float = 0.95, seed: int = 0) -> dict[str, float]:
    """Predicted loss at X (C for the compute law; (N, D) for Chinchilla) with a `level` interval.

    The interval is the percentile interval of bootstrap predictions, each multiplied by a residual drawn
    from the fit's log residuals: it covers parameter uncertainty AND run-to-run noise.
    """
    logx = (np.log(np.atleast_1d(np.asarray(X, float))) - fit.center_logx)[None, :]
    with _x64():
        point = float(np.exp(np.asarray(_log_pred(jnp.asarray(fit.theta), jnp.asarray(logx)))[0]))
        boot = np.exp(np.asarray(jax.vmap(lambda t: _log_pred(t, jnp.asarray(logx)))(
            jnp.asarray(fit.theta_samples)))[:, 0])
    rng = np.random.default_rng(seed)
    noisy = boot * np.exp(rng.choice(fit.log_residuals, size=boot.shape))
    lo, hi = np.percentile(noisy, [50 * (1 - level), 50 * (1 + level)])
    return {"prediction": point, "lower": float(lo), "upper": float(hi), "level": level}


def _parabola_min(logx: np.ndarray, y: np.ndarray) -> float:
    """argmin of a quadratic in log x; NaN when the points do not bracket a minimum (curvature <= 0)."""
    mu = float(np.mean(logx))  # centred: a quadratic in raw log FLOPs-scale numbers is ill-conditioned
    c2, c1, _ = np.polyfit(logx - mu, y, 2)
    return float(mu - c1 / (2 * c2)) if c2 > 0 else float("nan")


def fit_isoflop(budget: np.ndarray, N: np.ndarray, D: np.ndarray, loss: np.ndarray, *,
                resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> dict:
    """Per budget: loss parabola in log N and in log D → N*(C), D*(C); then N* = a_N·C^p_N, D* = a_D·C^p_D.

    Bootstrap: runs are resampled within each budget, parabolas and power laws refitted. p_N + p_D ≈ 1 when
    C ∝ N·D.
    """
    budget, N, D, loss = (np.asarray(a, float) for a in (budget, N, D, loss))
    budgets = np.unique(budget)
    if len(budgets) < 2:
        raise ValueError(f"isoflop fit: need >= 2 budgets, got {len(budgets)}")
    for b in budgets:
        if np.sum(budget == b) < 3:
            raise ValueError(f"isoflop fit: budget {b:.3g} has {np.sum(budget == b)} runs; a parabola needs >= 3")
    rng = np.random.default_rng(seed)

    def once(idx_by_budget):
        logC, logN, logD = [], [], []
        for b, idx in zip(budgets, idx_by_budget):
            n_star = _parabola_min(np.log(N[idx]), loss[idx])
            d_star = _parabola_min(np.log(D[idx]), loss[idx])
            logC.append(np.log(b)), logN.append(n_star), logD.append(d_star)
        logC, logN, logD = map(np.asarray, (logC, logN, logD))
        ok = np.isfinite(logN) & np.isfinite(logD)
        if ok.sum() < 2:
            return None
        pN, aN = np.polyfit(logC[ok], logN[ok], 1)
        pD, aD = np.polyfit(logC[ok], logD[ok], 1)
        return {"p_N": pN, "a_N": np.exp(aN), "p_D": pD, "a_D": np.exp(aD)}, (logC, logN, logD)

    full_idx = [np.flatnonzero(budget == b) for b in budgets]
    point = once(full_idx)
    if point is None:
        raise ValueError("isoflop fit: fewer than 2 budgets have a minimum inside their sizes; widen the sweep")
    params, (logC, logN, logD) = point
    draws = []
    for _ in range(resamples):
        r = once([rng.choice(idx, size=len(idx), replace=True) for idx in full_idx])
        if r is not None:
            draws.append(r[0])
    samples = {k: np.array([d[k] for d in draws]) for k in params}
    return {"params": {k: float(v) for k, v in params.items()},
            "intervals_95": {k: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))]
                             for k, v in samples.items()},
            "optima": {"C": np.exp(logC).tolist(), "N_star": np.exp(logN).tolist(), "D_star": np.exp(logD).tolist()},
            "num_resamples": len(draws), "p_N_plus_p_D": float(params["p_N"] + params["p_D"])}
