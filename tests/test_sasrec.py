"""SASRec baseline: a numpy re-derivation of the reference block, causality, padding, dropout, axes."""
import functools
import math

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx

from lrm.models import build_model

AXIS_NAMES = {"vocab", "embed", "qkv", "heads", "head_dim", "mlp", "position", "time_bucket", "norm"}
NUM_ITEMS = 25


def make_cfg(**overrides):
    cfg = dict(name="sasrec", embed_dim=8, num_blocks=2, num_heads=2, head_dim=4, max_seq_len=9, dropout=0.2,
               attn_dropout=0.2, ffn_dim=6, attention_impl="xla", dtype="float32")
    cfg.update(overrides)
    return ml_collections.ConfigDict(cfg)


def make_batch(lengths, L, seed=0):
    rng = np.random.default_rng(seed)
    lengths = np.asarray(lengths, np.int32)
    valid = np.arange(L)[None, :] < lengths[:, None]
    ids = np.where(valid, rng.integers(1, NUM_ITEMS + 1, valid.shape), 0).astype(np.int32)
    zeros = np.zeros(valid.shape, np.int32)
    return dict(item_ids_BxL=ids, timestamps_BxL=zeros, target_timestamps_BxL=zeros,
                segment_ids_BxL=valid.astype(np.int32),
                positions_BxL=np.where(valid, np.arange(L), 0).astype(np.int32), lengths_B=lengths)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _forward(graphdef, state, batch, deterministic, key):
    return nnx.merge(graphdef, state)(batch, deterministic=deterministic, dropout_key=key)


def run(model, batch, *, deterministic=True, dropout_key=None):
    graphdef, state = nnx.split(model)
    return np.asarray(_forward(graphdef, state, batch, deterministic, dropout_key))


def _np(p):
    return np.asarray(p[...], np.float64)


def _ln(x):  # F.layer_norm without affine, eps 1e-8
    return (x - x.mean()) / math.sqrt(x.var() + 1e-8)


def oracle(model, batch):
    """The reference SASRec._run_one_layer on valid tokens: Q = LN(x); MHA(query=Q, key=x, value=x) causal;
    h = LN(Q + mha); x = h + W2 relu(W1 h + b1) + b2; L2 at the end."""
    cfg = model.cfg
    D, H, d = cfg.embed_dim, cfg.num_heads, cfg.head_dim
    table, pos_emb = _np(model.embed.item.table), _np(model.embed.position)
    B, L = batch["item_ids_BxL"].shape
    out = np.zeros((B, L, D))
    for b in range(B):
        n_b = int(batch["lengths_B"][b])
        x = [table[batch["item_ids_BxL"][b, t]] * math.sqrt(D) + pos_emb[t] for t in range(n_b)]
        for blk in model.blocks:
            Wi, bi = _np(blk.in_kernel), _np(blk.in_bias)
            Wq, Wk, Wv = (Wi[:, c].reshape(D, D) for c in range(3))
            bq, bk, bv = (bi[c].reshape(D) for c in range(3))
            Wo, bo = _np(blk.out_kernel).reshape(D, D), _np(blk.out_bias)
            Q = [_ln(xt) for xt in x]
            q = [(Qt @ Wq + bq).reshape(H, d) for Qt in Q]
            k = [(xt @ Wk + bk).reshape(H, d) for xt in x]
            v = [(xt @ Wv + bv).reshape(H, d) for xt in x]
            new_x = []
            for i in range(n_b):
                o = np.zeros((H, d))
                for h in range(H):
                    s = np.array([q[i][h] @ k[j][h] / math.sqrt(d) for j in range(i + 1)])
                    w = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
                    o[h] = sum(w[j] * v[j][h] for j in range(i + 1))
                hi = _ln(Q[i] + o.reshape(-1) @ Wo + bo)
                f = np.maximum(hi @ _np(blk.ffn_in_kernel) + _np(blk.ffn_in_bias), 0) @ _np(blk.ffn_out_kernel)
                new_x.append(hi + f + _np(blk.ffn_out_bias))
            x = new_x
        for t in range(n_b):
            out[b, t] = x[t] / max(np.linalg.norm(x[t]), 1e-6)
    return out


def test_matches_reference_derivation_and_shapes():
    model = build_model(make_cfg(), num_items=NUM_ITEMS, rngs=nnx.Rngs(0))
    batch = make_batch([7, 3, 1], L=7)
    got = run(model, batch)
    assert got.shape == (3, 7, 8) and got.dtype == np.float32
    np.testing.assert_allclose(got, oracle(model, batch), rtol=1e-4, atol=2e-5)
    np.testing.assert_allclose(np.linalg.norm(got[0], axis=-1), 1.0, rtol=1e-5)
    assert np.all(got[1, 3:] == 0) and np.all(got[2, 1:] == 0)
    assert model.item_table().shape == (NUM_ITEMS + 1, 8)


def test_causality():
    model = build_model(make_cfg(), num_items=NUM_ITEMS, rngs=nnx.Rngs(0))
    batch = make_batch([6, 6], L=6, seed=1)
    out = run(model, batch)
    changed = dict(batch, item_ids_BxL=batch["item_ids_BxL"].copy())
    changed["item_ids_BxL"][:, 3] = changed["item_ids_BxL"][:, 3] % NUM_ITEMS + 1
    out2 = run(model, changed)
    np.testing.assert_array_equal(out2[:, :3], out[:, :3])
    assert np.abs(out2[:, 3:] - out[:, 3:]).max() > 1e-3


def test_padding_invariance():
    model = build_model(make_cfg(), num_items=NUM_ITEMS, rngs=nnx.Rngs(0))
    batch = make_batch([5, 2], L=7, seed=2)
    pad = batch["segment_ids_BxL"] == 0
    noisy = dict(batch)
    noisy["item_ids_BxL"] = np.where(pad, 7, batch["item_ids_BxL"]).astype(np.int32)
    noisy["positions_BxL"] = np.where(pad, 3, batch["positions_BxL"]).astype(np.int32)
    np.testing.assert_array_equal(run(model, noisy), run(model, batch))


def test_dropout_including_attention_dropout():
    batch = make_batch([7, 4], L=7, seed=3)
    model = build_model(make_cfg(dropout=0.0, attn_dropout=0.3), num_items=NUM_ITEMS, rngs=nnx.Rngs(0))
    plain = run(model, batch)
    a = run(model, batch, deterministic=False, dropout_key=jax.random.key(0))
    np.testing.assert_array_equal(a, run(model, batch, deterministic=False, dropout_key=jax.random.key(0)))
    assert np.abs(a - plain).max() > 1e-3  # only the attention weights were dropped
    np.testing.assert_array_equal(run(model, batch, dropout_key=jax.random.key(0)), plain)


def test_every_param_has_logical_axes():
    for learnable in (False, True):
        model = build_model(make_cfg(learnable_layernorm=learnable), num_items=NUM_ITEMS, rngs=nnx.Rngs(0))
        params = jax.tree_util.tree_leaves(nnx.state(model, nnx.Param), is_leaf=lambda x: isinstance(x, nnx.Variable))
        assert len(params) == 2 + 2 * (8 + (4 if learnable else 0))
        for p in params:
            axes = p.get_metadata()["logical_axes"]
            assert len(axes) == p[...].ndim and set(axes) <= AXIS_NAMES, (axes, p[...].shape)


def test_config_validation():
    with pytest.raises(ValueError, match="num_heads \\* head_dim"):
        build_model(make_cfg(head_dim=3), num_items=NUM_ITEMS, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="ffn_dim"):
        build_model(make_cfg(ffn_dim=0), num_items=NUM_ITEMS, rngs=nnx.Rngs(0))
    cfg = make_cfg()
    del cfg["ffn_dim"]
    assert build_model(cfg, num_items=NUM_ITEMS, rngs=nnx.Rngs(0)).cfg.ffn_dim == 8  # reference recipes: ffn = D
