"""A trained run → a serving artifact that needs only jax + numpy (loaded by `lrm.serving.loader`).

Artifact directory:
  encoder.jaxexport   jax.export (StableHLO) of (item_ids_BxN, timestamps_BxN, query_time_B) → user_emb_BxD,
                      L2-normalised, of the newest event; batch size symbolic, N = max_len fixed
  candidates.jaxexport  (item_ids_BxN, timestamps_BxN, query_time_B, candidates_BxM) → (retrieval_BxM,
                      target_aware_BxM): M-FALCON scores of M candidates per user in one pass
                      (lrm.models.retrieval.score_candidates); M = num_candidates fixed at export
  item_table.npy      (num_items + 1, D) float32, L2-normalised rows (row 0 is padding)
  item_ids.npy        (num_items + 1,) source id of each item id, only when the store remapped ids
  metadata.json       config hash, max_len, ids, dataset, metrics, jax version, platforms, signatures
Histories are right-padded with id 0; the encoder derives lengths, positions and segment ids itself.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from data_pipeline.store import SequenceStore
from lrm.models import build_model
from lrm.models.retrieval import last_token_embeddings, normalized_item_table, query_times_BxL, score_candidates
from lrm.training.checkpointing import load_params
from lrm.training.data import store_path

# 2: candidates.jaxexport (M-FALCON scoring); loaders read 1 without that function.
# 3: history slots query the time bias at their next event's time, as training does (723f3b9); a time-bias
#    artifact older than 3 queried at each slot's own time and is refused.
FORMAT_VERSION = 3
DEFAULT_NUM_CANDIDATES = 128
PLATFORM_CHOICES = (("cpu", "cuda", "tpu"), ("cpu", "cuda"), ("cpu",))


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def make_batch(item_ids_BxN: jax.Array, timestamps_BxN: jax.Array, query_time_B: jax.Array) -> dict[str, jax.Array]:
    """A model batch (docs/conventions.md) from right-padded histories, one row per user.

    As in train and eval rows, slot len-1 queries the time bias at `query_time_B` (the time of the event to
    predict) and every other slot at its next event's time.
    """
    B, N = item_ids_BxN.shape
    lengths_B = jnp.sum(item_ids_BxN != 0, axis=1).astype(jnp.int32)
    slot_BxN = jnp.broadcast_to(jnp.arange(N, dtype=jnp.int32), (B, N))
    valid_BxN = slot_BxN < lengths_B[:, None]
    ts_BxN = jnp.where(valid_BxN, timestamps_BxN, 0).astype(jnp.int32)
    query_ts_BxN = query_times_BxL(ts_BxN, valid_BxN, slot_BxN == lengths_B[:, None] - 1, query_time_B)
    ids_BxN = item_ids_BxN.astype(jnp.int32)
    return {"item_ids_BxL": ids_BxN, "timestamps_BxL": ts_BxN, "target_ids_BxL": jnp.zeros_like(ids_BxN),
            "target_timestamps_BxL": query_ts_BxN, "segment_ids_BxL": valid_BxN.astype(jnp.int32),
            "positions_BxL": jnp.where(valid_BxN, slot_BxN, 0), "lengths_B": lengths_B}


def serving_function(model: nnx.Module) -> Callable:
    """The encoder as a pure function of arrays, closing over the model's parameters."""
    graphdef, params = nnx.split(model)
    pad = jnp.zeros((1, 1), jnp.int32)  # one spare slot: rows hold max_len + 1 slots, as in training/eval

    def encode(item_ids_BxN, timestamps_BxN, query_time_B):
        B = item_ids_BxN.shape[0]
        batch = make_batch(jnp.concatenate([item_ids_BxN, jnp.broadcast_to(pad, (B, 1))], axis=1),
                           jnp.concatenate([timestamps_BxN, jnp.broadcast_to(pad, (B, 1))], axis=1), query_time_B)
        user_BxLxD = nnx.merge(graphdef, params)(batch, deterministic=True)
        return last_token_embeddings(user_BxLxD, jnp.maximum(batch["lengths_B"], 1))

    return encode


def candidates_function(model: nnx.Module) -> Callable:
    """M-FALCON candidate scoring as a pure function of arrays, closing over the model's parameters."""
    graphdef, params = nnx.split(model)

    def score(item_ids_BxN, timestamps_BxN, query_time_B, candidates_BxM):
        return score_candidates(nnx.merge(graphdef, params), item_ids_BxN, timestamps_BxN, query_time_B,
                                candidates_BxM)

    return score


def export_function(fn: Callable, args: list, platforms: tuple[str, ...] | None) -> tuple[bytes, tuple[str, ...]]:
    """Serialized `jax.export` of `fn` for `platforms`, or for the largest of PLATFORM_CHOICES that lowers."""
    choices = [platforms] if platforms else list(PLATFORM_CHOICES)
    errors = []
    for plats in choices:
        try:
            exp = jax.export.export(jax.jit(fn), platforms=plats)(*args)
            return bytes(exp.serialize()), tuple(plats)
        except Exception as e:  # a platform that does not lower here: try the next, smaller set
            errors.append(f"{plats}: {type(e).__name__}: {e}")
            logging.warning("export for %s failed: %s", plats, e)
    raise RuntimeError("jax.export failed for every platform set:\n" + "\n".join(errors))


def build_from_workdir(workdir: Path) -> tuple[nnx.Module, dict, dict, SequenceStore]:
    """(model with the best parameters, run config, best-checkpoint meta, store) of a finished run."""
    config_path = workdir / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path}: missing; is {workdir} a training workdir?")
    config = ml_collections.ConfigDict(json.loads(config_path.read_text()))
    store = SequenceStore.open(store_path(config.data))
    config.model.attention_impl = "xla"  # the portable path: lowers for every platform
    model = build_model(config.model, num_items=store.num_items, rngs=nnx.Rngs(params=0))
    _, params_like = nnx.split(model, nnx.Param)
    params, meta = load_params(workdir, params_like)
    nnx.update(model, params)
    return model, config.to_dict(), meta, store


def export_artifact(workdir: str | Path, output: str | Path, *, platforms: tuple[str, ...] | None = None,
                    num_candidates: int = DEFAULT_NUM_CANDIDATES) -> Path:
    """Writes the artifact of `workdir`'s best parameters into `output`; returns `output`.

    `num_candidates`: M, the most candidates per user one `candidates.jaxexport` call scores.
    """
    if isinstance(num_candidates, bool) or not isinstance(num_candidates, int) or num_candidates < 1:
        raise ValueError(f"num_candidates must be a positive int, got {num_candidates!r}")
    workdir, output = Path(workdir), Path(output)
    model, config, meta, store = build_from_workdir(workdir)
    max_len = int(config["data"]["max_len"])
    encode = serving_function(model)
    (b,) = jax.export.symbolic_shape("b")
    hist = [jax.ShapeDtypeStruct((b, max_len), jnp.int32), jax.ShapeDtypeStruct((b, max_len), jnp.int32),
            jax.ShapeDtypeStruct((b,), jnp.int32)]
    encoder_bytes, plats = export_function(encode, hist, platforms)
    candidates_bytes, _ = export_function(candidates_function(model),
                                          hist + [jax.ShapeDtypeStruct((b, num_candidates), jnp.int32)], plats)
    table = np.asarray(normalized_item_table(model.item_table()), np.float32)

    output.mkdir(parents=True, exist_ok=True)
    (output / "encoder.jaxexport").write_bytes(encoder_bytes)
    (output / "candidates.jaxexport").write_bytes(candidates_bytes)
    np.save(output / "item_table.npy", table)
    if store.item_raw_ids is not None:
        np.save(output / "item_ids.npy", np.asarray(store.item_raw_ids))
    results_path = workdir / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    metadata = {
        "format_version": FORMAT_VERSION,
        "config_hash": config_hash(config),
        "model": config["model"]["name"],
        "dataset": store.dataset,
        "protocol": store.protocol,
        "max_len": max_len,
        "num_candidates": num_candidates,
        "num_items": store.num_items,
        "embed_dim": int(table.shape[1]),
        "time_bias": bool(config["model"]["use_time_bias"]),
        "id_mapping": ("item_ids.npy: source id of item id i (row 0 = padding)" if store.item_raw_ids is not None
                       else "identity: item ids are the dataset's ids"),
        "checkpoint_step": int(meta["step"]),
        "valid_metrics": results.get("valid", meta.get("metrics")),
        "test_metrics": results.get("test"),
        "jax_version": jax.__version__,
        "platforms": list(plats),
        "functions": {
            "encoder": "(item_ids int32[b, max_len], timestamps int32[b, max_len], query_time int32[b]) "
                       "-> float32[b, D]; histories right-padded with 0",
            "candidates": "(item_ids int32[b, max_len], timestamps int32[b, max_len], query_time int32[b], "
                          "candidates int32[b, num_candidates]) -> (retrieval float32[b, num_candidates], "
                          "target_aware float32[b, num_candidates]); retrieval = cosine(user embedding of the "
                          "last history event, candidate item), as /recommend ranks; target_aware = "
                          "cosine(output at the candidate appended as the next event, candidate item), "
                          "candidates masked from each other (M-FALCON)",
        },
        "config": config,
    }
    (output / "metadata.json").write_text(json.dumps(metadata, indent=2, default=str))
    return output
