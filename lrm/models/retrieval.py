"""User embeddings → scores over the item catalogue (cosine similarity with L2-normalised item rows), and
M-FALCON scoring of many candidates per user in one forward pass (`score_candidates`)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from lrm.models.embeddings import l2_normalize


def normalized_item_table(table_VxD: jax.Array) -> jax.Array:
    """Rows divided by max(||row||, 1e-6), as the reference's item_l2_norm with l2_norm_eps=1e-6."""
    return l2_normalize(table_VxD, eps=1e-6)


def last_token_embeddings(user_emb_BxLxD: jax.Array, lengths_B: jax.Array) -> jax.Array:
    """The embedding at slot `lengths_B - 1` of each row (the state after the newest event).

    An empty row (length 0) gives slot 0, which the models leave at zero.
    """
    B, L, _ = user_emb_BxLxD.shape
    if lengths_B.shape != (B,):
        raise ValueError(f"lengths_B must have shape {(B,)}, got {lengths_B.shape}")
    index_B = jnp.clip(lengths_B.astype(jnp.int32) - 1, 0, L - 1)
    return jnp.take_along_axis(user_emb_BxLxD, index_B[:, None, None], axis=1)[:, 0]


def score(user_emb_BxD: jax.Array, table_VxD: jax.Array) -> jax.Array:
    """Dot products (B, V) in f32; pass a normalised table for cosine scores."""
    if user_emb_BxD.shape[-1] != table_VxD.shape[-1]:
        raise ValueError(f"embedding widths differ: user {user_emb_BxD.shape}, table {table_VxD.shape}")
    return jnp.einsum(
        "bd,vd->bv", user_emb_BxD.astype(jnp.float32), table_VxD.astype(jnp.float32)
    )


def query_times_BxL(ts_BxL: jax.Array, in_history_BxL: jax.Array, last_BxL: jax.Array,
                    query_time_B: jax.Array) -> jax.Array:
    """The time each slot queries the time bias at, as in train and eval rows (docs/conventions.md): a history
    slot its next event's time, the last history slot `query_time_B` (the event to predict), other slots 0."""
    next_ts_BxL = jnp.concatenate([ts_BxL[:, 1:], jnp.zeros_like(ts_BxL[:, :1])], axis=1)
    return jnp.where(last_BxL, query_time_B.astype(jnp.int32)[:, None], jnp.where(in_history_BxL, next_ts_BxL, 0))


def candidate_batch(item_ids_BxN: jax.Array, timestamps_BxN: jax.Array, query_time_B: jax.Array,
                    candidates_BxM: jax.Array) -> dict[str, jax.Array]:
    """One row per user for M-FALCON scoring: the history, then its M candidates, then padding (L = N + M).

    Histories are right-padded with id 0 (length n = number of non-zero ids; rows need n >= 1). Each
    candidate takes the place of the next event: position n and time `query_time_B`. The last history slot
    queries the time bias at `query_time_B` (its next event is the candidate), other history slots at their
    next event's time, as in train and eval rows and the serving encoder.
    """
    B, N = item_ids_BxN.shape
    M = candidates_BxM.shape[1]
    if timestamps_BxN.shape != (B, N) or query_time_B.shape != (B,) or candidates_BxM.shape[0] != B:
        raise ValueError(f"shapes disagree: item_ids {item_ids_BxN.shape}, timestamps {timestamps_BxN.shape}, "
                         f"query_time {query_time_B.shape}, candidates {candidates_BxM.shape}")
    n_Bx1 = jnp.sum(item_ids_BxN != 0, axis=1).astype(jnp.int32)[:, None]
    slot_BxL = jnp.broadcast_to(jnp.arange(N + M, dtype=jnp.int32), (B, N + M))
    in_history_BxL = slot_BxL < n_Bx1
    in_candidates_BxL = ~in_history_BxL & (slot_BxL < n_Bx1 + M)
    history_slot_BxL = jnp.clip(slot_BxL, 0, N - 1)
    candidate_slot_BxL = jnp.clip(slot_BxL - n_Bx1, 0, M - 1)
    query_BxL = jnp.broadcast_to(query_time_B.astype(jnp.int32)[:, None], (B, N + M))

    def place(history_BxN, candidate_BxL):
        history_BxL = jnp.take_along_axis(history_BxN.astype(jnp.int32), history_slot_BxL, axis=1)
        return jnp.where(in_history_BxL, history_BxL, jnp.where(in_candidates_BxL, candidate_BxL, 0))

    ids_BxL = place(item_ids_BxN, jnp.take_along_axis(candidates_BxM.astype(jnp.int32), candidate_slot_BxL, axis=1))
    ts_BxL = place(timestamps_BxN, query_BxL)
    query_ts_BxL = jnp.where(in_candidates_BxL, query_BxL,
                             query_times_BxL(ts_BxL, in_history_BxL, slot_BxL == n_Bx1 - 1, query_time_B))
    positions_BxL = jnp.where(in_history_BxL, slot_BxL, jnp.where(in_candidates_BxL, n_Bx1, 0))
    return {"item_ids_BxL": ids_BxL, "timestamps_BxL": ts_BxL, "target_ids_BxL": jnp.zeros_like(ids_BxL),
            "target_timestamps_BxL": query_ts_BxL,
            "segment_ids_BxL": (in_history_BxL | in_candidates_BxL).astype(jnp.int32), "positions_BxL": positions_BxL,
            "lengths_B": n_Bx1[:, 0] + M}


def score_candidates(model, item_ids_BxN: jax.Array, timestamps_BxN: jax.Array, query_time_B: jax.Array,
                     candidates_BxM: jax.Array) -> tuple[jax.Array, jax.Array]:
    """M-FALCON: scores of M candidates per user from ONE forward pass; (retrieval_BxM, target_aware_BxM).

    retrieval: cosine of the user embedding (the output at the last history token, which cannot see the
      candidates) with each candidate's item row: exactly what full-catalogue retrieval ranks by, so it
      agrees with the encoder path and /recommend.
    target_aware: cosine of the output AT each candidate token (history + that candidate, candidates
      masked from each other) with that candidate's item row; equals running the model once per
      candidate with the candidate appended as the next event. Our retrieval models are trained so that
      a token's output predicts the FOLLOWING item, so this is a feature for a ranking head, not a ranking
      the training objective optimised.
    Every candidate sits at position N_hist(b) ≤ N, so the position tables must cover N: N + 1 ≤
    max_seq_len. The slot count N + M is not bounded by max_seq_len.
    """
    B, N = item_ids_BxN.shape
    M = candidates_BxM.shape[1]
    max_seq_len = model.cfg.max_seq_len
    if M < 1:
        raise ValueError(f"candidates_BxM must hold at least one candidate per user, got shape {candidates_BxM.shape}")
    if N + 1 > max_seq_len:
        raise ValueError(f"histories of {N} events put the candidates at position {N}, outside the model's "
                         f"position tables (max_seq_len={max_seq_len}: positions 0..{max_seq_len - 1}); "
                         f"keep at most {max_seq_len - 1} history events")
    batch = candidate_batch(item_ids_BxN, timestamps_BxN, query_time_B, candidates_BxM)
    user_BxLxD = model(batch, deterministic=True, num_candidates=M)
    n_B = batch["lengths_B"] - M
    user_BxD = last_token_embeddings(user_BxLxD, jnp.maximum(n_B, 1))
    at_candidates_BxMxD = jnp.take_along_axis(
        user_BxLxD, (n_B[:, None] + jnp.arange(M, dtype=jnp.int32))[:, :, None], axis=1)
    table_VxD = model.item_table()
    ids_BxM = candidates_BxM.astype(jnp.int32)
    ids_BxM = jnp.where((ids_BxM < 1) | (ids_BxM >= table_VxD.shape[0]), table_VxD.shape[0], ids_BxM)
    items_BxMxD = normalized_item_table(jnp.take(table_VxD, ids_BxM, axis=0, mode="fill", fill_value=jnp.nan))
    retrieval_BxM = jnp.einsum("bd,bmd->bm", user_BxD, items_BxMxD)
    target_aware_BxM = jnp.einsum("bmd,bmd->bm", at_candidates_BxMxD, items_BxMxD)
    return retrieval_BxM, target_aware_BxM
