"""HSTU model against an independent numpy re-derivation of HSTU_REFERENCE.md, plus invariances and plumbing."""
import functools
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from lrm.models import build_model
from lrm.models import embeddings
from lrm.models.hstu import HSTU

AXIS_NAMES = {"vocab", "embed", "qkv", "heads", "head_dim", "mlp", "position", "time_bucket", "norm"}
NUM_ITEMS = 30


def make_cfg(**overrides):
    cfg = dict(name="hstu", embed_dim=8, num_blocks=2, num_heads=2, head_dim=3, max_seq_len=9, dropout=0.2,
               attn_dropout=0.0, use_pos_bias=True, use_time_bias=True, num_time_buckets=128,
               time_bucket_divisor=0.301, learnable_layernorm=False, qk_scale="none", silu_on="uvqk",
               attention_impl="xla", dtype="float32", ffn_dim=8)
    cfg.update(overrides)
    return ml_collections.ConfigDict(cfg)


def make_batch(lengths, L, seed=0):
    """Unpacked rows: one user per row, valid prefix [0, length)."""
    rng = np.random.default_rng(seed)
    lengths = np.asarray(lengths, np.int32)
    B = len(lengths)
    valid = np.arange(L)[None, :] < lengths[:, None]
    ids = np.where(valid, rng.integers(1, NUM_ITEMS + 1, (B, L)), 0).astype(np.int32)
    ts = np.cumsum(rng.integers(0, 300_000, (B, L)), axis=1).astype(np.int32) + 1_000_000_000
    ts = np.where(valid, ts, 0).astype(np.int32)
    target_ts = ts.copy()
    for b in range(B):
        target_ts[b, : lengths[b] - 1] = ts[b, 1 : lengths[b]]
        if lengths[b] > 0:
            target_ts[b, lengths[b] - 1] = ts[b, lengths[b] - 1] + 5000  # the (known) target's time
    return dict(item_ids_BxL=ids, timestamps_BxL=ts, target_timestamps_BxL=target_ts,
                segment_ids_BxL=valid.astype(np.int32), positions_BxL=np.where(valid, np.arange(L), 0).astype(np.int32),
                lengths_B=lengths)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _forward(graphdef, state, batch, deterministic, key):
    return nnx.merge(graphdef, state)(batch, deterministic=deterministic, dropout_key=key)


def run(model, batch, *, deterministic=True, dropout_key=None):
    """Forward under jit via split/merge (compiled once per model structure and batch shape)."""
    graphdef, state = nnx.split(model)
    return np.asarray(_forward(graphdef, state, batch, deterministic, dropout_key))


# ---------------------------------------------------------------- independent numpy re-derivation
def _np(p):
    return np.asarray(p[...], np.float64)


def _ln(x, eps, scale=None, bias=None):
    y = (x - x.mean()) / math.sqrt(x.var() + eps)
    return y if scale is None else y * scale + bias


def _silu(x):
    return x / (1.0 + np.exp(-x))


def _bucket(dt):
    return min(max(math.floor(math.log(max(abs(int(dt)), 1)) / 0.301), 0), 128)


def oracle(model: HSTU, batch):
    """Per user, loops straight from the spec: LN, silu(xn W_uvqk) split U,V,Q,K, silu(q·k + rab)/N causal,
    y = u * LN(o), x + y W_o + b; L2 at the end. Only valid tokens exist, as in the reference's jagged layout."""
    cfg = model.cfg
    D, H, d, N = cfg.embed_dim, cfg.num_heads, cfg.head_dim, cfg.max_seq_len
    alpha = 1.0 if cfg.qk_scale == "none" else 1.0 / math.sqrt(d)
    table, pos_emb = _np(model.embed.item.table), _np(model.embed.position)
    ids, ts, tts = batch["item_ids_BxL"], batch["timestamps_BxL"], batch["target_timestamps_BxL"]
    B, L = ids.shape
    out = np.zeros((B, L, D))
    for b in range(B):
        n_b = int(batch["lengths_B"][b])
        x = [table[ids[b, t]] * math.sqrt(D) + pos_emb[batch["positions_BxL"][b, t]] for t in range(n_b)]
        for layer in model.layers:
            affine = cfg.learnable_layernorm
            in_ln = (_np(layer.input_norm.scale), _np(layer.input_norm.bias)) if affine else (None, None)
            out_ln = (_np(layer.attn_norm.scale), _np(layer.attn_norm.bias)) if affine else (None, None)
            W = _np(layer.uvqk).reshape(D, 4 * H * d)
            Wo, bo = _np(layer.out_kernel).reshape(H * d, D), _np(layer.out_bias)
            pos_w = _np(layer.rel_bias.pos) if cfg.use_pos_bias else None
            ts_w = _np(layer.rel_bias.time) if cfg.use_time_bias else None
            u, v, q, k = [], [], [], []
            for t in range(n_b):
                h = _ln(x[t], 1e-6, *in_ln) @ W
                chunks = np.split(h, 4)
                if cfg.silu_on == "uvqk":
                    chunks = [_silu(c) for c in chunks]
                else:
                    chunks[0] = _silu(chunks[0])
                for lst, c in zip((u, v, q, k), chunks):
                    lst.append(c.reshape(H, d))
            new_x = []
            for i in range(n_b):
                o = np.zeros((H, d))
                for head in range(H):
                    for j in range(i + 1):
                        s = alpha * q[i][head] @ k[j][head]
                        if pos_w is not None:
                            s += pos_w[N - 1 + j - i]
                        if ts_w is not None:
                            s += ts_w[_bucket(int(tts[b, i]) - int(ts[b, j]))]
                        o[head] += _silu(s) / N * v[j][head]
                y = u[i].reshape(-1) * _ln(o.reshape(-1), 1e-6, *out_ln)
                new_x.append(x[i] + y @ Wo + bo)
            x = new_x
        for t in range(n_b):
            out[b, t] = x[t] / max(np.linalg.norm(x[t]), 1e-6)
    return out


RAGGED = [7, 4, 1]


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"num_blocks": 1},
        {"learnable_layernorm": True, "qk_scale": "rsqrt", "silu_on": "u"},
        {"use_pos_bias": False, "use_time_bias": False},
        {"use_pos_bias": True, "use_time_bias": False, "num_heads": 1, "head_dim": 5},
    ],
)
def test_matches_independent_numpy_derivation(overrides):
    model = build_model(make_cfg(**overrides), num_items=NUM_ITEMS, rngs=nnx.Rngs(0))
    if model.cfg.learnable_layernorm:  # move the affine params off ones/zeros so they matter
        rng = np.random.default_rng(1)
        for layer in model.layers:
            for ln in (layer.input_norm, layer.attn_norm):
                ln.scale[...] = jnp.asarray(1 + 0.3 * rng.normal(size=ln.scale.shape), jnp.float32)
                ln.bias[...] = jnp.asarray(0.3 * rng.normal(size=ln.bias.shape), jnp.float32)
    batch = make_batch(RAGGED, L=7)
    got = run(model, batch)
    np.testing.assert_allclose(got, oracle(model, batch), rtol=1e-4, atol=2e-5)
    assert np.all(got[1, 4:] == 0) and np.all(got[2, 1:] == 0)


def test_stu_flags_change_the_math():
    base = run(build_model(make_cfg(), num_items=NUM_ITEMS, rngs=nnx.Rngs(0)), make_batch(RAGGED, 7))
    for flags in ({"qk_scale": "rsqrt"}, {"silu_on": "u"}, {"use_time_bias": False}, {"use_pos_bias": False}):
        other = run(build_model(make_cfg(**flags), num_items=NUM_ITEMS, rngs=nnx.Rngs(0)), make_batch(RAGGED, 7))
        assert np.abs(other - base).max() > 1e-4, flags
    model = build_model(make_cfg(use_pos_bias=False, use_time_bias=False), num_items=NUM_ITEMS, rngs=nnx.Rngs(0))
    assert model.layers[0].rel_bias.pos is None and model.layers[0].rel_bias.time is None
    learn = build_model(make_cfg(learnable_layernorm=True), num_items=NUM_ITEMS, rngs=nnx.Rngs(0))
    assert learn.layers[0].input_norm.scale.shape == (8,) and learn.layers[0].attn_norm.bias.shape == (6,)


def test_initialisation_matches_reference():
    cfg = make_cfg(embed_dim=16, num_heads=4, head_dim=8, max_seq_len=40)
    model = build_model(cfg, num_items=2000, rngs=nnx.Rngs(3))
    table = np.asarray(model.item_table())
    assert table.shape == (2001, 16) and np.all(table[0] == 0)
    assert abs(table[1:].std() - 0.02 * 0.8796) < 1e-3 and np.abs(table).max() <= 0.04 + 1e-7  # trunc. ±2σ
    assert abs(np.asarray(model.embed.position[...]).std() - math.sqrt(2 / (40 + 16))) < 0.03
    layer = model.layers[0]
    assert layer.uvqk.shape == (16, 4, 4, 8) and abs(np.asarray(layer.uvqk[...]).std() - 0.02) < 2e-3
    assert np.abs(np.asarray(layer.out_kernel[...])).max() <= math.sqrt(6 / (32 + 16))
    assert np.abs(np.asarray(layer.out_bias[...])).max() <= 1 / math.sqrt(32)
    assert layer.rel_bias.pos.shape == (79,) and layer.rel_bias.time.shape == (129,)


def test_every_param_has_logical_axes():
    for overrides in ({}, {"learnable_layernorm": True}):
        model = build_model(make_cfg(**overrides), num_items=NUM_ITEMS, rngs=nnx.Rngs(0))
        params = jax.tree_util.tree_leaves(nnx.state(model, nnx.Param), is_leaf=lambda x: isinstance(x, nnx.Variable))
        assert len(params) >= 10
        for p in params:
            axes = p.get_metadata()["logical_axes"]
            assert len(axes) == p[...].ndim and set(axes) <= AXIS_NAMES, (axes, p[...].shape)
            assert p[...].dtype == jnp.float32


def test_padding_invariance():
    model = build_model(make_cfg(), num_items=NUM_ITEMS, rngs=nnx.Rngs(0))
    batch = make_batch(RAGGED, L=7)
    out = run(model, batch)
    rng = np.random.default_rng(5)
    pad = batch["segment_ids_BxL"] == 0
    noisy = dict(batch)
    noisy["item_ids_BxL"] = np.where(pad, rng.integers(1, NUM_ITEMS + 1, pad.shape), batch["item_ids_BxL"]).astype(np.int32)
    noisy["timestamps_BxL"] = np.where(pad, rng.integers(0, 2**30, pad.shape), batch["timestamps_BxL"]).astype(np.int32)
    noisy["target_timestamps_BxL"] = np.where(pad, 7, batch["target_timestamps_BxL"]).astype(np.int32)
    noisy["positions_BxL"] = np.where(pad, rng.integers(0, 9, pad.shape), batch["positions_BxL"]).astype(np.int32)
    np.testing.assert_array_equal(run(model, noisy), out)


def test_packed_rows_equal_separate_rows():
    model = build_model(make_cfg(), num_items=NUM_ITEMS, rngs=nnx.Rngs(0))
    alone = make_batch([3, 4], L=8, seed=7)
    # Row 0 of `packed` holds user 0 (slots 0-2) then user 1 (slots 3-6), positions restarting per segment.
    packed = {k: v[:1].copy() for k, v in alone.items()}
    for key in ("item_ids_BxL", "timestamps_BxL", "target_timestamps_BxL", "positions_BxL"):
        packed[key][0, :3] = alone[key][0, :3]
        packed[key][0, 3:7] = alone[key][1, :4]
    packed["segment_ids_BxL"][0] = [1, 1, 1, 2, 2, 2, 2, 0]
    packed["lengths_B"] = np.array([7], np.int32)
    out_alone, out_packed = run(model, alone), run(model, packed)
    np.testing.assert_allclose(out_packed[0, :3], out_alone[0, :3], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out_packed[0, 3:7], out_alone[1, :4], rtol=1e-5, atol=1e-6)


def test_dropout_is_keyed_and_off_when_deterministic():
    model = build_model(make_cfg(), num_items=NUM_ITEMS, rngs=nnx.Rngs(0))
    batch = make_batch(RAGGED, L=7)
    plain = run(model, batch)
    np.testing.assert_array_equal(run(model, batch, dropout_key=jax.random.key(3)), plain)
    a = run(model, batch, deterministic=False, dropout_key=jax.random.key(1))
    b = run(model, batch, deterministic=False, dropout_key=jax.random.key(1))
    c = run(model, batch, deterministic=False, dropout_key=jax.random.key(2))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3 and np.abs(a - plain).max() > 1e-3
    with pytest.raises(ValueError, match="dropout_key"):
        model(batch, deterministic=False)
    no_dropout = build_model(make_cfg(dropout=0.0), num_items=NUM_ITEMS, rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(run(no_dropout, batch, deterministic=False), run(no_dropout, batch))


def test_jit_split_merge_and_gradients():
    model = build_model(make_cfg(), num_items=NUM_ITEMS, rngs=nnx.Rngs(0))
    batch = make_batch(RAGGED, L=7)
    eager = np.asarray(model(batch, deterministic=True))
    np.testing.assert_allclose(run(model, batch), eager, rtol=1e-5, atol=1e-6)
    graphdef, state = nnx.split(model, nnx.Param)

    @jax.jit
    def loss(state, batch, key):
        user = nnx.merge(graphdef, state)(batch, deterministic=False, dropout_key=key)
        return jnp.sum(user[:, :, 0])

    grads = jax.grad(loss)(state, batch, jax.random.key(0))
    layer_grads = grads["layers"][0]
    for g in (layer_grads["uvqk"], layer_grads["rel_bias"]["pos"], layer_grads["rel_bias"]["time"]):
        assert np.all(np.isfinite(g[...])) and np.abs(g[...]).max() > 0


def test_bfloat16_compute_keeps_f32_params_and_output():
    batch = make_batch(RAGGED, L=7)
    f32 = run(build_model(make_cfg(), num_items=NUM_ITEMS, rngs=nnx.Rngs(0)), batch)
    bf16_model = build_model(make_cfg(dtype="bfloat16"), num_items=NUM_ITEMS, rngs=nnx.Rngs(0))
    bf16 = run(bf16_model, batch)
    assert bf16.dtype == np.float32 and bf16_model.layers[0].uvqk[...].dtype == jnp.float32
    assert np.abs(bf16 - f32).max() < 5e-2 and np.abs(bf16 - f32).max() > 0


def test_item_ids_out_of_range_raise_on_host_and_nan_under_jit():
    model = build_model(make_cfg(), num_items=NUM_ITEMS, rngs=nnx.Rngs(0))
    batch = make_batch(RAGGED, L=7)
    batch["item_ids_BxL"][0, 2] = NUM_ITEMS + 1
    with pytest.raises(ValueError, match=r"item_ids_BxL\[0, 2\] = 31"):
        model(batch, deterministic=True)
    with pytest.raises(ValueError, match="outside"):
        embeddings.check_batch(batch, NUM_ITEMS)
    assert np.all(np.isnan(run(model, batch)[0, 2]))  # never a silently clamped embedding


def test_check_batch():
    batch = make_batch(RAGGED, L=7)
    embeddings.check_batch(batch, NUM_ITEMS, max_seq_len=9)
    bad = dict(batch, segment_ids_BxL=batch["segment_ids_BxL"].copy())
    bad["segment_ids_BxL"][1, 5] = 1
    with pytest.raises(ValueError, match=r"segment_ids_BxL\[1, 5\]"):
        embeddings.check_batch(bad, NUM_ITEMS)
    bad = dict(batch, item_ids_BxL=batch["item_ids_BxL"].copy())
    bad["item_ids_BxL"][0, 3] = 0
    with pytest.raises(ValueError, match=r"item_ids_BxL\[0, 3\] is 0"):
        embeddings.check_batch(bad, NUM_ITEMS)
    with pytest.raises(ValueError, match="positions_BxL"):
        embeddings.check_batch(batch, NUM_ITEMS, max_seq_len=5)
    with pytest.raises(KeyError, match="lengths_B"):
        embeddings.check_batch({k: v for k, v in batch.items() if k != "lengths_B"}, NUM_ITEMS)
    with pytest.raises(ValueError, match="exceeds the model's max_seq_len"):
        build_model(make_cfg(max_seq_len=5), num_items=NUM_ITEMS, rngs=nnx.Rngs(0))(batch, deterministic=True)


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"name": "bert4rec"}, "name"),
        ({"qk_scale": "sqrt"}, "qk_scale"),
        ({"silu_on": "q"}, "silu_on"),
        ({"attention_impl": "triton"}, "attention_impl"),
        ({"dtype": "float16"}, "dtype"),
        ({"dropout": 1.0}, "dropout"),
        ({"attn_dropout": 0.1}, "attn_dropout"),
        ({"num_heads": 0}, "num_heads"),
        ({"use_time_bias": "yes"}, "use_time_bias"),
    ],
)
def test_config_validation(overrides, match):
    with pytest.raises(ValueError, match=match):
        build_model(make_cfg(**overrides), num_items=NUM_ITEMS, rngs=nnx.Rngs(0))


def test_missing_config_field_and_bad_num_items():
    cfg = make_cfg()
    del cfg["head_dim"]
    with pytest.raises(ValueError, match="head_dim"):
        build_model(cfg, num_items=NUM_ITEMS, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="num_items"):
        build_model(make_cfg(), num_items=0, rngs=nnx.Rngs(0))
