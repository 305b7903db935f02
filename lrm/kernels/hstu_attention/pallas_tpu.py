"""HSTU attention on TPU: fused Pallas Mosaic kernels with the relative bias computed in-kernel.

Same math and the same four kernels as `pallas_gpu.py`, shaped for Mosaic: the innermost grid axis walks
the tiles (BlockSpecs do the HBM→VMEM pipelining) and f32 accumulators live in VMEM scratch. The per-block
key/query ranges are scalar-prefetched; steps past a block's range map to the block already resident, so
skipped tiles cost neither DMA nor compute.

Relative bias without an L×L input and without general gathers (Mosaic has none):
  position  the tile's bias is a Toeplitz band of the table. The wrapper cuts, per tile diagonal offset, the
            bq+bk-1 table entries it needs (an O(L) array); the kernel broadcasts that row and applies a
            strided lane roll (row r shifted by r), and the backward undoes it with the opposite stride to
            get the tile's diagonal sums.
  time      bucket per pair, then a lane gather (`take_along_axis`) from 128-entry chunks of the table.
The bias-gradient kernel (grid (B, nq, nk, H), heads innermost) sums dS over the heads in VMEM before the
diagonal sums and the bucket histogram (a loop over the buckets present in the tile only).
On hardware block_k must be a multiple of 128 (`TPUBlockSizes.check_hardware`); interpret mode (any
backend) accepts small tiles and is what the CPU tests run.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from lrm.kernels.hstu_attention import pallas_common as common
from lrm.kernels.hstu_attention import relative_bias
from lrm.kernels.hstu_attention.blocks import TPUBlockSizes
from lrm.kernels.hstu_attention.pallas_common import KernelConfig, round_up

_F32 = jnp.float32
_LANES = 128
_NT = (((1,), (1,)), ((), ()))  # a · bᵀ
_TN = (((0,), (0,)), ((), ()))  # aᵀ · b
_NN = (((1,), (0,)), ((), ()))  # a · b


def _dot(a, b, dims):
    precision = lax.Precision.HIGHEST if a.dtype == jnp.float32 else None
    return lax.dot_general(a, b, dims, precision=precision, preferred_element_type=_F32)


def _band_width(bq: int, bk: int) -> int:
    return round_up(bq + bk - 1, _LANES)


# ---------------------------------------------------------------- tile context


def _gather_time(table_ref, bucket, bq: int, bk: int):
    """table[bucket] for a (bq, bk) int tile via lane gathers from 128-entry chunks of the table."""
    width = round_up(bk, _LANES)
    if width != bk:  # interpret-mode tiles narrower than a vreg
        bucket = jnp.concatenate([bucket, jnp.zeros((bq, width - bk), jnp.int32)], axis=1)
    out = jnp.zeros((bq, width), _F32)
    for c in range(table_ref.shape[-1] // _LANES):
        chunk = jnp.broadcast_to(table_ref[:, c * _LANES:(c + 1) * _LANES].astype(_F32), (bq, _LANES))
        operand = jnp.concatenate([chunk] * (width // _LANES), axis=1) if width > _LANES else chunk
        local = bucket - c * _LANES
        picked = jnp.take_along_axis(operand, jnp.clip(local, 0, _LANES - 1), axis=1, mode="promise_in_bounds")
        out = jnp.where((local >= 0) & (local < _LANES), picked, out)
    return out[:, :bk]


def _tile(cfg: KernelConfig, refs: dict, q0, k0, bq: int, bk: int):
    """Mask (bq, bk), head-independent f32 bias (or None) and time buckets (or None) of one tile."""
    rows = q0 + lax.broadcasted_iota(jnp.int32, (bq, 1), 0)
    cols = k0 + lax.broadcasted_iota(jnp.int32, (1, bk), 1)
    tgt_q = tgt_k = None
    if cfg.has_targets:
        tgt_q, tgt_k = refs["tgt_q"][...], refs["tgt_k"][...]
    mask = common.tile_mask(cfg, rows, cols, refs["seg_q"][...], refs["seg_k"][...], tgt_q, tgt_k)
    bias = bucket = None
    if cfg.pos_max_len is not None:
        width = refs["band"].shape[-1]
        band = jnp.broadcast_to(refs["band"][...].astype(_F32), (bq, width))
        bias = pltpu.roll(band, width - bq + 1, 1, stride=1, stride_axis=0)[:, :bk]
    if cfg.num_buckets is not None:
        bucket = common.time_bucket(cfg, refs["qts"][...], refs["ts"][...])
        time_bias = _gather_time(refs["time"], bucket, bq, bk)
        bias = time_bias if bias is None else bias + time_bias
    return mask, bias, bucket


def _scores(cfg: KernelConfig, q, k, bias, dense_ref):
    s = _dot(q, k, _NT) * cfg.alpha
    if bias is not None:
        s = s + bias
    if dense_ref is not None:
        s = s + dense_ref[...].astype(_F32)
    return s


# ---------------------------------------------------------------- kernels


def _forward_kernel(lo_ref, hi_ref, refs, out, acc_ref, *, cfg: KernelConfig):
    bq, bk = cfg.block_q, cfg.block_k
    b, i, t = pl.program_id(0), pl.program_id(2), pl.program_id(3)
    kj = lo_ref[b * (cfg.Lp // bq) + i] + t

    @pl.when(t == 0)
    def _():
        acc_ref[...] = jnp.zeros_like(acc_ref)

    @pl.when(kj < hi_ref[b * (cfg.Lp // bq) + i])
    def _():
        mask, bias, _ = _tile(cfg, refs, i * bq, kj * bk, bq, bk)
        s = _scores(cfg, refs["q"][...], refs["k"][...], bias, refs.get("dense"))
        a, _ = common.silu_attention(cfg, s, mask)
        v = refs["v"][...]
        acc_ref[...] += _dot(a.astype(v.dtype), v, _NN)

    @pl.when(t == pl.num_programs(3) - 1)
    def _():
        out["o"][...] = acc_ref[...].astype(out["o"].dtype)


def _dkdv_kernel(lo_ref, hi_ref, refs, out, dk_ref, dv_ref, *, cfg: KernelConfig):
    bq, bk = cfg.block_q_bwd, cfg.block_k_bwd
    b, j, t = pl.program_id(0), pl.program_id(2), pl.program_id(3)
    qi = lo_ref[b * (cfg.Lp // bk) + j] + t

    @pl.when(t == 0)
    def _():
        dk_ref[...] = jnp.zeros_like(dk_ref)
        dv_ref[...] = jnp.zeros_like(dv_ref)

    @pl.when(qi < hi_ref[b * (cfg.Lp // bk) + j])
    def _():
        mask, bias, _ = _tile(cfg, refs, qi * bq, j * bk, bq, bk)
        q, do = refs["q"][...], refs["do"][...]
        s = _scores(cfg, q, refs["k"][...], bias, refs.get("dense"))
        a, sig = common.silu_attention(cfg, s, mask)
        dv_ref[...] += _dot(a.astype(do.dtype), do, _TN)
        ds = common.silu_attention_grad(cfg, s, sig, mask, _dot(do, refs["v"][...], _NT))
        dk_ref[...] += _dot(ds.astype(q.dtype), q, _TN)

    @pl.when(t == pl.num_programs(3) - 1)
    def _():
        out["dk"][...] = (dk_ref[...] * cfg.alpha).astype(out["dk"].dtype)
        out["dv"][...] = dv_ref[...].astype(out["dv"].dtype)


def _dq_kernel(lo_ref, hi_ref, refs, out, dq_ref, *, cfg: KernelConfig):
    bq, bk = cfg.block_q_bwd, cfg.block_k_bwd
    b, i, t = pl.program_id(0), pl.program_id(2), pl.program_id(3)
    kj = lo_ref[b * (cfg.Lp // bq) + i] + t

    @pl.when(t == 0)
    def _():
        dq_ref[...] = jnp.zeros_like(dq_ref)

    @pl.when(kj < hi_ref[b * (cfg.Lp // bq) + i])
    def _():
        mask, bias, _ = _tile(cfg, refs, i * bq, kj * bk, bq, bk)
        k = refs["k"][...]
        s = _scores(cfg, refs["q"][...], k, bias, refs.get("dense"))
        _, sig = common.silu_attention(cfg, s, mask)
        ds = common.silu_attention_grad(cfg, s, sig, mask, _dot(refs["do"][...], refs["v"][...], _NT))
        dq_ref[...] += _dot(ds.astype(k.dtype), k, _NN)

    @pl.when(t == pl.num_programs(3) - 1)
    def _():
        out["dq"][...] = (dq_ref[...] * cfg.alpha).astype(out["dq"].dtype)


def _dbias_kernel(lo_ref, hi_ref, refs, out, db_ref, *, cfg: KernelConfig):
    bq, bk = cfg.block_q_bwd, cfg.block_k_bwd
    b, i, t, h = (pl.program_id(a) for a in range(4))
    kj = lo_ref[b * (cfg.Lp // bq) + i] + t
    live = kj < hi_ref[b * (cfg.Lp // bq) + i]
    last_head = h == cfg.H - 1

    if cfg.num_buckets is not None:
        @pl.when((t == 0) & (h == 0))
        def _():
            out["time"][...] = jnp.zeros_like(out["time"])

    @pl.when(live)
    def _():
        mask, bias, bucket = _tile(cfg, refs, i * bq, kj * bk, bq, bk)
        s = _scores(cfg, refs["q"][...], refs["k"][...], bias, refs.get("dense"))
        _, sig = common.silu_attention(cfg, s, mask)
        ds = common.silu_attention_grad(cfg, s, sig, mask, _dot(refs["do"][...], refs["v"][...], _NT))
        if cfg.dense == "per_head":
            out["ddense"][...] = ds.astype(out["ddense"].dtype)
        db = jnp.where(h == 0, ds, db_ref[...] + ds)
        db_ref[...] = db

        @pl.when(last_head)
        def _():
            if cfg.dense == "shared":
                out["ddense"][...] = db.astype(out["ddense"].dtype)
            if cfg.pos_max_len is not None:
                out["pos"][...] = _diagonal_sums(db, bq, bk, out["pos"].shape[-1])
            if cfg.num_buckets is not None:
                out["time"][...] = _bucket_histogram(cfg, out["time"][...], bucket, mask, db)


def _diagonal_sums(db, bq: int, bk: int, width: int):
    """(1, width) sums of db along its diagonals: entry e collects db[r, e - (bq - 1) + r]."""
    padded = jnp.concatenate([db, jnp.zeros((bq, width - bk), _F32)], axis=1)
    skewed = pltpu.roll(padded, bq - 1, 1, stride=width - 1, stride_axis=0)
    return jnp.sum(skewed, axis=0, keepdims=True)


def _bucket_histogram(cfg: KernelConfig, hist, bucket, mask, db):
    """hist[t] += Σ db over the tile's pairs in bucket t, looping only over the buckets present."""
    lo = jnp.min(jnp.where(mask, bucket, cfg.num_buckets + 1))
    hi = jnp.max(jnp.where(mask, bucket, -1))
    slots = lax.broadcasted_iota(jnp.int32, hist.shape, 1)

    def body(t, hist):
        return jnp.where(slots == t, hist + jnp.sum(jnp.where(bucket == t, db, 0.0)), hist)

    return lax.fori_loop(lo, hi + 1, body, hist)


# ---------------------------------------------------------------- pallas_call wrappers


def _ranged(lo_ref, hi_ref, b, n: int, x, t):
    """Block walked at step t of a range [lo, hi): clamped to the last live block once past it."""
    lo, hi = lo_ref[b * n + x], hi_ref[b * n + x]
    return jnp.minimum(lo + t, jnp.maximum(hi - 1, lo)), lo + t < hi


def _specs(cfg: KernelConfig, inputs: dict, bq: int, bk: int, place) -> dict:
    """BlockSpecs of every input; `place(*grid, lo_ref, hi_ref)` gives the (b, h, qi, kj) blocks of a step."""
    nq = cfg.Lp // bq
    g = math.gcd(bq, bk)

    def spec(shape, index):
        return pl.BlockSpec(shape, lambda *a: index(*place(*a)))

    index_maps = {
        "q": ((None, None, bq, cfg.D), lambda b, h, i, j: (b, h, i, 0)),
        "k": ((None, None, bk, cfg.D), lambda b, h, i, j: (b, h, j, 0)),
        "v": ((None, None, bk, cfg.Dv), lambda b, h, i, j: (b, h, j, 0)),
        "do": ((None, None, bq, cfg.Dv), lambda b, h, i, j: (b, h, i, 0)),
        "seg_q": ((None, bq, 1), lambda b, h, i, j: (b, i, 0)),
        "seg_k": ((None, 1, bk), lambda b, h, i, j: (b, 0, j)),
        "tgt_q": ((None, bq, 1), lambda b, h, i, j: (b, i, 0)),
        "tgt_k": ((None, 1, bk), lambda b, h, i, j: (b, 0, j)),
        "qts": ((None, bq, 1), lambda b, h, i, j: (b, i, 0)),
        "ts": ((None, 1, bk), lambda b, h, i, j: (b, 0, j)),
        "band": ((None, 1, _band_width(bq, bk)),
                 lambda b, h, i, j: (lax.div(j * bk - i * bq + (nq - 1) * bq, g), 0, 0)),
        "dense": (((None, bq, bk), lambda b, h, i, j: (b, i, j)) if cfg.dense == "shared"
                  else ((None, None, bq, bk), lambda b, h, i, j: (b, h, i, j))),
    }
    specs = {}
    for name, value in inputs.items():
        if name == "time":  # the whole (1, Kp) table
            specs[name] = pl.BlockSpec(value.shape, lambda *_: (0, 0))
        else:
            shape, index = index_maps[name]
            specs[name] = spec(shape, index)
    return specs


def _kernel_inputs(cfg: KernelConfig, inputs: common.Inputs, bq: int, bk: int, do=None) -> dict:
    """(B, H, Lp, ·) heads-major tensors, (B, Lp, 1) / (B, 1, Lp) metadata, the position band, the table."""
    heads_major = lambda x: jnp.swapaxes(x, 1, 2)
    args = {"q": heads_major(inputs.q), "k": heads_major(inputs.k), "v": heads_major(inputs.v)}
    if do is not None:
        args["do"] = heads_major(do.astype(inputs.q.dtype))
    meta = inputs.meta
    args["seg_q"], args["seg_k"] = meta.seg[:, :, None], meta.seg[:, None, :]
    if meta.tgt is not None:
        args["tgt_q"], args["tgt_k"] = meta.tgt[:, :, None], meta.tgt[:, None, :]
    if meta.ts is not None:
        args["qts"], args["ts"] = meta.qts[:, :, None], meta.ts[:, None, :]
    if inputs.pos is not None:
        args["band"] = _pos_band(cfg, inputs.pos, bq, bk)
    if inputs.time is not None:
        size = round_up(inputs.time.shape[0], _LANES)
        args["time"] = jnp.pad(inputs.time, (0, size - inputs.time.shape[0]))[None, :]
    if inputs.dense is not None:
        args["dense"] = inputs.dense
    return args


def _pos_band(cfg: KernelConfig, table, bq: int, bk: int):
    """(M, 1, W): row m holds the table entries of the tile with kj·bk − qi·bq = m·g − (nq − 1)·bq."""
    nq, nk, g, N = cfg.Lp // bq, cfg.Lp // bk, math.gcd(bq, bk), cfg.pos_max_len
    rows = ((nk - 1) * bk + (nq - 1) * bq) // g + 1
    offset_M = jnp.arange(rows, dtype=jnp.int32) * g - (nq - 1) * bq
    index_MxW = N - 1 + offset_M[:, None] - (bq - 1) + jnp.arange(_band_width(bq, bk), dtype=jnp.int32)
    return table[jnp.clip(index_MxW, 0, 2 * N - 2)][:, None, :]


def _call(kernel, cfg: KernelConfig, grid, ranges, args, specs, out_shape, out_specs, scratch, semantics, name):
    return pl.pallas_call(
        functools.partial(kernel, cfg=cfg),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=2, grid=grid, in_specs=[specs], out_specs=out_specs, scratch_shapes=scratch
        ),
        out_shape=out_shape,
        compiler_params=pltpu.CompilerParams(dimension_semantics=semantics),
        interpret=pltpu.InterpretParams() if cfg.interpret else False,
        name=name,
    )(*(r.reshape(-1) for r in ranges), args)


_WALK_LAST = ("parallel", "parallel", "parallel", "arbitrary")  # the last grid axis walks the tiles


def _rows_place(n: int):
    """Grid (b, h, i, t): query block i, key block walked by t."""
    def place(b, h, i, t, lo_ref, hi_ref):
        return b, h, i, _ranged(lo_ref, hi_ref, b, n, i, t)[0]
    return place


def _forward(cfg: KernelConfig, inputs: common.Inputs) -> jax.Array:
    bq, bk = cfg.block_q, cfg.block_k
    nq, nk = cfg.Lp // bq, cfg.Lp // bk
    ranges = common.key_block_ranges(inputs.meta.seg, cfg.window, bq, bk)
    args = _kernel_inputs(cfg, inputs, bq, bk)
    specs = _specs(cfg, args, bq, bk, _rows_place(nq))
    o_spec = pl.BlockSpec((None, None, bq, cfg.Dv), lambda b, h, i, t, *_: (b, h, i, 0))
    out = _call(_forward_kernel, cfg, (cfg.B, cfg.H, nq, nk), ranges, args, specs,
                {"o": jax.ShapeDtypeStruct((cfg.B, cfg.H, cfg.Lp, cfg.Dv), inputs.q.dtype)}, {"o": o_spec},
                [pltpu.VMEM((bq, cfg.Dv), _F32)], _WALK_LAST, "hstu_fwd")
    return jnp.swapaxes(out["o"], 1, 2)


def _backward(cfg: KernelConfig, inputs: common.Inputs, do: jax.Array) -> common.BackwardOut:
    B, H, Lp = cfg.B, cfg.H, cfg.Lp
    bq, bk = cfg.block_q_bwd, cfg.block_k_bwd
    nq, nk = Lp // bq, Lp // bk
    args = _kernel_inputs(cfg, inputs, bq, bk, do)
    q, k, v = args["q"], args["k"], args["v"]
    kb = common.key_block_ranges(inputs.meta.seg, cfg.window, bq, bk)
    qb = common.query_block_ranges(inputs.meta.seg, cfg.window, bq, bk)

    def cols_place(b, h, j, t, lo_ref, hi_ref):  # grid (b, h, j, t): key block j, query block walked by t
        return b, h, _ranged(lo_ref, hi_ref, b, nk, j, t)[0], j

    k_spec = lambda D: pl.BlockSpec((None, None, bk, D), lambda b, h, j, t, *_: (b, h, j, 0))
    dkdv = _call(_dkdv_kernel, cfg, (B, H, nk, nq), qb, args, _specs(cfg, args, bq, bk, cols_place),
                 {"dk": jax.ShapeDtypeStruct(k.shape, k.dtype), "dv": jax.ShapeDtypeStruct(v.shape, v.dtype)},
                 {"dk": k_spec(cfg.D), "dv": k_spec(cfg.Dv)},
                 [pltpu.VMEM((bk, cfg.D), _F32), pltpu.VMEM((bk, cfg.Dv), _F32)], _WALK_LAST, "hstu_bwd_dkdv")
    q_spec = pl.BlockSpec((None, None, bq, cfg.D), lambda b, h, i, t, *_: (b, h, i, 0))
    dq = _call(_dq_kernel, cfg, (B, H, nq, nk), kb, args, _specs(cfg, args, bq, bk, _rows_place(nq)),
               {"dq": jax.ShapeDtypeStruct(q.shape, q.dtype)}, {"dq": q_spec},
               [pltpu.VMEM((bq, cfg.D), _F32)], _WALK_LAST, "hstu_bwd_dq")["dq"]
    heads_minor = lambda x: jnp.swapaxes(x, 1, 2)
    grads = common.BackwardOut(heads_minor(dq), heads_minor(dkdv["dk"]), heads_minor(dkdv["dv"]),
                               None, None, None)
    if cfg.has_bias_grads:
        grads = grads._replace(**_bias_grads(cfg, args, kb))
    return grads


def _bias_grads(cfg: KernelConfig, args: dict, kb) -> dict:
    B, H, Lp = cfg.B, cfg.H, cfg.Lp
    bq, bk = cfg.block_q_bwd, cfg.block_k_bwd
    nq, nk = Lp // bq, Lp // bk

    def place(b, i, t, h, lo_ref, hi_ref):  # grid (b, i, t, h): heads innermost, held on the last when idle
        kj, live = _ranged(lo_ref, hi_ref, b, nq, i, t)
        return b, jnp.where(live, h, H - 1), i, kj

    out_shape, out_specs = {}, {}
    if cfg.pos_max_len is not None:
        width = _band_width(bq, bk)
        out_shape["pos"] = jax.ShapeDtypeStruct((B, nq, nk, 1, width), _F32)
        out_specs["pos"] = pl.BlockSpec((None, None, None, 1, width), lambda b, i, t, h, *_: (b, i, t, 0, 0))
    if cfg.num_buckets is not None:
        slots = args["time"].shape[-1]
        out_shape["time"] = jax.ShapeDtypeStruct((B, nq, 1, slots), _F32)
        out_specs["time"] = pl.BlockSpec((None, None, 1, slots), lambda b, i, t, h, *_: (b, i, 0, 0))
    if cfg.dense:
        out_shape["ddense"] = jax.ShapeDtypeStruct(args["dense"].shape, _F32)
        out_specs["ddense"] = _specs(cfg, {"dense": None}, bq, bk, place)["dense"]
    out = _call(_dbias_kernel, cfg, (B, nq, nk, H), kb, args, _specs(cfg, args, bq, bk, place), out_shape,
                out_specs, [pltpu.VMEM((bq, bk), _F32)], ("parallel", "parallel", "arbitrary", "arbitrary"),
                "hstu_bwd_dbias")
    pos = out.get("pos")
    time = out.get("time")
    return dict(pos_partials=None if pos is None else pos[:, :, :, 0],
                time_partials=None if time is None else time[:, :, 0], ddense=out.get("ddense"))


_attention = common.make_attention(_forward, _backward)


def effective_block_sizes(blocks: TPUBlockSizes, L: int, interpret: bool) -> tuple[int, int, int, int]:
    """The configured tiles, shrunk when the sequence is shorter (to 128-multiples on hardware)."""
    cap = round_up(L, 8 if interpret else _LANES)
    sizes = tuple(min(b, cap) for b in (blocks.block_q, blocks.block_k, blocks.block_q_bwd, blocks.block_k_bwd))
    if not interpret:
        TPUBlockSizes(*sizes).check_hardware()
    return sizes


def hstu_attention(
    q_BxLxHxD: jax.Array,
    k_BxLxHxD: jax.Array,
    v_BxLxHxDv: jax.Array,
    *,
    segment_ids_BxL: jax.Array | None = None,
    lengths_B: jax.Array | None = None,
    num_targets_B: jax.Array | None = None,
    window: int | None = None,
    pos_bias_table: jax.Array | None = None,
    time_bias_table: jax.Array | None = None,
    timestamps_BxL: jax.Array | None = None,
    query_timestamps_BxL: jax.Array | None = None,
    dense_bias: jax.Array | None = None,
    alpha: float = 1.0,
    norm_len: int | None = None,
    activation: str = "silu",
    num_time_buckets: int = relative_bias.DEFAULT_NUM_TIME_BUCKETS,
    time_bucket_divisor: float = relative_bias.DEFAULT_TIME_BUCKET_DIVISOR,
    dropout_rate: float = 0.0,
    dropout_key: jax.Array | None = None,
    block_sizes: TPUBlockSizes | None = None,
    interpret: bool = False,
) -> jax.Array:
    """`lrm.kernels.hstu_attention.hstu_attention` with the fused Mosaic kernels (see that docstring).

    activation="softmax" and attention dropout are not fused: those calls run the reference, by design.
    `interpret=True` runs the kernels in Pallas TPU interpret mode (any backend, CPU included).
    """
    kwargs = dict(segment_ids_BxL=segment_ids_BxL, lengths_B=lengths_B, num_targets_B=num_targets_B,
                  window=window, pos_bias_table=pos_bias_table, time_bias_table=time_bias_table,
                  timestamps_BxL=timestamps_BxL, query_timestamps_BxL=query_timestamps_BxL,
                  dense_bias=dense_bias, alpha=alpha, norm_len=norm_len, num_time_buckets=num_time_buckets,
                  time_bucket_divisor=time_bucket_divisor)
    if activation != "silu" or dropout_rate > 0.0:
        from lrm.kernels.hstu_attention.reference import hstu_attention_reference

        return hstu_attention_reference(q_BxLxHxD, k_BxLxHxD, v_BxLxHxDv, activation=activation,
                                        dropout_rate=dropout_rate, dropout_key=dropout_key, **kwargs)
    blocks = TPUBlockSizes() if block_sizes is None else block_sizes
    cfg, inputs = common.prepare(q_BxLxHxD, k_BxLxHxD, v_BxLxHxDv, **kwargs,
                                 block_sizes=effective_block_sizes(blocks, q_BxLxHxD.shape[1], interpret),
                                 blocks=blocks, interpret=interpret)
    return common.run(_attention, cfg, inputs)
