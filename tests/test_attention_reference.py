"""The plain-jnp HSTU attention against hand-computed cases and an independent python-loop oracle."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lrm.kernels.hstu_attention import hstu_attention, relative_bias
from lrm.kernels.hstu_attention.reference import hstu_attention_reference


# ---------------------------------------------------------------- hand-computed index arithmetic
@pytest.mark.parametrize(
    "dt, bucket",
    [
        (0, 0),  # max(|0|, 1) = 1, ln 1 = 0
        (1, 0),
        (2, 2),  # ln 2 / 0.301 = 2.303
        (3, 3),  # ln 3 / 0.301 = 3.650
        (10, 7),  # ln 10 / 0.301 = 7.650
        (86400, 37),  # ln 86400 = 11.367; / 0.301 = 37.76
        (-86400, 37),  # |dt|
        (2**31 - 1, 71),  # ln(2^31 - 1) = 21.488; / 0.301 = 71.39 (int32 cannot reach the cap)
    ],
)
def test_time_bucket_hand_computed(dt, bucket):
    assert int(relative_bias.time_bucket(jnp.asarray(dt, jnp.int32))) == bucket


def test_time_bucket_caps_at_num_buckets():
    assert int(relative_bias.time_bucket(jnp.float32(1e30))) == 128  # ln(1e30)/0.301 = 229.5
    assert int(relative_bias.time_bucket(jnp.int32(86400), num_buckets=10)) == 10
    assert int(relative_bias.time_bucket(jnp.int32(86400), divisor=1.0)) == 11  # floor(ln 86400)


def test_relative_position_index_hand_computed():
    np.testing.assert_array_equal(
        relative_bias.relative_position_index(3, 4), [[3, 4, 5], [2, 3, 4], [1, 2, 3]]
    )
    with pytest.raises(ValueError, match="exceeds"):
        relative_bias.relative_position_index(5, 4)


def test_relative_bias_hand_computed():
    pos_table = jnp.arange(7, dtype=jnp.float32)  # N = 4: bias = 3 + j - i
    time_table = 10.0 * jnp.arange(129, dtype=jnp.float32)  # bias = 10 * bucket
    ts = jnp.asarray([[0, 2, 86402]], jnp.int32)
    qts = jnp.asarray([[2, 86402, 86402]], jnp.int32)
    bias = relative_bias.relative_bias_BxLxL(
        L=3, pos_bias_table=pos_table, time_bias_table=time_table, timestamps_BxL=ts, query_timestamps_BxL=qts
    )
    # dt[i, j] = qts[i] - ts[j]: [[2, 0, -86400], [86402, 86400, 0], [86402, 86400, 0]]
    buckets = np.array([[2, 0, 37], [37, 37, 0], [37, 37, 0]])
    expected = np.array([[3, 4, 5], [2, 3, 4], [1, 2, 3]]) + 10.0 * buckets
    np.testing.assert_array_equal(np.asarray(bias)[0], expected)
    assert relative_bias.relative_bias_BxLxL(L=3) is None


# ---------------------------------------------------------------- independent python-loop oracle
def _bucket(dt: int) -> int:
    return min(max(math.floor(math.log(max(abs(dt), 1)) / 0.301), 0), 128)


def oracle(q, k, v, *, segment_ids=None, lengths=None, num_targets=None, window=None, pos_table=None,
           time_table=None, ts=None, qts=None, dense_bias=None, alpha=1.0, norm_len=None, activation="silu"):
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    B, L, H, _ = q.shape
    seg = np.ones((B, L), np.int64) if segment_ids is None else np.asarray(segment_ids).copy()
    if lengths is not None:
        for b in range(B):
            seg[b, lengths[b]:] = 0
    qts = ts if qts is None else qts
    n = L if norm_len is None else norm_len
    out = np.zeros(v.shape)
    for b in range(B):
        valid_positions = [t for t in range(L) if seg[b, t] != 0]
        targets = set(valid_positions[len(valid_positions) - num_targets[b]:]) if num_targets is not None else set()
        for h in range(H):
            for i in range(L):
                if seg[b, i] == 0:
                    continue
                scores = {}
                for j in range(i + 1):
                    if seg[b, j] != seg[b, i]:
                        continue
                    if window is not None and i - j >= window:
                        continue
                    if i in targets and j in targets and i != j:
                        continue
                    s = alpha * float(q[b, i, h] @ k[b, j, h])
                    if pos_table is not None:
                        s += pos_table[(len(pos_table) + 1) // 2 - 1 + j - i]
                    if time_table is not None:
                        s += time_table[_bucket(int(qts[b, i]) - int(ts[b, j]))]
                    if dense_bias is not None:
                        s += dense_bias[b, i, j] if dense_bias.ndim == 3 else dense_bias[b, h, i, j]
                    scores[j] = s
                if activation == "silu":
                    weights = {j: s / (1.0 + math.exp(-s)) / n for j, s in scores.items()}
                else:
                    m = max(scores.values())
                    z = sum(math.exp(s - m) for s in scores.values())
                    weights = {j: math.exp(s - m) / z for j, s in scores.items()}
                for j, w in weights.items():
                    out[b, i, h] += w * v[b, j, h]
    return out


def _qkv(B=2, L=7, H=2, D=4, Dv=3, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(B, L, H, D)).astype(dtype), rng.normal(size=(B, L, H, D)).astype(dtype),
            rng.normal(size=(B, L, H, Dv)).astype(dtype))


def _timestamps(B, L, seed=1):
    rng = np.random.default_rng(seed)
    ts = np.cumsum(rng.integers(0, 200_000, size=(B, L)), axis=1).astype(np.int32)
    qts = np.concatenate([ts[:, 1:], ts[:, -1:]], axis=1)
    return ts, qts


def test_silu_lengths_and_relative_bias_match_oracle():
    q, k, v = _qkv()
    B, L = q.shape[:2]
    rng = np.random.default_rng(2)
    N = 9  # padded max length > L: the bias indexes N-1 + j-i and the normaliser is N
    pos_table = rng.normal(size=2 * N - 1).astype(np.float32)
    time_table = rng.normal(size=129).astype(np.float32)
    ts, qts = _timestamps(B, L)
    lengths = np.array([7, 4], np.int32)
    kwargs = dict(lengths=lengths, pos_table=pos_table, time_table=time_table, ts=ts, qts=qts, alpha=0.7, norm_len=N)
    got = hstu_attention(
        q, k, v, lengths_B=lengths, pos_bias_table=pos_table, time_bias_table=time_table, timestamps_BxL=ts,
        query_timestamps_BxL=qts, alpha=0.7, norm_len=N, impl="xla",
    )
    np.testing.assert_allclose(got, oracle(q, k, v, **kwargs), rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(got)[1, 4:] == 0)  # invalid query rows are exactly 0


def test_silu_segments_targets_window_match_oracle():
    q, k, v = _qkv(L=8, seed=3)
    segment_ids = np.array([[1, 1, 1, 2, 2, 2, 2, 0], [1, 1, 1, 1, 1, 1, 0, 0]], np.int32)
    num_targets = np.array([2, 3], np.int32)
    got = hstu_attention(q, k, v, segment_ids_BxL=segment_ids, num_targets_B=num_targets, window=3, impl="xla")
    want = oracle(q, k, v, segment_ids=segment_ids, num_targets=num_targets, window=3)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(got)[0, 7] == 0) and np.all(np.asarray(got)[1, 6:] == 0)


def test_segments_and_lengths_combine():
    q, k, v = _qkv(L=6, seed=4)
    segment_ids = np.array([[1, 1, 2, 2, 2, 2], [1, 1, 1, 1, 1, 1]], np.int32)
    lengths = np.array([5, 3], np.int32)
    got = hstu_attention(q, k, v, segment_ids_BxL=segment_ids, lengths_B=lengths, impl="xla")
    np.testing.assert_allclose(got, oracle(q, k, v, segment_ids=segment_ids, lengths=lengths), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bias_rank", [3, 4])
def test_softmax_with_dense_bias_matches_oracle(bias_rank):
    q, k, v = _qkv(seed=5)
    B, L, H, _ = q.shape
    rng = np.random.default_rng(6)
    dense_bias = rng.normal(size=(B, L, L) if bias_rank == 3 else (B, H, L, L)).astype(np.float32)
    lengths = np.array([5, 7], np.int32)
    got = hstu_attention(q, k, v, lengths_B=lengths, dense_bias=dense_bias, alpha=0.5, activation="softmax", impl="xla")
    want = oracle(q, k, v, lengths=lengths, dense_bias=dense_bias, alpha=0.5, activation="softmax")
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(got)[0, 5:] == 0)


def test_softmax_gradients_finite_with_empty_rows():
    q, k, v = _qkv(seed=7)
    lengths = jnp.asarray([0, 3], jnp.int32)  # row 0 has no valid token at all

    def loss(q, k, v):
        return jnp.sum(hstu_attention(q, k, v, lengths_B=lengths, activation="softmax", impl="xla") ** 2)

    grads = jax.grad(loss, argnums=(0, 1, 2))(q, k, v)
    for g in grads:
        assert np.all(np.isfinite(g))
        assert np.all(np.asarray(g)[0] == 0)


def test_bf16_inputs_compute_in_f32_and_return_bf16():
    q, k, v = _qkv(seed=8)
    qb, kb, vb = (jnp.asarray(a, jnp.bfloat16) for a in (q, k, v))
    lengths = np.array([6, 7], np.int32)
    got = hstu_attention(qb, kb, vb, lengths_B=lengths, norm_len=7, impl="xla")
    assert got.dtype == jnp.bfloat16
    want = oracle(*(np.asarray(a.astype(jnp.float32)) for a in (qb, kb, vb)), lengths=lengths, norm_len=7)
    # Only the final cast to bf16 rounds (8 mantissa bits: relative error <= 2^-8).
    np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=2**-8, atol=1e-6)


def test_attention_dropout_is_keyed():
    q, k, v = _qkv(seed=9)
    plain = hstu_attention(q, k, v, impl="xla")
    a = hstu_attention(q, k, v, dropout_rate=0.5, dropout_key=jax.random.key(0), impl="xla")
    b = hstu_attention(q, k, v, dropout_rate=0.5, dropout_key=jax.random.key(0), impl="xla")
    c = hstu_attention(q, k, v, dropout_rate=0.5, dropout_key=jax.random.key(1), impl="xla")
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c) and not np.allclose(a, plain)
    with pytest.raises(ValueError, match="dropout_key"):
        hstu_attention(q, k, v, dropout_rate=0.5, impl="xla")


def test_dispatch(monkeypatch):
    q, k, v = _qkv(seed=10)
    want = hstu_attention_reference(q, k, v)
    if jax.default_backend() == "cpu":
        np.testing.assert_array_equal(hstu_attention(q, k, v, impl="auto"), want)
    with pytest.raises(ValueError, match="impl"):
        hstu_attention(q, k, v, impl="cuda")
    # A backend without a kernel module: "auto" falls back to the reference, "pallas" names the file to add.
    monkeypatch.setattr(jax, "default_backend", lambda: "newchip")
    np.testing.assert_array_equal(hstu_attention(q, k, v, impl="auto"), want)
    with pytest.raises(NotImplementedError, match="pallas_newchip.py"):
        hstu_attention(q, k, v, impl="pallas")


def test_bad_shapes_raise():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="k shape"):
        hstu_attention(q, k[:, :-1], v, impl="xla")
    with pytest.raises(ValueError, match="activation"):
        hstu_attention(q, k, v, activation="relu", impl="xla")
    with pytest.raises(ValueError, match="dense_bias"):
        hstu_attention(q, k, v, dense_bias=np.zeros((2, 3, 7, 7), np.float32), impl="xla")
    with pytest.raises(ValueError, match="time_bias_table"):
        hstu_attention(q, k, v, time_bias_table=np.zeros(10, np.float32), timestamps_BxL=np.zeros((2, 7), np.int32))
