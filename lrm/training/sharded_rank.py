"""Full-catalogue ranking on a row-sharded item table: each device scores its own rows, then the per-shard
statistics are merged with collectives. The same rule as `lrm.metrics.rank_targets` (see its module doc);
no device ever holds more than its 1/k of the table.

Pass 1 (per shard, in chunks): running max / sum-exp of the logits and the target's cosine if the target
lives in this shard; merged by pmax / psum. Pass 2: items scored strictly above the target, minus
deduplicated history items above it, counted per shard and summed. Padding rows (id 0 and the rows that pad
the table to a multiple of the shard count) never count and never enter the softmax.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

from lrm.metrics import _first_occurrence_BxL
from lrm.models.embeddings import l2_normalize


def _shard_map(f, mesh, in_specs, out_specs):
    if hasattr(jax, "shard_map"):
        try:
            return jax.shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)
        except TypeError:
            pass
    from jax.experimental.shard_map import shard_map

    return shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_rep=False)


def _local_rank(user_BxD, target_B, history_BxL, table_RxD, *, num_items, vocab_axes, temperature, chunk_size):
    rows = table_RxD.shape[0]
    shard = jax.lax.axis_index(vocab_axes) if vocab_axes else 0
    first_id = shard * rows  # global id of this shard's row 0
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

    def real(ids):  # ids of real items owned by this shard
        return (ids >= 1) & (ids <= num_items) & (ids < first_id + rows)

    def pick(cos_BxC, ids_BxK, start):
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


def sharded_rank_targets(user_emb_BxD: jax.Array, target_ids_B: jax.Array, history_ids_BxL: jax.Array,
                         item_table_VxD: jax.Array, *, num_items: int, mesh: Mesh, vocab_axes: tuple[str, ...],
                         temperature: float, chunk_size: int) -> tuple[jax.Array, jax.Array]:
    """(rank_B, ce_B) as `lrm.metrics.rank_targets`, for a table whose rows are split over `vocab_axes`
    (rows beyond `num_items` are padding). Users are split over the mesh axes the table does not use."""
    if item_table_VxD.shape[0] < num_items + 1:
        raise ValueError(f"item table has {item_table_VxD.shape[0]} rows, fewer than num_items + 1 = {num_items + 1}")
    user_axes = tuple(a for a in ("data", "fsdp") if a not in vocab_axes and mesh.shape[a] > 1)
    batch = user_emb_BxD.shape[0]
    if user_axes and batch % math.prod(mesh.shape[a] for a in user_axes):
        user_axes = ()
    u = P(user_axes or None)
    fn = functools.partial(_local_rank, num_items=num_items, vocab_axes=vocab_axes, temperature=temperature,
                           chunk_size=chunk_size)
    mapped = _shard_map(fn, mesh, in_specs=(u, u, u, P(vocab_axes or None)), out_specs=(u, u))
    return mapped(user_emb_BxD, target_ids_B.astype(jnp.int32), history_ids_BxL.astype(jnp.int32),
                  item_table_VxD)
