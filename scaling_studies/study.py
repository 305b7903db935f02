"""A sweep's results as the fits and the report read them: runs, per-configuration means, the seed-noise floor.

Input: DIR/results.jsonl as `launch_sweep` writes it (one line per finished or failed run). A configuration is
(budget, size); its seed repeats are averaged for the fits, and their spread is the noise floor.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import numpy as np

METRICS = ("valid_ce", "test_ce")


@dataclasses.dataclass(frozen=True)
class Run:
    name: str
    config_hash: str
    budget: float | None  # the IsoFLOP budget the run was planned for (None in a grid sweep)
    size: str
    seed: int
    params_total: int
    params_non_embedding: int
    tokens: float  # D: real training tokens
    flops: float  # C: model training FLOPs actually spent (lrm.flops convention)
    loss: float  # the metric the laws are fitted to (full-catalogue CE, nats)
    lr: float | None

    def params(self, kind: str) -> int:
        return self.params_total if kind == "total" else self.params_non_embedding


@dataclasses.dataclass
class Study:
    name: str
    path: Path
    runs: list[Run]
    failed: list[dict]  # {"name", "error"} of runs whose last line is a failure
    excluded: list[dict]  # {"name", "reason"}: finished runs the fits cannot use (a non-finite loss)
    metric: str
    first_config: dict  # the trainer config of one run: dataset, model, loss for the report's setup section


def load_study(study_dir: str | Path, *, metric: str = "valid_ce") -> Study:
    """Reads DIR/results.jsonl. The last line of a config hash wins (a re-launch retries failed runs)."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    path = Path(study_dir) / "results.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no results.jsonl (run the sweep with scaling_studies.launch_sweep first)")
    last: dict[str, tuple[int, dict]] = {}
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{i}: not a JSON line ({e})") from e
        for key in ("status", "name", "config_hash"):
            if key not in row:
                raise ValueError(f"{path}:{i}: result line has no {key!r}")
        last[row["config_hash"]] = (i, row)
    runs, failed, excluded, first_config = [], [], [], {}
    for i, row in sorted(last.values(), key=lambda x: x[0]):
        if row["status"] != "done":
            failed.append({"name": row["name"], "error": str(row.get("error") or f"{row['status']}: {row.get('note', '')}")[:300]})
            continue
        run = _run(row, metric, f"{path}:{i}")
        if not math.isfinite(run.loss):
            excluded.append({"name": run.name, "reason": f"{metric} = {run.loss}"})
            continue
        runs.append(run)
        first_config = first_config or row.get("config", {})
    if not runs:
        raise ValueError(f"{path}: no finished run with a finite {metric}")
    return Study(Path(study_dir).name, Path(study_dir), runs, failed, excluded, metric, first_config)


def _run(row: dict, metric: str, where: str) -> Run:
    missing = [k for k in ("params_total", "params_non_embedding", "tokens", "flops", metric) if row.get(k) is None]
    if missing:
        raise ValueError(f"{where}: run {row['name']!r} has no {missing} (metric {metric!r}; a protocol without a "
                         "validation split has no valid_ce: pass --metric test_ce)")
    meta = row.get("meta", {})
    budget = meta.get("budget")
    lr = row.get("overrides", {}).get("optim.learning_rate")
    return Run(name=row["name"], config_hash=row["config_hash"], budget=None if budget is None else float(budget),
               size=str(meta.get("size", re.sub(r"-s\d+$", "", row["name"]))), seed=int(meta.get("seed", 0)),
               params_total=int(row["params_total"]), params_non_embedding=int(row["params_non_embedding"]),
               tokens=float(row["tokens"]), flops=float(row["flops"]), loss=float(row[metric]),
               lr=None if lr is None else float(lr))


def same_budget(a: float | None, b: float | None) -> bool:
    return a is not None and b is not None and abs(a / b - 1) < 1e-6


def configurations(runs: list[Run], *, params: str = "total") -> dict[str, np.ndarray]:
    """Per (budget, size): arrays budget, N, D, C, loss (seed means), seeds (count), size labels."""
    groups: dict[tuple, list[Run]] = {}
    for r in runs:
        groups.setdefault((r.budget, r.size), []).append(r)
    keys = sorted(groups, key=lambda k: (k[0] or 0.0, groups[k][0].params(params)))
    g = [groups[k] for k in keys]
    return {"budget": np.array([np.nan if k[0] is None else k[0] for k in keys]),
            "size": np.array([k[1] for k in keys]),
            "N": np.array([rs[0].params(params) for rs in g], float),
            "D": np.array([np.mean([r.tokens for r in rs]) for rs in g]),
            "C": np.array([np.mean([r.flops for r in rs]) for rs in g]),
            "loss": np.array([np.mean([r.loss for r in rs]) for rs in g]),
            "seeds": np.array([len(rs) for rs in g])}


def noise_floor(runs: list[Run]) -> dict | None:
    """Seed noise from configurations run with >= 2 seeds: per budget and pooled over all of them.

    Standard deviations pool the within-configuration variances (Σ(k−1)·s² / Σ(k−1)); `sigma_log` is the
    same for log CE, the scale the laws' residuals live on. None when no configuration was repeated.
    """
    groups: dict[tuple, list[float]] = {}
    for r in runs:
        groups.setdefault((r.budget, r.size), []).append(r.loss)
    rep = {k: np.array(v) for k, v in groups.items() if len(v) >= 2}
    if not rep:
        return None

    def pooled(vals: list[np.ndarray]) -> tuple[float, int]:
        dof = sum(len(v) - 1 for v in vals)
        return float(np.sqrt(sum(np.sum((v - v.mean()) ** 2) for v in vals) / dof)), dof

    per_budget = []
    for b in sorted({k[0] for k in rep}, key=lambda x: x or 0.0):
        vals = [v for k, v in rep.items() if k[0] == b]
        s, dof = pooled(vals)
        s_log, _ = pooled([np.log(v) for v in vals])
        per_budget.append({"budget": b, "configurations": len(vals), "seeds": sorted({len(v) for v in vals}),
                           "std_ce": s, "std_log_ce": s_log, "dof": dof,
                           "mean_ce": float(np.mean(np.concatenate(vals)))})
    s, dof = pooled(list(rep.values()))
    s_log, _ = pooled([np.log(v) for v in rep.values()])
    return {"per_budget": per_budget, "std_ce": s, "sigma_log": s_log, "dof": dof}
