"""SASRec, the softmax-Transformer baseline of the HSTU paper's tables.

Matches meta-recsys/generative-recommenders, generative_recommenders/research/modeling/sequential/sasrec.py
(SASRec._run_one_layer, StandardAttentionFF, SASRec.reset_state). Per block:
  Q = LN(x); a = MHA(query=Q, key=x, value=x) causal; h = LN(Q + a); x = (h + FFN(h)) * valid
with `F.layer_norm` (no affine, eps 1e-8) and torch MultiheadAttention (in-projection with bias, dropout on
the attention weights at the FFN dropout rate, out-projection with bias). The reference has no final
LayerNorm: its output postprocessor only L2-normalises.
`num_candidates=M` scores M-FALCON candidates as in lrm/models/hstu.py (no relative bias here: the absolute
position embedding of `positions_BxL` places every candidate at position n).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from lrm.kernels.hstu_attention import IMPLS, hstu_attention
from lrm.models import embeddings, stack
from lrm.models.hstu import DTYPES, LayerNorm, check_choice, embed_tokens

LN_EPS = 1e-8  # the reference's F.layer_norm(..., eps=1e-8)


@dataclasses.dataclass(frozen=True)
class SASRecConfig:
    """Typed, validated SASRec hyper-parameters (built from the ConfigDict by `lrm.models.build_model`)."""

    embed_dim: int
    num_blocks: int
    num_heads: int
    head_dim: int
    max_seq_len: int
    ffn_dim: int
    dropout: float = 0.0
    attn_dropout: float = 0.0  # the reference's MultiheadAttention uses dropout=ffn_dropout_rate here
    learnable_layernorm: bool = False
    attention_impl: str = "auto"
    dtype: str = "float32"
    remat: str = "none"  # per-block rematerialisation policy (lrm.models.stack.REMAT_POLICIES)
    scan_layers: bool = False

    def __post_init__(self) -> None:
        for name in ("embed_dim", "num_blocks", "num_heads", "head_dim", "max_seq_len", "ffn_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"SASRec config: {name} must be a positive int, got {value!r}")
        if self.num_heads * self.head_dim != self.embed_dim:
            raise ValueError(
                f"SASRec config: num_heads * head_dim must equal embed_dim (torch MultiheadAttention), got "
                f"{self.num_heads} * {self.head_dim} != {self.embed_dim}"
            )
        for name in ("dropout", "attn_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"SASRec config: {name} must be in [0, 1), got {value!r}")
        check_choice("attention_impl", self.attention_impl, IMPLS)
        check_choice("dtype", self.dtype, tuple(DTYPES))
        stack.check_remat(self.remat)


def _xavier_normal(key: jax.Array, shape: tuple[int, ...], fan_in: int, fan_out: int) -> jax.Array:
    return math.sqrt(2.0 / (fan_in + fan_out)) * jax.random.normal(key, shape, jnp.float32)


def _uniform(key: jax.Array, shape: tuple[int, ...], bound: float) -> jax.Array:
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound)


class SASRecBlock(nnx.Module):
    def __init__(self, cfg: SASRecConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        D, H, d, F = cfg.embed_dim, cfg.num_heads, cfg.head_dim, cfg.ffn_dim
        self.attn_norm = LayerNorm(D, eps=LN_EPS, learnable=cfg.learnable_layernorm)
        self.ffn_norm = LayerNorm(D, eps=LN_EPS, learnable=cfg.learnable_layernorm)
        # reset_state: xavier_normal_ on every >=2-D parameter; torch's (3D, D) in_proj_weight has
        # fan_in = D, fan_out = 3D. 1-D params keep torch defaults (MHA biases 0, Conv1d biases uniform).
        self.in_kernel = nnx.Param(
            _xavier_normal(rngs.params(), (D, 3, H, d), D, 3 * D),
            logical_axes=("embed", "qkv", "heads", "head_dim"),
        )
        self.in_bias = nnx.Param(jnp.zeros((3, H, d), jnp.float32), logical_axes=("qkv", "heads", "head_dim"))
        self.out_kernel = nnx.Param(
            _xavier_normal(rngs.params(), (H, d, D), D, D), logical_axes=("heads", "head_dim", "embed")
        )
        self.out_bias = nnx.Param(jnp.zeros((D,), jnp.float32), logical_axes=("embed",))
        # StandardAttentionFF: Conv1d(D→F, k=1), ReLU, Dropout, Conv1d(F→D, k=1), Dropout, + residual.
        self.ffn_in_kernel = nnx.Param(_xavier_normal(rngs.params(), (D, F), D, F), logical_axes=("embed", "mlp"))
        self.ffn_in_bias = nnx.Param(_uniform(rngs.params(), (F,), 1.0 / math.sqrt(D)), logical_axes=("mlp",))
        self.ffn_out_kernel = nnx.Param(_xavier_normal(rngs.params(), (F, D), F, D), logical_axes=("mlp", "embed"))
        self.ffn_out_bias = nnx.Param(_uniform(rngs.params(), (D,), 1.0 / math.sqrt(F)), logical_axes=("embed",))

    def __call__(
        self,
        x_BxLxD: jax.Array,
        batch: Mapping[str, jax.Array],
        valid_BxL: jax.Array,
        *,
        deterministic: bool,
        dropout_key: jax.Array | None,
        num_candidates: int = 0,
    ) -> jax.Array:
        cfg = self.cfg
        dtype = DTYPES[cfg.dtype]
        B, L, D = x_BxLxD.shape
        w_Dx3xHxd = self.in_kernel[...].astype(dtype)
        b_3xHxd = self.in_bias[...]
        q_BxLxD = self.attn_norm(x_BxLxD)
        q_BxLxHxd = jnp.einsum("bld,dhe->blhe", q_BxLxD.astype(dtype), w_Dx3xHxd[:, 0]) + b_3xHxd[0]
        k_BxLxHxd = jnp.einsum("bld,dhe->blhe", x_BxLxD.astype(dtype), w_Dx3xHxd[:, 1]) + b_3xHxd[1]
        v_BxLxHxd = jnp.einsum("bld,dhe->blhe", x_BxLxD.astype(dtype), w_Dx3xHxd[:, 2]) + b_3xHxd[2]
        attn_rate = 0.0 if deterministic else cfg.attn_dropout
        o_BxLxHxd = hstu_attention(
            q_BxLxHxd.astype(dtype),
            k_BxLxHxd.astype(dtype),
            v_BxLxHxd.astype(dtype),
            segment_ids_BxL=jnp.asarray(batch["segment_ids_BxL"]),
            lengths_B=jnp.asarray(batch["lengths_B"]),
            num_targets_B=jnp.full((B,), num_candidates, jnp.int32) if num_candidates else None,
            alpha=1.0 / math.sqrt(cfg.head_dim),
            activation="softmax",
            dropout_rate=attn_rate,
            dropout_key=embeddings.site_key(dropout_key, 0) if attn_rate > 0 else None,
            impl=cfg.attention_impl,
        )
        mha_BxLxD = jnp.einsum("blhe,hed->bld", o_BxLxHxd, self.out_kernel[...].astype(dtype))
        h_BxLxD = self.ffn_norm(q_BxLxD + mha_BxLxD.astype(jnp.float32) + self.out_bias[...])

        f_BxLxF = jnp.einsum("bld,df->blf", h_BxLxD.astype(dtype), self.ffn_in_kernel[...].astype(dtype))
        f_BxLxF = jax.nn.relu(f_BxLxF.astype(jnp.float32) + self.ffn_in_bias[...])
        f_BxLxF = embeddings.dropout(
            f_BxLxF, cfg.dropout, embeddings.site_key(dropout_key, 1), deterministic=deterministic
        )
        f_BxLxD = jnp.einsum("blf,fd->bld", f_BxLxF.astype(dtype), self.ffn_out_kernel[...].astype(dtype))
        f_BxLxD = embeddings.dropout(
            f_BxLxD.astype(jnp.float32) + self.ffn_out_bias[...],
            cfg.dropout,
            embeddings.site_key(dropout_key, 2),
            deterministic=deterministic,
        )
        return jnp.where(valid_BxL[..., None], h_BxLxD + f_BxLxD, 0.0)


class SASRec(nnx.Module):
    """Item ids → L2-normalised user embeddings (B, L, D) with a causal softmax Transformer."""

    def __init__(self, cfg: SASRecConfig, *, num_items: int, rngs: nnx.Rngs):
        self.cfg = cfg
        self.num_items = num_items
        D = cfg.embed_dim
        # SASRec.reset_state skips `_input_features_preproc`, so the position table keeps the preprocessor's
        # truncated_normal(std=sqrt(1/D)).
        self.embed = embeddings.InputEmbedding(
            num_items, D, cfg.max_seq_len, pos_init=embeddings.truncated_normal_init(math.sqrt(1.0 / D)), rngs=rngs
        )
        self.blocks = nnx.List([SASRecBlock(cfg, rngs=rngs) for _ in range(cfg.num_blocks)])

    def __call__(
        self,
        batch: Mapping[str, jax.Array],
        *,
        deterministic: bool,
        dropout_key: jax.Array | None = None,
        num_candidates: int = 0,
    ) -> jax.Array:
        """`num_candidates`: the last that many valid tokens of every row are candidates (module docstring)."""
        embeddings.check_item_ids(batch["item_ids_BxL"], self.num_items)
        if isinstance(num_candidates, bool) or not isinstance(num_candidates, int) or num_candidates < 0:
            raise ValueError(f"num_candidates must be an int >= 0, got {num_candidates!r}")
        embed = self.embed if num_candidates == 0 else functools.partial(embed_tokens, self.embed)
        x_BxLxD, valid_BxL = embed(
            batch,
            rate=self.cfg.dropout,
            deterministic=deterministic,
            dropout_key=embeddings.site_key(dropout_key, 0),
        )

        def apply(block, x_BxLxD, block_index):
            return block(
                x_BxLxD,
                batch,
                valid_BxL,
                deterministic=deterministic,
                dropout_key=embeddings.site_key(dropout_key, block_index + 1),
                num_candidates=num_candidates,
            )

        x_BxLxD = stack.run_blocks(list(self.blocks), x_BxLxD, apply, remat=self.cfg.remat,
                                   scan=self.cfg.scan_layers)
        return embeddings.l2_normalize(x_BxLxD, eps=1e-6)

    def item_table(self) -> jax.Array:
        """Raw (num_items + 1, D) item table (not the sqrt(D)-scaled input)."""
        return self.embed.item.table[...]

    @property
    def item_embeddings(self) -> jax.Array:
        return self.item_table()
