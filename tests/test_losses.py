"""Sampled and full softmax losses against hand and numpy computations."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lrm.losses import (full_softmax_loss, sample_negatives, sampled_softmax_loss,
                        sampled_softmax_loss_with_negatives)


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _problem(seed=0, batch=2, length=4, dim=5, num_rows=11):
    rng = np.random.default_rng(seed)
    user = _unit(rng.normal(size=(batch, length, dim))).astype(np.float32)
    table = (rng.normal(size=(num_rows, dim)) * rng.uniform(0.5, 3.0, size=(num_rows, 1))).astype(np.float32)
    target = rng.integers(1, num_rows, size=(batch, length)).astype(np.int32)
    target[0, -1] = 0  # padding slots carry no target
    target[1, -2:] = 0
    return user, table, target


def _numpy_sampled(user, table, target, negatives, temperature):
    items = _unit(table.astype(np.float64))
    losses = []
    for b, l in zip(*np.nonzero(target)):
        pos = user[b, l] @ items[target[b, l]] / temperature
        neg = items[negatives[b, l]] @ user[b, l] / temperature
        neg = np.where(negatives[b, l] == target[b, l], -np.inf, neg)
        logits = np.concatenate([[pos], neg])
        losses.append(np.log(np.exp(logits - logits.max()).sum()) + logits.max() - pos)
    return np.mean(losses), len(losses)


def _numpy_full(user, table, target, temperature):
    items = _unit(table[1:].astype(np.float64))
    losses = []
    for b, l in zip(*np.nonzero(target)):
        logits = items @ user[b, l] / temperature
        losses.append(np.log(np.exp(logits - logits.max()).sum()) + logits.max() - logits[target[b, l] - 1])
    return np.mean(losses)


def test_sampled_softmax_by_hand_with_collision_masked():
    # One position: user (1, 0); positive item 1 has cosine 1; negatives: item 2 (cosine 0) and the
    # positive itself, which must be masked. Temperature 1: loss = log(e^1 + e^0) - 1.
    user = np.array([[[1.0, 0.0]]], np.float32)
    table = np.array([[0, 0], [2, 0], [0, 3]], np.float32)
    target = np.array([[1]], np.int32)
    loss, aux = sampled_softmax_loss_with_negatives(user, table, target, np.array([[[2, 1]]], np.int32),
                                                    temperature=1.0)
    assert float(loss) == pytest.approx(math.log(1 + math.exp(-1)), rel=1e-6)
    assert int(aux["num_targets"]) == 1
    unmasked = math.log(2 * math.e + 1) - 1
    assert abs(float(loss) - unmasked) > 0.5


def test_sampled_softmax_matches_numpy_with_given_negatives():
    user, table, target = _problem()
    rng = np.random.default_rng(1)
    negatives = rng.integers(1, table.shape[0], size=target.shape + (6,)).astype(np.int32)
    negatives[0, 0, 2] = target[0, 0]  # a collision
    negatives[1, 1, :3] = target[1, 1]
    loss, aux = sampled_softmax_loss_with_negatives(user, table, target, negatives, temperature=0.05)
    expected, count = _numpy_sampled(user, table, target, negatives, 0.05)
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert int(aux["num_targets"]) == count
    assert float(aux["sum_loss"]) == pytest.approx(expected * count, rel=1e-5)


def test_sampled_softmax_uses_its_key_deterministically():
    user, table, target = _problem()
    key = jax.random.key(3)
    loss, _ = sampled_softmax_loss(user, table, target, key, num_negatives=8, temperature=0.05)
    negatives = np.asarray(sample_negatives(key, target.shape + (8,), table.shape[0]))
    expected, _ = _numpy_sampled(user, table, target, negatives, 0.05)
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    again, _ = sampled_softmax_loss(user, table, target, key, num_negatives=8, temperature=0.05)
    assert float(again) == float(loss)
    other, _ = sampled_softmax_loss(user, table, target, jax.random.key(4), num_negatives=8, temperature=0.05)
    assert float(other) != float(loss)
    jitted = jax.jit(lambda u, t, k: sampled_softmax_loss(u, table, t, k, num_negatives=8, temperature=0.05)[0])
    assert float(jitted(user, target, key)) == pytest.approx(float(loss), rel=1e-6)


def test_negatives_are_uniform_over_real_items():
    num_rows, n = 6, 60_000
    ids = np.asarray(sample_negatives(jax.random.key(0), (n,), num_rows))
    assert ids.min() == 1 and ids.max() == num_rows - 1  # never padding 0, never past the table
    observed = np.bincount(ids, minlength=num_rows)[1:]
    expected = n / (num_rows - 1)
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    assert chi2 < 18.47  # 0.999 quantile of chi-square with 4 degrees of freedom


@pytest.mark.parametrize("chunk_size", [None, 1, 3, 4, 10, 64])
def test_full_softmax_matches_numpy_any_chunking(chunk_size):
    user, table, target = _problem(num_rows=11)  # 10 real items: 3 and 4 leave a ragged last chunk
    table[0] = 100 * _unit(user[0, 0])  # a padding row that would dominate if it were a class
    loss, aux = full_softmax_loss(user, table, target, temperature=0.05, chunk_size=chunk_size)
    assert float(loss) == pytest.approx(_numpy_full(user, table, target, 0.05), rel=1e-5)
    assert int(aux["num_targets"]) == int((target > 0).sum())


def test_full_softmax_chunked_gradients_match_unchunked():
    user, table, target = _problem(seed=2, num_rows=11)

    def loss_fn(u, tab, chunk_size):
        return full_softmax_loss(u, tab, target, temperature=0.1, chunk_size=chunk_size)[0]

    whole = jax.grad(loss_fn, argnums=(0, 1))(user, table, None)
    chunked = jax.jit(jax.grad(loss_fn, argnums=(0, 1)), static_argnums=2)(user, table, 3)
    for a, b in zip(whole, chunked):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["sampled", "full", "full_chunked"])
def test_no_targets_gives_zero_not_nan(kind):
    user, table, _ = _problem()
    target = np.zeros(user.shape[:2], np.int32)

    def loss_fn(tab):
        if kind == "sampled":
            return sampled_softmax_loss(user, tab, target, jax.random.key(0), num_negatives=4, temperature=0.05)
        return full_softmax_loss(user, tab, target, temperature=0.05, chunk_size=3 if kind == "full_chunked" else None)

    (loss, aux), grad = jax.value_and_grad(loss_fn, has_aux=True)(jnp.asarray(table))
    assert float(loss) == 0.0 and int(aux["num_targets"]) == 0 and float(aux["sum_loss"]) == 0.0
    assert np.all(np.asarray(grad) == 0.0)


def test_losses_reject_bad_input():
    user, table, target = _problem()
    bad_target = target.copy()
    bad_target[1, 0] = table.shape[0]
    with pytest.raises(ValueError, match="target_ids_BxL"):
        full_softmax_loss(user, table, bad_target, temperature=0.05)
    with pytest.raises(ValueError, match="negative_ids_BxLxK"):
        sampled_softmax_loss_with_negatives(user, table, target, np.zeros(target.shape + (2,), np.int32),
                                            temperature=0.05)
    with pytest.raises(ValueError, match="target_ids_BxL shape"):
        sampled_softmax_loss(user, table, target[:, :2], jax.random.key(0), num_negatives=2, temperature=0.05)
    with pytest.raises(ValueError, match="num_negatives"):
        sampled_softmax_loss(user, table, target, jax.random.key(0), num_negatives=0, temperature=0.05)
    with pytest.raises(ValueError, match="chunk_size"):
        full_softmax_loss(user, table, target, temperature=0.05, chunk_size=0)


def test_gradients_are_finite_through_zero_rows():
    """Padding slots (target 0) read item row 0, which is zero: its gradient must not become NaN."""
    from lrm.losses import full_softmax_loss, sampled_softmax_loss

    table_VxD = jax.random.normal(jax.random.key(0), (7, 4)).at[0].set(0.0)
    user_BxLxD = jax.random.normal(jax.random.key(1), (2, 3, 4)).at[1, 2].set(0.0)
    user_BxLxD = user_BxLxD / jnp.maximum(jnp.linalg.norm(user_BxLxD, axis=-1, keepdims=True), 1e-6)
    target_BxL = jnp.array([[1, 2, 0], [3, 0, 0]], jnp.int32)
    for loss_fn in (
        lambda u, t: sampled_softmax_loss(u, t, target_BxL, jax.random.key(2), num_negatives=5, temperature=0.05)[0],
        lambda u, t: full_softmax_loss(u, t, target_BxL, temperature=0.05)[0],
    ):
        g_user, g_table = jax.grad(loss_fn, argnums=(0, 1))(user_BxLxD, table_VxD)
        assert np.isfinite(np.asarray(g_user)).all() and np.isfinite(np.asarray(g_table)).all()


def test_dense_and_gather_scoring_agree_in_value_and_gradient():
    from lrm.losses import sampled_softmax_loss_with_negatives

    table_VxD = jax.random.normal(jax.random.key(0), (11, 4)).at[0].set(0.0)
    user_BxLxD = jax.random.normal(jax.random.key(1), (2, 3, 4))
    user_BxLxD = user_BxLxD / jnp.linalg.norm(user_BxLxD, axis=-1, keepdims=True)
    target_BxL = jnp.array([[1, 2, 0], [3, 7, 10]], jnp.int32)
    negatives_BxLxK = jax.random.randint(jax.random.key(2), (2, 3, 6), 1, 11).at[1, 1, 0].set(7)  # a collision
    results = {}
    for scoring in ("gather", "dense"):
        fn = lambda u, t: sampled_softmax_loss_with_negatives(  # noqa: E731
            u, t, target_BxL, negatives_BxLxK, temperature=0.05, scoring=scoring)[0]
        results[scoring] = (fn(user_BxLxD, table_VxD), *jax.grad(fn, argnums=(0, 1))(user_BxLxD, table_VxD))
    for a, b in zip(results["gather"], results["dense"]):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="unknown scoring"):
        sampled_softmax_loss_with_negatives(user_BxLxD, table_VxD, target_BxL, negatives_BxLxK,
                                            temperature=0.05, scoring="sparse")
