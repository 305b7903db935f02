"""Loads a serving artifact (written by `lrm.serving.export`) and recommends: jax + numpy + stdlib only.

No lrm model code is imported, so a serving process carries nothing but the artifact directory.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np


class RequestError(ValueError):
    """A request the artifact cannot answer as given (unknown id, empty history, bad shape or type)."""


def _as_int_rows(name: str, rows: object) -> list[np.ndarray]:
    """Ragged python lists or a 2-D array → one int64 array per user (validated, not yet truncated)."""
    if isinstance(rows, np.ndarray):
        if rows.ndim != 2:
            raise RequestError(f"{name} must be 2-D (users × events), got shape {rows.shape}")
        rows = list(rows)
    if not isinstance(rows, (list, tuple)):
        raise RequestError(f"{name} must be a list of per-user lists, got {type(rows).__name__}")
    out = []
    for u, row in enumerate(rows):
        if isinstance(row, np.ndarray):
            if row.ndim != 1 or not np.issubdtype(row.dtype, np.integer):
                raise RequestError(f"{name}[{u}] must be a 1-D integer array, got {row.dtype} {row.shape}")
            out.append(row.astype(np.int64))
            continue
        if not isinstance(row, (list, tuple)):
            raise RequestError(f"{name}[{u}] must be a list of integers, got {type(row).__name__}")
        for t, x in enumerate(row):
            if isinstance(x, bool) or not isinstance(x, (int, np.integer)):
                raise RequestError(f"{name}[{u}][{t}] must be an integer, got {x!r}")
        out.append(np.asarray(row, np.int64).reshape(-1))
    return out


SCORE_KINDS = ("retrieval", "target_aware")


class Recommender:
    """`Recommender.load(path).recommend(item_ids, timestamps, k)` → (item_ids [B, k], scores [B, k]);
    `.score_candidates(item_ids, timestamps, candidates)` → one score array per user."""

    def __init__(self, path: Path, metadata: dict, encoder: jax.export.Exported, table_VxD: np.ndarray,
                 source_ids_V: np.ndarray | None, candidates: jax.export.Exported | None = None):
        self.path = path
        self.metadata = metadata
        self.max_len = int(metadata["max_len"])
        self.num_items = int(metadata["num_items"])
        self.num_candidates = int(metadata["num_candidates"]) if candidates is not None else 0
        self._encoder = encoder
        self._candidates = candidates
        self._table_VxD = jnp.asarray(table_VxD)
        self._source_ids_V = source_ids_V
        self._to_internal = (None if source_ids_V is None
                             else {int(x): i for i, x in enumerate(source_ids_V.tolist()) if i > 0})
        self._top_k = jax.jit(self._scores_top_k, static_argnames=("k", "exclude_history"))

    @classmethod
    def load(cls, path: str | Path) -> Recommender:
        path = Path(path)
        for name in ("metadata.json", "encoder.jaxexport", "item_table.npy"):
            if not (path / name).exists():
                raise FileNotFoundError(f"{path / name}: missing; is {path} an artifact of lrm-export?")
        metadata = json.loads((path / "metadata.json").read_text())
        version = int(metadata.get("format_version", 1))
        if metadata.get("time_bias") and version < 3:
            raise ValueError(f"{path}: format_version {version} with the time bias: its encoder queries the time "
                             "bias at each history event's own time, not the next event's as the model was "
                             "trained (fixed in format 3); re-export it with lrm-export")
        platform = jax.default_backend()
        platform = "cuda" if platform == "gpu" else platform
        if platform not in metadata["platforms"]:
            raise RuntimeError(f"{path}: exported for {metadata['platforms']}, this process runs on {platform!r}")
        encoder = jax.export.deserialize(bytearray((path / "encoder.jaxexport").read_bytes()))
        table = np.load(path / "item_table.npy")
        if table.shape != (int(metadata["num_items"]) + 1, int(metadata["embed_dim"])):
            raise ValueError(f"{path / 'item_table.npy'}: shape {table.shape} does not match metadata.json")
        ids_path = path / "item_ids.npy"
        source_ids = np.load(ids_path, allow_pickle=False) if ids_path.exists() else None
        candidates_path = path / "candidates.jaxexport"  # absent in format 1 artifacts
        candidates = (jax.export.deserialize(bytearray(candidates_path.read_bytes()))
                      if candidates_path.exists() else None)
        return cls(path, metadata, encoder, table, source_ids, candidates)

    # ---------------------------------------------------------------------------------------- inputs
    def internal_ids(self, ids: np.ndarray, where: str) -> np.ndarray:
        """Dataset item ids → artifact row ids; unknown ids are a RequestError naming the first one."""
        if self._to_internal is None:
            bad = (ids < 1) | (ids > self.num_items)
            if bad.any():
                raise RequestError(f"{where}: unknown item id {int(ids[bad][0])} (known: 1..{self.num_items})")
            return ids
        out = np.empty_like(ids)
        for i, x in enumerate(ids.tolist()):
            if x not in self._to_internal:
                raise RequestError(f"{where}: unknown item id {x}")
            out[i] = self._to_internal[x]
        return out

    def source_ids(self, internal_BxK: np.ndarray) -> np.ndarray:
        return internal_BxK if self._source_ids_V is None else self._source_ids_V[internal_BxK]

    def prepare(self, item_ids: object, timestamps: object,
                query_times: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Right-padded (ids [B, max_len], times [B, max_len], query time [B]); most recent max_len kept.

        The query time (the time of the event to predict) defaults to each user's newest event time.
        """
        ids_rows = _as_int_rows("item_ids", item_ids)
        ts_rows = _as_int_rows("timestamps", timestamps)
        if len(ids_rows) != len(ts_rows):
            raise RequestError(f"item_ids has {len(ids_rows)} users, timestamps {len(ts_rows)}")
        if not ids_rows:
            raise RequestError("no users in the request")
        B, N = len(ids_rows), self.max_len
        ids_BxN, ts_BxN, q_B = np.zeros((B, N), np.int32), np.zeros((B, N), np.int32), np.zeros(B, np.int32)
        for u, (ids, ts) in enumerate(zip(ids_rows, ts_rows)):
            if ids.size == 0:
                raise RequestError(f"item_ids[{u}]: empty history (at least one event is needed)")
            if ids.shape != ts.shape:
                raise RequestError(f"user {u}: {ids.size} item ids but {ts.size} timestamps")
            ids, ts = ids[-N:], ts[-N:]
            if (ts < 0).any() or (ts > np.iinfo(np.int32).max).any():
                raise RequestError(f"timestamps[{u}]: values must be in [0, 2^31) seconds")
            ids_BxN[u, : ids.size] = self.internal_ids(ids, f"item_ids[{u}]")
            ts_BxN[u, : ts.size] = ts
            q_B[u] = ts[-1]
        if query_times is not None:
            q = _as_int_rows("query_times", [list(query_times)])[0]
            if q.shape != (B,):
                raise RequestError(f"query_times must give one time per user ({B}), got {q.size}")
            q_B[:] = q
        return ids_BxN, ts_BxN, q_B

    # ----------------------------------------------------------------------------------------- model
    def user_embeddings(self, ids_BxN: np.ndarray, ts_BxN: np.ndarray, query_B: np.ndarray) -> jax.Array:
        return self._encoder.call(jnp.asarray(ids_BxN, jnp.int32), jnp.asarray(ts_BxN, jnp.int32),
                                  jnp.asarray(query_B, jnp.int32))

    def _scores_top_k(self, user_BxD, ids_BxN, table_VxD, *, k: int, exclude_history: bool):
        scores_BxV = jnp.einsum("bd,vd->bv", user_BxD.astype(jnp.float32), table_VxD)
        scores_BxV = scores_BxV.at[:, 0].set(-jnp.inf)  # id 0 is padding, never an item
        if exclude_history:
            rows_BxN = jnp.broadcast_to(jnp.arange(ids_BxN.shape[0])[:, None], ids_BxN.shape)
            scores_BxV = scores_BxV.at[rows_BxN, ids_BxN].set(-jnp.inf)
        return jax.lax.top_k(scores_BxV, k)

    def recommend(self, item_ids: object, timestamps: object, k: int = 10, exclude_history: bool = True,
                  query_times: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (dataset item ids [B, k], cosine scores [B, k]) for a batch of histories.

        `item_ids`/`timestamps`: per-user lists (ragged) or 2-D arrays, oldest first; only the most recent
        max_len events are used. `exclude_history` drops items in the (kept) history, as evaluation does.
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= self.num_items:
            raise RequestError(f"k must be an integer in [1, {self.num_items}], got {k!r}")
        if not isinstance(exclude_history, bool):
            raise RequestError(f"exclude_history must be a bool, got {exclude_history!r}")
        ids_BxN, ts_BxN, q_B = self.prepare(item_ids, timestamps, query_times)
        user_BxD = self.user_embeddings(ids_BxN, ts_BxN, q_B)
        scores_BxK, rows_BxK = self._top_k(user_BxD, jnp.asarray(ids_BxN), self._table_VxD, k=int(k),
                                           exclude_history=exclude_history)
        return self.source_ids(np.asarray(rows_BxK)), np.asarray(scores_BxK)

    def score_candidates(self, item_ids: object, timestamps: object, candidates: object,
                         query_time: Sequence[int] | None = None, *, kind: str = "retrieval") -> list[np.ndarray]:
        """Scores (float32, one array per user, in the order given) of each user's candidate items.

        One pass of the exported M-FALCON function per request: histories as for `recommend`, candidates
        as per-user lists of dataset item ids (1..num_candidates of them, repeats allowed). `kind`:
        "retrieval" (cosine with the user embedding: the scores `recommend` ranks by) or "target_aware"
        (cosine with the output at the candidate appended as the next event; see metadata.json).
        """
        if self._candidates is None:
            raise RequestError(f"{self.path}: this artifact (format_version "
                               f"{self.metadata.get('format_version')}) has no candidates function; re-export it")
        if kind not in SCORE_KINDS:
            raise RequestError(f"kind must be one of {SCORE_KINDS}, got {kind!r}")
        ids_BxN, ts_BxN, q_B = self.prepare(item_ids, timestamps, query_time)
        rows = _as_int_rows("candidates", candidates)
        B, M = ids_BxN.shape[0], self.num_candidates
        if len(rows) != B:
            raise RequestError(f"candidates has {len(rows)} users, item_ids {B}")
        cands_BxM = np.zeros((B, M), np.int32)
        for u, row in enumerate(rows):
            if not 1 <= row.size <= M:
                raise RequestError(f"candidates[{u}]: {row.size} candidates; this artifact scores 1..{M} per user "
                                   "(num_candidates at export)")
            cands_BxM[u, : row.size] = self.internal_ids(row, f"candidates[{u}]")
            cands_BxM[u, row.size:] = cands_BxM[u, 0]  # fill with a real item; those scores are dropped
        retrieval_BxM, target_aware_BxM = self._candidates.call(
            jnp.asarray(ids_BxN, jnp.int32), jnp.asarray(ts_BxN, jnp.int32), jnp.asarray(q_B, jnp.int32),
            jnp.asarray(cands_BxM))
        scores_BxM = np.asarray(retrieval_BxM if kind == "retrieval" else target_aware_BxM, np.float32)
        return [scores_BxM[u, : row.size] for u, row in enumerate(rows)]
