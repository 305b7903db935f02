"""Full-ranking metrics: ranks and metric values computed by hand on tiny catalogues."""
import math

import jax
import numpy as np
import pytest

from lrm.metrics import (METRIC_KS, NDCG_KS, RankingAccumulator, popularity_baseline, rank_targets,
                         summarize)

# Row 0 is padding: aligned with user (1, 0) on purpose, so counting it would change every rank.
# Cosines with user (1, 0): item1 1.0, item2 0, item3 0.6, item4 -1, item5 5/13, item6 0.6 (tie with 3).
# Vectors are Pythagorean so the normalised components are exact in float32 and the tie is exact.
TABLE = np.array([[5, 0], [2, 0], [0, 3], [3, 4], [-1, 0], [5, 12], [6, -8]], np.float32)
X, Y = [1.0, 0.0], [0.0, 1.0]
# (user, target, history, rank worked out on paper)
CASES = [
    (X, 5, [0, 0, 0], 4),  # above: 1, 3, 6
    (X, 5, [1, 3, 0], 2),  # 1 and 3 leave the ranking; only 6 stays above
    (X, 3, [3, 1, 1], 1),  # target in history stays; 1 removed (once); 6 ties, and ties do not count
    (X, 6, [0, 0, 0], 2),  # only 1 above; 3 ties
    (X, 4, [2, 2, 5], 4),  # above: 1, 3, 6, 5, 2; 2 and 5 removed
    (Y, 3, [0, 0, 0], 3),  # y-cosines: 2 is 1.0, 5 is 12/13, 3 is 0.8, padding row 0 is 0
    (X, 0, [1, 2, 0], 0),  # a row padding the batch: no target
]


def _case_arrays():
    user = np.array([c[0] for c in CASES], np.float32)
    target = np.array([c[1] for c in CASES], np.int32)
    history = np.array([c[2] for c in CASES], np.int32)
    return user, target, history, np.array([c[3] for c in CASES])


def _log_softmax_ce(user_BxD, target_B, table_VxD, temperature):
    """CE over items 1..V-1 in float64, straight from the definition."""
    items = table_VxD[1:].astype(np.float64)
    items = items / np.linalg.norm(items, axis=1, keepdims=True)
    logits = user_BxD.astype(np.float64) @ items.T / temperature
    m = logits.max(axis=1, keepdims=True)
    log_probs = logits - (m + np.log(np.exp(logits - m).sum(axis=1, keepdims=True)))
    return -log_probs[np.arange(len(target_B)), target_B - 1]


@pytest.mark.parametrize("chunk_size", [1, 2, 4, 4096])
def test_hand_computed_ranks_and_ce(chunk_size):
    user, target, history, expected_rank = _case_arrays()
    out = rank_targets(user, target, history, TABLE, temperature=0.5, chunk_size=chunk_size)
    assert out["rank_B"].dtype == np.int32
    np.testing.assert_array_equal(np.asarray(out["rank_B"]), expected_rank)
    real = target > 0
    ce = np.asarray(out["ce_B"])
    np.testing.assert_allclose(ce[real], _log_softmax_ce(user[real], target[real], TABLE, 0.5), rtol=1e-5)
    assert ce[~real] == 0.0


def test_random_catalogue_matches_brute_force_and_chunking():
    rng = np.random.default_rng(0)
    batch, dim, num_rows, length = 6, 8, 50, 5
    table = rng.normal(size=(num_rows, dim)).astype(np.float32)
    user = rng.normal(size=(batch, dim)).astype(np.float32)
    user /= np.linalg.norm(user, axis=1, keepdims=True)
    target = rng.integers(1, num_rows, size=batch).astype(np.int32)
    history = rng.integers(0, num_rows, size=(batch, length)).astype(np.int32)
    history[0, 2] = target[0]  # a re-consumed item
    history[1, :] = 0

    items = table[1:].astype(np.float64) / np.linalg.norm(table[1:].astype(np.float64), axis=1, keepdims=True)
    score = user.astype(np.float64) @ items.T
    expected = []
    for b in range(batch):
        removed = set(history[b].tolist()) - {0, int(target[b])}
        above = [i for i in range(1, num_rows)
                 if i != target[b] and i not in removed and score[b, i - 1] > score[b, target[b] - 1]]
        expected.append(1 + len(above))

    chunked = rank_targets(user, target, history, table, temperature=0.05, chunk_size=7)  # 49 = 7 * 7
    odd = rank_targets(user, target, history, table, temperature=0.05, chunk_size=11)  # 49 not a multiple
    whole = rank_targets(user, target, history, table, temperature=0.05)
    for out in (chunked, odd, whole):
        np.testing.assert_array_equal(np.asarray(out["rank_B"]), expected)
    np.testing.assert_allclose(np.asarray(odd["ce_B"]), np.asarray(whole["ce_B"]), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(whole["ce_B"]), _log_softmax_ce(user, target, table, 0.05), rtol=1e-5)


def _all_shapes(jaxpr):
    for var in list(jaxpr.invars) + list(jaxpr.outvars):
        yield getattr(var.aval, "shape", ())
    for eqn in jaxpr.eqns:
        for var in eqn.outvars:
            yield getattr(var.aval, "shape", ())
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _all_shapes(inner)


def test_score_matrix_is_never_materialised_and_jit_works():
    batch, dim, num_rows, chunk = 8, 4, 301, 16
    rng = np.random.default_rng(1)
    table = rng.normal(size=(num_rows, dim)).astype(np.float32)
    user = rng.normal(size=(batch, dim)).astype(np.float32)
    target = rng.integers(1, num_rows, size=batch).astype(np.int32)
    history = rng.integers(0, num_rows, size=(batch, 3)).astype(np.int32)

    def f(u, t, h, tab):
        return rank_targets(u, t, h, tab, temperature=0.05, chunk_size=chunk)

    shapes = list(_all_shapes(jax.make_jaxpr(f)(user, target, history, table).jaxpr))
    biggest = max(int(np.prod(s)) for s in shapes)
    assert biggest < batch * (num_rows - 1), f"an intermediate of {biggest} elements: [B, V] materialised"
    assert any(tuple(s) == (batch, chunk) for s in shapes)  # the per-chunk block is there

    eager = f(user, target, history, table)
    jitted = jax.jit(f)(user, target, history, table)
    np.testing.assert_array_equal(np.asarray(eager["rank_B"]), np.asarray(jitted["rank_B"]))
    np.testing.assert_allclose(np.asarray(eager["ce_B"]), np.asarray(jitted["ce_B"]), rtol=1e-6)


def test_rank_targets_rejects_bad_input():
    user, target, history, _ = _case_arrays()
    with pytest.raises(ValueError, match="target_ids_B"):
        rank_targets(user, np.where(target == 5, 7, target), history, TABLE, temperature=0.5)
    with pytest.raises(ValueError, match="history_ids_BxL"):
        rank_targets(user, target, np.full_like(history, -1), TABLE, temperature=0.5)
    with pytest.raises(ValueError, match="item_table_VxD"):
        rank_targets(user, target, history, TABLE[:, :1], temperature=0.5)
    with pytest.raises(ValueError, match="temperature"):
        rank_targets(user, target, history, TABLE, temperature=0.0)


def test_summarize_hand_computed():
    m = summarize(np.array([1, 3, 11, 60, 3000]), np.array([0.5, 1.0, 1.5, 2.0, 3.0]))
    assert set(m) == {f"hr@{k}" for k in METRIC_KS} | {f"ndcg@{k}" for k in NDCG_KS} | {"mrr", "ce", "num_users"}
    assert m["num_users"] == 5
    assert m["hr@1"] == pytest.approx(1 / 5)
    assert m["hr@5"] == pytest.approx(2 / 5)
    assert m["hr@10"] == pytest.approx(2 / 5)
    assert m["hr@50"] == pytest.approx(3 / 5)
    assert m["hr@200"] == pytest.approx(4 / 5)
    assert m["ndcg@5"] == pytest.approx((1 + 1 / math.log2(4)) / 5)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / math.log2(4)) / 5)
    assert m["ndcg@50"] == pytest.approx((1 + 1 / 2 + 1 / math.log2(12)) / 5)
    assert m["ndcg@200"] == pytest.approx((1 + 1 / 2 + 1 / math.log2(12) + 1 / math.log2(61)) / 5)
    assert m["mrr"] == pytest.approx((1 + 1 / 3 + 1 / 11 + 1 / 60 + 0) / 5)  # 3000 > 2500: a miss
    assert m["ce"] == pytest.approx(8.0 / 5)


def test_max_rank_makes_deeper_ranks_misses():
    m = summarize(np.array([1, 60, 2500, 2501]), None, max_rank=2500)
    assert m["mrr"] == pytest.approx((1 + 1 / 60 + 1 / 2500) / 4)
    assert "ce" not in m
    small = summarize(np.array([1, 60]), None, max_rank=50)
    assert small["hr@200"] == pytest.approx(1 / 2)
    assert small["ndcg@200"] == pytest.approx(1 / 2)
    assert small["mrr"] == pytest.approx(1 / 2)


def test_weights_exclude_padding_rows():
    padded = summarize(np.array([1, 3, 0, 7]), np.array([1.0, 2.0, np.nan, 3.0]), np.array([1, 1, 0, 1]))
    plain = summarize(np.array([1, 3, 7]), np.array([1.0, 2.0, 3.0]))
    assert padded == pytest.approx(plain)
    assert padded["num_users"] == 3


def test_accumulator_rejects_bad_rows():
    with pytest.raises(ValueError, match="rank 0"):
        summarize(np.array([1, 0]), None)
    with pytest.raises(ValueError, match="0 or 1"):
        summarize(np.array([1, 2]), None, np.array([1.0, 0.5]))
    with pytest.raises(ValueError, match="not finite"):
        summarize(np.array([1, 2]), np.array([0.1, np.nan]))
    with pytest.raises(ValueError, match="integer"):
        summarize(np.array([1.0, 2.0]), None)
    with pytest.raises(ValueError, match="no users"):
        summarize(np.array([1, 2]), None, np.array([0, 0]))
    acc = RankingAccumulator()
    acc.add(np.array([1]), np.array([0.3]))
    with pytest.raises(ValueError, match="ce_B"):
        acc.add(np.array([1]), None)


def test_accumulator_over_batches_and_processes():
    rank = np.array([1, 2, 9, 40, 150, 2600, 5])
    ce = np.linspace(0.1, 2.0, len(rank))
    whole = summarize(rank, ce)
    first, second = RankingAccumulator(), RankingAccumulator()
    first.add(rank[:3], ce[:3], np.ones(3))
    second.add(rank[3:], ce[3:])
    second.add(np.array([1, 1]), np.array([np.nan, 0.0]), np.array([0, 0]))  # an all-padding batch
    restored = RankingAccumulator.from_array(first.to_array() + 0.0)
    assert restored.result() == pytest.approx(first.result())
    first.merge(second)
    assert first.result() == pytest.approx(whole)
    summed = RankingAccumulator.from_array(RankingAccumulator.from_array(first.to_array()).to_array())
    assert summed.result() == pytest.approx(whole)


def test_popularity_baseline_hand_computed():
    # Popularity order (count desc, id asc): 2 (9), 5 (9), 1 (5), 3 (5), 6 (1), 4 (0); padding count ignored.
    counts = np.array([99, 5, 9, 5, 0, 9, 1])
    target = np.array([3, 3, 5, 4, 0])
    history = np.array([[0, 0, 0], [2, 1, 0], [5, 2, 2], [6, 6, 3], [1, 0, 0]])
    np.testing.assert_array_equal(popularity_baseline(counts, target, history), [4, 2, 1, 4, 0])
    np.testing.assert_array_equal(popularity_baseline(counts, target, history, max_rank=2), [3, 2, 1, 3, 0])
    with pytest.raises(ValueError, match="target_ids_B"):
        popularity_baseline(counts, np.array([7, 1, 1, 1, 1]), history)
    with pytest.raises(ValueError, match="train_item_counts_V"):
        popularity_baseline(np.array([0, 1, -1, 0, 0, 0, 0]), target, history)
