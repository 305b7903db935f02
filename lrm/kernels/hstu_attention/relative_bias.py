"""Relative attention bias of the research HSTU: a learned scalar per position offset and per time bucket.

Both tables are shared by all heads of a layer. The dense (B, L, L) bias built here is what the reference
attention adds to q·kᵀ; kernels gather from the same tables with the same index arithmetic.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

DEFAULT_NUM_TIME_BUCKETS = 128
DEFAULT_TIME_BUCKET_DIVISOR = 0.301


def time_bucket(
    dt: jax.Array,
    *,
    num_buckets: int = DEFAULT_NUM_TIME_BUCKETS,
    divisor: float = DEFAULT_TIME_BUCKET_DIVISOR,
) -> jax.Array:
    """`clip(floor(ln(max(|dt|, 1)) / divisor), 0, num_buckets)` as int32.

    Natural log, as the reference's bucketization_fn (`log(|x|.clamp(min=1)) / 0.301`), so the 129-entry
    table is indexed by ~ln-scale buckets, not log2. dt is an integer number of seconds; the absolute value is
    taken in integers so large timestamps lose no precision before the log.
    """
    dt = jnp.asarray(dt)
    if jnp.issubdtype(dt.dtype, jnp.integer):
        abs_dt = jnp.maximum(jnp.abs(dt), 1).astype(jnp.float32)
    else:
        abs_dt = jnp.maximum(jnp.abs(dt.astype(jnp.float32)), 1.0)
    bucket = jnp.floor(jnp.log(abs_dt) / divisor)
    return jnp.clip(bucket, 0, num_buckets).astype(jnp.int32)


def relative_position_index(L: int, N: int) -> jax.Array:
    """(L, L) int32 index into a (2N-1,) position table: entry `N-1 + (j - i)` for query i, key j."""
    if L > N:
        raise ValueError(f"sequence length L={L} exceeds the position table's max length N={N}")
    i = jnp.arange(L, dtype=jnp.int32)[:, None]
    j = jnp.arange(L, dtype=jnp.int32)[None, :]
    return N - 1 + j - i


def position_index_BxLxL(positions_BxL: jax.Array, N: int) -> jax.Array:
    """(B, L, L) int32 index `N-1 + (positions[j] - positions[i])` into a (2N-1,) position table.

    The offset between two tokens is that of their positions, not of their slots. Within a segment of an
    ordinary row positions are the slots counted from the segment start, so this equals
    `relative_position_index` wherever the mask lets a query see a key. M-FALCON candidates differ: all of
    them sit at position n (the next event's) while they fill slots n, n+1, ...
    """
    if positions_BxL.ndim != 2:
        raise ValueError(f"positions_BxL must be (B, L), got shape {positions_BxL.shape}")
    positions_BxL = positions_BxL.astype(jnp.int32)
    return N - 1 + positions_BxL[:, None, :] - positions_BxL[:, :, None]


def table_max_len(pos_bias_table: jax.Array) -> int:
    """N of a (2N-1,) position bias table."""
    if pos_bias_table.ndim != 1:
        raise ValueError(f"pos_bias_table must be 1-D (2N-1,), got shape {pos_bias_table.shape}")
    (size,) = pos_bias_table.shape
    if size % 2 != 1:
        raise ValueError(f"pos_bias_table must have 2N-1 (odd) entries, got {size}")
    return (size + 1) // 2


def checked_timestamps(
    time_bias_table: jax.Array,
    timestamps_BxL: jax.Array | None,
    query_timestamps_BxL: jax.Array | None,
    *,
    L: int,
    num_time_buckets: int,
    B: int | None = None,
) -> tuple[jax.Array, jax.Array]:
    """The time-bias arguments, checked the same way for the reference and the kernels.

    Returns (key timestamps, query timestamps); the query times default to the key times.
    """
    if time_bias_table.shape != (num_time_buckets + 1,):
        raise ValueError(
            f"time_bias_table must have num_time_buckets+1 = {num_time_buckets + 1} entries, "
            f"got shape {time_bias_table.shape}"
        )
    if timestamps_BxL is None:
        raise ValueError("time_bias_table needs timestamps_BxL")
    if timestamps_BxL.ndim != 2 or timestamps_BxL.shape[1] != L or B not in (None, timestamps_BxL.shape[0]):
        raise ValueError(f"timestamps_BxL must have shape ({'B' if B is None else B}, {L}), got {timestamps_BxL.shape}")
    if query_timestamps_BxL is None:
        query_timestamps_BxL = timestamps_BxL
    if query_timestamps_BxL.shape != timestamps_BxL.shape:
        raise ValueError(
            f"query_timestamps_BxL shape {query_timestamps_BxL.shape} != timestamps_BxL shape "
            f"{timestamps_BxL.shape}"
        )
    return timestamps_BxL, query_timestamps_BxL


def relative_bias_BxLxL(
    *,
    L: int,
    pos_bias_table: jax.Array | None = None,
    time_bias_table: jax.Array | None = None,
    timestamps_BxL: jax.Array | None = None,
    query_timestamps_BxL: jax.Array | None = None,
    num_time_buckets: int = DEFAULT_NUM_TIME_BUCKETS,
    time_bucket_divisor: float = DEFAULT_TIME_BUCKET_DIVISOR,
    positions_BxL: jax.Array | None = None,
    B: int | None = None,
) -> jax.Array | None:
    """Dense f32 bias `pos[N-1 + j-i] + ts[bucket(query_ts[i] - ts[j])]`; (1, L, L) without a time table.

    Returns None when neither table is given. Query row i uses `query_timestamps_BxL[i]` (the reference
    uses the NEXT event's time there); it defaults to `timestamps_BxL`. With `positions_BxL` the position
    offset is `positions[j] - positions[i]` (`position_index_BxLxL`) instead of the slot offset `j - i`;
    positions outside the table give NaN, never a silently clamped entry. With `B` the per-row arrays must have
    that many rows (otherwise a (1, L) array would broadcast over the batch unnoticed).
    """
    bias = None
    if pos_bias_table is not None:
        N = table_max_len(pos_bias_table)
        if positions_BxL is None:
            bias = pos_bias_table.astype(jnp.float32)[relative_position_index(L, N)][None]
        else:
            if positions_BxL.ndim != 2 or positions_BxL.shape[1] != L or B not in (None, positions_BxL.shape[0]):
                raise ValueError(
                    f"positions_BxL must have shape ({'B' if B is None else B}, {L}), got {positions_BxL.shape}"
                )
            index_BxLxL = position_index_BxLxL(positions_BxL, N)
            index_BxLxL = jnp.where((index_BxLxL < 0) | (index_BxLxL > 2 * N - 2), 2 * N - 1, index_BxLxL)
            bias = jnp.take(pos_bias_table.astype(jnp.float32), index_BxLxL, axis=0, mode="fill",
                            fill_value=jnp.nan)
    if time_bias_table is not None:
        timestamps_BxL, query_timestamps_BxL = checked_timestamps(
            time_bias_table, timestamps_BxL, query_timestamps_BxL, L=L, num_time_buckets=num_time_buckets, B=B
        )
        dt_BxLxL = query_timestamps_BxL[:, :, None] - timestamps_BxL[:, None, :]
        bucket_BxLxL = time_bucket(dt_BxLxL, num_buckets=num_time_buckets, divisor=time_bucket_divisor)
        time_BxLxL = time_bias_table.astype(jnp.float32)[bucket_BxLxL]
        bias = time_BxLxL if bias is None else bias + time_BxLxL
    return bias
