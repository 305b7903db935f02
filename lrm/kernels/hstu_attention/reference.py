"""Plain-jnp HSTU attention: the spec every kernel is tested against.

Dense (B, H, L, L) scores in f32. `activation="silu"` is the research HSTU pointwise attention
`silu(alpha·q·kᵀ + bias) / n` (masked, no softmax); `"softmax"` is standard softmax attention over the
visible keys (SASRec).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from lrm.kernels.hstu_attention import relative_bias

ACTIVATIONS = ("silu", "softmax")


def resolve_segment_ids(
    L: int,
    B: int,
    segment_ids_BxL: jax.Array | None,
    lengths_B: jax.Array | None,
) -> jax.Array:
    """int32 segment ids, 0 on invalid tokens, from segment ids and/or lengths (all valid if neither)."""
    if segment_ids_BxL is not None:
        if segment_ids_BxL.shape != (B, L):
            raise ValueError(f"segment_ids_BxL must have shape {(B, L)}, got {segment_ids_BxL.shape}")
        segment_ids_BxL = segment_ids_BxL.astype(jnp.int32)
    if lengths_B is not None:
        if lengths_B.shape != (B,):
            raise ValueError(f"lengths_B must have shape {(B,)}, got {lengths_B.shape}")
        in_prefix_BxL = jnp.arange(L, dtype=jnp.int32)[None, :] < lengths_B.astype(jnp.int32)[:, None]
        if segment_ids_BxL is None:
            return in_prefix_BxL.astype(jnp.int32)
        return jnp.where(in_prefix_BxL, segment_ids_BxL, 0)
    if segment_ids_BxL is None:
        return jnp.ones((B, L), jnp.int32)
    return segment_ids_BxL


def attention_mask_BxLxL(
    segment_ids_BxL: jax.Array,
    *,
    num_targets_B: jax.Array | None = None,
    window: int | None = None,
) -> jax.Array:
    """bool mask: causal ∧ valid(i) ∧ valid(j) ∧ same segment ∧ target rule ∧ window.

    Targets are the last `num_targets_B` valid tokens of a row: each sees the history and itself, not the
    other targets.
    """
    B, L = segment_ids_BxL.shape
    i_LxL = jnp.arange(L)[:, None]
    j_LxL = jnp.arange(L)[None, :]
    valid_BxL = segment_ids_BxL != 0
    mask_BxLxL = (
        (j_LxL <= i_LxL)[None]
        & valid_BxL[:, :, None]
        & valid_BxL[:, None, :]
        & (segment_ids_BxL[:, :, None] == segment_ids_BxL[:, None, :])
    )
    if window is not None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        mask_BxLxL &= (i_LxL - j_LxL < window)[None]
    if num_targets_B is not None:
        if num_targets_B.shape != (B,):
            raise ValueError(f"num_targets_B must have shape {(B,)}, got {num_targets_B.shape}")
        rank_BxL = jnp.cumsum(valid_BxL.astype(jnp.int32), axis=1)  # 1-based rank among valid tokens
        num_valid_B = rank_BxL[:, -1]
        first_target_rank_B = num_valid_B - num_targets_B.astype(jnp.int32)
        is_target_BxL = valid_BxL & (rank_BxL > first_target_rank_B[:, None])
        cross_target_BxLxL = is_target_BxL[:, :, None] & is_target_BxL[:, None, :] & (i_LxL != j_LxL)[None]
        mask_BxLxL &= ~cross_target_BxLxL
    return mask_BxLxL


def check_shapes(q_BxLxHxD: jax.Array, k_BxLxHxD: jax.Array, v_BxLxHxDv: jax.Array) -> None:
    """q, k, v shapes as every implementation requires them."""
    if q_BxLxHxD.ndim != 4:
        raise ValueError(f"q must be (B, L, H, D), got shape {q_BxLxHxD.shape}")
    if k_BxLxHxD.shape != q_BxLxHxD.shape:
        raise ValueError(f"k shape {k_BxLxHxD.shape} != q shape {q_BxLxHxD.shape}")
    if v_BxLxHxDv.ndim != 4 or v_BxLxHxDv.shape[:3] != q_BxLxHxD.shape[:3]:
        raise ValueError(f"v must be (B, L, H, Dv) matching q {q_BxLxHxD.shape[:3]}, got {v_BxLxHxDv.shape}")


def hstu_attention_reference(
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
) -> jax.Array:
    """Dense reference; see `lrm.kernels.hstu_attention.hstu_attention` for the argument contract."""
    check_shapes(q_BxLxHxD, k_BxLxHxD, v_BxLxHxDv)
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    B, L, H, _ = q_BxLxHxD.shape
    out_dtype = q_BxLxHxD.dtype

    segment_ids_BxL = resolve_segment_ids(L, B, segment_ids_BxL, lengths_B)
    mask_Bx1xLxL = attention_mask_BxLxL(segment_ids_BxL, num_targets_B=num_targets_B, window=window)[:, None]

    s_BxHxLxL = jnp.einsum(
        "blhd,bmhd->bhlm", q_BxLxHxD.astype(jnp.float32), k_BxLxHxD.astype(jnp.float32)
    ) * jnp.float32(alpha)
    rel_bias = relative_bias.relative_bias_BxLxL(
        L=L,
        B=B,
        pos_bias_table=pos_bias_table,
        time_bias_table=time_bias_table,
        timestamps_BxL=timestamps_BxL,
        query_timestamps_BxL=query_timestamps_BxL,
        num_time_buckets=num_time_buckets,
        time_bucket_divisor=time_bucket_divisor,
    )
    if rel_bias is not None:
        s_BxHxLxL = s_BxHxLxL + rel_bias[:, None]
    if dense_bias is not None:
        if dense_bias.shape == (B, L, L):
            dense_bias = dense_bias[:, None]
        elif dense_bias.shape != (B, H, L, L):
            raise ValueError(f"dense_bias must be (B, L, L) or (B, H, L, L), got {dense_bias.shape}")
        s_BxHxLxL = s_BxHxLxL + dense_bias.astype(jnp.float32)

    if activation == "silu":
        n = L if norm_len is None else norm_len
        a_BxHxLxL = jnp.where(mask_Bx1xLxL, jax.nn.silu(s_BxHxLxL) / jnp.float32(n), 0.0)
    else:
        # A large finite negative (not -inf) keeps gradients finite on fully masked rows.
        s_BxHxLxL = jnp.where(mask_Bx1xLxL, s_BxHxLxL, jnp.finfo(jnp.float32).min / 2)
        e_BxHxLxL = jnp.where(
            mask_Bx1xLxL, jnp.exp(s_BxHxLxL - jnp.max(s_BxHxLxL, axis=-1, keepdims=True)), 0.0
        )
        denom_BxHxLx1 = jnp.sum(e_BxHxLxL, axis=-1, keepdims=True)
        a_BxHxLxL = e_BxHxLxL / jnp.where(denom_BxHxLx1 > 0, denom_BxHxLx1, 1.0)

    if dropout_rate > 0.0:
        if dropout_key is None:
            raise ValueError("attention dropout_rate > 0 needs a dropout_key")
        keep_BxHxLxL = jax.random.bernoulli(dropout_key, 1.0 - dropout_rate, a_BxHxLxL.shape)
        a_BxHxLxL = jnp.where(keep_BxHxLxL, a_BxHxLxL / (1.0 - dropout_rate), 0.0)

    o_BxLxHxDv = jnp.einsum("bhlm,bmhd->blhd", a_BxHxLxL, v_BxLxHxDv.astype(jnp.float32))
    valid_BxLx1x1 = (segment_ids_BxL != 0)[:, :, None, None]
    return jnp.where(valid_BxLx1x1, o_BxLxHxDv, 0.0).astype(out_dtype)
