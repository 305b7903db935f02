"""Paired comparison of two finished runs on the same held-out users, with a bootstrap interval.

  python -m bench.compare runs/a/hstu_large_ml-1m runs/b/hstu_large_ml-1m --split test

Two runs' metrics differ by training noise and by which users happen to be in the test split. Scoring both
runs' selected parameters on the SAME users and resampling users (paired bootstrap, `lrm.metrics`) says
whether a difference is larger than the second; seeds are still needed for the first. Each run's metrics
are recomputed from its saved parameters and must equal its results.json, so the comparison is of exactly
the models the runs reported.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import ml_collections
import numpy as np

METRICS = ("hr@5", "hr@10", "ndcg@10", "hr@50", "mrr")


def per_user_ranks(workdir: str | Path, split: str) -> tuple[np.ndarray, np.ndarray, dict, dict]:
    """(user rows [U], ranks [U] in user order, store identity, results.json) of a finished run's selected
    parameters on `split`, scored by the trainer's own eval step."""
    import jax
    import optax

    from data_pipeline.pipeline import make_eval_dataset
    from data_pipeline.store import SequenceStore
    from lrm.training import sharded
    from lrm.training.checkpointing import load_params
    from lrm.training.data import store_path

    workdir = Path(workdir)
    for name in ("config.json", "results.json"):
        if not (workdir / name).is_file():
            raise FileNotFoundError(f"{workdir / name} is missing: is {workdir} a finished training workdir?")
    config = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
    results = json.loads((workdir / "results.json").read_text())
    if results.get(split) is None:
        raise ValueError(f"{workdir}: results.json has no {split!r} metrics (protocol {results.get('protocol')!r})")
    store = SequenceStore.open(store_path(config.data))
    graphdef, params, _, layout = sharded.create_state_from_config(config, store.num_items, optax.identity())
    params, _ = load_params(workdir, params)
    params = jax.device_put(params, layout.param_shardings)
    eval_step = sharded.make_eval_step(graphdef, layout, temperature=config.loss.temperature,
                                       chunk_size=config.eval.chunk_size)
    users, ranks = [], []
    for batch in make_eval_dataset(store, split=split, max_len=config.data.max_len,
                                   batch_size=config.eval.batch_size, max_users=config.eval.max_users):
        rank_B, _ = eval_step(params, {k: v for k, v in batch.items() if k != "user_index_B"})
        real_B = batch["weights_B"] == 1
        users.append(batch["user_index_B"][real_B])
        ranks.append(np.asarray(rank_B)[real_B])
    users_U, ranks_U = np.concatenate(users), np.concatenate(ranks)
    order = np.argsort(users_U, kind="stable")
    return users_U[order], ranks_U[order].astype(np.int64), store.identity(), results


def check_reproduced(workdir: str | Path, ranks_U: np.ndarray, reported: dict, max_rank: int) -> None:
    """The recomputed per-user metrics must average to what the run reported (same users, same model)."""
    from lrm.metrics import per_user_metric

    for name in ("hr@10", "ndcg@10"):
        got = float(per_user_metric(ranks_U, name, max_rank=max_rank).mean())
        # One user's hit moves HR by 1/U; 1e-9 is only float summation order.
        if abs(got - reported[name]) > 1e-9:
            raise ValueError(f"{workdir}: recomputed {name} {got:.6f} differs from results.json {reported[name]:.6f}; "
                             "its saved parameters or store are not those of the reported run")


def compare(workdir_a: str | Path, workdir_b: str | Path, *, split: str = "test", metrics=METRICS,
            num_resamples: int = 2000, seed: int = 0) -> dict:
    from lrm.metrics import paired_bootstrap

    users_a, ranks_a, store_a, res_a = per_user_ranks(workdir_a, split)
    users_b, ranks_b, store_b, res_b = per_user_ranks(workdir_b, split)
    if store_a != store_b:
        raise ValueError(f"the runs read different data: {workdir_a}: {store_a}; {workdir_b}: {store_b}")
    if not np.array_equal(users_a, users_b):
        raise ValueError(f"the runs scored different {split} users ({len(users_a)} vs {len(users_b)}): "
                         "compare runs with the same eval.max_users")
    max_rank_a = int(res_a["config"]["eval"]["max_rank"])
    max_rank_b = int(res_b["config"]["eval"]["max_rank"])
    if max_rank_a != max_rank_b:
        raise ValueError(f"eval.max_rank differs: {max_rank_a} vs {max_rank_b}")
    check_reproduced(workdir_a, ranks_a, res_a[split], max_rank_a)
    check_reproduced(workdir_b, ranks_b, res_b[split], max_rank_b)
    return {"split": split, "num_users": int(len(users_a)), "num_resamples": num_resamples, "seed": seed,
            "a": str(workdir_a), "b": str(workdir_b),
            "metrics": paired_bootstrap(ranks_a, ranks_b, tuple(metrics), num_resamples=num_resamples,
                                        seed=seed, max_rank=max_rank_a)}


def format_table(result: dict) -> str:
    lines = [f"A = {result['a']}", f"B = {result['b']}",
             f"{result['split']} split, {result['num_users']} users, paired bootstrap over users "
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
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args(argv)
    result = compare(args.run_a, args.run_b, split=args.split, metrics=tuple(args.metrics.split(",")),
                     num_resamples=args.resamples, seed=args.seed)
    print(format_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
