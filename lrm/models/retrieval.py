"""User embeddings → scores over the item catalogue (cosine similarity with L2-normalised item rows)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from lrm.models.embeddings import l2_normalize


def normalized_item_table(table_VxD: jax.Array) -> jax.Array:
    """Rows divided by max(||row||, 1e-6), as the reference's item_l2_norm with l2_norm_eps=1e-6."""
    return l2_normalize(table_VxD, eps=1e-6)


def last_token_embeddings(user_emb_BxLxD: jax.Array, lengths_B: jax.Array) -> jax.Array:
    """The embedding at slot `lengths_B - 1` of each row (the state after the newest event).

    An empty row (length 0) gives slot 0, which the models leave at zero.
    """
    B, L, _ = user_emb_BxLxD.shape
    if lengths_B.shape != (B,):
        raise ValueError(f"lengths_B must have shape {(B,)}, got {lengths_B.shape}")
    index_B = jnp.clip(lengths_B.astype(jnp.int32) - 1, 0, L - 1)
    return jnp.take_along_axis(user_emb_BxLxD, index_B[:, None, None], axis=1)[:, 0]


def score(user_emb_BxD: jax.Array, table_VxD: jax.Array) -> jax.Array:
    """Dot products (B, V) in f32; pass a normalised table for cosine scores."""
    if user_emb_BxD.shape[-1] != table_VxD.shape[-1]:
        raise ValueError(f"embedding widths differ: user {user_emb_BxD.shape}, table {table_VxD.shape}")
    return jnp.einsum(
        "bd,vd->bv", user_emb_BxD.astype(jnp.float32), table_VxD.astype(jnp.float32)
    )
