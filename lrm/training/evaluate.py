"""Evaluation outside the train loop: a saved run's parameters scored per user, and the most-popular-item
baseline, both ranked by the same rule as the trainer's own evaluation.

(The evaluation inside the train loop, on any mesh, is `lrm.training.sharded.make_eval_step` / `evaluate`.)
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import ml_collections
import numpy as np
import optax

from data_pipeline.pipeline import make_eval_dataset
from data_pipeline.splits import get_protocol, train_lengths
from data_pipeline.store import SequenceStore
from lrm.metrics import RankingAccumulator, popularity_baseline
from lrm.training import sharded
from lrm.training.checkpointing import load_params
from lrm.training.data import store_path


def held_out(batch: dict) -> tuple[np.ndarray, np.ndarray]:
    """(target_B, last_index_B) of an eval batch: the held-out item sits at slot lengths_B - 1."""
    last_B = np.maximum(np.asarray(batch["lengths_B"]) - 1, 0)
    target_B = np.take_along_axis(np.asarray(batch["target_ids_BxL"]), last_B[:, None], axis=1)[:, 0]
    return target_B, last_B


def train_item_counts(store: SequenceStore) -> np.ndarray:
    """How often each item occurs in the train parts: the popularity baseline's ranking.

    Vectorised over the CSR arrays (a Python loop over users costs seconds per million users).
    """
    train_len_U = np.asarray(train_lengths(store.lengths, store.protocol), np.int64).clip(min=0)
    starts_U = np.asarray(store.offsets[:-1], np.int64)
    # event e of user u is a train event iff e - offsets[u] < train_len[u]
    owner_E = np.repeat(np.arange(store.num_users), np.asarray(store.lengths, np.int64))
    in_train_E = (np.arange(owner_E.size) - starts_U[owner_E]) < train_len_U[owner_E]
    return np.bincount(np.asarray(store.item_ids)[in_train_E], minlength=store.num_items + 1).astype(np.int64)


def evaluate_popularity(store: SequenceStore, split: str, *, max_len: int, batch_size: int,
                        max_rank: int, max_users: int = 0) -> dict[str, float]:
    counts_V = train_item_counts(store)
    acc = RankingAccumulator(max_rank=max_rank)
    # Host-side numpy: every process scores all users itself (no per-process share to merge).
    for batch in make_eval_dataset(store, split=split, max_len=max_len, batch_size=batch_size,
                                   process_index=0, process_count=1, max_users=max_users):
        target_B, _ = held_out(batch)
        rank_B = popularity_baseline(counts_V, target_B, batch["item_ids_BxL"], max_rank=max_rank)
        acc.add(np.asarray(rank_B), None, batch["weights_B"])  # the baseline has no probabilities: no "ce"
    return acc.result()


@dataclasses.dataclass
class RunRanks:
    """One saved model's held-out ranks on a split, in user order, and the metrics of exactly those."""

    users_U: np.ndarray  # store row of each scored user, ascending
    ranks_U: np.ndarray  # int64, 1 = the target ranked first (the trainer's rule, capped at max_rank + 1)
    ce_U: np.ndarray  # full-catalogue cross-entropy of the target, nats
    metrics: dict[str, float]  # summed batch by batch as the trainer does, so equal to its results bit for bit
    step: int
    source: str  # "best" or "latest"
    store_identity: dict
    config: ml_collections.ConfigDict
    results: dict | None  # the run's results.json, when it finished


def run_config(workdir: str | Path) -> ml_collections.ConfigDict:
    path = Path(workdir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: is {workdir} a training workdir?")
    return ml_collections.ConfigDict(json.loads(path.read_text()))


def rank_run(workdir: str | Path, splits: tuple[str, ...] | None = None, *, source: str = "best",
             step: int | None = None, config: ml_collections.ConfigDict | None = None) -> dict[str, RunRanks]:
    """Scores a run's saved parameters (loaded once) on each of `splits` of its store (default: every split
    of its protocol); single process.

    `config` defaults to the run's config.json; pass an edited copy to read the store from elsewhere
    (`data.store_root`) or score a fixed subset (`eval.max_users`). Model, loss and data sections must stay
    the run's: the parameters are checked against the model they build.
    """
    if jax.process_count() > 1:
        raise RuntimeError("rank_run scores on one process; run it without jax.distributed")
    config = run_config(workdir) if config is None else config
    store = SequenceStore.open(store_path(config.data))
    protocol = get_protocol(store.protocol)
    splits = tuple(protocol.eval_drop) if splits is None else tuple(splits)
    for split in splits:
        if split not in protocol.eval_drop:
            raise ValueError(f"{store_path(config.data)}: " + protocol.missing.get(
                split, f"no split {split!r}; protocol {protocol.name!r} has {list(protocol.eval_drop)}"))
    graphdef, params, _, layout = sharded.create_state_from_config(config, store.num_items, optax.identity())
    params, meta = load_params(workdir, params, source=source, step=step)
    params = jax.device_put(params, layout.param_shardings)
    eval_step = sharded.make_eval_step(graphdef, layout, temperature=config.loss.temperature,
                                       chunk_size=config.eval.chunk_size)
    results_path = Path(workdir) / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else None
    out = {}
    for split in splits:
        acc = RankingAccumulator(max_rank=config.eval.max_rank)
        users, ranks, ces = [], [], []
        for batch in make_eval_dataset(store, split=split, max_len=config.data.max_len,
                                       batch_size=config.eval.batch_size, process_index=0, process_count=1,
                                       max_users=config.eval.max_users):
            rank_B, ce_B = eval_step(params, {k: v for k, v in batch.items() if k != "user_index_B"})
            acc.add(rank_B, ce_B, batch["weights_B"])
            real_B = batch["weights_B"] == 1
            users.append(batch["user_index_B"][real_B])
            ranks.append(np.asarray(rank_B)[real_B])
            ces.append(np.asarray(ce_B)[real_B])
        users_U = np.concatenate(users)
        order = np.argsort(users_U, kind="stable")
        out[split] = RunRanks(users_U=users_U[order], ranks_U=np.concatenate(ranks)[order].astype(np.int64),
                              ce_U=np.concatenate(ces)[order].astype(np.float64), metrics=acc.result(),
                              step=int(meta["step"]), source=source, store_identity=store.identity(),
                              config=config, results=results)
    return out


def not_comparable(run: RunRanks, split: str) -> str | None:
    """Why `run`'s numbers cannot be checked bit for bit against its results.json (None when they can).

    They can for the reported parameters (best/ at the selected step) scored on the run's device layout:
    another per-device batch shape rounds float32 differently (ce in the 7th digit; near-tied ranks flip).
    """
    if run.results is None:
        return "the run has no results.json (not finished)"
    if run.results.get(split) is None:
        return f"results.json has no {split!r} metrics (protocol {run.results.get('protocol')!r})"
    if run.source != "best" or run.step != run.results["best_step"]:
        return f"scored {run.source} step {run.step}; the run reported best step {run.results['best_step']}"
    # results.json files written before these fields existed come from single-device runs.
    devices, processes = run.results.get("num_devices", 1), run.results.get("num_processes", 1)
    if (devices, processes) != (jax.device_count(), 1):
        return (f"the run evaluated on {devices} devices in {processes} processes, this on {jax.device_count()} "
                "in 1: per-device batch shapes differ")
    return None


def reproduction_error(run: RunRanks, split: str, names=("hr@10", "ndcg@10", "mrr", "ce", "num_users")) -> str | None:
    """Why `run`'s metrics are not those its results.json reported for `split` (None when they are).

    Not being comparable (`not_comparable`) is a reason. The tolerance is the float64 summation order of
    the metric sums (a multi-process run all-reduced them), far below one user's weight in any metric.
    """
    if (why := not_comparable(run, split)) is not None:
        return why
    reported = run.results[split]
    for name in names:
        if name in reported and abs(run.metrics[name] - reported[name]) > 1e-9:
            return (f"recomputed {name} {run.metrics[name]:.6f} differs from results.json {reported[name]:.6f}: "
                    "the saved parameters, store or eval settings are not those of the reported run")
    return None
