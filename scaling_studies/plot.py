"""Figures of a scaling study (PNG, matplotlib's Agg canvas; no display, no global pyplot state).

- `loss_vs_compute`: every run, the compute frontier, L(C) = E + A·C^(−α) with its 95% bootstrap band, the
  extrapolation to the held-out budgets with the pre-registered prediction intervals and the observed runs.
- `isoflop`: loss vs N per budget with the fitted parabolas and their minima.
- `optima`: N*(C) and D*(C) with their power-law fits.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure

from scaling_studies import fit as fitlib
from scaling_studies.study import Run, same_budget


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def _budget_colors(budgets: Sequence[float]) -> dict[float, tuple]:
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    bs = sorted(budgets)
    return {b: cmap(i / max(len(bs) - 1, 1)) for i, b in enumerate(bs)}


def loss_vs_compute(runs: list[Run], frontier: dict, law: fitlib.LawFit | None, path: Path, *,
                    prediction: dict | None = None, true_entropy: float | None = None, metric: str = "CE") -> Path:
    """`frontier`: {"C", "loss"} of the points the law was fitted to; `prediction`: prediction.json's content."""
    held = [p["budget"] for p in (prediction or {}).get("predictions", [])]
    fig = Figure(figsize=(7.5, 5), layout="constrained")
    ax = fig.add_subplot()
    fitted = [r for r in runs if not any(same_budget(r.budget, b) for b in held)]
    observed = [r for r in runs if any(same_budget(r.budget, b) for b in held)]
    ax.scatter([r.flops for r in fitted], [r.loss for r in fitted], s=14, c="0.6", label="runs (fitted)")
    ax.plot(frontier["C"], frontier["loss"], "o-", c="C0", ms=6, label="compute frontier")
    c_max = max([r.flops for r in runs] + held)
    if law is not None:
        grid = np.logspace(np.log10(min(r.flops for r in runs)) - 0.1, np.log10(c_max) + 0.1, 200)
        point, boot = fitlib.curve(law, grid)
        lo, hi = np.percentile(boot, [2.5, 97.5], axis=0)
        inside = grid <= max(frontier["C"]) * 1.0001
        p = law.params
        ax.plot(grid[inside], point[inside], c="C1",
                label=f"L(C) = {p['E']:.3g} + {p['A']:.3g}·C^-{p['alpha']:.3g}")
        ax.plot(grid[~inside], point[~inside], "--", c="C1", label="extrapolation")
        ax.fill_between(grid, lo, hi, color="C1", alpha=0.2, label="95% band of the law")
    if observed:
        ax.scatter([r.flops for r in observed], [r.loss for r in observed], marker="D", s=30, facecolors="none",
                   edgecolors="C2", zorder=5, label="held-out runs")
        for b in held:
            at = [r for r in observed if same_budget(r.budget, b)]
            if at:
                best = min(at, key=lambda r: r.loss)
                ax.scatter([best.flops], [best.loss], marker="*", s=160, c="C2", edgecolors="k", zorder=6,
                           label="held-out best (observed)")
    for p in (prediction or {}).get("predictions", []):
        yerr = [[p["prediction"] - p["lower"]], [p["upper"] - p["prediction"]]]
        ax.errorbar([p["budget"]], [p["prediction"]], yerr=yerr,
                    fmt="_", c="C3", capsize=8, ms=14, mew=2, elinewidth=2, zorder=7,
                    label="pre-registered prediction (95% PI)")
    if true_entropy is not None:
        ax.axhline(true_entropy, ls=":", c="k", label=f"true entropy {true_entropy:.4g}")
    ax.set_xscale("log")
    ax.set_xlabel("training compute C (model FLOPs)")
    ax.set_ylabel(f"{metric} (nats)")
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax.legend(unique.values(), unique.keys(), fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    return _save(fig, path)


def isoflop(cfg: dict[str, np.ndarray], iso: dict, path: Path, *, params: str = "total",
            metric: str = "CE") -> Path:
    """`cfg`: study.configurations of the fitted runs; `iso`: fit.fit_isoflop's result."""
    fig = Figure(figsize=(7.5, 5), layout="constrained")
    ax = fig.add_subplot()
    budgets = iso["optima"]["C"]
    colors = _budget_colors(budgets)
    for j, b in enumerate(budgets):
        sel = np.isclose(cfg["budget"], b, rtol=1e-6)
        logN = np.log(cfg["N"][sel])
        ax.scatter(cfg["N"][sel], cfg["loss"][sel], color=colors[b], s=18, label=f"C = {b:.3g}")
        par = iso["parabolas"]["N"][j]
        u = np.linspace(logN.min(), logN.max(), 100)
        c2, c1, c0 = par["coef"]
        du = u - par["center_logx"]
        ax.plot(np.exp(u), c2 * du * du + c1 * du + c0, color=colors[b], lw=1)
        n_star = iso["optima"]["N_star"][j]
        if np.isfinite(n_star):
            d = np.log(n_star) - par["center_logx"]
            ax.plot([n_star], [c2 * d * d + c1 * d + c0], "*", color=colors[b], ms=12, mec="k")
    ax.set_xscale("log")
    ax.set_xlabel(f"parameters N ({params})")
    ax.set_ylabel(f"{metric} (nats)")
    ax.set_title("IsoFLOP profiles (parabolas in log N, minima starred)")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    return _save(fig, path)


def optima(iso: dict, path: Path, *, params: str = "total") -> Path:
    """N*(C) and D*(C) from the IsoFLOP minima, with the fitted power laws and their exponents' intervals."""
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    C = np.asarray(iso["optima"]["C"], float)
    grid = np.logspace(np.log10(C.min()) - 0.2, np.log10(C.max()) + 0.2, 50)
    for k, (key, label) in enumerate((("N", f"N* ({params} parameters)"), ("D", "D* (training tokens)"))):
        ax = fig.add_subplot(1, 2, k + 1)
        star = np.asarray(iso["optima"][f"{key}_star"], float)
        p, a = iso["params"][f"p_{key}"], iso["params"][f"a_{key}"]
        lo, hi = iso["intervals_95"][f"p_{key}"]
        ax.plot(C, star, "o", c="C0", label="IsoFLOP minima")
        ax.plot(grid, a * grid ** p, c="C1", label=f"{key}* = {a:.3g}·C^{p:.3f} (p 95%: {lo:.3f}–{hi:.3f})")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("training compute C (model FLOPs)")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
    return _save(fig, path)
