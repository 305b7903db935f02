"""Hand-made batches for the sharding tests (no side effects on import, unlike sharding_worker.py)."""
from __future__ import annotations

import numpy as np

NUM_ITEMS = 37  # 38 rows: padded to 40 on 4 or 8 vocab shards, so padding rows are exercised


def batch(seed: int = 0, B: int = 16, L: int = 11) -> dict:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, L + 1, size=B).astype(np.int32)
    valid = np.arange(L)[None, :] < lengths[:, None]
    items = np.where(valid, rng.integers(1, NUM_ITEMS + 1, size=(B, L)), 0).astype(np.int32)
    targets = np.where(valid, rng.integers(1, NUM_ITEMS + 1, size=(B, L)), 0).astype(np.int32)
    times = np.where(valid, np.cumsum(rng.integers(1, 10_000, size=(B, L)), axis=1), 0).astype(np.int32)
    return {"item_ids_BxL": items, "timestamps_BxL": times, "target_ids_BxL": targets,
            "target_timestamps_BxL": times, "segment_ids_BxL": valid.astype(np.int32),
            "positions_BxL": np.where(valid, np.arange(L)[None, :], 0).astype(np.int32), "lengths_B": lengths}
