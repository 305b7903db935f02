"""HSTU attention: the one entry point all model attention goes through.

`impl="xla"` runs the plain-jnp reference (`reference.py`). `impl="pallas"` runs the kernel module for the
current backend (`pallas_gpu.py` / `pallas_tpu.py` next to this file, each defining `hstu_attention` with
this exact signature minus `impl`; on CPU the GPU kernels in Pallas interpret mode). `impl="auto"` uses
that kernel when its module exists and the backend is not CPU, otherwise the reference. A new backend is
one entry in `_PALLAS_MODULES`.
"""
from __future__ import annotations

import functools
import importlib
from types import ModuleType
from typing import Callable

import jax

from lrm.kernels.hstu_attention import relative_bias
from lrm.kernels.hstu_attention.reference import hstu_attention_reference

IMPLS = ("auto", "xla", "pallas")
_PALLAS_MODULES = {"gpu": "pallas_gpu", "tpu": "pallas_tpu"}


def _pallas_module(backend: str) -> ModuleType | None:
    """The kernel module for `backend`, or None when it has not been written (yet)."""
    name = _PALLAS_MODULES.get(backend)
    if name is None:
        return None
    full_name = f"{__name__}.{name}"
    try:
        return importlib.import_module(full_name)
    except ModuleNotFoundError as e:
        if e.name == full_name:
            return None
        raise  # the kernel module exists but one of its own imports failed: surface that


def _resolve_impl(impl: str) -> Callable[..., jax.Array]:
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "xla":
        return hstu_attention_reference
    backend = jax.default_backend()
    if impl == "pallas" and backend == "cpu":
        # No kernel compiles for CPU: run the GPU kernels in Pallas interpret mode (slow; tests only).
        return functools.partial(importlib.import_module(f"{__name__}.pallas_gpu").hstu_attention, interpret=True)
    module = _pallas_module(backend)
    if impl == "auto":
        return hstu_attention_reference if module is None else module.hstu_attention
    if module is None:
        expected = _PALLAS_MODULES.get(backend, f"pallas_{backend}")
        raise NotImplementedError(
            f"impl='pallas' has no kernel for backend {backend!r}: add "
            f"lrm/kernels/hstu_attention/{expected}.py defining hstu_attention(...) with the signature of "
            f"lrm.kernels.hstu_attention.hstu_attention (minus impl), or use impl='xla'"
        )
    return module.hstu_attention


def hstu_attention(
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
    impl: str = "auto",
) -> jax.Array:
    """Masked HSTU (pointwise SiLU) or softmax attention; returns (B, L, H, Dv) in q's dtype.

    Mask: causal (j ≤ i) ∧ valid(i) ∧ valid(j) ∧ same segment, plus the target rule (the last
    `num_targets_B` valid tokens see the history and themselves, not each other) and `i - j < window`.
    Validity comes from `segment_ids_BxL` (0 = padding), else `lengths_B` (valid prefix), else all valid.
    Scores `alpha·q·kᵀ + pos_bias_table[N-1 + j-i] + time_bias_table[bucket(query_ts[i] - ts[j])] +
    dense_bias`; "silu": `silu(scores) / norm_len` (norm_len = padded max length N, default L);
    "softmax": softmax over visible keys. `dropout_rate`/`dropout_key`: dropout on the attention matrix
    (SASRec's torch MultiheadAttention dropout). Rows of invalid queries are 0. f32 inside.
    """
    fn = _resolve_impl(impl)
    return fn(
        q_BxLxHxD,
        k_BxLxHxD,
        v_BxLxHxDv,
        segment_ids_BxL=segment_ids_BxL,
        lengths_B=lengths_B,
        num_targets_B=num_targets_B,
        window=window,
        pos_bias_table=pos_bias_table,
        time_bias_table=time_bias_table,
        timestamps_BxL=timestamps_BxL,
        query_timestamps_BxL=query_timestamps_BxL,
        dense_bias=dense_bias,
        alpha=alpha,
        norm_len=norm_len,
        activation=activation,
        num_time_buckets=num_time_buckets,
        time_bucket_divisor=time_bucket_divisor,
        dropout_rate=dropout_rate,
        dropout_key=dropout_key,
    )


__all__ = ["hstu_attention", "hstu_attention_reference", "relative_bias", "IMPLS"]
