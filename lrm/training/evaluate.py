"""The most-popular-item baseline on a split of the store, ranked by the same rule as the model.

(The model's own evaluation, on any mesh, is `lrm.training.sharded.make_eval_step` / `evaluate`.)
"""
from __future__ import annotations

import numpy as np

from data_pipeline.pipeline import make_eval_dataset
from data_pipeline.splits import train_lengths
from data_pipeline.store import SequenceStore
from lrm.metrics import RankingAccumulator, popularity_baseline


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
