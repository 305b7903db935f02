"""Scaling-law fits with bootstrap uncertainty (method: docs SCALING.md).

- `fit_compute_law`: L(C) = E + A·C^(−α) on the compute frontier.
- `fit_chinchilla`: L(N, D) = E + A/N^α + B/D^β.
Both fit log L = LSE(a_i − α_i·log X_i, e) (Chinchilla's parameterisation, A = e^a, E = e^e) with a Huber
loss (δ = 1e-3) on the log residuals SUMMED over runs, by L-BFGS from a grid of starts; the best start wins.
L-BFGS is optax's (jax), in float64 (`_x64`), stopped on the gradient norm; the (bootstrap resample × start)
problems are solved in one vmapped, jitted loop.
- `fit_isoflop`: per budget a parabola of loss in log N (and log D) → N*(C), D*(C), then N* = a·C^p.

Uncertainty: a parametric (model-based) bootstrap, ≥ 1000 resamples, percentile intervals. Each resample
draws a noise scale σ* = σ̂·sqrt(ν/χ²_ν) (σ̂ a robust residual scale on ν = n − p degrees of freedom,
optionally pooled with the seed-noise floor), adds Gaussian noise of that scale to the fitted curve and refits
with the same estimator. Why not resample runs: with δ = 1e-3 below the ~0.003 log noise the Huber fit behaves
like least-absolute-deviation, whose spread is set by the noise DENSITY near zero; resampling 40 runs (or their
residuals) gives a discrete noise law that such an estimator fits too well, so the run and residual bootstraps
gave E intervals ~30% too narrow (coverage ~80% by simulation). Refitting smooth noise reproduces the
estimator's own sampling spread, and drawing σ* propagates the uncertainty of σ̂ (t-like tails on few residual
degrees of freedom). Measured coverage: `python -m scaling_studies.coverage` (results in tests/test_fit.py).
`predict` adds one observation's noise (σ* per resample) to each bootstrap curve: a prediction interval.
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


def _minimise(f, theta0, max_iter, gtol):
    """L-BFGS on f from theta0 until the gradient norm is at most gtol: (theta, value, grad norm, converged)."""
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


def _tied_at_lowest(obj_RxS: np.ndarray) -> np.ndarray:
    """Per row, the starts whose objective ties the lowest finite one within 1e-6 relative: the same optimum up
    to rounding."""
    obj = np.where(np.isfinite(obj_RxS), obj_RxS, np.inf)
    lowest = obj.min(axis=1, keepdims=True)
    with np.errstate(invalid="ignore"):  # a row with no finite objective: inf - inf, no start tied
        return np.abs(obj - lowest) <= 1e-6 * np.abs(lowest) + 1e-12


def _best_start(obj_RxS: np.ndarray, gnorm_RxS: np.ndarray) -> np.ndarray:
    """Per row, the start to report: among the starts tied at the lowest objective, the one with the smallest
    gradient norm.

    A plain argmin of the objective picks among tied starts by their last bits, and can pick one whose line
    search stalled just short of the stopping rule while the others at the same optimum met it.
    """
    obj = np.where(np.isfinite(obj_RxS), obj_RxS, np.inf)
    g = np.where(_tied_at_lowest(obj), np.nan_to_num(np.asarray(gnorm_RxS, np.float64), nan=np.inf), np.inf)
    return np.where(np.isfinite(g.min(axis=1)), g.argmin(axis=1), obj.argmin(axis=1))


@jax.jit
def _lbfgs_many(theta0_SxP, logx_NxM, logy_RxN, w_RxN, delta, max_iter, gtol):
    """Minimise every (resample r, start s) problem; returns thetas [R,S,P], objectives, grad norms, converged.

    Runs in float64 (call inside `_x64()`) so that a gradient-norm stopping rule is reachable: in float32 the
    gradient at the optimum is rounding noise and only a relative-decrease rule can stop the loop.
    """

    def solve(theta0, logy_N, w_N):
        return _minimise(lambda th: _objective(th, logx_NxM, logy_N, w_N, delta), theta0, max_iter, gtol)

    per_start = jax.vmap(solve, in_axes=(0, None, None))
    return jax.vmap(per_start, in_axes=(None, 0, 0))(theta0_SxP, logy_RxN, w_RxN)


@jax.jit
def _lbfgs_fixed_e(theta0_SxQ, logx_NxM, logy_N, e_K, delta, max_iter, gtol):
    """As `_lbfgs_many` with log E held at each e_K[k] (theta without its last entry): results [K,S,...]."""

    def solve(theta0, e):
        f = lambda th: _objective(jnp.concatenate([th, e[None]]), logx_NxM, logy_N,  # noqa: E731
                                  jnp.ones_like(logy_N), delta)
        return _minimise(f, theta0, max_iter, gtol)

    per_start = jax.vmap(solve, in_axes=(0, None))
    return jax.vmap(per_start, in_axes=(None, 0))(theta0_SxQ, e_K)


Noise = tuple[float, int]  # (σ, degrees of freedom) of an independent noise estimate, e.g. the seed repeats


def robust_scale(resid: np.ndarray, num_params: int) -> tuple[float, int]:
    """(σ̂, ν): root-mean-square of the residuals winsorised at 3 normalised MADs, over ν = n − p.

    The winsorising keeps one diverged run from inflating σ̂ (it costs ~1% of σ on Gaussian noise); the
    plain MAD is not used on its own because a Huber/LAD fit pulls its residuals towards zero (it read 17% low
    on the test law).
    """
    r = np.asarray(resid, np.float64)
    dof = len(r) - int(num_params)
    if dof < 1:
        raise ValueError(f"noise scale: {len(r)} residuals for {num_params} constants leave no degree of freedom")
    mad = 1.4826 * float(np.median(np.abs(r - np.median(r))))
    cap = 3.0 * mad if mad > 0 else float(np.max(np.abs(r)))
    return float(np.sqrt(np.sum(np.clip(r, -cap, cap) ** 2) / dof)), dof


def pooled_noise(*parts: Noise | None) -> Noise:
    """Pool independent variance estimates of the same noise: Σ ν·σ² / Σ ν on Σ ν degrees of freedom."""
    parts = [q for q in parts if q is not None and q[1] > 0]
    if not parts:
        raise ValueError("pooled_noise: no estimate with degrees of freedom > 0")
    dof = sum(int(q[1]) for q in parts)
    return float(np.sqrt(sum(q[1] * q[0] ** 2 for q in parts) / dof)), dof


def interval_95(draws: np.ndarray) -> tuple[float, float]:
    """2.5/97.5 percentiles of bootstrap draws, without interpolating: a resample whose constant overflowed
    (inf, or NaN from inf − inf) counts as +inf, so an unbounded side reads inf rather than NaN."""
    v = np.where(np.isnan(draws), np.inf, np.asarray(draws, np.float64))
    lo, hi = np.quantile(v, [0.025, 0.975], method="inverted_cdf")
    return float(lo), float(hi)


def draw_sigmas(sigma: float, dof: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """σ* = σ̂·sqrt(ν/χ²_ν): the spread of σ given σ̂ on ν degrees of freedom (flat-prior posterior of a
    Gaussian scale); noise drawn with it gives Student-t-like intervals on few degrees of freedom."""
    return sigma * np.sqrt(dof / rng.chisquare(dof, size=size))


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
    noise: Noise  # (σ, ν) of the log-loss noise the bootstrap used
    sigma_samples: np.ndarray  # σ* of each resample

    def to_json(self) -> dict:
        return {"params": self.params, "intervals_95": {k: list(v) for k, v in self.intervals.items()},
                "convergence": self.convergence, "residual_std": float(np.std(self.log_residuals)),
                "num_resamples": int(len(self.theta_samples)),
                "noise_sigma_log": self.noise[0], "noise_dof": self.noise[1],
                "interval_method": "parametric bootstrap: Gaussian log-noise of scale sigma_hat*sqrt(dof/chi2_dof) "
                                   "added to the fitted curve, Huber refit, 2.5/97.5 percentiles"}


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
             seed: int, noise: Noise | None = None, max_iter: int = 2000) -> LawFit:
    n, m = logx_NxM.shape
    if n < 2 * m + 2:
        raise ValueError(f"fit: {n} runs for {2 * m + 1} constants; need at least {2 * m + 2}")
    if np.any(~np.isfinite(y_N)) or np.any(y_N <= 0):
        raise ValueError(f"fit: losses must be finite and > 0, got {y_N[~np.isfinite(y_N) | (y_N <= 0)][:5]}")
    if np.any(~np.isfinite(logx_NxM)):
        raise ValueError("fit: every N, D or C must be finite and > 0")
    if resamples < 1:
        raise ValueError(f"fit: resamples must be >= 1, got {resamples}")
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
        best = int(_best_start(obj, gnorm)[0])
        near = _tied_at_lowest(obj)[0]
        obj = np.where(np.isfinite(obj[0]), obj[0], np.inf)
        theta = th[0, best]
        fitted = np.asarray(_log_pred(jnp.asarray(theta), x))
        resid = fitted - logy
        # Parametric bootstrap (module docstring): smooth noise of a drawn scale around the fitted curve.
        sigma, dof = pooled_noise(robust_scale(resid, 2 * m + 1), noise)
        sigma_R = draw_sigmas(sigma, dof, resamples, rng)
        logy_RxN = fitted[None] + sigma_R[:, None] * rng.standard_normal((resamples, n))
        # Resample starts: the full-data optimum, and it with E moved to each grid E; the best objective wins.
        starts = np.repeat(theta[None], 1 + len(BOOT_E_FRACTIONS), 0)
        starts[1:, 2 * m] = np.log(y_N.min()) + np.log(BOOT_E_FRACTIONS)
        bth, bobj, bgnorm, bok = (np.asarray(a) for a in _lbfgs_many(
            jnp.asarray(starts), x, jnp.asarray(logy_RxN), jnp.ones((resamples, n)), HUBER_DELTA, max_iter, gtol))
    pick = _best_start(bobj, bgnorm)
    theta_R = bth[np.arange(resamples), pick]
    resample_ok = bok[np.arange(resamples), pick]

    def constants(t):
        out = {"E": float(np.exp(t[2 * m]))}
        for i, (amp, exp_) in enumerate(term_names):
            out[exp_] = float(t[m + i])
            out[amp] = float(np.exp(t[i] + t[m + i] * center[i]))  # undo the centring of log X
        return out

    params = constants(theta)
    with np.errstate(over="ignore"):  # a wild resample's amplitude may overflow: interval_95 reads it as inf
        draws = [constants(t) for t in theta_R]
    samples = {k: np.array([d[k] for d in draws]) for k in params}
    intervals = {k: interval_95(v) for k, v in samples.items()}
    convergence = {"objective": float(obj[best]), "grad_norm": float(gnorm[0, best]), "grad_tol": gtol,
                   "converged": bool(ok[0, best]), "starts": int(len(grid)), "starts_reaching_best": int(near.sum()),
                   "resamples_converged": float(np.mean(resample_ok))}
    return LawFit(list(params), params, samples, intervals, convergence, resid, center, theta, theta_R,
                  (sigma, dof), sigma_R)


def fit_chinchilla(N: np.ndarray, D: np.ndarray, loss: np.ndarray, *, resamples: int = DEFAULT_RESAMPLES,
                   seed: int = 0, noise: Noise | None = None) -> LawFit:
    """L(N, D) = E + A/N^α + B/D^β (N parameters, D training tokens). `noise`: an independent (σ, ν) of the
    log-loss noise (the seed repeats), pooled with the residual scale."""
    logx = np.log(np.column_stack([np.asarray(N, float), np.asarray(D, float)]))
    return _fit_lse(logx, np.asarray(loss, float), [("A", "alpha"), ("B", "beta")], resamples=resamples, seed=seed,
                    noise=noise)


CHI2_1_95 = 3.841  # 95th percentile of chi-square with one degree of freedom


def profile_e(features: Sequence[np.ndarray], loss: np.ndarray, e_values: Sequence[float], *,
              max_iter: int = 2000) -> dict:
    """L = E + sum_i A_i/X_i^alpha_i refitted with E held at each of `e_values`: how sharply the runs pin E down.

    A bootstrap interval is only as good as the law's form: when the form does not describe the runs, E can
    sit far from the truth with a narrow interval. The profile shows it. For each E: the Huber objective, the
    RMS log residual, the exponents and a likelihood-ratio statistic against the free fit. With δ far below the
    residuals the Huber fit is a median (least-absolute-deviation) regression, whose LR statistic (Koenker and
    Bassett 1982) is 4·(Σ|r|(E) − Σ|r|_free)/s, s = 1/f(0) the sparsity of the noise; s is taken as that of
    Gaussian noise of the free fit's robust scale, √(2π)·σ̂ (heavier tails make s smaller, so this errs
    towards keeping E). LR ~ χ²₁ if the form is right and the runs independent: LR > 3.84 says the runs reject
    that E at 5% under this law.
    """
    logx_NxM = np.log(np.column_stack([np.asarray(f, float) for f in features]))
    y_N = np.asarray(loss, float)
    e = np.asarray(e_values, float)
    if np.any(~np.isfinite(logx_NxM)) or np.any(~np.isfinite(y_N)) or np.any(y_N <= 0):
        raise ValueError("profile_e: features and losses must be finite and > 0")
    if e.size == 0 or np.any(~(e > 0)) or np.any(~np.isfinite(e)):
        raise ValueError(f"profile_e: E values must be finite and > 0, got {e_values}")
    n, m = logx_NxM.shape
    gtol = 1e-8 * HUBER_DELTA * n
    grid = _start_grid(logx_NxM, y_N)
    fixed_starts = np.unique(grid[:, :2 * m], axis=0)
    with _x64():
        x = jnp.asarray(logx_NxM - logx_NxM.mean(axis=0), jnp.float64)
        logy = jnp.asarray(np.log(y_N))
        th, obj, gnorm, ok = (np.asarray(a) for a in _lbfgs_many(
            jnp.asarray(grid), x, logy[None], jnp.ones((1, n)), HUBER_DELTA, max_iter, gtol))
        best = int(_best_start(obj, gnorm)[0])
        obj = np.where(np.isfinite(obj[0]), obj[0], np.inf)
        resid_free = np.asarray(_log_pred(jnp.asarray(th[0, best]), x)) - np.log(y_N)
        pth, pobj, pgnorm, pok = (np.asarray(a) for a in _lbfgs_fixed_e(
            jnp.asarray(fixed_starts), x, logy, jnp.asarray(np.log(e)), HUBER_DELTA, max_iter, gtol))
        rows = []
        sparsity = np.sqrt(2 * np.pi) * robust_scale(resid_free, 2 * m + 1)[0]
        picks = _best_start(pobj, pgnorm)
        for k in range(len(e)):
            o = np.where(np.isfinite(pobj[k]), pobj[k], np.inf)
            j = int(picks[k])
            theta = np.concatenate([pth[k, j], [np.log(e[k])]])
            r = np.asarray(_log_pred(jnp.asarray(theta), x)) - np.log(y_N)
            rows.append({"E": float(e[k]), "objective": float(o[j]), "rms_log_residual": float(np.sqrt(np.mean(r ** 2))),
                         "exponents": [float(a) for a in pth[k, j, m:2 * m]],
                         "lr": float(4 * (o[j] - obj[best]) / HUBER_DELTA / sparsity), "converged": bool(pok[k, j])})
    return {"E_free": float(np.exp(th[0, best, 2 * m])), "objective_free": float(obj[best]),
            "rms_log_residual_free": float(np.sqrt(np.mean(resid_free ** 2))), "converged_free": bool(ok[0, best]),
            "lr_threshold_95": CHI2_1_95, "rows": rows}


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


def fit_compute_law(C: np.ndarray, loss: np.ndarray, *, resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                    noise: Noise | None = None) -> LawFit:
    """L(C) = E + A·C^(−α), fitted to the points given (pass the frontier). With few points the residual scale
    has few degrees of freedom: pass the seed-noise floor as `noise` to pool with it."""
    return _fit_lse(np.log(np.asarray(C, float))[:, None], np.asarray(loss, float), [("A", "alpha")],
                    resamples=resamples, seed=seed, noise=noise)


def curve(fit: LawFit, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(point curve, bootstrap curves [R, K]) of the law at K points X ([K] for L(C), [K, 2] for L(N, D))."""
    X = np.asarray(X, float)
    logx = np.log(X.reshape(len(X), -1)) - fit.center_logx
    with _x64():
        point = np.exp(np.asarray(_log_pred(jnp.asarray(fit.theta), jnp.asarray(logx))))
        boot = np.exp(np.asarray(jax.vmap(lambda t: _log_pred(t, jnp.asarray(logx)))(jnp.asarray(fit.theta_samples))))
    return point, boot


def predict(fit: LawFit, X: Sequence[float], *, level: float = 0.95, seed: int = 0) -> dict[str, float]:
    """Predicted loss of ONE new run at X (C for the compute law; (N, D) for Chinchilla), with a `level`
    prediction interval.

    Each bootstrap curve's value (parameter uncertainty) is multiplied by exp(σ*·z), one observation's noise
    at that resample's noise scale σ* (the residual scale pooled with any seed-noise floor passed to the fit):
    the interval covers where a single new run lands, not only where the law is.
    """
    point, boot = curve(fit, np.asarray(X, float)[None])
    rng = np.random.default_rng(seed)
    noisy = boot[:, 0] * np.exp(fit.sigma_samples * rng.standard_normal(len(fit.sigma_samples)))
    lo, hi = np.percentile(noisy, [50 * (1 - level), 50 * (1 + level)])
    return {"prediction": float(point[0]), "lower": float(lo), "upper": float(hi), "level": level}


def _parabolas(logx_BxK: np.ndarray, y_RxK: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares parabolas of each row of y in (centred) log x: coefficients [R, 3] (c2, c1, c0 about the
    centre) and the argmin in log x (NaN where the curvature is <= 0: no minimum inside)."""
    mu = float(np.mean(logx_BxK))  # centred: a quadratic in raw log FLOPs-scale numbers is ill-conditioned
    u = logx_BxK - mu
    design = np.column_stack([u * u, u, np.ones_like(u)])
    coef, *_ = np.linalg.lstsq(design, y_RxK.T, rcond=None)
    coef = coef.T
    with np.errstate(divide="ignore", invalid="ignore"):
        arg = np.where(coef[:, 0] > 0, mu - coef[:, 1] / (2 * coef[:, 0]), np.nan)
    return coef, arg


def fit_isoflop(budget: np.ndarray, N: np.ndarray, D: np.ndarray, loss: np.ndarray, *,
                resamples: int = DEFAULT_RESAMPLES, seed: int = 0, noise: Noise | None = None) -> dict:
    """Per budget: loss parabola in log N and in log D → N*(C), D*(C); then N* = a_N·C^p_N, D* = a_D·C^p_D.

    Bootstrap (parametric, as the laws): Gaussian noise of a drawn scale σ* (the parabolas' pooled robust
    residual scale, pooled with `noise` if given; both in LOSS units here) around each budget's fitted parabola,
    both parabolas and both power laws refitted. p_N + p_D ≈ 1 when C ∝ N·D.
    """
    budget, N, D, loss = (np.asarray(a, float) for a in (budget, N, D, loss))
    if np.any(~np.isfinite(loss)):
        raise ValueError(f"isoflop fit: losses must be finite, got {loss[~np.isfinite(loss)][:5]}")
    budgets = np.unique(budget)
    if len(budgets) < 2:
        raise ValueError(f"isoflop fit: need >= 2 budgets, got {len(budgets)}")
    for b in budgets:
        if np.sum(budget == b) < 3:
            raise ValueError(f"isoflop fit: budget {b:.3g} has {np.sum(budget == b)} runs; a parabola needs >= 3")
    rng = np.random.default_rng(seed)
    idx = [np.flatnonzero(budget == b) for b in budgets]
    fitsN = [_parabolas(np.log(N[i]), loss[i][None]) for i in idx]
    fitsD = [_parabolas(np.log(D[i]), loss[i][None]) for i in idx]
    resid = np.concatenate([loss[i] - _parabola_values(np.log(N[i]), c[0][0]) for i, c in zip(idx, fitsN)])
    residual_noise = robust_scale(resid, 3 * len(budgets)) if len(resid) > 3 * len(budgets) else None
    if residual_noise is None and noise is None:
        raise ValueError("isoflop fit: every budget has exactly 3 runs, so the parabolas leave no residual to "
                         "measure noise from; add runs or pass `noise`")
    sigma, dof = pooled_noise(residual_noise, noise)
    sigma_R = draw_sigmas(sigma, dof, resamples, rng)

    logC = np.log(budgets)
    star_N = np.array([f[1][0] for f in fitsN])
    star_D = np.array([f[1][0] for f in fitsD])
    point = _power_laws(logC, star_N[None], star_D[None])
    if point is None or not np.all(np.isfinite(point[0])):
        raise ValueError("isoflop fit: fewer than 2 budgets have a minimum inside their sizes; widen the sweep")
    boot_N = np.empty((resamples, len(budgets)))
    boot_D = np.empty((resamples, len(budgets)))
    for j, (i, (cN, _)) in enumerate(zip(idx, fitsN)):
        noise_RxK = sigma_R[:, None] * rng.standard_normal((resamples, len(i)))
        y_RxK = _parabola_values(np.log(N[i]), cN[0])[None] + noise_RxK
        boot_N[:, j] = _parabolas(np.log(N[i]), y_RxK)[1]
        boot_D[:, j] = _parabolas(np.log(D[i]), y_RxK)[1]
    draws = _power_laws(logC, boot_N, boot_D)
    ok = np.all(np.isfinite(draws), axis=1)
    names = ("p_N", "a_N", "p_D", "a_D")
    params = dict(zip(names, (float(v) for v in point[0])))
    return {"params": params,
            "intervals_95": {k: list(interval_95(draws[ok, c])) for c, k in enumerate(names)},
            "optima": {"C": budgets.tolist(), "N_star": np.exp(star_N).tolist(), "D_star": np.exp(star_D).tolist()},
            "parabolas": {"N": [{"coef": f[0][0].tolist(), "center_logx": float(np.mean(np.log(N[i])))}
                                for i, f in zip(idx, fitsN)],
                          "D": [{"coef": f[0][0].tolist(), "center_logx": float(np.mean(np.log(D[i])))}
                                for i, f in zip(idx, fitsD)]},
            "noise_sigma": sigma, "noise_dof": dof, "num_resamples": int(ok.sum()),
            "resamples_with_all_minima": float(np.mean(np.all(np.isfinite(boot_N) & np.isfinite(boot_D), axis=1))),
            "p_N_plus_p_D": float(params["p_N"] + params["p_D"])}


def _parabola_values(logx: np.ndarray, coef: np.ndarray) -> np.ndarray:
    u = logx - float(np.mean(logx))
    return coef[0] * u * u + coef[1] * u + coef[2]


def _power_laws(logC_K: np.ndarray, logN_RxK: np.ndarray, logD_RxK: np.ndarray) -> np.ndarray | None:
    """[R, 4] = (p_N, a_N, p_D, a_D) of log-linear fits over the budgets whose N* and D* are both finite;
    NaN rows where fewer than 2 budgets are."""
    out = np.full((len(logN_RxK), 4), np.nan)
    ok_RxK = np.isfinite(logN_RxK) & np.isfinite(logD_RxK)
    for r in range(len(logN_RxK)):
        ok = ok_RxK[r]
        if ok.sum() < 2:
            continue
        pN, aN = np.polyfit(logC_K[ok], logN_RxK[r, ok], 1)
        pD, aD = np.polyfit(logC_K[ok], logD_RxK[r, ok], 1)
        out[r] = pN, np.exp(aN), pD, np.exp(aD)
    return out
