"""HSTU attention on GPU: fused Pallas Triton kernels with the relative bias computed in-kernel.

Why Triton and not Mosaic GPU: this kernel is a tile loop with data-dependent trip counts, gathers from
two small bias tables, elementwise SiLU and masked tiles, and needs the same on A100 and H100. Pallas
Triton lowers all of that today (pointer gathers, masked loads, fori_loop with loaded bounds) and lets
Triton pick mma/wgmma; Mosaic GPU would need hand-written wgmma tiling, warpgroup specialisation and TMA
pipelines for Hopper only, with no gather primitive for the bias tables. Measured on an H200 (2026-12-04,
docs/benchmarks.md) the Triton kernels reach ~6% (forward) and ~4% (forward+backward) of the bf16 tensor-core
peak at L 4096: correct, 8-25x faster than the XLA reference, far from the roofline. jax 0.11 deprecates the
Pallas Triton backend, so a Mosaic GPU port is where both the speed and the future support are.

Kernels (one program = one tile row or column of one (batch, head), never an L×L buffer):
  forward  grid (nq, B, H): o = Σ_kj silu(α·q·kᵀ + bias)/n ⊙ M · v over the key blocks in [kb_lo, kb_hi).
  dK/dV    grid (nk, B, H): loops the query blocks in [qb_lo, qb_hi) that can see the key block.
  dQ       grid (nq, B, H): the forward's loop with dS·K.
  dbias    grid (nq, B): per tile sums dS over the heads in registers, then writes the tile's diagonal
           sums (position table) and bucket histogram (time table) and the dense-bias gradient. The
           diagonal sums go through a per-program scratch tile (store, barrier, skewed gather), since
           registers cannot be indexed by diagonal; both table gradients are reduced afterwards in XLA.
Scores are recomputed in the backward, never stored. Sequences are padded to the block grid and the head
dims to a power of two >= 16; padding is masked (segment id 0).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from lrm.kernels.hstu_attention import pallas_common as common
from lrm.kernels.hstu_attention import relative_bias
from lrm.kernels.hstu_attention.blocks import GPUBlockSizes
from lrm.kernels.hstu_attention.pallas_common import KernelConfig

_F32 = jnp.float32


def _next_pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


def _dot(a, b, *, trans_a: bool = False, trans_b: bool = False):
    """f32-accumulating tile matmul; full f32 precision for f32 inputs (Triton defaults to tf32)."""
    precision = lax.Precision.HIGHEST if a.dtype == jnp.float32 else None
    return plgpu.dot(a, b, trans_a=trans_a, trans_b=trans_b, precision=precision)


def _barrier(cfg: KernelConfig) -> None:
    if not cfg.interpret:  # interpret mode runs the program sequentially: nothing to order
        plgpu.debug_barrier()


# ---------------------------------------------------------------- tile context shared by all kernels


def _tile(cfg: KernelConfig, refs: dict, q0, k0, bq: int, bk: int):
    """Mask (bq, bk), head-independent f32 bias (or None) and time buckets (or None) of one tile."""
    rows = q0 + lax.broadcasted_iota(jnp.int32, (bq, 1), 0)
    cols = k0 + lax.broadcasted_iota(jnp.int32, (1, bk), 1)
    seg_ref = refs["seg"]
    seg_q, seg_k = seg_ref[pl.ds(q0, bq)][:, None], seg_ref[pl.ds(k0, bk)][None, :]
    tgt_q = tgt_k = None
    if cfg.has_targets:
        tgt_q, tgt_k = refs["tgt"][pl.ds(q0, bq)][:, None], refs["tgt"][pl.ds(k0, bk)][None, :]
    mask = common.tile_mask(cfg, rows, cols, seg_q, seg_k, tgt_q, tgt_k)
    bias = bucket = None
    if cfg.pos_max_len is not None:
        N = cfg.pos_max_len
        index = jnp.clip(N - 1 + cols - rows, 0, 2 * N - 2)
        bias = plgpu.load(refs["pos"].at[index]).astype(_F32)
    if cfg.num_buckets is not None:
        qts = refs["qts"][pl.ds(q0, bq)][:, None]
        ts = refs["ts"][pl.ds(k0, bk)][None, :]
        bucket = common.time_bucket(cfg, qts, ts)
        time_bias = plgpu.load(refs["time"].at[bucket]).astype(_F32)
        bias = time_bias if bias is None else bias + time_bias
    return mask, bias, bucket


def _scores(cfg: KernelConfig, q, k, bias, dense):
    s = _dot(q, k, trans_b=True) * cfg.alpha
    if bias is not None:
        s = s + bias
    if dense is not None:
        s = s + dense.astype(_F32)
    return s


# ---------------------------------------------------------------- kernels


def _forward_kernel(refs: dict, out: dict, *, cfg: KernelConfig):
    bq, bk = cfg.block_q, cfg.block_k
    qi = pl.program_id(0)
    q0 = qi * bq
    q = refs["q"][...]

    def body(kj, acc):
        k0 = pl.multiple_of(kj * bk, bk)
        mask, bias, _ = _tile(cfg, refs, q0, k0, bq, bk)
        dense = refs["dense"][:, pl.ds(k0, bk)] if cfg.dense else None
        s = _scores(cfg, q, refs["k"][pl.ds(k0, bk), :], bias, dense)
        a, _ = common.silu_attention(cfg, s, mask)
        v = refs["v"][pl.ds(k0, bk), :]
        return acc + _dot(a.astype(v.dtype), v)

    acc = jnp.zeros(out["o"].shape, _F32)
    acc = lax.fori_loop(refs["kb_lo"][qi], refs["kb_hi"][qi], body, acc)
    out["o"][...] = acc.astype(out["o"].dtype)


def _dkdv_kernel(refs: dict, out: dict, *, cfg: KernelConfig):
    bq, bk = cfg.block_q_bwd, cfg.block_k_bwd
    kj = pl.program_id(0)
    k0 = kj * bk
    k, v = refs["k"][...], refs["v"][...]

    def body(qi, carry):
        dk, dv = carry
        q0 = pl.multiple_of(qi * bq, bq)
        mask, bias, _ = _tile(cfg, refs, q0, k0, bq, bk)
        dense = refs["dense"][pl.ds(q0, bq), :] if cfg.dense else None
        q, do = refs["q"][pl.ds(q0, bq), :], refs["do"][pl.ds(q0, bq), :]
        s = _scores(cfg, q, k, bias, dense)
        a, sig = common.silu_attention(cfg, s, mask)
        dv = dv + _dot(a.astype(do.dtype), do, trans_a=True)
        ds = common.silu_attention_grad(cfg, s, sig, mask, _dot(do, v, trans_b=True))
        dk = dk + _dot(ds.astype(q.dtype), q, trans_a=True)
        return dk, dv

    carry = (jnp.zeros(out["dk"].shape, _F32), jnp.zeros(out["dv"].shape, _F32))
    dk, dv = lax.fori_loop(refs["qb_lo"][kj], refs["qb_hi"][kj], body, carry)
    out["dk"][...] = (dk * cfg.alpha).astype(out["dk"].dtype)
    out["dv"][...] = dv.astype(out["dv"].dtype)


def _dq_kernel(refs: dict, out: dict, *, cfg: KernelConfig):
    bq, bk = cfg.block_q_bwd, cfg.block_k_bwd
    qi = pl.program_id(0)
    q0 = qi * bq
    q, do = refs["q"][...], refs["do"][...]

    def body(kj, dq):
        k0 = pl.multiple_of(kj * bk, bk)
        mask, bias, _ = _tile(cfg, refs, q0, k0, bq, bk)
        dense = refs["dense"][:, pl.ds(k0, bk)] if cfg.dense else None
        k, v = refs["k"][pl.ds(k0, bk), :], refs["v"][pl.ds(k0, bk), :]
        s = _scores(cfg, q, k, bias, dense)
        _, sig = common.silu_attention(cfg, s, mask)
        ds = common.silu_attention_grad(cfg, s, sig, mask, _dot(do, v, trans_b=True))
        return dq + _dot(ds.astype(k.dtype), k)

    dq = lax.fori_loop(refs["kb_lo"][qi], refs["kb_hi"][qi], body, jnp.zeros(out["dq"].shape, _F32))
    out["dq"][...] = (dq * cfg.alpha).astype(out["dq"].dtype)


def _diagonal_sums(cfg: KernelConfig, scratch_ref, dB, bq: int, bk: int, width: int):
    """(width,) sums of dB along its diagonals: entry e collects dB[r, e - (bq - 1) + r]."""
    scratch_ref[...] = dB
    _barrier(cfg)
    r = lax.broadcasted_iota(jnp.int32, (bq, width), 0)
    c = lax.broadcasted_iota(jnp.int32, (bq, width), 1) - (bq - 1) + r
    inside = (c >= 0) & (c < bk)
    skewed = plgpu.load(scratch_ref.at[r, jnp.where(inside, c, 0)], mask=inside, other=0.0)
    _barrier(cfg)  # the next tile overwrites the scratch
    return jnp.sum(skewed, axis=0)


def _bucket_histogram(cfg: KernelConfig, hist, bucket, mask, dB):
    """hist[t] += Σ dB over the tile's pairs in bucket t, looping only over the buckets present."""
    lo = jnp.min(jnp.where(mask, bucket, cfg.num_buckets + 1))
    hi = jnp.max(jnp.where(mask, bucket, -1))
    slots = lax.broadcasted_iota(jnp.int32, hist.shape, 0)

    def body(t, hist):
        return jnp.where(slots == t, hist + jnp.sum(jnp.where(bucket == t, dB, 0.0)), hist)

    return lax.fori_loop(lo, hi + 1, body, hist)


def _dbias_kernel(refs: dict, out: dict, *, cfg: KernelConfig, width: int):
    bq, bk = cfg.block_q_bwd, cfg.block_k_bwd
    qi = pl.program_id(0)
    q0 = qi * bq
    kb_lo = refs["kb_lo"][qi]

    def tile_body(kj, hist):
        k0 = pl.multiple_of(kj * bk, bk)
        mask, bias, bucket = _tile(cfg, refs, q0, k0, bq, bk)
        shared = refs["dense"][:, pl.ds(k0, bk)] if cfg.dense == "shared" else None

        def head_body(h, dB):
            dense = refs["dense"][h, :, pl.ds(k0, bk)] if cfg.dense == "per_head" else shared
            q, do = refs["q"][pl.ds(q0, bq), h, :], refs["do"][pl.ds(q0, bq), h, :]
            k, v = refs["k"][pl.ds(k0, bk), h, :], refs["v"][pl.ds(k0, bk), h, :]
            s = _scores(cfg, q, k, bias, dense)
            _, sig = common.silu_attention(cfg, s, mask)
            ds = common.silu_attention_grad(cfg, s, sig, mask, _dot(do, v, trans_b=True))
            if cfg.dense == "per_head":
                out["ddense"][h, :, pl.ds(k0, bk)] = ds.astype(out["ddense"].dtype)
            return dB + ds

        dB = lax.fori_loop(0, cfg.H, head_body, jnp.zeros((bq, bk), _F32))
        if cfg.dense == "shared":
            out["ddense"][:, pl.ds(k0, bk)] = dB.astype(out["ddense"].dtype)
        if cfg.pos_max_len is not None:
            out["pos"][kj - kb_lo, :] = _diagonal_sums(cfg, out["scratch"], dB, bq, bk, width)
        if cfg.num_buckets is not None:
            hist = _bucket_histogram(cfg, hist, bucket, mask, dB)
        return hist

    hist = jnp.zeros(out["time"].shape if cfg.num_buckets is not None else (16,), _F32)
    hist = lax.fori_loop(kb_lo, refs["kb_hi"][qi], tile_body, hist)
    if cfg.num_buckets is not None:
        out["time"][...] = hist


# ---------------------------------------------------------------- pallas_call wrappers


def _pad_last(x: jax.Array, size: int) -> jax.Array:
    return x if x.shape[-1] == size else jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, size - x.shape[-1])])


def _common_args(cfg: KernelConfig, inputs: common.Inputs, dense_spec) -> tuple[dict, dict]:
    """Metadata rows, tables and dense bias with their BlockSpecs (index maps take (i, b, *rest))."""
    args, specs = {}, {}
    row = pl.BlockSpec((None, cfg.Lp), lambda i, b, *_: (b, 0))
    for name in ("seg", "tgt", "ts", "qts"):
        value = getattr(inputs.meta, name)
        if value is not None:
            args[name], specs[name] = value, row
    for name, table in (("pos", inputs.pos), ("time", inputs.time)):
        if table is not None:
            args[name] = table
            specs[name] = pl.BlockSpec(table.shape, lambda *_: (0,))
    if cfg.dense:
        args["dense"], specs["dense"] = inputs.dense, dense_spec
    return args, specs


def _call(kernel, cfg: KernelConfig, grid, args, specs, out_shape, out_specs, name: str):
    """pallas_call of a kernel taking (input refs dict, output refs dict)."""
    return pl.pallas_call(
        kernel,
        grid=grid,
        in_specs=[specs],
        out_specs=out_specs,
        out_shape=out_shape,
        compiler_params=plgpu.CompilerParams(num_warps=cfg.blocks.num_warps, num_stages=cfg.blocks.num_stages),
        interpret=cfg.interpret,
        name=name,
    )(args)


def _head_dims(cfg: KernelConfig) -> tuple[int, int]:
    return _next_pow2(max(cfg.D, 16)), _next_pow2(max(cfg.Dv, 16))


def _forward(cfg: KernelConfig, inputs: common.Inputs) -> jax.Array:
    B, Lp, H = cfg.B, cfg.Lp, cfg.H
    bq, nq = cfg.block_q, cfg.Lp // cfg.block_q
    Dp, Dvp = _head_dims(cfg)
    dense_spec = (pl.BlockSpec((None, bq, Lp), lambda i, b, h: (b, i, 0)) if cfg.dense == "shared"
                  else pl.BlockSpec((None, None, bq, Lp), lambda i, b, h: (b, h, i, 0)))
    args, specs = _common_args(cfg, inputs, dense_spec)
    kb_lo, kb_hi = common.key_block_ranges(inputs.meta.seg, cfg.window, bq, cfg.block_k)
    ranges = pl.BlockSpec((None, nq), lambda i, b, h: (b, 0))
    args.update(kb_lo=kb_lo, kb_hi=kb_hi, q=_pad_last(inputs.q, Dp), k=_pad_last(inputs.k, Dp),
                v=_pad_last(inputs.v, Dvp))
    specs.update(kb_lo=ranges, kb_hi=ranges,
                 q=pl.BlockSpec((None, bq, None, Dp), lambda i, b, h: (b, i, h, 0)),
                 k=pl.BlockSpec((None, Lp, None, Dp), lambda i, b, h: (b, 0, h, 0)),
                 v=pl.BlockSpec((None, Lp, None, Dvp), lambda i, b, h: (b, 0, h, 0)))
    out = _call(functools.partial(_forward_kernel, cfg=cfg), cfg, (nq, B, H), args, specs,
                {"o": jax.ShapeDtypeStruct((B, Lp, H, Dvp), inputs.q.dtype)},
                {"o": pl.BlockSpec((None, bq, None, Dvp), lambda i, b, h: (b, i, h, 0))}, "hstu_fwd")
    return out["o"][..., : cfg.Dv]


def _backward(cfg: KernelConfig, inputs: common.Inputs, do: jax.Array) -> common.BackwardOut:
    B, Lp, H = cfg.B, cfg.Lp, cfg.H
    bq, bk = cfg.block_q_bwd, cfg.block_k_bwd
    nq, nk = Lp // bq, Lp // bk
    Dp, Dvp = _head_dims(cfg)
    q, k = _pad_last(inputs.q, Dp), _pad_last(inputs.k, Dp)
    v, do = _pad_last(inputs.v, Dvp), _pad_last(do.astype(inputs.q.dtype), Dvp)
    kb_lo, kb_hi = common.key_block_ranges(inputs.meta.seg, cfg.window, bq, bk)
    qb_lo, qb_hi = common.query_block_ranges(inputs.meta.seg, cfg.window, bq, bk)
    full = lambda D: pl.BlockSpec((None, Lp, None, D), lambda i, b, h: (b, 0, h, 0))
    q_rows = lambda D: pl.BlockSpec((None, bq, None, D), lambda i, b, h: (b, i, h, 0))
    k_rows = lambda D: pl.BlockSpec((None, bk, None, D), lambda j, b, h: (b, j, h, 0))

    # dK, dV: one program per key block.
    dense_cols = (pl.BlockSpec((None, Lp, bk), lambda j, b, h: (b, 0, j)) if cfg.dense == "shared"
                  else pl.BlockSpec((None, None, Lp, bk), lambda j, b, h: (b, h, 0, j)))
    args, specs = _common_args(cfg, inputs, dense_cols)
    ranges = pl.BlockSpec((None, nk), lambda j, b, h: (b, 0))
    args.update(qb_lo=qb_lo, qb_hi=qb_hi, q=q, do=do, k=k, v=v)
    specs.update(qb_lo=ranges, qb_hi=ranges, q=full(Dp), do=full(Dvp), k=k_rows(Dp), v=k_rows(Dvp))
    dkdv = _call(functools.partial(_dkdv_kernel, cfg=cfg), cfg, (nk, B, H), args, specs,
                 {"dk": jax.ShapeDtypeStruct(k.shape, k.dtype), "dv": jax.ShapeDtypeStruct(v.shape, v.dtype)},
                 {"dk": k_rows(Dp), "dv": k_rows(Dvp)}, "hstu_bwd_dkdv")

    # dQ: one program per query block.
    dense_rows = (pl.BlockSpec((None, bq, Lp), lambda i, b, h: (b, i, 0)) if cfg.dense == "shared"
                  else pl.BlockSpec((None, None, bq, Lp), lambda i, b, h: (b, h, i, 0)))
    args, specs = _common_args(cfg, inputs, dense_rows)
    ranges = pl.BlockSpec((None, nq), lambda i, b, h: (b, 0))
    args.update(kb_lo=kb_lo, kb_hi=kb_hi, q=q, do=do, k=k, v=v)
    specs.update(kb_lo=ranges, kb_hi=ranges, q=q_rows(Dp), do=q_rows(Dvp), k=full(Dp), v=full(Dvp))
    dq = _call(functools.partial(_dq_kernel, cfg=cfg), cfg, (nq, B, H), args, specs,
               {"dq": jax.ShapeDtypeStruct(q.shape, q.dtype)}, {"dq": q_rows(Dp)}, "hstu_bwd_dq")["dq"]

    grads = common.BackwardOut(dq[..., : cfg.D], dkdv["dk"][..., : cfg.D], dkdv["dv"][..., : cfg.Dv],
                               None, None, None)
    if cfg.has_bias_grads:
        grads = grads._replace(**_bias_grads(cfg, inputs, q, k, v, do, kb_lo, kb_hi))
    return grads


def _bias_grads(cfg: KernelConfig, inputs: common.Inputs, q, k, v, do, kb_lo, kb_hi) -> dict:
    B, Lp, H = cfg.B, cfg.Lp, cfg.H
    bq, bk = cfg.block_q_bwd, cfg.block_k_bwd
    nq, nk = Lp // bq, Lp // bk
    width = _next_pow2(bq + bk - 1)
    dense_spec = (pl.BlockSpec((None, bq, Lp), lambda i, b: (b, i, 0)) if cfg.dense == "shared"
                  else pl.BlockSpec((None, H, bq, Lp), lambda i, b: (b, 0, i, 0)))
    args, specs = _common_args(cfg, inputs, dense_spec)
    ranges = pl.BlockSpec((None, nq), lambda i, b: (b, 0))
    heads = lambda x: pl.BlockSpec((None, Lp, H, x.shape[-1]), lambda i, b: (b, 0, 0, 0))
    args.update(kb_lo=kb_lo, kb_hi=kb_hi, q=q, k=k, v=v, do=do)
    specs.update(kb_lo=ranges, kb_hi=ranges, q=heads(q), k=heads(k), v=heads(v), do=heads(do))
    out_shape, out_specs = {}, {}
    if cfg.pos_max_len is not None:
        out_shape.update(pos=jax.ShapeDtypeStruct((B, nq, nk, width), _F32),
                         scratch=jax.ShapeDtypeStruct((B, nq, bq, bk), _F32))
        out_specs.update(pos=pl.BlockSpec((None, None, nk, width), lambda i, b: (b, i, 0, 0)),
                         scratch=pl.BlockSpec((None, None, bq, bk), lambda i, b: (b, i, 0, 0)))
    if cfg.num_buckets is not None:
        num_slots = _next_pow2(cfg.num_buckets + 1)
        out_shape["time"] = jax.ShapeDtypeStruct((B, nq, num_slots), _F32)
        out_specs["time"] = pl.BlockSpec((None, None, num_slots), lambda i, b: (b, i, 0))
    if cfg.dense:
        out_shape["ddense"] = jax.ShapeDtypeStruct(inputs.dense.shape, _F32)
        out_specs["ddense"] = dense_spec
    kernel = functools.partial(_dbias_kernel, cfg=cfg, width=width)
    out = _call(kernel, cfg, (nq, B), args, specs, out_shape, out_specs, "hstu_bwd_dbias")
    return dict(pos_partials=out.get("pos"), time_partials=out.get("time"), ddense=out.get("ddense"))


_attention = common.make_attention(_forward, _backward)


def effective_block_sizes(blocks: GPUBlockSizes, L: int) -> tuple[int, int, int, int]:
    """The configured tiles, shrunk (to a power of two >= 16) when the sequence is shorter."""
    cap = _next_pow2(max(L, 16))
    return tuple(min(b, cap) for b in (blocks.block_q, blocks.block_k, blocks.block_q_bwd, blocks.block_k_bwd))


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
    block_sizes: GPUBlockSizes | None = None,
    interpret: bool = False,
) -> jax.Array:
    """`lrm.kernels.hstu_attention.hstu_attention` with the fused Triton kernels (see that docstring).

    activation="softmax" and attention dropout are not fused: those calls run the reference
    (`hstu_attention_reference`), by design (softmax is the SASRec baseline). `interpret=True` runs the
    kernels in Pallas interpret mode (any backend, CPU included).
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
    blocks = GPUBlockSizes() if block_sizes is None else block_sizes
    cfg, inputs = common.prepare(q_BxLxHxD, k_BxLxHxD, v_BxLxHxDv, **kwargs,
                                 block_sizes=effective_block_sizes(blocks, q_BxLxHxD.shape[1]),
                                 blocks=blocks, interpret=interpret)
    return common.run(_attention, cfg, inputs)
