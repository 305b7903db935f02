"""Fits, figures and report.md of a scaling study, and the pre-registration of a held-out prediction.

    python -m scaling_studies.report --study scaling_studies/results/<name> [--true_entropy_from SWEEP.py | --true_entropy X]
    python -m scaling_studies.report --study scaling_studies/results/<name> --predict 1e13[,3e13]

The first writes fits.json, figures/*.png and report.md. `--true_entropy_from` computes the synthetic process's
true CE on exactly the events the metric was measured on (the sweep's generator, split, max_len and eval users). Runs at the budgets listed in prediction.json are
held out of every fit and compared with the prediction. `--predict` fits L(C) on the runs present and writes
prediction.json (predicted CE and 95% prediction interval per budget); it refuses to overwrite one, and refuses
when runs at a listed budget have already finished: a pre-registration is made before the runs, once.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from lrm.training.metrics_writer import json_default
from scaling_studies import fit as fitlib
from scaling_studies import plot
from scaling_studies.study import Study, configurations, load_study, noise_floor, same_budget
from scaling_studies.sweeps import Sweep

PREDICTION = "prediction.json"


LAWS = ("compute", "isoflop", "chinchilla")


def fit_study(study: Study, *, held_out: list[float] = (), params: str = "total",
              resamples: int = fitlib.DEFAULT_RESAMPLES, seed: int = 0, laws: tuple[str, ...] = LAWS
              ) -> tuple[dict, dict]:
    """(fits.json content, {"compute_law": LawFit, "isoflop": dict, "configs", "frontier"}) on the runs not held
    out; `laws` picks which of L(C), IsoFLOP and L(N, D) to fit.

    Seed repeats are averaged per configuration; their spread (the noise floor) is pooled into every fit's
    noise scale. A fit the data cannot support is recorded with its error instead of stopping the others.
    """
    runs = [r for r in study.runs if not any(same_budget(r.budget, b) for b in held_out)]
    if not runs:
        raise ValueError(f"{study.path}: every run is at a held-out budget; nothing to fit")
    cfg = configurations(runs, params=params)
    floor = noise_floor(runs)
    noise_log = None if floor is None else (floor["sigma_log"], floor["dof"])
    out: dict = {"study": study.name, "metric": study.metric, "params": params, "held_out_budgets": list(held_out),
                 "num_runs": len(runs), "num_configurations": len(cfg["loss"]), "resamples": resamples,
                 "noise_floor": floor}
    objs: dict = {"configs": cfg, "compute_law": None, "isoflop": None}
    has_budgets = bool(np.all(np.isfinite(cfg["budget"])))
    front = fitlib.compute_frontier(cfg["C"], cfg["loss"], cfg["budget"] if has_budgets else None)
    frontier = {"C": cfg["C"][front].tolist(), "loss": cfg["loss"][front].tolist(), "size": cfg["size"][front].tolist()}
    objs["frontier"] = frontier
    out["compute_law"] = {"error": "not requested", "frontier": frontier}
    if "compute" in laws:
        try:
            law = fitlib.fit_compute_law(cfg["C"][front], cfg["loss"][front], resamples=resamples, seed=seed,
                                         noise=noise_log)
            out["compute_law"] = {**law.to_json(), "frontier": frontier}
            objs["compute_law"] = law
        except ValueError as e:
            out["compute_law"] = {"error": str(e), "frontier": frontier}
    if has_budgets and "isoflop" in laws:
        try:
            noise_ce = None if floor is None else (floor["std_ce"], floor["dof"])
            iso = fitlib.fit_isoflop(cfg["budget"], cfg["N"], cfg["D"], cfg["loss"], resamples=resamples, seed=seed,
                                     noise=noise_ce)
            out["isoflop"] = iso
            objs["isoflop"] = iso
        except ValueError as e:
            out["isoflop"] = {"error": str(e)}
    if "chinchilla" not in laws:
        out["chinchilla"] = {"error": "not requested"}
        return out, objs
    try:
        out["chinchilla"] = fitlib.fit_chinchilla(cfg["N"], cfg["D"], cfg["loss"], resamples=resamples, seed=seed,
                                                  noise=noise_log).to_json()
    except ValueError as e:
        out["chinchilla"] = {"error": str(e)}
    return out, objs


def _commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def preregister(study_dir: str | Path, budgets: list[float], *, params: str = "total", metric: str = "valid_ce",
                resamples: int = fitlib.DEFAULT_RESAMPLES, seed: int = 0) -> Path:
    """Writes DIR/prediction.json: L(C) fitted on the runs present, predicted at each held-out budget."""
    path = Path(study_dir) / PREDICTION
    if path.exists():
        raise FileExistsError(f"{path} exists: a pre-registered prediction is never redone (move it away by hand "
                              "only if it was written by mistake, and say so in the report)")
    if not budgets or any(not (b > 0 and np.isfinite(b)) for b in budgets):
        raise ValueError(f"--predict needs budgets > 0, got {budgets}")
    study = load_study(study_dir, metric=metric)
    seen = [r.name for r in study.runs if any(same_budget(r.budget, b) for b in budgets)]
    if seen:
        raise ValueError(f"{study.path}: runs at a budget to predict have already finished ({seen[:3]}); a "
                         "prediction made after seeing them is not a pre-registration")
    fits, objs = fit_study(study, held_out=budgets, params=params, resamples=resamples, seed=seed, laws=("compute",))
    law = objs["compute_law"]
    if law is None:
        raise ValueError(f"{study.path}: L(C) could not be fitted: {fits['compute_law']['error']}")
    if max(budgets) <= max(objs["frontier"]["C"]):
        raise ValueError(f"held-out budgets {budgets} must lie beyond the fitted compute "
                         f"(up to {max(objs['frontier']['C']):.3g}): the test is an extrapolation")
    preds = [{"budget": float(b), **fitlib.predict(law, [b], seed=seed)} for b in budgets]
    record = {
        "what": "pre-registered prediction of the compute-frontier CE at held-out budgets, written before those runs",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "commit": _commit(), "metric": metric,
        "predictions": preds,
        "interval": "95% prediction interval for one run: parameter uncertainty (parametric bootstrap of L(C)) "
                    "times one observation's log-noise, noise scale = the frontier residuals pooled with the seed "
                    "repeats (scaling_studies/fit.py)",
        "fit": fits["compute_law"], "noise_floor": fits["noise_floor"],
        "runs_used": sorted(r.config_hash for r in study.runs),
    }
    with open(path, "x") as fh:  # exclusive create: never replaces a prediction written meanwhile
        json.dump(record, fh, indent=2)
    return path


def true_entropy_of(sweep: Sweep, study: Study) -> dict:
    """Mean true CE (nats), its standard error and the user count of the events `study.metric` was measured on:
    the sweep's synthetic generator, the metric's split, the runs' max_len and their eval user subset."""
    from data_pipeline.datasets.synthetic import true_cross_entropy

    if sweep.synthetic is None:
        raise ValueError(f"sweep {sweep.name!r} has no synthetic generator; its data has no known true entropy")
    data, evaluation = study.first_config.get("data", {}), study.first_config.get("eval", {})
    if data.get("dataset") != sweep.synthetic.name:
        raise ValueError(f"{study.path}: runs trained on {data.get('dataset')!r}, the sweep generates "
                         f"{sweep.synthetic.name!r}")
    split = study.metric.split("_")[0]
    users = int(evaluation.get("max_users", 0)) or None
    out = true_cross_entropy(sweep.synthetic, split=split, max_len=int(data["max_len"]), users=users)
    return {**out, "split": split, "max_len": int(data["max_len"]), "sweep": sweep.name}


def _fmt_interval(fit_json: dict, key: str) -> str:
    lo, hi = fit_json["intervals_95"][key]
    return f"{fit_json['params'][key]:.4g} [{lo:.4g}, {hi:.4g}]"


def _law_table(fit_json: dict, title: str) -> list[str]:
    if "error" in fit_json:
        return [f"**{title}**: not fitted: {fit_json['error']}", ""]
    conv = fit_json["convergence"]
    lines = [f"**{title}** (95% intervals, {fit_json['num_resamples']} parametric-bootstrap resamples; noise "
             f"σ = {fit_json['noise_sigma_log']:.4g} in log CE on {fit_json['noise_dof']} degrees of freedom)", "",
             "| constant | estimate [95% interval] |", "|---|---|"]
    lines += [f"| {k} | {_fmt_interval(fit_json, k)} |" for k in fit_json["params"]]
    lines += ["", f"Convergence: converged={conv['converged']}, grad norm {conv['grad_norm']:.2g} "
              f"(tol {conv['grad_tol']:.2g}), {conv['starts_reaching_best']}/{conv['starts']} starts reach the best "
              f"objective, {100 * conv['resamples_converged']:.1f}% of resamples converged.", ""]
    return lines


def _budget_label(b: float | None) -> str:
    return "grid" if b is None else f"{b:.3g}"


def _setup_lines(study: Study, held_out: list[float], params: str) -> list[str]:
    c = study.first_config
    data, model, loss, train = (c.get(k, {}) for k in ("data", "model", "loss", "train"))
    budgets = sorted({r.budget for r in study.runs if r.budget is not None})
    sizes: dict[str, tuple] = {}
    for r in study.runs:
        sizes.setdefault(r.size, (r.params_total, r.params_non_embedding, set()))[2].add(r.lr)
    seeds: dict = {}
    for r in study.runs:
        seeds.setdefault(r.budget, {}).setdefault(r.size, set()).add(r.seed)
    lines = ["## Setup", "",
             f"- Data: `{data.get('dataset')}` (max_len {data.get('max_len')}, packing {data.get('pack')}); model "
             f"`{model.get('name')}`; training loss `{loss.get('kind')}`; batch {train.get('batch_size')}; "
             f"schedule `{c.get('optim', {}).get('schedule')}`.",
             f"- Metric for the laws: `{study.metric}` (full-catalogue cross-entropy, nats). N = {params} parameters; "
             "D = real training tokens; C = model training FLOPs (lrm.flops: matmuls, 3× forward, real tokens only).",
             f"- Runs: {len(study.runs)} finished, {len(study.failed)} failed, {len(study.excluded)} excluded "
             f"(non-finite metric: {', '.join(e['name'] for e in study.excluded) or 'none'}).",
             f"- Budgets (FLOPs): {', '.join(f'{b:.3g}' for b in budgets) or 'none (grid sweep)'}; held out for "
             f"the pre-registered test: {', '.join(f'{b:.3g}' for b in held_out) or 'none'}.",
             "- Seeds per budget: " + "; ".join(
                 f"{_budget_label(b)}: {max(len(s) for s in per.values())}"
                 for b, per in sorted(seeds.items(), key=lambda x: x[0] or 0.0)) + ".", "",
             "| size | N total | N non-embedding | learning rate(s) |", "|---|---|---|---|"]
    for label, (nt, nn, lrs) in sorted(sizes.items(), key=lambda x: x[1][0]):
        lr = ", ".join(f"{v:.3g}" for v in sorted(v for v in lrs if v is not None)) or "config default"
        lines.append(f"| {label} | {nt:,} | {nn:,} | {lr} |")
    return lines + [""]


def _noise_lines(floor: dict | None) -> list[str]:
    lines = ["## Noise floor (seed repeats)", ""]
    if floor is None:
        return lines + ["No configuration was run with more than one seed: the noise floor is unmeasured, and the "
                        "fits' noise scale comes from their residuals alone.", ""]
    lines += ["| budget | configurations | seeds | std of CE (nats) | std / mean CE | dof |",
              "|---|---|---|---|---|---|"]
    for b in floor["per_budget"]:
        lines.append(f"| {_budget_label(b['budget'])} | {b['configurations']} | "
                     f"{'/'.join(map(str, b['seeds']))} | {b['std_ce']:.4g} | "
                     f"{100 * b['std_ce'] / b['mean_ce']:.3f}% | "
                     f"{b['dof']} |")
    lines += ["", f"Pooled: std {floor['std_ce']:.4g} nats, {floor['sigma_log']:.4g} in log CE, on {floor['dof']} "
              "degrees of freedom (pooled into every fit's noise scale).", ""]
    return lines


def _prediction_lines(study: Study, prediction: dict | None) -> list[str]:
    lines = ["## Pre-registered prediction", ""]
    if prediction is None:
        return lines + [f"No {PREDICTION} in the study folder: no held-out test yet "
                        "(`python -m scaling_studies.report --study DIR --predict C`).", ""]
    lines += [f"Written {prediction['created']} at commit `{prediction.get('commit')}`, from "
              f"{len(prediction['runs_used'])} runs. Observed = the best configuration at the budget (seed mean).", "",
              "| budget | predicted [95% PI] | observed | actual C of that run | sizes run | abs error (% of observed) "
              "| inside? |", "|---|---|---|---|---|---|---|"]
    for p in prediction["predictions"]:
        at = [r for r in study.runs if same_budget(r.budget, p["budget"])]
        head = f"| {p['budget']:.3g} | {p['prediction']:.4f} [{p['lower']:.4f}, {p['upper']:.4f}] |"
        if not at:
            lines.append(head + " not run yet | | 0 | | |")
            continue
        cfg = configurations(at)
        best = int(np.argmin(cfg["loss"]))
        obs = float(cfg["loss"][best])
        err = 100 * abs(p["prediction"] - obs) / obs
        inside = "yes" if p["lower"] <= obs <= p["upper"] else "no"
        lines.append(head + f" {obs:.4f} | {cfg['C'][best]:.3g} | {len(cfg['loss'])} | {err:.2f}% | {inside} |")
    return lines + [""]


E_PROFILE_FRACTIONS = (0.5, 0.7, 0.8, 0.9, 0.95)  # of the smallest fitted loss


def e_profile(cfg: dict, fitted_e: float, *, true_entropy: float | None = None) -> dict:
    """L(N, D) refitted with E held at the fitted E, the true entropy (if known) and fractions of the smallest
    loss, on the configurations the fit used (`fit_study`'s objs["configs"]; fitlib.profile_e)."""
    values = {float(fitted_e)} | {float(f * cfg["loss"].min()) for f in E_PROFILE_FRACTIONS}
    if true_entropy is not None:
        values.add(float(true_entropy))
    return fitlib.profile_e([cfg["N"], cfg["D"]], cfg["loss"], sorted(values))


def _profile_lines(fits: dict) -> list[str]:
    prof = fits.get("chinchilla_e_profile")
    if prof is None:
        return []
    truth = fits.get("true_entropy")
    floor = fits.get("noise_floor")
    lines = ["## How well the runs pin E down (L(N, D) profile)", "",
             "L(N, D) refitted with E held at each value (scaling_studies/fit.py `profile_e`). LR: the median-"
             "regression likelihood ratio against the free fit (conservative; ~χ²₁ if the law's form is right): "
             f"above {prof['lr_threshold_95']:.2f} the runs reject that E at 5% under this law.", "",
             "| E | objective | RMS log residual | alpha | beta | LR | rejected at 5%? |", "|---|---|---|---|---|---|---|"]
    for row in prof["rows"]:
        tag = " (true entropy)" if truth is not None and abs(row["E"] - truth) < 1e-9 else ""
        if abs(row["E"] - fits["chinchilla"]["params"]["E"]) < 1e-9:
            tag += " (fitted)"
        al, be = row["exponents"]
        lines.append(f"| {row['E']:.4g}{tag} | {row['objective']:.4g} | {row['rms_log_residual']:.4f} | {al:.3f} | "
                     f"{be:.3f} | {row['lr']:.2f} | {'yes' if row['lr'] > prof['lr_threshold_95'] else 'no'} |")
    rms = prof["rms_log_residual_free"]
    lines += ["", f"RMS log residual of the free fit: {rms:.4f}"]
    if floor is not None:
        lines[-1] += (f"; the seed noise floor is {floor['sigma_log']:.4f} in log CE, so the law's misfit is "
                      f"{rms / floor['sigma_log']:.1f}x the noise (≈ 1 when the form describes the runs).")
    else:
        lines[-1] += "."
    return lines + [""]


def _truth_lines(fits: dict, true_entropy: float | None) -> list[str]:
    if true_entropy is None:
        return []
    detail = fits.get("true_entropy_detail")
    where = ("" if detail is None else f" (±{detail['stderr']:.4f} standard error; the {detail['split']} targets of "
             f"the first {detail['users']:,} users, histories cut to their last {detail['max_len']} events, as the "
             "runs were evaluated)")
    lines = ["## True entropy (synthetic data)", "",
             f"The process's true cross-entropy on the evaluated events is {true_entropy:.4f} nats{where}.", "",
             "| law | fitted E [95% interval] | truth inside? |", "|---|---|---|"]
    for key, title in (("compute_law", "L(C)"), ("chinchilla", "L(N, D)")):
        f = fits.get(key, {})
        if "params" in f:
            lo, hi = f["intervals_95"]["E"]
            lines.append(f"| {title} | {_fmt_interval(f, 'E')} | {'yes' if lo <= true_entropy <= hi else 'no'} |")
    return lines + [""]


def write_report(study: Study, fits: dict, prediction: dict | None, figures: list[Path], path: Path, *,
                 true_entropy: float | None = None) -> Path:
    held = fits["held_out_budgets"]
    lines = [f"# Scaling study `{study.name}`", "",
             f"Generated by `python -m scaling_studies.report` from `{study.path / 'results.jsonl'}`.", ""]
    lines += _setup_lines(study, held, fits["params"])
    lines += _noise_lines(fits["noise_floor"])
    lines += ["## Fits", "", "Method: scaling_studies/fit.py (Huber δ=1e-3 on log residuals summed over runs; "
              "parametric bootstrap intervals).", ""]
    lines += _law_table(fits["compute_law"], "L(C) = E + A·C^-α on the compute frontier")
    lines += _law_table(fits["chinchilla"], "L(N, D) = E + A/N^α + B/D^β on every configuration")
    iso = fits.get("isoflop")
    if iso is not None and "error" in iso:
        lines += [f"**IsoFLOP**: not fitted: {iso['error']}", ""]
    elif iso is not None:
        lines += ["**IsoFLOP optima** (N* = a_N·C^p_N, D* = a_D·C^p_D)", "", "| constant | estimate [95% interval] |",
                  "|---|---|"]
        lines += [f"| {k} | {_fmt_interval(iso, k)} |" for k in iso["params"]]
        lines += ["", f"p_N + p_D = {iso['p_N_plus_p_D']:.3f} (≈ 1 when C ∝ N·D).", ""]
    lines += _truth_lines(fits, true_entropy)
    lines += _profile_lines(fits)
    lines += _prediction_lines(study, prediction)
    lines += ["## Figures", ""] + [f"![{f.stem}](figures/{f.name})" for f in figures] + [""]
    path.write_text("\n".join(lines))
    return path


def make_report(study_dir: str | Path, *, true_entropy: float | None = None, params: str = "total",
                metric: str = "valid_ce", resamples: int = fitlib.DEFAULT_RESAMPLES, seed: int = 0,
                true_entropy_from: Sweep | None = None) -> dict:
    """Fits (held-out budgets from prediction.json left out), fits.json, figures/*.png, report.md."""
    study_dir = Path(study_dir)
    study = load_study(study_dir, metric=metric)
    pred_path = study_dir / PREDICTION
    prediction = json.loads(pred_path.read_text()) if pred_path.exists() else None
    held = [p["budget"] for p in prediction["predictions"]] if prediction else []
    fits, objs = fit_study(study, held_out=held, params=params, resamples=resamples, seed=seed)
    if true_entropy_from is not None:
        if true_entropy is not None:
            raise ValueError("give either true_entropy or true_entropy_from, not both")
        fits["true_entropy_detail"] = true_entropy_of(true_entropy_from, study)
        true_entropy = fits["true_entropy_detail"]["ce"]
    if true_entropy is not None:
        fits["true_entropy"] = true_entropy
    if "params" in fits["chinchilla"]:
        fits["chinchilla_e_profile"] = e_profile(objs["configs"], fits["chinchilla"]["params"]["E"],
                                                 true_entropy=true_entropy)
    (study_dir / "fits.json").write_text(json.dumps(fits, indent=2, default=json_default))
    figdir = study_dir / "figures"
    figures = [plot.loss_vs_compute(study.runs, objs["frontier"], objs["compute_law"], figdir / "loss_vs_compute.png",
                                    prediction=prediction, true_entropy=true_entropy, metric=study.metric)]
    if objs["isoflop"] is not None:
        figures.append(plot.isoflop(objs["configs"], objs["isoflop"], figdir / "isoflop.png", params=params,
                                    metric=study.metric))
        figures.append(plot.optima(objs["isoflop"], figdir / "optima.png", params=params))
    write_report(study, fits, prediction, figures, study_dir / "report.md", true_entropy=true_entropy)
    return fits



def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--study", required=True, help="sweep output folder holding results.jsonl")
    p.add_argument("--predict", help="comma-separated held-out budgets (FLOPs): write prediction.json and stop")
    p.add_argument("--true_entropy", type=float, help="the data's true CE (synthetic data), to compare with E")
    p.add_argument("--true_entropy_from", help="sweep file with a synthetic generator: compute the true CE of the "
                                               "evaluated events from it")
    p.add_argument("--params", choices=["total", "non_embedding"], default="total", help="N for the fits")
    p.add_argument("--metric", choices=["valid_ce", "test_ce"], default="valid_ce")
    p.add_argument("--resamples", type=int, default=fitlib.DEFAULT_RESAMPLES)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    kw = dict(params=a.params, metric=a.metric, resamples=a.resamples, seed=a.seed)
    if a.predict:
        try:
            budgets = [float(x) for x in a.predict.split(",") if x.strip()]
        except ValueError as e:
            raise SystemExit(f"--predict: budgets must be numbers like 1e13,3e13 ({e})") from e
        path = preregister(a.study, budgets, **kw)
        for row in json.loads(path.read_text())["predictions"]:
            print(f"C={row['budget']:.3g}: predicted {row['prediction']:.4f} [{row['lower']:.4f}, {row['upper']:.4f}]")
        print(f"wrote {path}")
        return 0
    sweep = None
    if a.true_entropy_from:
        from scaling_studies.launch_sweep import load_sweep

        sweep = load_sweep(a.true_entropy_from)
    make_report(a.study, true_entropy=a.true_entropy, true_entropy_from=sweep, **kw)
    print(f"wrote {Path(a.study) / 'fits.json'}, {Path(a.study) / 'figures'}/, {Path(a.study) / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
