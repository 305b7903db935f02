"""HSTU (Zhai et al., ICML 2024), the research variant behind the published tables, with STU switches.

Matches meta-recsys/generative-recommenders, generative_recommenders/research/modeling/sequential/hstu.py
(SequentialTransductionUnitJagged, RelativeBucketedTimeAndPositionBasedBias, HSTU.reset_params) as spelled
out in docs HSTU_REFERENCE.md. Per layer:
  xn = LN(x); u, v, q, k = split(silu(xn @ W_uvqk)); A = silu(q·kᵀ + rab) / N (causal);
  y = u * LN(A @ v); out = x + Linear(dropout(y)).
No FFN, no final LayerNorm; the stack output is L2-normalised.

`num_candidates=M` (M-FALCON, the paper's many-candidate inference): the last M valid tokens of each row are
candidates that see the history and themselves, not each other; every candidate sits at position n (the
next event's) and the relative position bias is indexed by `positions_BxL`, so each candidate's output is
what the model gives for "history, then this candidate", for all M candidates in one pass.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from lrm.kernels.hstu_attention import IMPLS, hstu_attention, relative_bias
from lrm.models import embeddings, stack

QK_SCALES = ("none", "rsqrt")
SILU_ON = ("uvqk", "u")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class HSTUConfig:
    """Typed, validated HSTU hyper-parameters (built from the ConfigDict by `lrm.models.build_model`)."""

    embed_dim: int
    num_blocks: int
    num_heads: int
    head_dim: int
    max_seq_len: int  # N: position tables, relative-bias tables and the attention normaliser n
    dropout: float = 0.0
    attn_dropout: float = 0.0
    use_pos_bias: bool = True
    use_time_bias: bool = True
    num_time_buckets: int = 128
    time_bucket_divisor: float = 0.301
    learnable_layernorm: bool = False
    qk_scale: str = "none"
    silu_on: str = "uvqk"
    attention_impl: str = "auto"
    dtype: str = "float32"
    remat: str = "none"  # per-block rematerialisation policy (lrm.models.stack.REMAT_POLICIES)
    scan_layers: bool = False

    def __post_init__(self) -> None:
        for name in ("embed_dim", "num_blocks", "num_heads", "head_dim", "max_seq_len", "num_time_buckets"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"HSTU config: {name} must be a positive int, got {value!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"HSTU config: dropout must be in [0, 1), got {self.dropout!r}")
        if self.attn_dropout != 0.0:
            # The reference stores attn_dropout_ratio but never applies it on the rel_bias path.
            raise ValueError(
                f"HSTU config: attn_dropout={self.attn_dropout!r} is not supported; the research HSTU has no "
                "attention dropout (only the linear dropout `dropout`)"
            )
        if not self.time_bucket_divisor > 0:
            raise ValueError(f"HSTU config: time_bucket_divisor must be > 0, got {self.time_bucket_divisor!r}")
        check_choice("qk_scale", self.qk_scale, QK_SCALES)
        check_choice("silu_on", self.silu_on, SILU_ON)
        check_choice("attention_impl", self.attention_impl, IMPLS)
        check_choice("dtype", self.dtype, tuple(DTYPES))
        stack.check_remat(self.remat)

    @property
    def alpha(self) -> float:
        return 1.0 if self.qk_scale == "none" else 1.0 / math.sqrt(self.head_dim)


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"model config: {name} must be one of {choices}, got {value!r}")


def check_num_candidates(num_candidates: object, attention_impl: str) -> str:
    """The attention impl a call with `num_candidates` runs: the given one, or "xla" for candidates.

    Candidates share one position, so the in-kernel position bias (indexed by slot) cannot score them: the
    Pallas kernels are not used for such calls (impl "auto" falls back to "xla", "pallas" is an error).
    """
    if isinstance(num_candidates, bool) or not isinstance(num_candidates, int) or num_candidates < 0:
        raise ValueError(f"num_candidates must be an int >= 0, got {num_candidates!r}")
    if num_candidates == 0:
        return attention_impl
    if attention_impl == "pallas":
        raise NotImplementedError(
            f"num_candidates={num_candidates} (M-FALCON candidate scoring) is not supported with "
            "model.attention_impl='pallas': the kernels index the position bias by slot, candidates share "
            "one position; use model.attention_impl='xla' (or 'auto', which falls back to it) for these calls")
    return "xla"


def embed_tokens(embed: embeddings.InputEmbedding, batch: Mapping[str, jax.Array], *, rate: float,
                 deterministic: bool, dropout_key: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    """`embed(batch)` token by token, for candidate rows: they may hold more slots than the position table
    has rows (all candidates share position n), so only positions, not the slot count, must fit the table."""
    ids_BxL = jnp.asarray(batch["item_ids_BxL"])
    B, L = ids_BxL.shape
    valid_BxL = embeddings.valid_mask_BxL(batch)
    valid_T = valid_BxL.reshape(B * L).astype(jnp.int32)
    tokens = {"item_ids_BxL": ids_BxL.reshape(B * L, 1),
              "positions_BxL": jnp.asarray(batch["positions_BxL"]).reshape(B * L, 1),
              "segment_ids_BxL": valid_T[:, None], "lengths_B": valid_T}
    x_Tx1xD, _ = embed(tokens, rate=rate, deterministic=deterministic, dropout_key=dropout_key)
    return x_Tx1xD.reshape(B, L, -1), valid_BxL


class LayerNorm(nnx.Module):
    """LayerNorm over the last axis in f32; affine (torch default init: ones/zeros) only when learnable."""

    def __init__(self, dim: int, *, eps: float, learnable: bool):
        self.eps = eps
        self.learnable = learnable
        if learnable:
            self.scale = nnx.Param(jnp.ones((dim,), jnp.float32), logical_axes=("norm",))
            self.bias = nnx.Param(jnp.zeros((dim,), jnp.float32), logical_axes=("norm",))

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(jnp.float32)
        mean = jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
        y = (x - mean) * jax.lax.rsqrt(var + self.eps)
        if self.learnable:
            y = y * self.scale[...] + self.bias[...]
        return y


class RelativeBias(nnx.Module):
    """One position table (2N-1) and one time table (num_buckets+1) per layer, shared by heads, normal(0.02)."""

    def __init__(self, cfg: HSTUConfig, *, rngs: nnx.Rngs):
        init = embeddings.normal_init(0.02)
        self.pos = (
            nnx.Param(init(rngs.params(), (2 * cfg.max_seq_len - 1,)), logical_axes=("position",))
            if cfg.use_pos_bias
            else None
        )
        self.time = (
            nnx.Param(init(rngs.params(), (cfg.num_time_buckets + 1,)), logical_axes=("time_bucket",))
            if cfg.use_time_bias
            else None
        )

    def tables(self) -> tuple[jax.Array | None, jax.Array | None]:
        return (
            None if self.pos is None else self.pos[...],
            None if self.time is None else self.time[...],
        )


class HSTULayer(nnx.Module):
    """One sequential transduction unit (no FFN)."""

    def __init__(self, cfg: HSTUConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        D, H, d = cfg.embed_dim, cfg.num_heads, cfg.head_dim
        eps, learnable = 1e-6, cfg.learnable_layernorm
        self.input_norm = LayerNorm(D, eps=eps, learnable=learnable)
        # Reference `_uvqk`: (D, 2·H·dv + 2·H·dqk), normal(0, 0.02), no bias, split U|V|Q|K with each block
        # laid out head-major. (D, 4, H, d) is that same matrix with the heads axis exposed for sharding.
        self.uvqk = nnx.Param(
            embeddings.normal_init(0.02)(rngs.params(), (D, 4, H, d)),
            logical_axes=("embed", "qkv", "heads", "head_dim"),
        )
        self.attn_norm = LayerNorm(H * d, eps=eps, learnable=learnable)
        # Reference `_o = Linear(H·dv, D)`: xavier_uniform_ weight; bias keeps torch's default
        # U(-1/sqrt(fan_in), 1/sqrt(fan_in)). HSTU.reset_params skips everything under `_hstu`.
        limit = math.sqrt(6.0 / (H * d + D))
        self.out_kernel = nnx.Param(
            jax.random.uniform(rngs.params(), (H, d, D), jnp.float32, -limit, limit),
            logical_axes=("heads", "head_dim", "embed"),
        )
        bound = 1.0 / math.sqrt(H * d)
        self.out_bias = nnx.Param(
            jax.random.uniform(rngs.params(), (D,), jnp.float32, -bound, bound), logical_axes=("embed",)
        )
        self.rel_bias = RelativeBias(cfg, rngs=rngs)

    def __call__(
        self,
        x_BxLxD: jax.Array,
        batch: Mapping[str, jax.Array],
        *,
        deterministic: bool,
        dropout_key: jax.Array | None,
        num_candidates: int = 0,
    ) -> jax.Array:
        cfg = self.cfg
        dtype = DTYPES[cfg.dtype]
        B, L, _ = x_BxLxD.shape
        impl = check_num_candidates(num_candidates, cfg.attention_impl)
        xn_BxLxD = self.input_norm(x_BxLxD)
        h_BxLx4xHxd = jnp.einsum("bld,dkhe->blkhe", xn_BxLxD.astype(dtype), self.uvqk[...].astype(dtype))
        if cfg.silu_on == "uvqk":
            h_BxLx4xHxd = jax.nn.silu(h_BxLx4xHxd)
        u_BxLxHxd, v_BxLxHxd, q_BxLxHxd, k_BxLxHxd = (h_BxLx4xHxd[:, :, i] for i in range(4))
        if cfg.silu_on == "u":
            u_BxLxHxd = jax.nn.silu(u_BxLxHxd)

        pos_table, time_table = self.rel_bias.tables()
        timestamps_BxL = None if time_table is None else jnp.asarray(batch["timestamps_BxL"])
        query_timestamps_BxL = None if time_table is None else jnp.asarray(batch["target_timestamps_BxL"])
        dense_bias_BxLxL = num_targets_B = None
        if num_candidates:
            # The whole relative bias, indexed by positions (candidates share position n), enters as a dense
            # bias in the order the reference adds it; the tables are not passed again.
            dense_bias_BxLxL = relative_bias.relative_bias_BxLxL(
                L=L, B=B, pos_bias_table=pos_table, time_bias_table=time_table, timestamps_BxL=timestamps_BxL,
                query_timestamps_BxL=query_timestamps_BxL, num_time_buckets=cfg.num_time_buckets,
                time_bucket_divisor=cfg.time_bucket_divisor, positions_BxL=jnp.asarray(batch["positions_BxL"]))
            pos_table = time_table = timestamps_BxL = query_timestamps_BxL = None
            num_targets_B = jnp.full((B,), num_candidates, jnp.int32)
        o_BxLxHxd = hstu_attention(
            q_BxLxHxd,
            k_BxLxHxd,
            v_BxLxHxd,
            segment_ids_BxL=jnp.asarray(batch["segment_ids_BxL"]),
            lengths_B=jnp.asarray(batch["lengths_B"]),
            num_targets_B=num_targets_B,
            pos_bias_table=pos_table,
            time_bias_table=time_table,
            timestamps_BxL=timestamps_BxL,
            query_timestamps_BxL=query_timestamps_BxL,
            dense_bias=dense_bias_BxLxL,
            alpha=cfg.alpha,
            norm_len=cfg.max_seq_len,
            activation="silu",
            num_time_buckets=cfg.num_time_buckets,
            time_bucket_divisor=cfg.time_bucket_divisor,
            impl=impl,
        )
        o_BxLxHd = self.attn_norm(o_BxLxHxd.reshape(B, L, -1))
        y_BxLxHd = u_BxLxHxd.reshape(B, L, -1).astype(jnp.float32) * o_BxLxHd
        # Reference: `self._o(F.dropout(o_input, p=dropout_ratio)) + x` (linear dropout, before the Linear).
        y_BxLxHd = embeddings.dropout(y_BxLxHd, cfg.dropout, dropout_key, deterministic=deterministic)
        y_BxLxHxd = y_BxLxHd.reshape(B, L, cfg.num_heads, cfg.head_dim)
        out_BxLxD = jnp.einsum("blhe,hed->bld", y_BxLxHxd.astype(dtype), self.out_kernel[...].astype(dtype))
        return x_BxLxD + out_BxLxD.astype(jnp.float32) + self.out_bias[...]


class HSTU(nnx.Module):
    """Item ids + timestamps → L2-normalised user embeddings (B, L, D), one per position."""

    def __init__(self, cfg: HSTUConfig, *, num_items: int, rngs: nnx.Rngs):
        self.cfg = cfg
        self.num_items = num_items
        N, D = cfg.max_seq_len, cfg.embed_dim
        # The reference's HSTU.reset_params re-initialises every parameter outside `_hstu`/`_embedding_module`
        # with xavier_normal_, which includes the input preprocessor's (N, D) position table.
        self.embed = embeddings.InputEmbedding(
            num_items, D, N, pos_init=embeddings.normal_init(math.sqrt(2.0 / (N + D))), rngs=rngs
        )
        self.layers = nnx.List([HSTULayer(cfg, rngs=rngs) for _ in range(cfg.num_blocks)])

    def __call__(
        self,
        batch: Mapping[str, jax.Array],
        *,
        deterministic: bool,
        dropout_key: jax.Array | None = None,
        num_candidates: int = 0,
    ) -> jax.Array:
        """`num_candidates`: the last that many valid tokens of every row are M-FALCON candidates (module
        docstring); 0 is the ordinary causal model."""
        embeddings.check_item_ids(batch["item_ids_BxL"], self.num_items)
        check_num_candidates(num_candidates, self.cfg.attention_impl)
        embed = self.embed if num_candidates == 0 else functools.partial(embed_tokens, self.embed)
        x_BxLxD, valid_BxL = embed(
            batch,
            rate=self.cfg.dropout,
            deterministic=deterministic,
            dropout_key=embeddings.site_key(dropout_key, 0),
        )

        def apply(layer, x_BxLxD, layer_index):
            x_BxLxD = layer(
                x_BxLxD,
                batch,
                deterministic=deterministic,
                dropout_key=embeddings.site_key(dropout_key, layer_index + 1),
                num_candidates=num_candidates,
            )
            # Padded slots do not exist in the reference's jagged layout; keep them at zero.
            return jnp.where(valid_BxL[..., None], x_BxLxD, 0.0)

        x_BxLxD = stack.run_blocks(list(self.layers), x_BxLxD, apply, remat=self.cfg.remat,
                                   scan=self.cfg.scan_layers)
        return embeddings.l2_normalize(x_BxLxD, eps=1e-6)

    def item_table(self) -> jax.Array:
        """Raw (num_items + 1, D) item table (not the sqrt(D)-scaled input)."""
        return self.embed.item.table[...]

    @property
    def item_embeddings(self) -> jax.Array:
        return self.item_table()
