"""Analytic training FLOPs, parameter counts and MFU for HSTU and SASRec (conventions: docs SCALING.md).

Training FLOPs = 3 × forward (backward = 2 × forward); a multiply-add is 2 FLOPs. Only matrix products are
counted (the linear layers, the two attention products and the loss head's scoring); LayerNorm, SiLU,
softmax, masking and the optimizer are left out, as in the usual model-FLOPs convention. Two accountings:

- "model" (`per_token` with a causal `n_eff`): the work a perfect kernel must do on REAL tokens — a query at
  position i of its user's sequence attends to i + 1 keys, so a dense causal row of n tokens has
  n_eff = (n + 1) / 2; packed rows count each user's own keys only. Padding is NOT counted. Used for MFU and
  for the compute axis of scaling laws.
- "dense" (`dense_step_flops`): what the plain-XLA step executes — every one of the B·L slots (padding
  included), the full L×L score matrix, and the loss head as implemented (dense scoring over V+1 rows).
  This is what `compiled.cost_analysis()` reports, up to element-wise work (tests/test_flops.py).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

from data_pipeline.splits import train_lengths
from lrm.losses import DENSE_SCORING_MAX_RATIO

_MODELS = ("hstu", "sasrec")
_LOSSES = ("sampled_softmax", "full_softmax")


@dataclasses.dataclass(frozen=True)
class Shape:
    """The sizes FLOPs and parameter counts depend on, read from a model config."""

    name: str
    num_items: int
    embed_dim: int
    num_blocks: int
    num_heads: int
    head_dim: int
    max_seq_len: int
    ffn_dim: int
    use_pos_bias: bool
    use_time_bias: bool
    num_time_buckets: int
    learnable_layernorm: bool

    @classmethod
    def from_config(cls, model_cfg: Any, num_items: int) -> "Shape":
        get = lambda k, d=None: getattr(model_cfg, k, d) if not isinstance(model_cfg, Mapping) else model_cfg.get(k, d)  # noqa: E731
        name = get("name")
        if name not in _MODELS:
            raise ValueError(f"flops: model name must be one of {_MODELS}, got {name!r}")
        if int(num_items) < 1:
            raise ValueError(f"flops: num_items must be >= 1, got {num_items}")
        return cls(name=name, num_items=int(num_items), embed_dim=int(get("embed_dim")),
                   num_blocks=int(get("num_blocks")), num_heads=int(get("num_heads")),
                   head_dim=int(get("head_dim")), max_seq_len=int(get("max_seq_len")),
                   ffn_dim=int(get("ffn_dim") or get("embed_dim")), use_pos_bias=bool(get("use_pos_bias", True)),
                   use_time_bias=bool(get("use_time_bias", True)), num_time_buckets=int(get("num_time_buckets", 128)),
                   learnable_layernorm=bool(get("learnable_layernorm", False)))


def param_counts(model_cfg: Any, num_items: int) -> dict[str, int]:
    """{"embedding", "non_embedding", "total"}: embedding = item table (V+1)·D + absolute position table N·D."""
    s = Shape.from_config(model_cfg, num_items)
    D, H, d, N = s.embed_dim, s.num_heads, s.head_dim, s.max_seq_len
    embedding = (s.num_items + 1) * D + N * D
    if s.name == "hstu":
        per_block = D * 4 * H * d + H * d * D + D
        per_block += (2 * N - 1 if s.use_pos_bias else 0) + (s.num_time_buckets + 1 if s.use_time_bias else 0)
        per_block += 2 * D + 2 * H * d if s.learnable_layernorm else 0
    else:
        F = s.ffn_dim
        per_block = D * 3 * H * d + 3 * H * d + H * d * D + D + D * F + F + F * D + D
        per_block += 4 * D if s.learnable_layernorm else 0
    non_embedding = s.num_blocks * per_block
    return {"embedding": embedding, "non_embedding": non_embedding, "total": embedding + non_embedding}


def causal_n_eff(lengths: np.ndarray) -> float:
    """Mean number of keys a real query attends to, for users of these lengths (each causal over itself).

    A user of n tokens has queries seeing 1..n keys: sum n(n+1)/2 over users ÷ total tokens. Packing several
    users in a row does not change this (attention never crosses users); padding adds nothing.
    """
    n = np.asarray(lengths, np.float64)
    if n.size == 0 or np.any(n < 0) or n.sum() == 0:
        raise ValueError(f"causal_n_eff needs non-negative lengths with at least one token, got {n[:8]}")
    return float(np.sum(n * (n + 1) / 2) / n.sum())


def train_n_eff(store_lengths: np.ndarray, protocol: str, max_len: int) -> float:
    """`causal_n_eff` of the train rows the pipeline builds: one segment per eligible user and epoch, its last
    `max_len + 1` train events, packed or not (packing never splits a user). Exact over whole epochs; a partial
    epoch draws users uniformly, so there it is the expectation. The trainer's `flops_seen` and the sweep's
    result line both come from this one function, so they cannot disagree.
    """
    if int(max_len) < 1:
        raise ValueError(f"train_n_eff: max_len must be >= 1, got {max_len}")
    t = train_lengths(store_lengths, protocol)
    rows = np.minimum(t[t >= 0], int(max_len) + 1)
    if rows.size == 0:
        raise ValueError(f"train_n_eff: no user has a train part under protocol {protocol!r}")
    return causal_n_eff(rows)


def _encoder_forward_per_token(s: Shape, n_eff: float) -> float:
    D, H, d = s.embed_dim, s.num_heads, s.head_dim
    if s.name == "hstu":
        linear = 2 * D * (2 * H * d + 2 * H * d) + 2 * H * d * D  # uvqk projection + output projection
    else:
        linear = 2 * D * 3 * H * d + 2 * H * d * D + 2 * 2 * D * s.ffn_dim  # qkv + out + two FFN layers
    attention = 2 * n_eff * H * (d + d)  # q·kᵀ (dqk) and A·v (dv) for n_eff keys
    return s.num_blocks * (linear + attention)


def _loss_forward_per_target(s: Shape, loss_cfg: Any) -> float:
    kind = _get(loss_cfg, "kind")
    if kind not in _LOSSES:
        raise ValueError(f"flops: loss.kind must be one of {_LOSSES}, got {kind!r}")
    if kind == "sampled_softmax":
        return 2.0 * (int(_get(loss_cfg, "num_negatives")) + 1) * s.embed_dim
    return 2.0 * s.num_items * s.embed_dim


def _get(cfg: Any, key: str) -> Any:
    return cfg[key] if isinstance(cfg, Mapping) else getattr(cfg, key)


def per_token(model_cfg: Any, loss_cfg: Any, num_items: int, *, n_eff: float) -> dict[str, float]:
    """Model training FLOPs per real token (every real token here is also a loss target), split by part."""
    s = Shape.from_config(model_cfg, num_items)
    enc = _encoder_forward_per_token(s, n_eff)
    D, H, d = s.embed_dim, s.num_heads, s.head_dim
    attention = s.num_blocks * 2 * n_eff * H * 2 * d
    loss = _loss_forward_per_target(s, loss_cfg)
    return {"linear": 3.0 * (enc - attention), "attention": 3.0 * attention, "loss": 3.0 * loss,
            "total": 3.0 * (enc + loss)}


def train_flops(model_cfg: Any, loss_cfg: Any, num_items: int, *, tokens: float, targets: float | None = None,
                n_eff: float) -> float:
    """Model FLOPs of training on `tokens` real tokens with `targets` loss targets (default: = tokens)."""
    s = Shape.from_config(model_cfg, num_items)
    targets = tokens if targets is None else targets
    return 3.0 * (_encoder_forward_per_token(s, n_eff) * tokens + _loss_forward_per_target(s, loss_cfg) * targets)


def dense_step_flops(model_cfg: Any, loss_cfg: Any, num_items: int, *, batch_size: int, row_len: int,
                     train: bool = True) -> float:
    """Matmul FLOPs the plain-XLA step executes on a [batch_size, row_len] batch: every slot, full L×L
    scores, and the loss head as `lrm.losses` computes it (dense scoring: all V+1 rows and the positive's;
    gather: K+1 rows; full softmax: the V real rows). `train=False`: the forward encoder only (no loss)."""
    s = Shape.from_config(model_cfg, num_items)
    slots = batch_size * row_len
    encoder = _encoder_forward_per_token(s, float(row_len)) * slots
    if not train:
        return encoder
    kind = _get(loss_cfg, "kind")
    if kind == "sampled_softmax":
        scoring, K = _get(loss_cfg, "scoring"), int(_get(loss_cfg, "num_negatives"))
        dense = scoring == "dense" or (scoring == "auto" and s.num_items + 1 <= DENSE_SCORING_MAX_RATIO * K)
        # dense: all V+1 rows by one matmul plus the positive's own row (a batched dot); gather: K+1 rows.
        loss = 2.0 * (s.num_items + 2 if dense else K + 1) * s.embed_dim * slots
    else:
        # V logits by one matmul; the positive's own logit is a multiply + sum (element-wise, not counted).
        loss = 2.0 * s.num_items * s.embed_dim * slots
    return 3.0 * (encoder + loss)


# Peak dense FLOP/s per chip from the vendors' data sheets (no sparsity). CPU: unknown, MFU not reported.
# "tensorfloat32": float32 matmuls on NVIDIA tensor cores (what JAX's default precision runs on Ampere+).
PEAK_FLOPS: dict[str, dict[str, float]] = {
    "h100": {"bfloat16": 989e12, "tensorfloat32": 495e12, "float32": 67e12},  # H100 SXM
    "h200": {"bfloat16": 989e12, "tensorfloat32": 495e12, "float32": 67e12},  # same compute die as H100 SXM
    "a100": {"bfloat16": 312e12, "tensorfloat32": 156e12, "float32": 19.5e12},
    "tpu v4": {"bfloat16": 275e12, "float32": 275e12 / 4},
    "tpu v5 lite": {"bfloat16": 197e12, "float32": 197e12 / 4},  # v5e reports device_kind "TPU v5 lite"
    "tpu v5e": {"bfloat16": 197e12, "float32": 197e12 / 4},
    "tpu v5p": {"bfloat16": 459e12, "float32": 459e12 / 4},
    "tpu v5": {"bfloat16": 459e12, "float32": 459e12 / 4},  # v5p reports "TPU v5"
}

_FAST_PRECISIONS = (None, "default", "fastest", "bfloat16")
_EXACT_PRECISIONS = ("highest", "float32", "F32_F32_F32")


def matmul_dtype(compute_dtype: str, device_kind: str, precision: str | None = None) -> str | None:
    """The PEAK_FLOPS column that bounds the model's matmuls, or None when it is not known.

    bfloat16 compute runs bfloat16 matmuls. float32 compute follows `precision`
    (`jax.config.jax_default_matmul_precision`): JAX's default runs float32 dots as TF32 on NVIDIA GPUs and as
    one bfloat16 pass on TPU, so the float32 column would overstate MFU there; "highest" keeps true float32.
    Other precisions (multi-pass modes) have no column here: None, and MFU is not reported.
    """
    if compute_dtype == "bfloat16":
        return "bfloat16"
    if compute_dtype != "float32":
        raise ValueError(f"matmul_dtype: compute dtype must be float32 or bfloat16, got {compute_dtype!r}")
    precision = None if precision is None else str(precision)
    if precision in _EXACT_PRECISIONS:
        return "float32"
    if precision in _FAST_PRECISIONS:
        return "bfloat16" if "tpu" in device_kind.lower() else "tensorfloat32"
    return None


def peak_flops(device_kind: str, dtype: str | None = "bfloat16") -> float | None:
    """Peak FLOP/s of one device of `device_kind` (jax.devices()[0].device_kind), or None when unknown (CPU,
    or `dtype` None as `matmul_dtype` gives for an unlisted precision)."""
    kind = device_kind.lower()
    if "cpu" in kind or dtype is None:
        return None
    # Longest key first so "tpu v5 lite" wins over "tpu v5".
    for key in sorted(PEAK_FLOPS, key=len, reverse=True):
        if key in kind:
            table = PEAK_FLOPS[key]
            if dtype not in table:
                raise ValueError(f"no peak FLOP/s for dtype {dtype!r} on {device_kind!r}; known: {sorted(table)}")
            return table[dtype]
    return None


def mfu(model_flops: float, seconds: float, *, device_kind: str, num_devices: int = 1,
        dtype: str | None = "bfloat16") -> float | None:
    """Model FLOPs utilisation: (model FLOPs / s) ÷ (num_devices × peak); None where the peak is unknown."""
    if seconds <= 0:
        raise ValueError(f"mfu: seconds must be > 0, got {seconds}")
    peak = peak_flops(device_kind, dtype)
    return None if peak is None else model_flops / seconds / (num_devices * peak)
