"""Backend-independent plumbing of the Pallas HSTU attention kernels.

Everything here is O(B·L) XLA work around the kernels (or plain jnp tile math used inside both kernels):
argument checks, the per-token metadata the kernels read instead of an L×L mask, padding to the block
grid, the per-block key/query ranges that let the kernels skip fully masked tiles, the reduction of the
per-tile bias-table gradient partials, and the `custom_vjp` that ties a backend's forward and backward
kernels together. The math is the one of `reference.hstu_attention_reference` with activation="silu".
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from lrm.kernels.hstu_attention import relative_bias
from lrm.kernels.hstu_attention.reference import check_shapes, resolve_segment_ids


@dataclasses.dataclass(frozen=True)
class KernelConfig:
    """Static description of one attention call (hashable: it keys the jit cache)."""

    B: int
    L: int  # true sequence length
    Lp: int  # padded to a multiple of every block size
    H: int
    D: int
    Dv: int
    alpha: float
    inv_n: float  # 1 / norm_len
    window: int | None
    pos_max_len: int | None  # N of the (2N-1,) position table; None: no position bias
    num_buckets: int | None  # K of the (K+1,) time table; None: no time bias
    divisor: float
    dense: str | None  # None, "shared" (B, L, L) or "per_head" (B, H, L, L)
    has_targets: bool
    block_q: int
    block_k: int
    block_q_bwd: int
    block_k_bwd: int
    blocks: Any  # the backend's block-size dataclass (launch parameters)
    interpret: bool

    @property
    def has_bias_grads(self) -> bool:
        return self.pos_max_len is not None or self.num_buckets is not None or self.dense is not None


class Meta(NamedTuple):
    """Per-token int metadata (B, Lp), zero on padding; None where the feature is off."""

    seg: jax.Array  # segment id, 0 = invalid token
    tgt: jax.Array | None  # 1 on target tokens
    ts: jax.Array | None  # key timestamps
    qts: jax.Array | None  # query timestamps


class Inputs(NamedTuple):
    q: jax.Array  # (B, Lp, H, D)
    k: jax.Array
    v: jax.Array  # (B, Lp, H, Dv)
    pos: jax.Array | None  # (2N-1,)
    time: jax.Array | None  # (K+1,)
    dense: jax.Array | None  # (B, Lp, Lp) or (B, H, Lp, Lp)
    meta: Meta


class BackwardOut(NamedTuple):
    """What a backend's backward returns (padded); the partials are reduced here."""

    dq: jax.Array
    dk: jax.Array
    dv: jax.Array
    pos_partials: jax.Array | None  # (B, nq, nk, W): diagonal sums of tile t = kj - kb_lo[b, qi]
    time_partials: jax.Array | None  # (B, nq, Kp): bucket histogram per query block
    ddense: jax.Array | None  # padded like the dense bias; tiles outside the ranges are garbage


def round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def _pad_axis(x: jax.Array, axis: int, size: int) -> jax.Array:
    if x.shape[axis] == size:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, size - x.shape[axis])
    return jnp.pad(x, widths)


def _target_flags(seg_BxL: jax.Array, num_targets_B: jax.Array) -> jax.Array:
    """1 on the last num_targets valid tokens of each row (the reference's rule, per token)."""
    valid_BxL = seg_BxL != 0
    rank_BxL = jnp.cumsum(valid_BxL.astype(jnp.int32), axis=1)
    first_target_rank_B = rank_BxL[:, -1] - num_targets_B.astype(jnp.int32)
    return (valid_BxL & (rank_BxL > first_target_rank_B[:, None])).astype(jnp.int32)


def _timestamps(ts_BxL: jax.Array) -> jax.Array:
    return ts_BxL.astype(jnp.int32 if jnp.issubdtype(ts_BxL.dtype, jnp.integer) else jnp.float32)


def prepare(
    q_BxLxHxD: jax.Array,
    k_BxLxHxD: jax.Array,
    v_BxLxHxDv: jax.Array,
    *,
    segment_ids_BxL: jax.Array | None,
    lengths_B: jax.Array | None,
    num_targets_B: jax.Array | None,
    window: int | None,
    pos_bias_table: jax.Array | None,
    time_bias_table: jax.Array | None,
    timestamps_BxL: jax.Array | None,
    query_timestamps_BxL: jax.Array | None,
    dense_bias: jax.Array | None,
    alpha: float,
    norm_len: int | None,
    num_time_buckets: int,
    time_bucket_divisor: float,
    block_sizes: tuple[int, int, int, int],
    blocks: Any,
    interpret: bool,
) -> tuple[KernelConfig, Inputs]:
    """Check the arguments like the reference does and build the padded kernel inputs."""
    check_shapes(q_BxLxHxD, k_BxLxHxD, v_BxLxHxDv)
    B, L, H, D = q_BxLxHxD.shape
    Dv = v_BxLxHxDv.shape[-1]
    if window is not None and window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    bq, bk, bq_bwd, bk_bwd = block_sizes
    Lp = round_up(L, math.lcm(bq, bk, bq_bwd, bk_bwd))

    seg_BxL = resolve_segment_ids(L, B, segment_ids_BxL, lengths_B)
    tgt_BxL = None
    if num_targets_B is not None:
        if num_targets_B.shape != (B,):
            raise ValueError(f"num_targets_B must have shape {(B,)}, got {num_targets_B.shape}")
        tgt_BxL = _target_flags(seg_BxL, num_targets_B)

    pos_max_len = None
    if pos_bias_table is not None:
        pos_max_len = relative_bias.table_max_len(pos_bias_table)
        if L > pos_max_len:
            raise ValueError(f"sequence length L={L} exceeds the position table's max length N={pos_max_len}")

    ts_BxL = qts_BxL = None
    if time_bias_table is not None:
        timestamps_BxL, query_timestamps_BxL = relative_bias.checked_timestamps(
            time_bias_table, timestamps_BxL, query_timestamps_BxL, L=L, num_time_buckets=num_time_buckets, B=B
        )
        ts_BxL, qts_BxL = _timestamps(timestamps_BxL), _timestamps(query_timestamps_BxL)

    dense_mode = None
    if dense_bias is not None:
        if dense_bias.shape == (B, L, L):
            dense_mode = "shared"
        elif dense_bias.shape == (B, H, L, L):
            dense_mode = "per_head"
        else:
            raise ValueError(f"dense_bias must be (B, L, L) or (B, H, L, L), got {dense_bias.shape}")
        dense_bias = _pad_axis(_pad_axis(dense_bias, -1, Lp), -2, Lp)

    cfg = KernelConfig(
        B=B, L=L, Lp=Lp, H=H, D=D, Dv=Dv,
        alpha=float(alpha),
        inv_n=1.0 / float(L if norm_len is None else norm_len),
        window=window,
        pos_max_len=pos_max_len,
        num_buckets=None if time_bias_table is None else num_time_buckets,
        divisor=float(time_bucket_divisor),
        dense=dense_mode,
        has_targets=tgt_BxL is not None,
        block_q=bq, block_k=bk, block_q_bwd=bq_bwd, block_k_bwd=bk_bwd,
        blocks=blocks,
        interpret=bool(interpret),
    )
    pad_L = functools.partial(_pad_axis, axis=1, size=Lp)
    meta = Meta(*(None if x is None else pad_L(x) for x in (seg_BxL, tgt_BxL, ts_BxL, qts_BxL)))
    inputs = Inputs(pad_L(q_BxLxHxD), pad_L(k_BxLxHxD), pad_L(v_BxLxHxDv), pos_bias_table, time_bias_table,
                    dense_bias, meta)
    return cfg, inputs


# ---------------------------------------------------------------- block ranges (work follows real tokens)


def _segment_bounds(seg_BxL: jax.Array) -> tuple[jax.Array, jax.Array]:
    """First and last position that may share each token's segment.

    Exact for the packed layout (non-zero ids non-decreasing along the row); rows with any other layout
    fall back to the whole row, which only costs skipped-work, never correctness.
    """
    B, L = seg_BxL.shape
    cummax_BxL = lax.cummax(seg_BxL, axis=1)
    ordered_B = jnp.all((seg_BxL == 0) | (seg_BxL == cummax_BxL), axis=1)
    start_BxL = jax.vmap(functools.partial(jnp.searchsorted, side="left"))(cummax_BxL, seg_BxL)
    end_BxL = jax.vmap(functools.partial(jnp.searchsorted, side="right"))(cummax_BxL, seg_BxL) - 1
    # Step back over the padding between a segment and the next one (it shares the segment's cummax).
    last_valid_BxL = lax.cummax(jnp.where(seg_BxL != 0, jnp.arange(L, dtype=jnp.int32), -1), axis=1)
    end_BxL = jnp.take_along_axis(last_valid_BxL, end_BxL, axis=1)
    start_BxL = jnp.where(ordered_B[:, None], start_BxL, 0)
    end_BxL = jnp.where(ordered_B[:, None], end_BxL, L - 1)
    return start_BxL.astype(jnp.int32), end_BxL.astype(jnp.int32)


def key_block_ranges(seg_BxL: jax.Array, window: int | None, bq: int, bk: int) -> tuple[jax.Array, jax.Array]:
    """[kb_lo, kb_hi) per (batch, query block): the key blocks holding any visible key; (0, 0) if none."""
    B, Lp = seg_BxL.shape
    start_BxL, _ = _segment_bounds(seg_BxL)
    i_L = jnp.arange(Lp, dtype=jnp.int32)
    lo_BxL = start_BxL if window is None else jnp.maximum(start_BxL, i_L - window + 1)
    valid_BxL = seg_BxL != 0
    lo_BxQ = jnp.min(jnp.where(valid_BxL, lo_BxL, Lp).reshape(B, -1, bq), axis=-1) // bk
    hi_BxQ = jnp.max(jnp.where(valid_BxL, i_L, -1).reshape(B, -1, bq), axis=-1) // bk + 1
    any_BxQ = jnp.any(valid_BxL.reshape(B, -1, bq), axis=-1)
    return jnp.where(any_BxQ, lo_BxQ, 0), jnp.where(any_BxQ, hi_BxQ, 0)


def query_block_ranges(seg_BxL: jax.Array, window: int | None, bq: int, bk: int) -> tuple[jax.Array, jax.Array]:
    """[qb_lo, qb_hi) per (batch, key block): the query blocks holding any query that sees a key of it."""
    B, Lp = seg_BxL.shape
    _, end_BxL = _segment_bounds(seg_BxL)
    j_L = jnp.arange(Lp, dtype=jnp.int32)
    hi_BxL = end_BxL if window is None else jnp.minimum(end_BxL, j_L + window - 1)
    valid_BxL = seg_BxL != 0
    lo_BxK = jnp.min(jnp.where(valid_BxL, j_L, Lp).reshape(B, -1, bk), axis=-1) // bq
    hi_BxK = jnp.max(jnp.where(valid_BxL, hi_BxL, -1).reshape(B, -1, bk), axis=-1) // bq + 1
    any_BxK = jnp.any(valid_BxL.reshape(B, -1, bk), axis=-1)
    return jnp.where(any_BxK, lo_BxK, 0), jnp.where(any_BxK, hi_BxK, 0)


# ---------------------------------------------------------------- tile math shared by both kernels


def tile_mask(cfg: KernelConfig, rows, cols, seg_q, seg_k, tgt_q, tgt_k):
    """Visibility of key `cols` (1, bk) from query `rows` (bq, 1); metadata shaped like the indices."""
    mask = (cols <= rows) & (seg_q == seg_k) & (seg_q != 0)
    if cfg.window is not None:
        mask = mask & (rows - cols < cfg.window)
    if cfg.has_targets:
        mask = mask & ~((tgt_q != 0) & (tgt_k != 0) & (rows != cols))
    return mask


def silu_attention(cfg: KernelConfig, s, mask):
    """A = silu(s) / n on visible pairs, 0 elsewhere; also returns sigmoid(s) for the backward."""
    sig = 1.0 / (1.0 + jnp.exp(-s))
    return jnp.where(mask, s * sig * cfg.inv_n, 0.0), sig


def silu_attention_grad(cfg: KernelConfig, s, sig, mask, dA):
    """dL/ds from dL/dA: silu'(s) = σ(s)·(1 + s·(1 − σ(s)))."""
    return jnp.where(mask, dA * (sig * (1.0 + s * (1.0 - sig)) * cfg.inv_n), 0.0)


def time_bucket(cfg: KernelConfig, qts, ts):
    """Bucket of query_ts[i] - ts[j]: the exact arithmetic of relative_bias.time_bucket."""
    return relative_bias.time_bucket(qts - ts, num_buckets=cfg.num_buckets, divisor=cfg.divisor)


# ---------------------------------------------------------------- bias-table gradients from kernel partials


def reduce_pos_partials(cfg: KernelConfig, part_BxQxTxW: jax.Array, kb_lo_BxQ: jax.Array,
                        kb_hi_BxQ: jax.Array) -> jax.Array:
    """Scatter per-tile diagonal sums into the (2N-1,) table gradient.

    Slot t of query block qi is key block kj = kb_lo + t; its entry e is the diagonal with key-query offset
    kj·bk − qi·bq − (bq − 1) + e. Slots past kb_hi were never written and are dropped here.
    """
    B, nq, T, W = part_BxQxTxW.shape
    bq, bk, N = cfg.block_q_bwd, cfg.block_k_bwd, cfg.pos_max_len
    kj_BxQxT = kb_lo_BxQ[:, :, None] + jnp.arange(T, dtype=jnp.int32)
    live_BxQxT = kj_BxQxT < kb_hi_BxQ[:, :, None]
    first_BxQxT = N - 1 + kj_BxQxT * bk - jnp.arange(nq, dtype=jnp.int32)[:, None] * bq - (bq - 1)
    index_BxQxTxW = first_BxQxT[..., None] + jnp.arange(W, dtype=jnp.int32)
    in_table = live_BxQxT[..., None] & (index_BxQxTxW >= 0) & (index_BxQxTxW < 2 * N - 1)
    index_BxQxTxW = jnp.where(in_table, index_BxQxTxW, 2 * N - 1)
    values = jnp.where(in_table, part_BxQxTxW, 0.0)
    return jnp.zeros((2 * N - 1,), jnp.float32).at[index_BxQxTxW.reshape(-1)].add(values.reshape(-1), mode="drop")


def mask_dense_grad(cfg: KernelConfig, ddense: jax.Array, kb_lo_BxQ: jax.Array, kb_hi_BxQ: jax.Array) -> jax.Array:
    """Zero the tiles the kernel skipped (they hold whatever the output buffer held)."""
    bq, bk = cfg.block_q_bwd, cfg.block_k_bwd
    kj_K = jnp.arange(cfg.Lp // bk, dtype=jnp.int32)
    live_BxQxK = (kj_K >= kb_lo_BxQ[:, :, None]) & (kj_K < kb_hi_BxQ[:, :, None])
    live_BxLxL = jnp.repeat(jnp.repeat(live_BxQxK, bq, axis=1), bk, axis=2)
    if ddense.ndim == 4:
        live_BxLxL = live_BxLxL[:, None]
    return jnp.where(live_BxLxL, ddense, 0.0)


# ---------------------------------------------------------------- custom_vjp around a backend's kernels

ForwardFn = Callable[[KernelConfig, Inputs], jax.Array]
BackwardFn = Callable[[KernelConfig, Inputs, jax.Array], BackwardOut]


def make_attention(forward: ForwardFn, backward: BackwardFn) -> Callable[[KernelConfig, Inputs], jax.Array]:
    """(cfg, padded inputs) -> padded output, differentiable in q, k, v and the three biases."""

    @functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
    def attention(cfg: KernelConfig, inputs: Inputs) -> jax.Array:
        return forward(cfg, inputs)

    def attention_fwd(cfg: KernelConfig, inputs: Inputs):
        return forward(cfg, inputs), inputs  # scores are recomputed in the backward, never stored

    def attention_bwd(cfg: KernelConfig, inputs: Inputs, do: jax.Array):
        out = backward(cfg, inputs, do)
        kb_lo, kb_hi = key_block_ranges(inputs.meta.seg, cfg.window, cfg.block_q_bwd, cfg.block_k_bwd)
        dpos = dtime = ddense = None
        if inputs.pos is not None:
            dpos = reduce_pos_partials(cfg, out.pos_partials, kb_lo, kb_hi).astype(inputs.pos.dtype)
        if inputs.time is not None:
            dtime = jnp.sum(out.time_partials, axis=(0, 1))[: cfg.num_buckets + 1].astype(inputs.time.dtype)
        if inputs.dense is not None:
            ddense = mask_dense_grad(cfg, out.ddense, kb_lo, kb_hi).astype(inputs.dense.dtype)
        meta_ct = Meta(*(None for _ in inputs.meta))
        return (Inputs(out.dq, out.dk, out.dv, dpos, dtime, ddense, meta_ct),)

    attention.defvjp(attention_fwd, attention_bwd)
    return jax.jit(attention, static_argnums=0)


def run(
    attention: Callable[[KernelConfig, Inputs], jax.Array],
    cfg: KernelConfig,
    inputs: Inputs,
) -> jax.Array:
    """Run the padded attention and cut the output back to (B, L, H, Dv) in q's dtype."""
    o_BxLpxHxDv = attention(cfg, inputs)
    return o_BxLpxHxDv[:, : cfg.L]
