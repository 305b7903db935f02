"""Full-catalogue ranking on a row-sharded item table: each device runs `lrm.metrics.rank_rows` on its own
rows (global ids offset by its shard index) and the per-shard statistics are merged with collectives over
the vocab axes. No device ever holds more than its 1/k of the table; padding rows never count.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

from lrm.metrics import rank_rows


def _shard_map(f, mesh, in_specs, out_specs):
    if hasattr(jax, "shard_map"):
        try:
            return jax.shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)
        except TypeError:
            pass
    from jax.experimental.shard_map import shard_map

    return shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_rep=False)


def _local_rank(user_BxD, target_B, history_BxL, table_RxD, *, num_items, vocab_axes, temperature, chunk_size):
    shard = jax.lax.axis_index(vocab_axes) if vocab_axes else 0
    return rank_rows(user_BxD, target_B, history_BxL, table_RxD, first_id=shard * table_RxD.shape[0],
                     num_items=num_items, temperature=temperature, chunk_size=chunk_size, vocab_axes=vocab_axes)


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
