"""Paired comparison of two finished runs on the same held-out users, with a bootstrap interval.

  python -m bench.compare runs/a/hstu_large_ml-1m runs/b/hstu_large_ml-1m --split test

Two runs' metrics differ by training noise and by which users happen to be in the test split. Scoring both
runs' selected parameters on the SAME users and resampling users (paired bootstrap, `lrm.metrics`) says
whether a difference is larger than the second; seeds are still needed for the first. Each run's metrics
are recomputed from its saved parameters and must equal its results.json, so the comparison is of exactly
the models the runs reported.

`--users FILE` compares on a segment of the held-out users only (FILE: source user ids, one per line, as in
the raw data), e.g. the users whose test event shares its second with the event before it.

`--rescore_here` is for runs trained and scored on another platform (a GPU: TF32 dots, other kernels), whose
metrics no CPU re-score reproduces bit for bit. Both runs' reported parameters (best/ at the reported step) are
scored here with the reference attention (`model.attention_impl="xla"`; parameters do not depend on it), the
comparison is of those ranks, and the table shows each run's re-scored metrics beside its results.json, so the
drift is in view. Everything else is still checked (same data, same users, the reported step).

`--other_data` pairs two runs that read different stores of the same users, e.g. ML-1M in two time orders that
break same-second ties differently: users are paired by source id, which must list the same users in the same
order; the metrics then compare data and model together, and the table says so.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

METRICS = ("hr@5", "hr@10", "ndcg@10", "hr@50", "mrr")


def read_user_ids(path: str | Path) -> list[str]:
    """Source user ids of a segment file, one per line (blank lines skipped); duplicates are an error."""
    ids = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    if not ids:
        raise ValueError(f"{path}: no user ids")
    if len(set(ids)) != len(ids):
        dup = next(u for u in ids if ids.count(u) > 1)
        raise ValueError(f"{path}: user id {dup!r} is listed twice")
    return ids


def source_user_ids(run) -> np.ndarray:
    """The source ids (as strings) of the users `run` scored, in its order (`run.users_U` are store rows)."""
    from data_pipeline.store import SequenceStore
    from lrm.training.data import store_path

    store = SequenceStore.open(store_path(run.config.data))
    return np.asarray([str(store.user_ids[u].item()) for u in run.users_U])


def segment_mask(run, user_ids: list[str], split: str) -> np.ndarray:
    """Which of `run`'s scored users the source ids name; an id that is no scored user of the run's store is an
    error, not a silent drop."""
    from lrm.training.data import store_path

    source_U = source_user_ids(run)
    index = {u: i for i, u in enumerate(source_U)}
    missing = [u for u in user_ids if u not in index]
    if missing:
        raise ValueError(f"{len(missing)} listed users are not {split} users of {store_path(run.config.data)} "
                         f"(first: {missing[:3]})")
    mask = np.zeros(source_U.size, bool)
    mask[[index[u] for u in user_ids]] = True
    return mask


DRIFT_METRICS = ("hr@10", "ndcg@10", "mrr", "ce")


def _rank_here(workdir: str | Path, split: str):
    """`rank_run` of the reported parameters with the reference attention, whatever the run trained with."""
    from lrm.training.evaluate import rank_run, run_config

    config = run_config(workdir)
    if "attention_impl" in config.model:
        config.model.attention_impl = "xla"
    return rank_run(workdir, (split,), config=config)[split]


def _rescore_drift(workdir: str | Path, run, split: str) -> dict:
    """The reported run's checks that hold on any platform, and its re-scored metrics against results.json."""
    reported = run.results.get(split)
    if reported is None:
        raise ValueError(f"{workdir}: results.json has no {split!r} metrics")
    if run.step != run.results["best_step"]:
        raise ValueError(f"{workdir}: scored step {run.step}; the run reported best step {run.results['best_step']}")
    if run.metrics["num_users"] != reported["num_users"]:
        raise ValueError(f"{workdir}: {int(run.metrics['num_users'])} {split} users here, "
                         f"{int(reported['num_users'])} in results.json: not the data the run was scored on")
    return {name: {"here": float(run.metrics[name]), "reported": float(reported[name])}
            for name in DRIFT_METRICS if name in reported}


def compare(workdir_a: str | Path, workdir_b: str | Path, *, split: str = "test", metrics=METRICS,
            num_resamples: int = 2000, seed: int = 0, users: list[str] | None = None,
            rescore_here: bool = False, other_data: bool = False) -> dict:
    from lrm.metrics import paired_bootstrap
    from lrm.training.evaluate import rank_run, reproduction_error

    for w in (workdir_a, workdir_b):  # before any loading
        for name in ("config.json", "results.json"):
            if not (Path(w) / name).is_file():
                raise FileNotFoundError(f"{Path(w) / name} is missing: is {w} a finished training workdir?")
    if rescore_here:
        a, b = _rank_here(workdir_a, split), _rank_here(workdir_b, split)
    else:
        a, b = rank_run(workdir_a, (split,))[split], rank_run(workdir_b, (split,))[split]
    same_data = a.store_identity == b.store_identity
    if not same_data and not other_data:
        raise ValueError(f"the runs read different data: {workdir_a}: {a.store_identity}; "
                         f"{workdir_b}: {b.store_identity} (stores of the same users, e.g. two orders of the same "
                         "ratings, pair by user with --other_data)")
    if same_data and not np.array_equal(a.users_U, b.users_U):
        raise ValueError(f"the runs scored different {split} users ({len(a.users_U)} vs {len(b.users_U)}): "
                         "compare runs with the same eval.max_users")
    if not same_data and not np.array_equal(source_user_ids(a), source_user_ids(b)):
        raise ValueError(f"--other_data pairs users by source id, and the runs scored different {split} users "
                         f"({len(a.users_U)} vs {len(b.users_U)}, or other ids or order)")
    max_rank_a, max_rank_b = int(a.config.eval.max_rank), int(b.config.eval.max_rank)
    if max_rank_a != max_rank_b:
        raise ValueError(f"eval.max_rank differs: {max_rank_a} vs {max_rank_b}")
    drift = {}
    for key, w, run in (("a", workdir_a, a), ("b", workdir_b, b)):  # exactly the models the runs reported
        if rescore_here:
            drift[key] = _rescore_drift(w, run, split)
        elif (why := reproduction_error(run, split)) is not None:
            raise ValueError(f"{w}: {why}" + (" (a run scored on another platform: --rescore_here)"
                                              if "differs from results.json" in why else ""))
    ranks_a, ranks_b = a.ranks_U, b.ranks_U
    if users is not None:
        keep = segment_mask(a, users, split)
        ranks_a, ranks_b = ranks_a[keep], ranks_b[keep]
    result = {"split": split, "num_users": int(len(ranks_a)), "num_resamples": num_resamples, "seed": seed,
              "a": str(workdir_a), "b": str(workdir_b), "segment": users is not None, "other_data": not same_data,
              "metrics": paired_bootstrap(ranks_a, ranks_b, tuple(metrics), num_resamples=num_resamples,
                                          seed=seed, max_rank=max_rank_a)}
    if rescore_here:
        result["rescored_here"] = drift
    return result


def format_table(result: dict) -> str:
    lines = [f"A = {result['a']}", f"B = {result['b']}",
             f"{result['split']} split, {result['num_users']} users"
             f"{' (the listed segment)' if result.get('segment') else ''}, paired bootstrap over users "
             f"({result['num_resamples']} resamples, seed {result['seed']})"
             + ("; the runs read different stores of the same users, paired by source user id"
                if result.get("other_data") else ""), "",
             "| metric | A | B | A − B | (A − B) / B | 95% interval of A − B | resamples with A − B on the other side of 0 |",
             "|---|---|---|---|---|---|---|"]
    for name, m in result["metrics"].items():
        lines.append(f"| {name.upper()} | {m['a']:.4f} | {m['b']:.4f} | {m['diff']:+.4f} | {m['rel']:+.1%} | "
                     f"[{m['lo']:+.4f}, {m['hi']:+.4f}] | {m['p_other_side']:.4f} |")
    if "rescored_here" in result:
        lines += ["", "Both runs re-scored here (--rescore_here): the metrics above are of these ranks.",
                  "| run | " + " | ".join(f"{n.upper()} here (results.json)" for n in DRIFT_METRICS) + " |",
                  "|---|" + "---|" * len(DRIFT_METRICS)]
        for key, drift in result["rescored_here"].items():
            cells = [f"{drift[n]['here']:.4f} ({drift[n]['reported']:.4f})" if n in drift else "–"
                     for n in DRIFT_METRICS]
            lines.append(f"| {key.upper()} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_a", help="workdir of a finished run (holds config.json, results.json, best/)")
    ap.add_argument("run_b", help="workdir of the run to compare it with, on the same store")
    ap.add_argument("--split", default="test", choices=("valid", "test"))
    ap.add_argument("--metrics", default=",".join(METRICS), help="comma-separated: hr@K, ndcg@K, mrr")
    ap.add_argument("--resamples", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--users", help="compare on these users only: a file of source user ids, one per line")
    ap.add_argument("--json", help="also write the result here")
    ap.add_argument("--other_data", action="store_true",
                    help="the runs read different stores of the same users (e.g. two orders of the same "
                         "ratings): pair their users by source id")
    ap.add_argument("--rescore_here", action="store_true",
                    help="runs scored on another platform: score both here and show the drift from results.json")
    args = ap.parse_args(argv)
    result = compare(args.run_a, args.run_b, split=args.split, metrics=tuple(args.metrics.split(",")),
                     num_resamples=args.resamples, seed=args.seed,
                     users=None if args.users is None else read_user_ids(args.users),
                     rescore_here=args.rescore_here, other_data=args.other_data)
    print(format_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
