"""Models: batch → L2-normalised user embeddings (B, L, D). `build_model` is the one constructor."""
from __future__ import annotations

from typing import Any

from flax import nnx

from lrm.models.hstu import HSTU, HSTUConfig
from lrm.models.sasrec import SASRec, SASRecConfig

MODEL_NAMES = ("hstu", "sasrec")

_REQUIRED = ("embed_dim", "num_blocks", "num_heads", "head_dim", "max_seq_len", "dropout")
_HSTU_OPTIONAL = (
    "attn_dropout",
    "use_pos_bias",
    "use_time_bias",
    "num_time_buckets",
    "time_bucket_divisor",
    "learnable_layernorm",
    "qk_scale",
    "silu_on",
    "attention_impl",
    "dtype",
    "remat",
    "scan_layers",
)
_SASREC_OPTIONAL = ("attn_dropout", "learnable_layernorm", "attention_impl", "dtype", "remat", "scan_layers")
_BOOLS = ("use_pos_bias", "use_time_bias", "learnable_layernorm", "scan_layers")
_FLOATS = ("dropout", "attn_dropout", "time_bucket_divisor")
_MISSING = object()


def _field(model_cfg: Any, name: str) -> Any:
    return getattr(model_cfg, name, _MISSING)


def _collect(model_cfg: Any, required: tuple[str, ...], optional: tuple[str, ...]) -> dict[str, Any]:
    missing = [name for name in required if _field(model_cfg, name) is _MISSING]
    if missing:
        raise ValueError(f"model config is missing required fields {missing}")
    kwargs = {name: _field(model_cfg, name) for name in required}
    kwargs.update({n: _field(model_cfg, n) for n in optional if _field(model_cfg, n) is not _MISSING})
    for name, value in kwargs.items():
        if name in _BOOLS and not isinstance(value, bool):
            raise ValueError(f"model config: {name} must be a bool, got {value!r}")
        if name in _FLOATS:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"model config: {name} must be a number, got {value!r}")
            kwargs[name] = float(value)
    return kwargs


def build_model(model_cfg: Any, *, num_items: int, rngs: nnx.Rngs) -> nnx.Module:
    """HSTU or SASRec from a ConfigDict (or any attribute object); bad or missing fields raise ValueError.

    Fields a model does not use are ignored (SASRec ignores the relative-bias and STU switches; HSTU ignores
    ffn_dim). Optional fields default to the research HSTU: pos+time bias, 128 buckets / 0.301, no affine
    LayerNorm, qk_scale "none", silu_on "uvqk", attention_impl "auto", float32, attn_dropout 0; SASRec's
    ffn_dim defaults to embed_dim (the reference recipes use ffn = D).
    """
    name = _field(model_cfg, "name")
    if name not in MODEL_NAMES:
        raise ValueError(f"model config: name must be one of {MODEL_NAMES}, got {name!r}")
    if isinstance(num_items, bool) or not isinstance(num_items, int) or num_items < 1:
        raise ValueError(f"num_items must be a positive int, got {num_items!r}")
    if name == "hstu":
        return HSTU(HSTUConfig(**_collect(model_cfg, _REQUIRED, _HSTU_OPTIONAL)), num_items=num_items, rngs=rngs)
    kwargs = _collect(model_cfg, _REQUIRED, _SASREC_OPTIONAL)
    ffn_dim = _field(model_cfg, "ffn_dim")
    kwargs["ffn_dim"] = kwargs["embed_dim"] if ffn_dim is _MISSING or ffn_dim is None else ffn_dim
    return SASRec(SASRecConfig(**kwargs), num_items=num_items, rngs=rngs)


__all__ = ["build_model", "HSTU", "HSTUConfig", "SASRec", "SASRecConfig", "MODEL_NAMES"]
