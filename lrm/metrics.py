"""Full-catalogue ranking metrics: rank of the held-out item among all items, HR/NDCG/MRR, and a
most-popular-item baseline with the same ranking rule.

Ranking rule (shared by the model and the popularity baseline):
- candidates are the real items 1..V-1; padding item 0 never ranks;
- items in the row's history are removed, EXCEPT the target itself: a user who re-consumes an item
  keeps it rankable (the reference removes it, which only matters for data with repeats; ML-1M has none);
- rank = 1 + number of remaining items scored strictly higher than the target (ties favour the target).
A row whose target is 0 (a row padding the last eval batch) gets rank 0 and ce 0; the accumulator
refuses such a row unless its weight is 0.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from lrm.losses import check_ids
from lrm.models.embeddings import l2_normalize

METRIC_KS = (1, 5, 10, 50, 200)  # HR@K
NDCG_KS = (5, 10, 50, 200)
DEFAULT_MAX_RANK = 2500  # the reference retrieves the top 2500; anything below counts as a miss


def _first_occurrence_BxL(ids_BxL):
    """Sorted ids per row and a mask keeping the first copy of each (history may repeat items)."""
    xp = jnp if isinstance(ids_BxL, jax.Array) else np
    sorted_BxL = xp.sort(ids_BxL, axis=1)
    first_BxL = xp.concatenate([xp.ones_like(sorted_BxL[:, :1], dtype=bool),
                                sorted_BxL[:, 1:] != sorted_BxL[:, :-1]], axis=1)
    return sorted_BxL, first_BxL


def rank_rows(user_BxD, target_B, history_BxL, table_RxD, *, first_id, num_items: int, temperature: float,
              chunk_size: int, vocab_axes: tuple[str, ...] = ()) -> tuple[jax.Array, jax.Array]:
    """(rank_B, ce_B) against table rows holding item ids [first_id, first_id + R): the whole table
    (first_id 0) or one shard of a row-sharded table, whose per-shard statistics are then merged over
    `vocab_axes` with collectives (inside shard_map). Ids 0 and > num_items (padding rows) never count.

    Two scans over blocks of `chunk_size` rows, so no [B, R] matrix is built. Pass 1: the target's cosine,
    read from the same block product as everyone else's (so pass 2 compares exactly), and the logsumexp
    for the cross-entropy. Pass 2: items above the target, minus the deduplicated history items above it.
    """
    rows = table_RxD.shape[0]
    chunk = min(chunk_size, rows)
    num_chunks = -(-rows // chunk)
    items_RxD = l2_normalize(table_RxD.astype(jnp.float32))
    chunks_NxCxD = jnp.pad(items_RxD, ((0, num_chunks * chunk - rows), (0, 0))).reshape(num_chunks, chunk, -1)
    starts_N = first_id + jnp.arange(num_chunks, dtype=jnp.int32) * chunk
    offsets_C = jnp.arange(chunk, dtype=jnp.int32)
    user_BxD = user_BxD.astype(jnp.float32)
    has_target_B = target_B > 0
    hist_BxL, first_BxL = _first_occurrence_BxL(history_BxL)
    hist_keep_BxL = first_BxL & (hist_BxL > 0) & (hist_BxL != target_B[:, None])

    def real(ids):  # ids of real items held by these rows
        return (ids >= 1) & (ids <= num_items) & (ids < first_id + rows)

    def pick(cos_BxC, ids_BxK, start):
        """cos of the given ids when they fall in this block (in-block mask, values)."""
        local_BxK = ids_BxK - start
        inside_BxK = (local_BxK >= 0) & (local_BxK < chunk) & (ids_BxK < first_id + rows)
        return inside_BxK, jnp.take_along_axis(cos_BxC, jnp.clip(local_BxK, 0, chunk - 1), axis=1)

    def stats_step(carry, xs):
        max_B, sum_B, target_cos_B = carry
        chunk_CxD, start = xs
        cos_BxC = user_BxD @ chunk_CxD.T
        logits_BxC = jnp.where(real(start + offsets_C)[None, :], cos_BxC / temperature, -jnp.inf)
        new_max_B = jnp.maximum(max_B, jnp.max(logits_BxC, axis=1))
        shift_B = jnp.where(jnp.isfinite(new_max_B), new_max_B, 0.0)
        sum_B = sum_B * jnp.exp(max_B - shift_B) + jnp.sum(jnp.exp(logits_BxC - shift_B[:, None]), axis=1)
        inside_Bx1, vals_Bx1 = pick(cos_BxC, target_B[:, None], start)
        target_cos_B = target_cos_B + jnp.where(inside_Bx1[:, 0] & has_target_B, vals_Bx1[:, 0], 0.0)
        return (new_max_B, sum_B, target_cos_B), None

    batch = user_BxD.shape[0]
    init = (jnp.full((batch,), -jnp.inf, jnp.float32), jnp.zeros((batch,), jnp.float32),
            jnp.zeros((batch,), jnp.float32))
    (max_B, sum_B, target_cos_B), _ = jax.lax.scan(stats_step, init, (chunks_NxCxD, starts_N))
    if vocab_axes:
        global_max_B = jax.lax.pmax(max_B, vocab_axes)
        safe_B = jnp.where(jnp.isfinite(global_max_B), global_max_B, 0.0)
        sum_B = jax.lax.psum(jnp.where(jnp.isfinite(max_B), sum_B * jnp.exp(max_B - safe_B), 0.0), vocab_axes)
        max_B = global_max_B
        target_cos_B = jax.lax.psum(target_cos_B, vocab_axes)

    def count_step(count_B, xs):
        chunk_CxD, start = xs
        cos_BxC = user_BxD @ chunk_CxD.T
        ids_C = start + offsets_C
        # Excluding the target by id (here and in hist_keep_BxL) keeps it from ever counting against
        # itself, even if a backend rounded this block product differently from pass 1.
        above_BxC = (cos_BxC > target_cos_B[:, None]) & real(ids_C)[None, :] & (ids_C[None, :] != target_B[:, None])
        inside_BxL, hist_cos_BxL = pick(cos_BxC, hist_BxL, start)
        hist_above_BxL = inside_BxL & hist_keep_BxL & (hist_cos_BxL > target_cos_B[:, None])
        count_B = count_B + jnp.sum(above_BxC, axis=1, dtype=jnp.int32)
        return count_B - jnp.sum(hist_above_BxL, axis=1, dtype=jnp.int32), None

    count_B, _ = jax.lax.scan(count_step, jnp.zeros((batch,), jnp.int32), (chunks_NxCxD, starts_N))
    if vocab_axes:
        count_B = jax.lax.psum(count_B, vocab_axes)
    rank_B = jnp.where(has_target_B, 1 + count_B, 0).astype(jnp.int32)
    ce_B = jnp.where(has_target_B, max_B + jnp.log(sum_B) - target_cos_B / temperature, 0.0)
    return rank_B, ce_B


@functools.partial(jax.jit, static_argnames=("temperature", "chunk_size"))
def _rank_targets(user_BxD, target_B, history_BxL, table_VxD, *, temperature: float, chunk_size: int):
    rank_B, ce_B = rank_rows(user_BxD, target_B, history_BxL, table_VxD, first_id=0,
                             num_items=table_VxD.shape[0] - 1, temperature=temperature, chunk_size=chunk_size)
    return {"rank_B": rank_B, "ce_B": ce_B}


def rank_targets(user_emb_BxD: jax.Array, target_ids_B: jax.Array, history_ids_BxL: jax.Array,
                 item_table_VxD: jax.Array, *, temperature: float, chunk_size: int = 4096) -> dict[str, jax.Array]:
    """Full-catalogue rank (history-filtered, see module doc) and cross-entropy of each row's target.

    Scores are cos(user_emb, normalised item row); `user_emb_BxD` is taken as given (the models return
    it L2-normalised). `ce_B` is the CE in nats over all items 1..V-1 WITHOUT history filtering, with
    logits cos/temperature. The catalogue is scanned in blocks of `chunk_size` items (two passes: target
    score + logsumexp, then counting), so memory is O(B·chunk) and no [B, V] matrix is ever built.
    Works eagerly (ids are then range-checked) and under jit.
    """
    if user_emb_BxD.ndim != 2:
        raise ValueError(f"user_emb_BxD must be [B, D], got shape {user_emb_BxD.shape}")
    batch, dim = user_emb_BxD.shape
    if item_table_VxD.ndim != 2 or item_table_VxD.shape[1] != dim:
        raise ValueError(f"item_table_VxD must be [V, D={dim}], got {item_table_VxD.shape}")
    if item_table_VxD.shape[0] < 2:
        raise ValueError(f"item table needs padding row 0 plus at least one item, got {item_table_VxD.shape[0]} rows")
    if target_ids_B.shape != (batch,):
        raise ValueError(f"target_ids_B must be [B={batch}], got {target_ids_B.shape}")
    if history_ids_BxL.ndim != 2 or history_ids_BxL.shape[0] != batch:
        raise ValueError(f"history_ids_BxL must be [B={batch}, L], got {history_ids_BxL.shape}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    num_rows = item_table_VxD.shape[0]
    check_ids("target_ids_B", target_ids_B, num_rows)
    check_ids("history_ids_BxL", history_ids_BxL, num_rows)
    return _rank_targets(jnp.asarray(user_emb_BxD), jnp.asarray(target_ids_B, jnp.int32),
                         jnp.asarray(history_ids_BxL, jnp.int32), jnp.asarray(item_table_VxD),
                         temperature=float(temperature), chunk_size=int(chunk_size))


def popularity_baseline(train_item_counts_V: np.ndarray, target_ids_B: np.ndarray, history_ids_BxL: np.ndarray,
                        *, max_rank: int = DEFAULT_MAX_RANK) -> np.ndarray:
    """Rank of each target when items are ordered by train counts (ties: smaller item id first).

    Same history filtering and rank rule as `rank_targets`; ranks beyond `max_rank` are reported as
    max_rank + 1 (a miss for every metric), rows with target 0 as rank 0. Host-side numpy.
    """
    counts_V = np.asarray(train_item_counts_V)
    if counts_V.ndim != 1 or counts_V.shape[0] < 2:
        raise ValueError(f"train_item_counts_V must be 1-D with padding slot 0 and >= 1 item, got {counts_V.shape}")
    counts_V = counts_V.astype(np.float64)
    if not np.all(np.isfinite(counts_V)) or np.any(counts_V < 0):
        bad = int(np.flatnonzero(~np.isfinite(counts_V) | (counts_V < 0))[0])
        raise ValueError(f"train_item_counts_V[{bad}] = {counts_V[bad]} is not a finite count >= 0")
    target_B = np.asarray(target_ids_B)
    history_BxL = np.asarray(history_ids_BxL)
    if target_B.ndim != 1 or history_BxL.ndim != 2 or history_BxL.shape[0] != target_B.shape[0]:
        raise ValueError(f"need target_ids_B [B] and history_ids_BxL [B, L], got {target_B.shape}, {history_BxL.shape}")
    num_rows = counts_V.shape[0]
    check_ids("target_ids_B", target_B, num_rows)
    check_ids("history_ids_BxL", history_BxL, num_rows)

    item_ids = np.arange(1, num_rows)
    order = np.lexsort((item_ids, -counts_V[1:]))  # primary: count descending; then id ascending
    position_V = np.full(num_rows, num_rows, np.int64)  # 0-based place in the popularity list
    position_V[item_ids[order]] = np.arange(num_rows - 1)

    target_pos_B = position_V[target_B]
    hist_BxL, first_BxL = _first_occurrence_BxL(history_BxL)
    keep_BxL = first_BxL & (hist_BxL > 0) & (hist_BxL != target_B[:, None])
    removed_B = np.sum(keep_BxL & (position_V[hist_BxL] < target_pos_B[:, None]), axis=1)
    rank_B = 1 + target_pos_B - removed_B
    rank_B = np.minimum(rank_B, max_rank + 1)
    return np.where(target_B > 0, rank_B, 0).astype(np.int32)


class RankingAccumulator:
    """Weighted sums of per-user metrics over eval batches (host side); `result()` gives the means.

    `to_array()` / `from_array()` expose the sums as one float64 vector so processes can all-reduce it.
    """

    _KEYS = tuple(f"hr@{k}" for k in METRIC_KS) + tuple(f"ndcg@{k}" for k in NDCG_KS) + ("mrr", "ce", "num_users")

    def __init__(self, max_rank: int = DEFAULT_MAX_RANK):
        if max_rank < 1:
            raise ValueError(f"max_rank must be >= 1, got {max_rank}")
        self.max_rank = int(max_rank)
        self._sums = dict.fromkeys(self._KEYS, 0.0)
        self._has_ce: bool | None = None  # fixed by the first batch: every batch gives ce, or none does

    def add(self, rank_B: np.ndarray, ce_B: np.ndarray | None, weights_B: np.ndarray | None = None) -> None:
        """Add a batch. weights_B (0/1, default all 1) drops rows that pad the last batch."""
        rank_B = np.asarray(rank_B)
        if rank_B.ndim != 1 or not np.issubdtype(rank_B.dtype, np.integer):
            raise ValueError(f"rank_B must be a 1-D integer array, got shape {rank_B.shape} dtype {rank_B.dtype}")
        weights_B = np.ones(rank_B.shape, np.float64) if weights_B is None else np.asarray(weights_B, np.float64)
        if weights_B.shape != rank_B.shape:
            raise ValueError(f"weights_B shape {weights_B.shape} != rank_B shape {rank_B.shape}")
        if not np.all((weights_B == 0) | (weights_B == 1)):
            bad = int(np.flatnonzero((weights_B != 0) & (weights_B != 1))[0])
            raise ValueError(f"weights_B must be 0 or 1, row {bad} has {weights_B[bad]}")
        real_B = weights_B == 1
        if np.any(real_B & (rank_B < 1)):
            bad = int(np.flatnonzero(real_B & (rank_B < 1))[0])
            raise ValueError(f"row {bad} has weight 1 but rank {int(rank_B[bad])} (< 1: no target in that row)")
        has_ce = ce_B is not None
        if self._has_ce is not None and has_ce != self._has_ce:
            raise ValueError("every batch must give ce_B or none may: mixing would average ce over a subset")
        self._has_ce = has_ce
        if has_ce:
            ce_B = np.asarray(ce_B, np.float64)
            if ce_B.shape != rank_B.shape:
                raise ValueError(f"ce_B shape {ce_B.shape} != rank_B shape {rank_B.shape}")
            if np.any(real_B & ~np.isfinite(ce_B)):
                bad = int(np.flatnonzero(real_B & ~np.isfinite(ce_B))[0])
                raise ValueError(f"ce_B[{bad}] = {ce_B[bad]} is not finite (non-finite model output?); "
                                 "pass ce_B=None for a scorer without probabilities")
            self._sums["ce"] += float(np.sum(np.where(real_B, ce_B, 0.0)))

        miss_B = np.where(real_B, rank_B, self.max_rank + 1)  # weight-0 rows score 0 on every metric
        for name in self._KEYS[:-2]:
            self._sums[name] += float(np.sum(per_user_metric(miss_B, name, max_rank=self.max_rank)))
        self._sums["num_users"] += float(np.sum(real_B))

    def merge(self, other: "RankingAccumulator") -> None:
        """Add another accumulator's sums (e.g. from another process)."""
        if other.max_rank != self.max_rank:
            raise ValueError(f"cannot merge accumulators with max_rank {self.max_rank} and {other.max_rank}")
        if other._has_ce is not None:
            if self._has_ce is not None and other._has_ce != self._has_ce:
                raise ValueError("cannot merge an accumulator with ce and one without")
            self._has_ce = other._has_ce
        for key in self._KEYS:
            self._sums[key] += other._sums[key]

    def to_array(self) -> np.ndarray:
        """Sums in a fixed order, then a has-ce flag (1, 0, or -1 when no batch was added)."""
        flag = -1.0 if self._has_ce is None else float(self._has_ce)
        return np.array([self._sums[k] for k in self._KEYS] + [flag], np.float64)

    @classmethod
    def from_array(cls, sums: np.ndarray, *, max_rank: int = DEFAULT_MAX_RANK) -> "RankingAccumulator":
        sums = np.asarray(sums, np.float64)
        if sums.shape != (len(cls._KEYS) + 1,):
            raise ValueError(f"expected {len(cls._KEYS) + 1} values ({cls._KEYS} + ce flag), got shape {sums.shape}")
        acc = cls(max_rank=max_rank)
        acc._sums = {k: float(v) for k, v in zip(cls._KEYS, sums[:-1])}
        acc._has_ce = None if sums[-1] < 0 else bool(sums[-1])
        return acc

    def result(self) -> dict[str, float]:
        """Means over users: hr@K, ndcg@K, mrr, ce (only if given), and num_users."""
        n = self._sums["num_users"]
        if n == 0:
            raise ValueError("no users were added (all weights 0 or no batches): metrics are undefined")
        out = {k: self._sums[k] / n for k in self._KEYS if k not in ("ce", "num_users")}
        if self._has_ce:
            out["ce"] = self._sums["ce"] / n
        out["num_users"] = n
        return out


def summarize(rank: np.ndarray, ce: np.ndarray | None, weights: np.ndarray | None = None, *,
              max_rank: int = DEFAULT_MAX_RANK) -> dict[str, float]:
    """Metrics of one set of ranks: HR@{1,5,10,50,200}, NDCG@{5,10,50,200}, MRR (0 past max_rank), ce."""
    acc = RankingAccumulator(max_rank=max_rank)
    acc.add(rank, ce, weights)
    return acc.result()


def per_user_metric(rank_U: np.ndarray, name: str, *, max_rank: int = DEFAULT_MAX_RANK) -> np.ndarray:
    """Each user's `name` (hr@K, ndcg@K or mrr) from their rank, by RankingAccumulator's rule (float64 [U])."""
    rank_U = np.asarray(rank_U)
    if rank_U.ndim != 1 or not np.issubdtype(rank_U.dtype, np.integer) or np.any(rank_U < 1):
        raise ValueError(f"rank_U must be 1-D integer ranks >= 1, got shape {rank_U.shape} dtype {rank_U.dtype}")
    kind, _, k = name.partition("@")
    if name == "mrr":
        cut = max_rank
    elif (kind == "hr" and k.isdigit() and int(k) in METRIC_KS) or (kind == "ndcg" and k.isdigit()
                                                                      and int(k) in NDCG_KS):
        cut = min(int(k), max_rank)
    else:
        raise ValueError(f"unknown metric {name!r}: hr@{METRIC_KS}, ndcg@{NDCG_KS} or mrr")
    hit_U = rank_U <= cut
    rank_f = rank_U.astype(np.float64)
    if kind == "hr":
        return hit_U.astype(np.float64)
    gain_U = 1.0 / rank_f if name == "mrr" else 1.0 / np.log2(rank_f + 1.0)
    return np.where(hit_U, gain_U, 0.0)


def paired_bootstrap(rank_a_U: np.ndarray, rank_b_U: np.ndarray, metrics: tuple[str, ...], *,
                     num_resamples: int = 2000, level: float = 0.95, seed: int = 0,
                     max_rank: int = DEFAULT_MAX_RANK) -> dict[str, dict[str, float]]:
    """A − B for two models ranked on the SAME users (row u of both is user u), with a percentile interval
    from resampling users with replacement.

    Pairing removes the between-user variance both models share, so the interval is far narrower than one
    from two independent per-model intervals. It covers the sampling of test users only, not seed-to-seed
    training noise. Per metric: a, b, diff, rel (diff / b), lo, hi, and `p_other_side`, the share of
    resamples whose difference is on the other side of zero from `diff` (or is zero).
    """
    rank_a_U, rank_b_U = np.asarray(rank_a_U), np.asarray(rank_b_U)
    if rank_a_U.shape != rank_b_U.shape or rank_a_U.ndim != 1 or rank_a_U.size == 0:
        raise ValueError(f"need two non-empty 1-D rank arrays of the same users; got shapes {rank_a_U.shape} "
                         f"and {rank_b_U.shape}")
    if num_resamples < 1000:
        raise ValueError(f"num_resamples={num_resamples}: use at least 1000 for a 95% percentile interval")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    num_users = rank_a_U.size
    per_user = {name: (per_user_metric(rank_a_U, name, max_rank=max_rank),
                       per_user_metric(rank_b_U, name, max_rank=max_rank)) for name in metrics}
    boot = {name: [] for name in metrics}
    rng = np.random.default_rng(seed)
    chunk = max(1, min(num_resamples, (1 << 22) // num_users))  # bounds the index matrix to ~32 MiB
    for start in range(0, num_resamples, chunk):
        idx_RxU = rng.integers(0, num_users, size=(min(chunk, num_resamples - start), num_users))
        for name, (m_a, m_b) in per_user.items():
            boot[name].append((m_a - m_b)[idx_RxU].mean(axis=1))
    out = {}
    for name, (m_a, m_b) in per_user.items():
        diff, b = float((m_a - m_b).mean()), float(m_b.mean())
        boot_R = np.concatenate(boot[name])
        lo, hi = np.quantile(boot_R, [(1 - level) / 2, (1 + level) / 2])
        other = np.mean(boot_R <= 0) if diff > 0 else np.mean(boot_R >= 0)
        out[name] = {"a": float(m_a.mean()), "b": b, "diff": diff, "rel": diff / b if b else float("nan"),
                     "lo": float(lo), "hi": float(hi), "p_other_side": float(other)}
    return out
