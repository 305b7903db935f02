"""Pallas HSTU attention kernels (GPU Triton and TPU Mosaic) against the jnp reference: interpret mode on CPU; on a
CUDA machine the GPU cases run compiled.

Every case draws fresh random inputs and compares the output and the gradients of q, k, v, both bias
tables and the dense bias (norm-wise relative error: 1e-5 in f32, 1e-2 in bf16). Shapes are tiny with
16-wide tiles so that several query/key blocks, padding to the block grid and skipped tiles all occur.
"""
from __future__ import annotations

import functools
import zlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from lrm.kernels.hstu_attention import hstu_attention, pallas_common, pallas_gpu, pallas_tpu
from lrm.kernels.hstu_attention.blocks import GPUBlockSizes, TPUBlockSizes
from lrm.kernels.hstu_attention.reference import attention_mask_BxLxL, hstu_attention_reference

TABLES = ("pos_bias_table", "time_bias_table", "dense_bias")
TOL = {jnp.float32: 1e-5, jnp.bfloat16: 1e-2}


def _packed_segments(rng, B, L):
    """Users packed back to back (ids 1, 2, ...), some rows ending in padding."""
    ids = np.zeros((B, L), np.int32)
    for b in range(B):
        start, seg = 0, 1
        while start < L - 3:
            n = int(rng.integers(1, L // 2))
            ids[b, start:start + n] = seg
            start, seg = start + n, seg + 1
    return ids


def make_case(seed, B, L, H, D, Dv, dtype, *, lengths=False, segments=False, targets=False, window=None,
              pos=True, time=True, dense=None):
    rng = np.random.default_rng(seed)
    normal = lambda *shape: rng.standard_normal(shape).astype(np.float32)
    q, k, v = (jnp.asarray(normal(B, L, H, d), dtype) for d in (D, D, Dv))
    kw = {}
    if lengths:
        kw["lengths_B"] = jnp.asarray(rng.integers(1, L + 1, B), jnp.int32)
    if segments == "scattered":  # not the packed layout: the kernels must fall back to whole rows
        kw["segment_ids_BxL"] = jnp.asarray(rng.integers(0, 3, (B, L)), jnp.int32)
    elif segments:
        kw["segment_ids_BxL"] = jnp.asarray(_packed_segments(rng, B, L))
    if targets:
        kw["num_targets_B"] = jnp.asarray([3, *rng.integers(0, 5, B - 1)], jnp.int32)  # >= 2: they interact
    if window is not None:
        kw["window"] = window
    if pos:
        N = L + 3  # the table may be longer than the sequence
        kw["pos_bias_table"] = jnp.asarray(0.5 * normal(2 * N - 1))
    if time:
        kw["time_bias_table"] = jnp.asarray(0.5 * normal(129))
        ts = np.cumsum(rng.integers(0, 200_000, (B, L)), axis=1).astype(np.int32) + 1_000_000_000
        kw["timestamps_BxL"] = jnp.asarray(ts)
        kw["query_timestamps_BxL"] = jnp.asarray(ts + rng.integers(0, 5_000, (B, L)).astype(np.int32))
    if dense == "shared":
        kw["dense_bias"] = jnp.asarray(normal(B, L, L))
    elif dense == "per_head":
        kw["dense_bias"] = jnp.asarray(normal(B, H, L, L))
    cotangent = jnp.asarray(normal(B, L, H, Dv))
    return q, k, v, kw, cotangent


def _rel(x, ref):
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    assert np.linalg.norm(ref) > 0, "reference gradient is zero: the case checks nothing"
    return np.linalg.norm(x - ref) / np.linalg.norm(ref)


def check_against_reference(fn, case, *, alpha=0.8, norm_len=None):
    q, k, v, kw, cotangent = case
    diff = {n: kw[n] for n in TABLES if n in kw}
    fixed = {n: x for n, x in kw.items() if n not in diff}

    def value_and_grads(attn):
        def f(q, k, v, diff):
            return attn(q, k, v, **fixed, **diff, alpha=alpha, norm_len=norm_len)

        out, vjp = jax.vjp(f, q, k, v, diff)
        return out, vjp(cotangent.astype(out.dtype))

    out, grads = jax.jit(lambda: value_and_grads(fn))()
    with jax.default_matmul_precision("highest"):  # on GPU, XLA's default f32 dot is TF32 (~3e-4)
        ref_out, ref_grads = jax.jit(lambda: value_and_grads(hstu_attention_reference))()
    tol = TOL[q.dtype.type]
    assert out.shape == ref_out.shape and out.dtype == ref_out.dtype
    errors = {"o": _rel(out, ref_out)}
    for name, g, rg in zip("qkv", grads[:3], ref_grads[:3]):
        assert g.shape == rg.shape and g.dtype == rg.dtype
        errors["d" + name] = _rel(g, rg)
    for name in diff:
        assert grads[3][name].shape == diff[name].shape
        errors["d" + name] = _rel(grads[3][name], ref_grads[3][name])
    bad = {n: e for n, e in errors.items() if not e < tol}
    assert not bad, f"relative errors above {tol}: {bad} (all: {errors})"


# On a CUDA machine the GPU cases run the compiled Triton kernels (bench/gpu_session.sh); elsewhere, interpret mode.
GPU_INTERPRET = jax.default_backend() != "gpu"
GPU = functools.partial(pallas_gpu.hstu_attention, interpret=GPU_INTERPRET,
                        block_sizes=GPUBlockSizes(16, 16, 16, 16))
GPU_RECT = functools.partial(pallas_gpu.hstu_attention, interpret=GPU_INTERPRET,
                             block_sizes=GPUBlockSizes(block_q=32, block_k=16, block_q_bwd=16, block_k_bwd=32))
TPU = functools.partial(pallas_tpu.hstu_attention, interpret=True, block_sizes=TPUBlockSizes(16, 16, 16, 16))
TPU_RECT = functools.partial(pallas_tpu.hstu_attention, interpret=True,
                             block_sizes=TPUBlockSizes(block_q=16, block_k=32, block_q_bwd=32, block_k_bwd=16))

GPU_CASES = {
    "dense-rows-tables": (GPU, dict(B=2, L=40, H=2, D=8, Dv=8, dtype=jnp.float32)),
    "ragged-targets-rect-tiles": (GPU_RECT, dict(B=3, L=37, H=2, D=8, Dv=4, dtype=jnp.float32, lengths=True,
                                                 targets=True)),
    "packed-window-odd-d": (GPU, dict(B=2, L=48, H=3, D=5, Dv=6, dtype=jnp.float32, segments=True, window=9)),
    "scattered-segments": (GPU, dict(B=2, L=24, H=1, D=4, Dv=4, dtype=jnp.float32, segments="scattered")),
    "dense-bias-only": (GPU, dict(B=2, L=33, H=2, D=8, Dv=8, dtype=jnp.float32, pos=False, time=False,
                                  dense="shared", lengths=True)),
    "per-head-dense-and-tables": (GPU, dict(B=2, L=32, H=2, D=8, Dv=8, dtype=jnp.float32, segments=True,
                                            dense="per_head")),
    "bf16-packed-targets": (GPU, dict(B=2, L=40, H=2, D=16, Dv=16, dtype=jnp.bfloat16, segments=True,
                                      targets=True)),
}
TPU_CASES = {
    "ragged-targets-tables": (TPU, dict(B=2, L=37, H=2, D=8, Dv=4, dtype=jnp.float32, lengths=True,
                                        targets=True)),
    "packed-window-per-head-dense-rect": (TPU_RECT, dict(B=2, L=48, H=2, D=5, Dv=8, dtype=jnp.float32,
                                                         segments=True, window=11, dense="per_head")),
    "bf16-packed-shared-dense": (TPU, dict(B=2, L=40, H=2, D=16, Dv=16, dtype=jnp.bfloat16, segments=True,
                                           dense="shared")),
}


@pytest.mark.parametrize("name", list(GPU_CASES))
def test_gpu_kernel_matches_reference(name):
    fn, shape = GPU_CASES[name]
    check_against_reference(fn, make_case(zlib.crc32(name.encode()), **shape), norm_len=shape["L"] + 5)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_gpu_kernel_with_production_tiles_matches_reference(dtype):
    """The shipped GPUBlockSizes at the HSTU-large ML-1M shape (L 211, 2 heads, d 25 padded to 32, ragged rows,
    both bias tables): several 64-row tiles, a partly filled last tile and padded head dims."""
    fn = functools.partial(pallas_gpu.hstu_attention, interpret=GPU_INTERPRET)
    case = make_case(11, B=2, L=211, H=2, D=25, Dv=25, dtype=dtype, lengths=True)
    check_against_reference(fn, case, norm_len=211)


@pytest.mark.parametrize("name", list(TPU_CASES))
def test_tpu_kernel_matches_reference(name):
    fn, shape = TPU_CASES[name]
    check_against_reference(fn, make_case(zlib.crc32(name.encode()), **shape), alpha=1.3)


def test_dispatch_pallas_on_cpu_runs_interpret_kernel():
    q, k, v, kw, _ = make_case(7, B=2, L=20, H=1, D=4, Dv=4, dtype=jnp.float32, lengths=True)
    out = hstu_attention(q, k, v, **kw, impl="pallas")  # on a GPU: the compiled kernel
    with jax.default_matmul_precision("highest"):
        ref = hstu_attention_reference(q, k, v, **kw)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


def test_softmax_and_dropout_run_the_reference():
    q, k, v, kw, _ = make_case(8, B=1, L=12, H=1, D=4, Dv=4, dtype=jnp.float32, time=False)
    np.testing.assert_array_equal(GPU(q, k, v, **kw, activation="softmax"),
                                  hstu_attention_reference(q, k, v, **kw, activation="softmax"))
    key = jax.random.key(0)
    np.testing.assert_array_equal(GPU(q, k, v, **kw, dropout_rate=0.5, dropout_key=key),
                                  hstu_attention_reference(q, k, v, **kw, dropout_rate=0.5, dropout_key=key))


def test_bad_arguments_raise():
    q, k, v, kw, _ = make_case(9, B=1, L=12, H=1, D=4, Dv=4, dtype=jnp.float32, time=False)
    with pytest.raises(ValueError, match="exceeds the position table"):
        GPU(q, k, v, pos_bias_table=jnp.zeros(2 * 8 - 1))
    with pytest.raises(ValueError, match="timestamps_BxL"):
        GPU(q, k, v, time_bias_table=jnp.zeros(129))
    with pytest.raises(ValueError, match="dense_bias"):
        TPU(q, k, v, dense_bias=jnp.zeros((1, 12, 13)))
    with pytest.raises(ValueError, match="power of two"):
        GPUBlockSizes(block_q=24)
    with pytest.raises(ValueError, match="multiple of 128"):
        pallas_tpu.hstu_attention(q, k, v, block_sizes=TPUBlockSizes(16, 16, 16, 16), interpret=False)


@pytest.mark.parametrize("bad, message", [
    (dict(time_bias_table=jnp.zeros(10)), "num_time_buckets\\+1 = 129"),
    (dict(timestamps_BxL=jnp.zeros((2, 12), jnp.int32)), r"timestamps_BxL must have shape \(1, 12\)"),
    (dict(query_timestamps_BxL=jnp.zeros((1, 11), jnp.int32)), "query_timestamps_BxL shape"),
    (dict(pos_bias_table=jnp.zeros((3, 5))), "must be 1-D"),
])
def test_reference_and_kernels_reject_the_same_bias_arguments(bad, message):
    """One checker serves all three implementations, so a bad bias argument reads the same error everywhere."""
    q, k, v, _, _ = make_case(10, B=1, L=12, H=1, D=4, Dv=4, dtype=jnp.float32, time=False)
    kw = dict(time_bias_table=jnp.zeros(129), timestamps_BxL=jnp.zeros((1, 12), jnp.int32))
    kw.update(bad)
    for impl in (hstu_attention_reference, GPU, TPU):
        with pytest.raises(ValueError, match=message):
            impl(q, k, v, **kw)


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_kernels_lower_for_hardware(platform):
    """Every kernel (forward and the three backward ones) lowers to Triton IR / Mosaic for the real device,
    with production tiles, bf16 and a non-power-of-two head dim: no op without a lowering rule."""
    module = pallas_gpu if platform == "cuda" else pallas_tpu
    q, k, v, kw, _ = make_case(10, B=2, L=200, H=2, D=50, Dv=50, dtype=jnp.bfloat16, lengths=True, targets=True,
                               window=64, dense="per_head")
    diff = {n: kw.pop(n) for n in TABLES}

    def loss(q, k, v, diff):
        return jnp.sum(module.hstu_attention(q, k, v, **kw, **diff).astype(jnp.float32))

    traced = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3))).trace(q, k, v, diff)
    try:
        text = traced.lower(lowering_platforms=(platform,)).as_text()
    except TypeError as e:  # cross-platform lowering API moved in this jax version
        pytest.skip(f"cannot cross-lower here: {e}")
    assert text.count("__gpu$xla.gpu.triton" if platform == "cuda" else "tpu_custom_call") == 4


def _visible_tiles(mask_BxLxL, bq, bk):
    B, L, _ = mask_BxLxL.shape
    Lp = pallas_common.round_up(L, max(bq, bk))
    padded = np.zeros((B, Lp, Lp), bool)
    padded[:, :L, :L] = mask_BxLxL
    return padded.reshape(B, Lp // bq, bq, Lp // bk, bk).any(axis=(2, 4))


@pytest.mark.parametrize("layout", ["all-valid", "ragged", "packed", "packed-window", "unsorted-segments"])
def test_block_ranges_visit_exactly_the_visible_tiles(layout):
    """Work follows the real tokens: the walked tiles are the tiles holding a visible pair, no more."""
    rng = np.random.default_rng(1)
    B, L, bq, bk = 3, 70, 16, 8
    window = 13 if layout == "packed-window" else None
    seg = np.ones((B, L), np.int32)
    if layout == "ragged":
        seg = (np.arange(L)[None] < np.array([70, 33, 1])[:, None]).astype(np.int32)
    elif layout.startswith("packed"):
        seg = _packed_segments(rng, B, L)
    elif layout == "unsorted-segments":
        seg = rng.integers(0, 3, (B, L)).astype(np.int32)
    visible = _visible_tiles(np.asarray(attention_mask_BxLxL(jnp.asarray(seg), window=window)), bq, bk)
    seg_p = jnp.asarray(np.pad(seg, ((0, 0), (0, visible.shape[1] * bq - L))))
    kb_lo, kb_hi = map(np.asarray, pallas_common.key_block_ranges(seg_p, window, bq, bk))
    qb_lo, qb_hi = map(np.asarray, pallas_common.query_block_ranges(seg_p, window, bq, bk))
    kj, qi = np.arange(visible.shape[2]), np.arange(visible.shape[1])
    walked_by_rows = (kj >= kb_lo[..., None]) & (kj < kb_hi[..., None])
    walked_by_cols = ((qi >= qb_lo[..., None]) & (qi < qb_hi[..., None])).transpose(0, 2, 1)
    assert not np.any(visible & ~walked_by_rows) and not np.any(visible & ~walked_by_cols)
    if layout != "unsorted-segments":  # that layout falls back to whole causal rows, by design
        np.testing.assert_array_equal(walked_by_rows, visible)
        np.testing.assert_array_equal(walked_by_cols, visible)


def _model_batch(B, L, seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, L + 1, B).astype(np.int32)
    valid = np.arange(L)[None, :] < lengths[:, None]
    ids = np.where(valid, rng.integers(1, 31, (B, L)), 0).astype(np.int32)
    ts = np.where(valid, np.cumsum(rng.integers(0, 300_000, (B, L)), axis=1) + 1_000_000_000, 0).astype(np.int32)
    target_ts = np.where(valid, np.concatenate([ts[:, 1:], ts[:, -1:] + 5000], axis=1), ts).astype(np.int32)
    return dict(item_ids_BxL=ids, timestamps_BxL=ts, target_timestamps_BxL=target_ts,
                segment_ids_BxL=valid.astype(np.int32),
                positions_BxL=np.where(valid, np.arange(L), 0).astype(np.int32), lengths_B=lengths)


def test_hstu_model_loss_and_grads_match_with_pallas():
    from lrm.models import build_model

    batch = _model_batch(B=2, L=18, seed=3)
    weights = jnp.asarray(np.random.default_rng(4).standard_normal((2, 18, 8)), jnp.float32)

    def loss_and_grads(impl):
        cfg = ml_collections.ConfigDict(dict(name="hstu", embed_dim=8, num_blocks=2, num_heads=2, head_dim=4,
                                             max_seq_len=20, dropout=0.0, attention_impl=impl))
        graphdef, state = nnx.split(build_model(cfg, num_items=30, rngs=nnx.Rngs(0)))

        def loss(state):
            emb = nnx.merge(graphdef, state)(batch, deterministic=True)
            return jnp.sum(emb * weights)

        with jax.default_matmul_precision("highest"):  # the model's dense layers too: no TF32 on GPU
            return jax.jit(jax.value_and_grad(loss))(state)

    loss_p, grads_p = loss_and_grads("pallas")
    loss_x, grads_x = loss_and_grads("xla")
    np.testing.assert_allclose(loss_p, loss_x, rtol=1e-5)
    flat_p, flat_x = jax.tree.leaves(grads_p), jax.tree.leaves(grads_x)
    assert len(flat_p) == len(flat_x)
    for g_p, g_x in zip(flat_p, flat_x):
        if np.any(np.asarray(g_x) != 0):
            assert _rel(g_p, g_x) < 1e-5
        else:  # e.g. the padding row of the item table
            np.testing.assert_array_equal(g_p, g_x)
