"""Next-item losses: sampled softmax (the reference's training loss) and exact full softmax.

Both are autoregressive over every slot with `target_ids_BxL > 0` and score an item by
cos(user, item) / temperature, where the item side is the L2-normalised row of the RAW item table
(eps 1e-6, the reference's clamp) and the user side is taken as given: the models already return
L2-normalised user embeddings, so it is not normalised again here.

Both return `(loss, aux)` with `aux = {"num_targets": int32, "sum_loss": float32}` so a caller can
aggregate exactly across micro-batches or devices (`sum(sum_loss) / sum(num_targets)`). A batch with
no target gives loss 0 and num_targets 0, never NaN. Logits are computed in float32 whatever the input
dtype.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from lrm import sharding
from lrm.models.embeddings import l2_normalize

SCORINGS = ("auto", "gather", "dense")
# Dense scoring when V <= 64·K: on the 2-core CPU the two break even near V/K = 64 (K=128, D=50) to 90 (K=512,
# D=64); `python -m bench.loss --ratios ...` measures it (docs/benchmarks.md).
DENSE_SCORING_MAX_RATIO = 64


def host_value(x) -> np.ndarray | None:
    """The value of `x` on the host, or None under a jax transformation (values unknown at trace time)."""
    try:
        return np.asarray(x)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        return None


def check_ids(name: str, ids, num_rows: int, *, low: int = 0) -> None:
    """Raise if concrete `ids` fall outside [low, num_rows): a gather would silently clamp them."""
    ids_np = host_value(ids)
    if ids_np is None or ids_np.size == 0:
        return
    if not np.issubdtype(ids_np.dtype, np.integer):
        raise TypeError(f"{name} must be integer ids, got dtype {ids_np.dtype}")
    bad = np.argwhere((ids_np < low) | (ids_np >= num_rows))
    if len(bad):
        where = tuple(int(i) for i in bad[0])
        raise ValueError(f"{name}{list(where)} = {int(ids_np[where])} is outside [{low}, {num_rows - 1}] "
                         f"(item table has {num_rows} rows, id 0 is padding); {len(bad)} bad ids in total")


def _check_common(user_emb_BxLxD, item_table_VxD, target_ids_BxL, temperature: float) -> None:
    if user_emb_BxLxD.ndim != 3:
        raise ValueError(f"user_emb_BxLxD must be [B, L, D], got shape {user_emb_BxLxD.shape}")
    if item_table_VxD.ndim != 2 or item_table_VxD.shape[1] != user_emb_BxLxD.shape[2]:
        raise ValueError(f"item_table_VxD must be [V, D={user_emb_BxLxD.shape[2]}], got {item_table_VxD.shape}")
    if item_table_VxD.shape[0] < 2:
        raise ValueError(f"item table needs padding row 0 plus at least one item, got {item_table_VxD.shape[0]} rows")
    if target_ids_BxL.shape != user_emb_BxLxD.shape[:2]:
        raise ValueError(f"target_ids_BxL shape {target_ids_BxL.shape} != user_emb [B, L] {user_emb_BxLxD.shape[:2]}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    check_ids("target_ids_BxL", target_ids_BxL, item_table_VxD.shape[0])


def _reduce(loss_BxL: jax.Array, valid_BxL: jax.Array) -> tuple[jax.Array, dict]:
    sum_loss = jnp.sum(jnp.where(valid_BxL, loss_BxL, 0.0))
    num_targets = jnp.sum(valid_BxL, dtype=jnp.int32)
    loss = sum_loss / jnp.maximum(num_targets, 1).astype(jnp.float32)
    return loss, {"num_targets": num_targets, "sum_loss": sum_loss}


def sample_negatives(key: jax.Array, shape: tuple[int, ...], num_rows: int) -> jax.Array:
    """Item ids drawn uniformly with replacement from 1..num_rows-1 (never padding 0), on device."""
    return jax.random.randint(key, shape, 1, num_rows, dtype=jnp.int32)


def _gathered_logits(user_BxLxD: jax.Array, table_RxD: jax.Array, rows_BxLxK: jax.Array,
                     temperature: float) -> jax.Array:
    rows_BxLxKxD = l2_normalize(jnp.take(table_RxD, rows_BxLxK, axis=0))
    return jnp.einsum("bld,blkd->blk", user_BxLxD, rows_BxLxKxD) / temperature


def _shard_logits(table_RxD: jax.Array, first_row: jax.Array, user_BxLxD: jax.Array, ids_BxLxK: jax.Array, *,
                  temperature: float, dense: bool, num_chunks: int = 1) -> tuple[jax.Array]:
    """cos(user, item)/temperature for the ids among this shard's rows, 0 for the others (see map_row_shards).

    `dense` scores all R local rows with one matmul and picks the ids; otherwise the ids' rows are gathered,
    `num_chunks` batch slices at a time (rematerialised in the backward pass): a shard sees the batch of all
    the devices it shares rows with, and gathering K rows of D floats for all of it at once would take that
    many times the memory of an unsharded device.
    """
    num_local = table_RxD.shape[0]
    local_BxLxK = ids_BxLxK - first_row
    mine_BxLxK = (local_BxLxK >= 0) & (local_BxLxK < num_local)
    local_BxLxK = jnp.clip(local_BxLxK, 0, num_local - 1)
    batch = user_BxLxD.shape[0]
    if dense:
        logits_BxLxR = jnp.einsum("bld,rd->blr", user_BxLxD / temperature, l2_normalize(table_RxD))
        logits_BxLxK = jnp.take_along_axis(logits_BxLxR, local_BxLxK, axis=-1)
    elif num_chunks > 1 and batch % num_chunks == 0:
        chunk = functools.partial(_gathered_logits, table_RxD=table_RxD, temperature=temperature)
        split = lambda x: x.reshape((num_chunks, batch // num_chunks) + x.shape[1:])  # noqa: E731
        logits_CxbxLxK = jax.lax.map(jax.checkpoint(lambda xs: chunk(xs[0], rows_BxLxK=xs[1])),
                                     (split(user_BxLxD), split(local_BxLxK)))
        logits_BxLxK = logits_CxbxLxK.reshape(local_BxLxK.shape)
    else:
        logits_BxLxK = _gathered_logits(user_BxLxD, table_RxD, local_BxLxK, temperature)
    return (jnp.where(mine_BxLxK, logits_BxLxK, 0.0),)


def sampled_softmax_loss_with_negatives(user_emb_BxLxD: jax.Array, item_table_VxD: jax.Array,
                                        target_ids_BxL: jax.Array, negative_ids_BxLxK: jax.Array, *,
                                        temperature: float, scoring: str = "auto") -> tuple[jax.Array, dict]:
    """Sampled softmax given explicit negatives: CE with the positive at index 0 of [pos, negs].

    A negative equal to the position's positive is masked (logit -inf), as the reference does; other
    duplicates stay, as with-replacement sampling gives them. `scoring="gather"` gathers the B·L·K·D
    negative rows (ML-1M recipe: 128·201·128·50 floats ≈ 0.66 GB in float32); `"dense"` scores the whole
    normalised table with one matmul (B·L·V logits) and picks the K; `"auto"` takes dense when
    V <= DENSE_SCORING_MAX_RATIO·K. Both give the same logits. A table whose rows are split over the mesh
    (`lrm.sharding.row_shards`) is scored shard by shard either way and never gathered.
    """
    _check_common(user_emb_BxLxD, item_table_VxD, target_ids_BxL, temperature)
    if negative_ids_BxLxK.ndim != 3 or negative_ids_BxLxK.shape[:2] != target_ids_BxL.shape:
        raise ValueError(f"negative_ids_BxLxK must be [B, L, K] with [B, L] = {target_ids_BxL.shape}, "
                         f"got {negative_ids_BxLxK.shape}")
    check_ids("negative_ids_BxLxK", negative_ids_BxLxK, item_table_VxD.shape[0], low=1)

    if scoring not in SCORINGS:
        raise ValueError(f"unknown scoring {scoring!r}; known: {SCORINGS}")
    user_BxLxD = user_emb_BxLxD.astype(jnp.float32)
    table_VxD = item_table_VxD.astype(jnp.float32)
    num_rows, num_negatives = table_VxD.shape[0], negative_ids_BxLxK.shape[-1]
    dense = scoring == "dense" or (scoring == "auto" and num_rows <= DENSE_SCORING_MAX_RATIO * num_negatives)
    shards = sharding.row_shards(table_VxD.shape)
    if shards is not None:  # rows split over the mesh: score each id on the shard that holds its row
        ids_BxLx1pK = jnp.concatenate([target_ids_BxL[:, :, None], negative_ids_BxLxK], axis=-1).astype(jnp.int32)
        shard_fn = functools.partial(_shard_logits, temperature=temperature, dense=dense,
                                     num_chunks=shards.scatter_size)
        (logits_BxLx1pK,) = sharding.map_row_shards(shard_fn, shards, table_VxD, user_BxLxD, ids_BxLx1pK)
        pos_logit_BxL, neg_logit_BxLxK = logits_BxLx1pK[:, :, 0], logits_BxLx1pK[:, :, 1:]
    elif dense:
        # Same logits, computed as one [B·L, V] matmul plus a gather of K scalars per position: for small
        # catalogues far cheaper than gathering (and, backward, scatter-adding) K rows of D floats. The
        # temperature scales the [B·L, D] side, not the [B·L, V] block, and the positive is one gathered row:
        # each saves a pass over the block forward and backward (bench/loss.py: ~25% of the loss on ML-1M).
        scaled_BxLxD = user_BxLxD / temperature
        normed_VxD = l2_normalize(table_VxD)
        logits_BxLxV = jnp.einsum("bld,vd->blv", scaled_BxLxD, normed_VxD)
        pos_logit_BxL = jnp.einsum("bld,bld->bl", scaled_BxLxD, jnp.take(normed_VxD, target_ids_BxL, axis=0))
        neg_logit_BxLxK = jnp.take_along_axis(logits_BxLxV, negative_ids_BxLxK, axis=-1)
    else:
        pos_BxLxD = l2_normalize(jnp.take(table_VxD, target_ids_BxL, axis=0))
        neg_BxLxKxD = l2_normalize(jnp.take(table_VxD, negative_ids_BxLxK, axis=0))
        pos_logit_BxL = jnp.einsum("bld,bld->bl", user_BxLxD, pos_BxLxD) / temperature
        neg_logit_BxLxK = jnp.einsum("bld,blkd->blk", user_BxLxD, neg_BxLxKxD) / temperature
    collide_BxLxK = negative_ids_BxLxK == target_ids_BxL[:, :, None]
    neg_logit_BxLxK = jnp.where(collide_BxLxK, -jnp.inf, neg_logit_BxLxK)
    logits_BxLx1pK = jnp.concatenate([pos_logit_BxL[:, :, None], neg_logit_BxLxK], axis=-1)
    loss_BxL = jax.nn.logsumexp(logits_BxLx1pK, axis=-1) - pos_logit_BxL
    return _reduce(loss_BxL, target_ids_BxL > 0)


def sampled_softmax_loss(user_emb_BxLxD: jax.Array, item_table_VxD: jax.Array, target_ids_BxL: jax.Array,
                         key: jax.Array, *, num_negatives: int, temperature: float,
                         scoring: str = "auto") -> tuple[jax.Array, dict]:
    """The reference's training loss: K uniform negatives per target position, drawn from `key`."""
    if num_negatives < 1:
        raise ValueError(f"num_negatives must be >= 1, got {num_negatives}")
    batch, length = target_ids_BxL.shape
    negative_ids_BxLxK = sample_negatives(key, (batch, length, num_negatives), item_table_VxD.shape[0])
    return sampled_softmax_loss_with_negatives(user_emb_BxLxD, item_table_VxD, target_ids_BxL,
                                               negative_ids_BxLxK, temperature=temperature, scoring=scoring)


def _logsumexp_parts(user_NxD: jax.Array, items_MxD: jax.Array, real_M: jax.Array, temperature: float,
                     chunk_size: int | None) -> tuple[jax.Array, jax.Array]:
    """(max_N, sum_N) with logsumexp over the real items = shift(max_N) + log(sum_N), where shift is max_N
    (0 where no item is real) and max_N carries no gradient. Scanned one [N, chunk] block at a time when
    `chunk_size` < M (memory O(N·chunk)); the parts of several row shards merge exactly (`_shard_full`)."""
    num_items = items_MxD.shape[0]
    chunk_size = num_items if chunk_size is None else min(chunk_size, num_items)
    num_chunks = -(-num_items // chunk_size)
    padded_MxD = jnp.pad(items_MxD, ((0, num_chunks * chunk_size - num_items), (0, 0)))
    chunks_CxKxD = padded_MxD.reshape(num_chunks, chunk_size, -1)
    real_CxK = jnp.pad(real_M, (0, num_chunks * chunk_size - num_items)).reshape(num_chunks, chunk_size)
    scaled_NxD = user_NxD / temperature  # scaling the [N, D] side spares a pass over every [N, chunk] block

    @jax.checkpoint  # keep only the carries for the backward pass, not every [N, chunk] block
    def step(carry, xs):
        max_N, sum_N = carry
        chunk_KxD, real_K = xs
        logits_NxK = scaled_NxD @ chunk_KxD.T
        logits_NxK = jnp.where(real_K[None, :], logits_NxK, -jnp.inf)
        # The shift is a constant for autodiff (as in jax.nn.logsumexp); the gradient stays the softmax.
        new_max_N = jax.lax.stop_gradient(jnp.maximum(max_N, jnp.max(logits_NxK, axis=1)))
        shift_N = jnp.where(jnp.isfinite(new_max_N), new_max_N, 0.0)
        sum_N = sum_N * jnp.exp(max_N - shift_N) + jnp.sum(jnp.exp(logits_NxK - shift_N[:, None]), axis=1)
        return (new_max_N, sum_N), None

    init = (jnp.full(user_NxD.shape[:1], -jnp.inf, jnp.float32), jnp.zeros(user_NxD.shape[:1], jnp.float32))
    # The first block runs outside the scan, so that inside shard_map the carry already varies over the
    # same mesh axes as the blocks (scan needs equal carry types in and out).
    carry, _ = step(init, (chunks_CxKxD[0], real_CxK[0]))
    if num_chunks > 1:
        carry, _ = jax.lax.scan(step, carry, (chunks_CxKxD[1:], real_CxK[1:]))
    return carry


def _shard_full(table_RxD: jax.Array, first_row: jax.Array, user_BxLxD: jax.Array, target_ids_BxL: jax.Array, *,
                num_items: int, temperature: float, chunk_size: int | None,
                row_axes: tuple[str, ...]) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One row shard's part of the full softmax (see map_row_shards): the positive logit of the targets it
    holds, its items' sum of exp(logit − max) under the max over all shards, and that max (from shard 0 only,
    so that the sum over shards gives it once)."""
    batch, length, dim = user_BxLxD.shape
    ids_R = first_row + jnp.arange(table_RxD.shape[0])
    real_R = (ids_R >= 1) & (ids_R <= num_items)  # not padding row 0, not the rows padded for sharding
    user_NxD = user_BxLxD.reshape(batch * length, dim)
    max_N, sum_N = _logsumexp_parts(user_NxD, l2_normalize(table_RxD), real_R, temperature, chunk_size)
    global_max_N = jax.lax.pmax(max_N, row_axes)
    shift_N = jnp.where(jnp.isfinite(max_N), max_N, 0.0)
    part_N = sum_N * jnp.exp(shift_N - global_max_N)
    (pos_BxLx1,) = _shard_logits(table_RxD, first_row, user_BxLxD, target_ids_BxL[:, :, None],
                                 temperature=temperature, dense=False)
    max_once_N = jnp.where(first_row == 0, global_max_N, 0.0)
    return pos_BxLx1[:, :, 0], part_N.reshape(batch, length), max_once_N.reshape(batch, length)


def full_softmax_loss(user_emb_BxLxD: jax.Array, item_table_VxD: jax.Array, target_ids_BxL: jax.Array, *,
                      temperature: float, chunk_size: int | None = None,
                      num_items: int | None = None) -> tuple[jax.Array, dict]:
    """Exact CE over all real items 1..num_items (padding 0 is not a class).

    `num_items` (default V - 1): rows beyond it are padding added for sharding and are not classes either.
    With `chunk_size`, the item table is scanned in blocks with an online logsumexp and rematerialised
    in the backward pass, so memory is O(B·L·chunk) instead of O(B·L·V); the result equals the
    unchunked one up to float rounding. A table whose rows are split over the mesh is scored shard by shard
    (each shard's logsumexp merged across shards) and never gathered.
    """
    _check_common(user_emb_BxLxD, item_table_VxD, target_ids_BxL, temperature)
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1 or None, got {chunk_size}")
    num_rows = item_table_VxD.shape[0]
    num_items = num_rows - 1 if num_items is None else num_items
    if not 1 <= num_items <= num_rows - 1:
        raise ValueError(f"num_items={num_items} must be in [1, {num_rows - 1}] for a table of {num_rows} rows")
    check_ids("target_ids_BxL", target_ids_BxL, num_items + 1)
    batch, length, dim = user_emb_BxLxD.shape
    table_VxD = item_table_VxD.astype(jnp.float32)
    shards = sharding.row_shards(table_VxD.shape)
    if shards is not None:
        shard_fn = functools.partial(_shard_full, num_items=num_items, temperature=temperature,
                                     chunk_size=chunk_size, row_axes=shards.row_axes)
        pos_BxL, sum_BxL, max_BxL = sharding.map_row_shards(shard_fn, shards, table_VxD,
                                                            user_emb_BxLxD.astype(jnp.float32),
                                                            target_ids_BxL.astype(jnp.int32))
        return _reduce(max_BxL + jnp.log(sum_BxL) - pos_BxL, target_ids_BxL > 0)

    user_NxD = user_emb_BxLxD.astype(jnp.float32).reshape(batch * length, dim)
    items_MxD = l2_normalize(table_VxD[1:num_items + 1])  # class m is item id m + 1
    pos_N = jnp.sum(user_NxD * l2_normalize(jnp.take(table_VxD, target_ids_BxL.reshape(-1), axis=0)), axis=-1)
    pos_N = pos_N / temperature
    if chunk_size is None or chunk_size >= items_MxD.shape[0]:
        lse_N = jax.nn.logsumexp((user_NxD / temperature) @ items_MxD.T, axis=-1)
    else:
        max_N, sum_N = _logsumexp_parts(user_NxD, items_MxD, jnp.ones(items_MxD.shape[0], bool), temperature,
                                        chunk_size)
        lse_N = max_N + jnp.log(sum_N)
    loss_BxL = (lse_N - pos_N).reshape(batch, length)
    return _reduce(loss_BxL, target_ids_BxL > 0)
