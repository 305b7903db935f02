"""Retrieval helpers: last-token selection, normalised item table, scores."""
import jax.numpy as jnp
import numpy as np
import pytest

from lrm.models import retrieval


def test_last_token_embeddings_picks_slot_length_minus_one():
    user = jnp.arange(2 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 3)
    got = retrieval.last_token_embeddings(user, jnp.asarray([4, 2]))
    np.testing.assert_array_equal(got, [[9, 10, 11], [15, 16, 17]])
    with pytest.raises(ValueError, match="lengths_B"):
        retrieval.last_token_embeddings(user, jnp.asarray([1, 2, 3]))


def test_normalized_table_and_scores():
    table = jnp.asarray([[0.0, 0.0], [3.0, 4.0], [0.0, -2.0]])
    normed = retrieval.normalized_item_table(table)
    np.testing.assert_allclose(normed, [[0, 0], [0.6, 0.8], [0, -1]], rtol=1e-6)
    scores = retrieval.score(jnp.asarray([[1.0, 0.0], [0.0, 1.0]]), normed)
    np.testing.assert_allclose(scores, [[0, 0.6, 0], [0, 0.8, -1]], rtol=1e-6)
    with pytest.raises(ValueError, match="widths"):
        retrieval.score(jnp.ones((1, 3)), normed)
