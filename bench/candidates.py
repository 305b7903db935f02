"""Re-ranks a finished run's held-out users with the candidates restricted to a list of item ids.

  python -m bench.candidates runs/x/hstu_large_ml-1m --keep ../shared/datasets/ml-1m/movies.dat

The reference ranks ML-1M over the movie ids of `movies.dat` (3,883 of them), lrm over every id of its table
(1..3,952). This scores the run's selected parameters both ways on the same users, so the difference of the
two candidate rules is measured instead of argued. An id outside the keep list is removed as a history item is
(it can no longer outrank the target); a held-out target outside the list is an error. The keep file holds one
id per line, or MovieLens `id::...` lines.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

SHOWN = ("hr@10", "ndcg@10", "hr@50", "hr@200", "mrr")


def read_ids(path: str | Path) -> np.ndarray:
    """Sorted unique ids of a keep file (an id per line, or the first `::` field); errors name the line."""
    ids = []
    with open(path, encoding="latin-1") as f:
        for n, line in enumerate(f, 1):
            field = line.split("::", 1)[0].strip()
            if not field:
                continue
            try:
                ids.append(int(field))
            except ValueError:
                raise ValueError(f"{path}:{n}: expected an item id, got {field[:40]!r}") from None
    if not ids:
        raise ValueError(f"{path}: no item ids")
    return np.unique(np.asarray(ids, np.int64))


def restricted_ranks(workdir: str | Path, keep_ids: np.ndarray, split: str = "test") -> dict:
    """Ranks of `split` with all table ids, recomputed and checked against results.json, and with the
    candidates restricted to `keep_ids`, on the same users and parameters."""
    import optax
    from flax import nnx

    from data_pipeline.pipeline import make_eval_dataset
    from data_pipeline.store import SequenceStore
    from lrm.metrics import summarize
    from lrm.models.retrieval import last_token_embeddings
    from lrm.training import sharded
    from lrm.training.checkpointing import load_params
    from lrm.training.data import store_path
    from lrm.training.evaluate import rank_run, reproduction_error
    from lrm.training.sharded_rank import sharded_rank_targets

    full = rank_run(workdir, (split,))[split]
    if (why := reproduction_error(full, split)) is not None:
        raise ValueError(f"{workdir}: {why}")
    config = full.config
    store = SequenceStore.open(store_path(config.data))
    num_items = store.num_items
    outside = keep_ids[(keep_ids < 1) | (keep_ids > num_items)]
    if outside.size:
        raise ValueError(f"keep ids {outside[:5].tolist()} are outside the run's items 1..{num_items}")
    excluded = np.setdiff1d(np.arange(1, num_items + 1), keep_ids).astype(np.int32)

    graphdef, params, _, layout = sharded.create_state_from_config(config, num_items, optax.identity())
    params, _ = load_params(workdir, params, source="best")

    @jax.jit
    def step(params, batch):
        model = nnx.merge(graphdef, params)
        user_BxD = last_token_embeddings(model(batch, deterministic=True), jnp.maximum(batch["lengths_B"], 1))
        last_B = jnp.maximum(batch["lengths_B"] - 1, 0)
        target_B = jnp.take_along_axis(batch["target_ids_BxL"], last_B[:, None], axis=1)[:, 0]
        history_BxM = batch["item_ids_BxL"]
        removed_BxE = jnp.broadcast_to(jnp.asarray(excluded)[None], (history_BxM.shape[0], excluded.size))
        return target_B, sharded_rank_targets(
            user_BxD, target_B, jnp.concatenate([history_BxM, removed_BxE], axis=1), model.item_table(),
            num_items=layout.num_items, mesh=layout.mesh, vocab_axes=(), temperature=config.loss.temperature,
            chunk_size=config.eval.chunk_size)

    users, ranks = [], []
    for batch in make_eval_dataset(store, split=split, max_len=config.data.max_len,
                                   batch_size=config.eval.batch_size, process_index=0, process_count=1,
                                   max_users=config.eval.max_users):
        real_B = batch["weights_B"] == 1
        target_B, (rank_B, _) = step(params, {k: jnp.asarray(v) for k, v in batch.items() if k != "user_index_B"})
        lost = np.setdiff1d(np.asarray(target_B)[real_B], keep_ids)
        if lost.size:
            raise ValueError(f"held-out {split} targets {lost[:5].tolist()} are not in the keep list")
        users.append(batch["user_index_B"][real_B])
        ranks.append(np.asarray(rank_B)[real_B].astype(np.int64))
    users_U = np.concatenate(users)
    order = np.argsort(users_U, kind="stable")
    if not np.array_equal(users_U[order], full.users_U):
        raise AssertionError("the restricted pass scored other users than rank_run")
    ranks_U = np.concatenate(ranks)[order]
    max_rank = int(config.eval.max_rank)
    return {"split": split, "num_users": int(users_U.size), "num_items": num_items, "kept": int(keep_ids.size),
            "removed": int(excluded.size), "ranks_all": full.ranks_U, "ranks_kept": ranks_U,
            "all": summarize(full.ranks_U, None, max_rank=max_rank),
            "kept_metrics": summarize(ranks_U, None, max_rank=max_rank)}


def format_table(r: dict) -> str:
    lines = [f"{r['split']} split, {r['num_users']} users; candidates: all {r['num_items']} ids, or the "
             f"{r['kept']} kept ({r['removed']} removed); users whose rank changed: "
             f"{int(np.sum(r['ranks_kept'] != r['ranks_all']))}", "",
             "| candidates | " + " | ".join(m.upper() for m in SHOWN) + " |", "|---" * (len(SHOWN) + 1) + "|"]
    for name, m in ((f"all ids 1..{r['num_items']}", r["all"]), ("kept ids", r["kept_metrics"])):
        lines.append(f"| {name} | " + " | ".join(f"{m[k]:.4f}" for k in SHOWN) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="workdir of a finished run (config.json, results.json, best/)")
    ap.add_argument("--keep", required=True, help="file of the candidate ids (an id a line, or movies.dat)")
    ap.add_argument("--split", default="test", choices=("valid", "test"))
    args = ap.parse_args(argv)
    print(format_table(restricted_ranks(args.run, read_ids(args.keep), args.split)))


if __name__ == "__main__":
    main()
