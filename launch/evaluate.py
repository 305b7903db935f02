"""Entry point: `lrm-evaluate --workdir runs/x [--split test] [--source best|latest]` (also `python -m launch.evaluate`).

Scores a run's saved parameters again, outside the train loop: the selected (best/) parameters of a finished
run, or the newest train state of one still going or preempted (`--source latest`), on its store or on a copy
of it elsewhere (`--store_root`). Prints one table row per split and writes a JSON record (and, with
`--per_user`, every user's rank and cross-entropy). For best/ parameters on the run's own users it also says
whether the numbers are those of the run's results.json (they must be, bit for bit).
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

COLUMNS = ("hr@5", "ndcg@5", "hr@10", "ndcg@10", "hr@50", "ndcg@50", "hr@200", "ndcg@200", "mrr", "ce")


def evaluate_run(workdir: str | Path, *, splits: tuple[str, ...] = (), source: str = "best",
                 step: int | None = None, store_root: str | None = None, max_users: int | None = None,
                 batch_size: int | None = None, popularity: bool = False) -> tuple[dict, dict]:
    """(the JSON record, {split: RunRanks}) of `workdir`'s parameters on `splits` (default: all the store has)."""
    from data_pipeline.store import SequenceStore
    from lrm.training.data import store_path
    from lrm.training.evaluate import (evaluate_popularity, not_comparable, rank_run,
                                         reproduction_error, run_config)

    config = run_config(workdir)
    overrides = {}
    for key, value in (("data.store_root", store_root), ("eval.max_users", max_users),
                       ("eval.batch_size", batch_size)):
        if value is not None:
            section, name = key.split(".")
            config[section][name] = value
            overrides[key] = value
    store = SequenceStore.open(store_path(config.data))
    runs = rank_run(workdir, tuple(splits) or None, source=source, step=step, config=config)
    record = {"workdir": str(workdir), "source": source, "step": next(iter(runs.values())).step,
              "dataset": store.dataset,
              "protocol": store.protocol, "store": store.identity(), "overrides": overrides, "splits": {},
              "reproduces_results_json": {}}
    for split, run in runs.items():
        record["splits"][split] = run.metrics
        # Comparable with results.json: the reported parameters on the same users in the same batch shapes.
        if not_comparable(run, split) is None and not overrides.keys() & {"eval.max_users", "eval.batch_size"}:
            why = reproduction_error(run, split)
            record["reproduces_results_json"][split] = why is None
            if why is not None:
                logging.error("%s %s: %s", workdir, split, why)
        else:
            record["reproduces_results_json"][split] = None
        if popularity:
            record.setdefault("popularity_baseline", {})[split] = evaluate_popularity(
                store, split, max_len=config.data.max_len, batch_size=config.eval.batch_size,
                max_rank=config.eval.max_rank, max_users=config.eval.max_users)
    return record, runs


def format_table(record: dict) -> str:
    lines = [f"{record['workdir']}: {record['source']} parameters of step {record['step']}, {record['dataset']}, "
             f"protocol {record['protocol']}", "",
             "| split | users | " + " | ".join(c.upper() for c in COLUMNS) + " |",
             "|---|---|" + "---|" * len(COLUMNS)]
    rows = [(split, m) for split, m in record["splits"].items()]
    rows += [(f"{split} (most popular)", m) for split, m in record.get("popularity_baseline", {}).items()]
    for name, m in rows:
        lines.append(f"| {name} | {int(m['num_users'])} | "
                     + " | ".join(f"{m[c]:.4f}" if c in m else "–" for c in COLUMNS) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Score a training run's saved parameters on its held-out users.")
    parser.add_argument("--workdir", required=True, help="training workdir (config.json, best/, checkpoints/)")
    parser.add_argument("--split", action="append", choices=("valid", "test"),
                        help="repeatable; default: every split of the store's protocol")
    parser.add_argument("--source", default="best", choices=("best", "latest"),
                        help="best/: the parameters selected on validation; latest: the newest train state")
    parser.add_argument("--step", type=int, help="a saved step other than the newest of --source")
    parser.add_argument("--store_root", help="read the store from this folder instead of the run's data.store_root")
    parser.add_argument("--max_users", type=int, help="score only the first N users (eval.max_users)")
    parser.add_argument("--batch_size", type=int, help="users per eval batch (eval.batch_size)")
    parser.add_argument("--popularity", action="store_true", help="also score the most-popular-item baseline")
    parser.add_argument("--out", help="JSON record; default <workdir>/eval/<source>_step<step>.json")
    parser.add_argument("--per_user", help="also write every user's store row, rank and ce per split (.npz)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    record, runs = evaluate_run(args.workdir, splits=tuple(args.split or ()), source=args.source, step=args.step,
                                store_root=args.store_root, max_users=args.max_users, batch_size=args.batch_size,
                                popularity=args.popularity)
    out = Path(args.out) if args.out else Path(args.workdir) / "eval" / f"{args.source}_step{record['step']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2))
    if args.per_user:
        np.savez(args.per_user, **{f"{s}_{k}": getattr(r, f"{k}_U") for s, r in runs.items()
                                   for k in ("users", "ranks", "ce")})
    print(format_table(record))
    print(f"wrote {out}" + (f" and {args.per_user}" if args.per_user else ""))
    if False in record["reproduces_results_json"].values():
        raise SystemExit(f"{args.workdir}: the recomputed metrics differ from its results.json (see the log)")


if __name__ == "__main__":
    main()
