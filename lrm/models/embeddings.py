"""Item and position embeddings, the input preprocessing both models share, and host-side batch checks.

Also the two stateless helpers every model needs (keyed dropout, L2 normalisation), so that a model is a pure
function of (params, batch, dropout_key).
"""
from __future__ import annotations

import math
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lrm import sharding

BATCH_KEYS = (
    "item_ids_BxL",
    "timestamps_BxL",
    "target_timestamps_BxL",
    "segment_ids_BxL",
    "positions_BxL",
    "lengths_B",
)

Initializer = Callable[[jax.Array, tuple[int, ...]], jax.Array]


def truncated_normal_init(std: float) -> Initializer:
    """Normal(0, std) truncated at ±2 std, as the reference's `truncated_normal` (resample outside ±2)."""

    def init(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
        return std * jax.random.truncated_normal(key, -2.0, 2.0, shape, jnp.float32)

    return init


def normal_init(std: float) -> Initializer:
    def init(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
        return std * jax.random.normal(key, shape, jnp.float32)

    return init


def dropout(x: jax.Array, rate: float, key: jax.Array | None, *, deterministic: bool) -> jax.Array:
    """Inverted dropout driven by an explicit key (no hidden RNG state)."""
    if deterministic or rate == 0.0:
        return x
    if key is None:
        raise ValueError(f"dropout rate {rate} with deterministic=False needs a dropout_key")
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def site_key(dropout_key: jax.Array | None, site: int) -> jax.Array | None:
    """A distinct key per dropout site (input, layer l linear, ...)."""
    return None if dropout_key is None else jax.random.fold_in(dropout_key, site)


def l2_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    """x / max(||x||, eps), the reference's L2NormEmbeddingPostprocessor.

    Written as x * rsqrt(max(||x||², eps²)) so that zero rows (padding slots, item 0) have a finite
    gradient: the derivative of ||x|| at 0 is infinite and would turn masked-out zeros into NaN.
    """
    x = x.astype(jnp.float32)
    sq_norm = jnp.sum(x * x, axis=-1, keepdims=True)
    return x * jax.lax.rsqrt(jnp.maximum(sq_norm, eps * eps))


def valid_mask_BxL(batch: Mapping[str, jax.Array]) -> jax.Array:
    """True on real tokens: segment id > 0 inside the `lengths_B` prefix."""
    segment_ids_BxL = jnp.asarray(batch["segment_ids_BxL"])
    L = segment_ids_BxL.shape[1]
    in_prefix_BxL = jnp.arange(L)[None, :] < jnp.asarray(batch["lengths_B"])[:, None]
    return (segment_ids_BxL > 0) & in_prefix_BxL


def _lookup(table_VxD: jax.Array, ids: jax.Array) -> jax.Array:
    """Row gather where an out-of-range id (negative or >= V) gives NaN rows, never a silently clamped row."""
    V = table_VxD.shape[0]
    ids = jnp.where(ids < 0, V, ids)
    return jnp.take(table_VxD, ids, axis=0, mode="fill", fill_value=jnp.nan)


def _rows_of_shard(table_RxD: jax.Array, first_row: jax.Array, ids: jax.Array) -> tuple[jax.Array]:
    """The rows of the ids this shard holds, zeros for the others (summed over shards by the caller)."""
    local = ids - first_row
    mine = (local >= 0) & (local < table_RxD.shape[0])
    rows = jnp.take(table_RxD, jnp.clip(local, 0, table_RxD.shape[0] - 1), axis=0)
    return (jnp.where(mine[..., None], rows, jnp.zeros((), rows.dtype)),)


def lookup_rows(table_VxD: jax.Array, ids: jax.Array) -> jax.Array:
    """Rows of an item table for ids with a leading batch dim; an out-of-range id gives a NaN row.

    A table whose rows are split over the mesh (`sharding.row_shards`) is looked up shard by shard, so the
    table is never gathered; otherwise this is a plain gather.
    """
    shards = sharding.row_shards(table_VxD.shape)
    if shards is None:
        return _lookup(table_VxD, ids)
    ids = ids.astype(jnp.int32)
    (rows,) = sharding.map_row_shards(_rows_of_shard, shards, table_VxD, ids)
    bad = (ids < 0) | (ids >= table_VxD.shape[0])
    return jnp.where(bad[..., None], jnp.asarray(jnp.nan, rows.dtype), rows)


class ItemEmbedding(nnx.Module):
    """(num_items + 1, D) table; id 0 is padding (its row starts at zero and is never read unmasked)."""

    def __init__(self, num_items: int, embed_dim: int, *, rngs: nnx.Rngs):
        if num_items < 1:
            raise ValueError(f"num_items must be >= 1, got {num_items}")
        # Reference LocalEmbeddingModule: truncated_normal(std=0.02) over the whole table.
        table = truncated_normal_init(0.02)(rngs.params(), (num_items + 1, embed_dim))
        self.num_items = num_items
        self.table = nnx.Param(table.at[0].set(0.0), logical_axes=("vocab", "embed"))

    def __call__(self, ids_BxL: jax.Array) -> jax.Array:
        return lookup_rows(self.table[...], ids_BxL)


class InputEmbedding(nnx.Module):
    """`x = item_emb(ids)·sqrt(D) + pos_emb(positions)` → dropout → padded tokens zeroed.

    Matches the reference's LearnablePositionalEmbeddingInputFeaturesPreprocessor; the position table's init
    is the caller's because the reference differs by model (see hstu.py, sasrec.py).
    """

    def __init__(
        self, num_items: int, embed_dim: int, max_seq_len: int, *, pos_init: Initializer, rngs: nnx.Rngs
    ):
        self.embed_dim = embed_dim
        self.max_seq_len = max_seq_len
        self.item = ItemEmbedding(num_items, embed_dim, rngs=rngs)
        self.position = nnx.Param(
            pos_init(rngs.params(), (max_seq_len, embed_dim)), logical_axes=("position", "embed")
        )

    def __call__(
        self,
        batch: Mapping[str, jax.Array],
        *,
        rate: float,
        deterministic: bool,
        dropout_key: jax.Array | None,
    ) -> tuple[jax.Array, jax.Array]:
        """Returns (x_BxLxD f32, valid_BxL)."""
        ids_BxL = jnp.asarray(batch["item_ids_BxL"])
        L = ids_BxL.shape[1]
        if L > self.max_seq_len:
            raise ValueError(f"batch length L={L} exceeds the model's max_seq_len={self.max_seq_len}")
        x_BxLxD = self.item(ids_BxL) * math.sqrt(self.embed_dim)
        x_BxLxD = x_BxLxD + _lookup(self.position[...], jnp.asarray(batch["positions_BxL"]))
        x_BxLxD = dropout(x_BxLxD, rate, dropout_key, deterministic=deterministic)
        valid_BxL = valid_mask_BxL(batch)
        return jnp.where(valid_BxL[..., None], x_BxLxD, 0.0), valid_BxL


def check_item_ids(item_ids_BxL: object, num_items: int) -> None:
    """Raise if a concrete id array has ids outside [0, num_items]; silently skip tracers (inside jit)."""
    try:
        ids = np.asarray(item_ids_BxL)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return
    bad = (ids < 0) | (ids > num_items)
    if bad.any():
        b, t = np.argwhere(bad)[0]
        raise ValueError(
            f"item_ids_BxL[{b}, {t}] = {ids[b, t]} is outside [0, {num_items}] (num_items={num_items}, "
            f"table has {num_items + 1} rows); {int(bad.sum())} bad ids in the batch"
        )


def check_batch(batch: Mapping[str, object], num_items: int, *, max_seq_len: int | None = None) -> None:
    """Host-side (numpy) validation of a batch against the model's contract; raises with what and where.

    Checks: keys present, integer (B, L)/(B,) shapes, ids in [0, num_items], lengths in [0, L], segment ids
    > 0 exactly on the valid prefix and ids > 0 there, positions in [0, max_seq_len).
    """
    missing = [k for k in BATCH_KEYS if k not in batch]
    if missing:
        raise KeyError(f"batch is missing keys {missing}; it has {sorted(batch)}")
    arrays = {k: np.asarray(batch[k]) for k in BATCH_KEYS}
    ids = arrays["item_ids_BxL"]
    if ids.ndim != 2:
        raise ValueError(f"item_ids_BxL must be (B, L), got shape {ids.shape}")
    B, L = ids.shape
    for k, arr in arrays.items():
        want = (B,) if k == "lengths_B" else (B, L)
        if arr.shape != want:
            raise ValueError(f"batch[{k!r}] has shape {arr.shape}, expected {want}")
        if not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(f"batch[{k!r}] must be integer, got {arr.dtype}")
    check_item_ids(ids, num_items)
    lengths = arrays["lengths_B"]
    bad_rows = np.flatnonzero((lengths < 0) | (lengths > L))
    if bad_rows.size:
        raise ValueError(f"lengths_B[{bad_rows[0]}] = {lengths[bad_rows[0]]} is outside [0, {L}]")
    in_prefix = np.arange(L)[None, :] < lengths[:, None]
    seg = arrays["segment_ids_BxL"]
    mismatch = np.argwhere((seg > 0) != in_prefix)
    if mismatch.size:
        b, t = mismatch[0]
        raise ValueError(
            f"segment_ids_BxL[{b}, {t}] = {seg[b, t]} disagrees with lengths_B[{b}] = {lengths[b]} "
            f"(valid tokens must be the prefix [0, length) with segment id > 0)"
        )
    empty = np.argwhere(in_prefix & (ids == 0))
    if empty.size:
        b, t = empty[0]
        raise ValueError(f"item_ids_BxL[{b}, {t}] is 0 (padding) inside the valid prefix of length {lengths[b]}")
    pos = arrays["positions_BxL"]
    upper = max_seq_len if max_seq_len is not None else np.iinfo(pos.dtype).max
    bad_pos = np.argwhere(in_prefix & ((pos < 0) | (pos >= upper)))
    if bad_pos.size:
        b, t = bad_pos[0]
        raise ValueError(f"positions_BxL[{b}, {t}] = {pos[b, t]} is outside [0, {upper})")
