"""Paired comparison of two finished runs on the same held-out users, with a bootstrap interval.

  python -m bench.compare runs/a/hstu_large_ml-1m runs/b/hstu_large_ml-1m --split test

Two runs' metrics differ by training noise and by which users happen to be in the test split. Scoring both
runs' selected parameters on the SAME users and resampling users (paired bootstrap, `lrm.metrics`) says
whether a difference is larger than the second; seeds are still needed for the first. Each run's metrics
are recomputed from its saved parameters and must equal its results.json, so the comparison is of exactly
the models the runs reported.

`--users FILE` compares on a segment of the held-out users only (FILE: source user ids, one per line, as in
the raw data), e.g. the users whose test event shares its second with the event before it.
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


def segment_mask(run, user_ids: list[str], split: str) -> np.ndarray:
    """Which of `run`'s scored users (store rows `run.users_U`) the source ids name; an id that is no scored
    user of the run's store is an error, not a silent drop."""
    from data_pipeline.store import SequenceStore
    from lrm.training.data import store_path

    store = SequenceStore.open(store_path(run.config.data))
    source_U = np.asarray([str(store.user_ids[u].item()) for u in run.users_U])
    index = {u: i for i, u in enumerate(source_U)}
    missing = [u for u in user_ids if u not in index]
    if missing:
        raise ValueError(f"{len(missing)} listed users are not {split} users of {store.path} "
                         f"(first: {missing[:3]})")
    mask = np.zeros(source_U.size, bool)
    mask[[index[u] for u in user_ids]] = True
    return mask


def compare(workdir_a: str | Path, workdir_b: str | Path, *, split: str = "test", metrics=METRICS,
            num_resamples: int = 2000, seed: int = 0, users: list[str] | None = None) -> dict:
    from lrm.metrics import paired_bootstrap
    from lrm.training.evaluate import rank_run, reproduction_error

    for w in (workdir_a, workdir_b):  # before any loading
        for name in ("config.json", "results.json"):
            if not (Path(w) / name).is_file():
                raise FileNotFoundError(f"{Path(w) / name} is missing: is {w} a finished training workdir?")
    a, b = rank_run(workdir_a, (split,))[split], rank_run(workdir_b, (split,))[split]
    if a.store_identity != b.store_identity:
        raise ValueError(f"the runs read different data: {workdir_a}: {a.store_identity}; "
                         f"{workdir_b}: {b.store_identity}")
    if not np.array_equal(a.users_U, b.users_U):
        raise ValueError(f"the runs scored different {split} users ({len(a.users_U)} vs {len(b.users_U)}): "
                         "compare runs with the same eval.max_users")
    max_rank_a, max_rank_b = int(a.config.eval.max_rank), int(b.config.eval.max_rank)
    if max_rank_a != max_rank_b:
        raise ValueError(f"eval.max_rank differs: {max_rank_a} vs {max_rank_b}")
    for w, run in ((workdir_a, a), (workdir_b, b)):  # the comparison is of exactly the models the runs reported
        if (why := reproduction_error(run, split)) is not None:
            raise ValueError(f"{w}: {why}")
    ranks_a, ranks_b = a.ranks_U, b.ranks_U
    if users is not None:
        keep = segment_mask(a, users, split)
        ranks_a, ranks_b = ranks_a[keep], ranks_b[keep]
    return {"split": split, "num_users": int(len(ranks_a)), "num_resamples": num_resamples, "seed": seed,
            "a": str(workdir_a), "b": str(workdir_b), "segment": users is not None,
            "metrics": paired_bootstrap(ranks_a, ranks_b, tuple(metrics), num_resamples=num_resamples,
                                        seed=seed, max_rank=max_rank_a)}


def format_table(result: dict) -> str:
    lines = [f"A = {result['a']}", f"B = {result['b']}",
             f"{result['split']} split, {result['num_users']} users"
             f"{' (the listed segment)' if result.get('segment') else ''}, paired bootstrap over users "
             f"({result['num_resamples']} resamples, seed {result['seed']})", "",
             "| metric | A | B | A − B | (A − B) / B | 95% interval of A − B | resamples with A − B on the other side of 0 |",
             "|---|---|---|---|---|---|---|"]
    for name, m in result["metrics"].items():
        lines.append(f"| {name.upper()} | {m['a']:.4f} | {m['b']:.4f} | {m['diff']:+.4f} | {m['rel']:+.1%} | "
                     f"[{m['lo']:+.4f}, {m['hi']:+.4f}] | {m['p_other_side']:.4f} |")
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
    args = ap.parse_args(argv)
    result = compare(args.run_a, args.run_b, split=args.split, metrics=tuple(args.metrics.split(",")),
                     num_resamples=args.resamples, seed=args.seed,
                     users=None if args.users is None else read_user_ids(args.users))
    print(format_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
