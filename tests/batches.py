"""Train batches built by hand for tests that call the train step directly."""
from __future__ import annotations

import numpy as np


def full_rows(B: int, L: int, V: int, seed: int = 0) -> dict[str, np.ndarray]:
    """B unpacked rows with every one of the L slots valid: random items and targets in 1..V, no timestamps."""
    rng = np.random.default_rng(seed)
    z = np.zeros((B, L), np.int32)
    return {"item_ids_BxL": rng.integers(1, V + 1, (B, L)).astype(np.int32), "timestamps_BxL": z,
            "target_timestamps_BxL": z, "target_ids_BxL": rng.integers(1, V + 1, (B, L)).astype(np.int32),
            "segment_ids_BxL": np.ones((B, L), np.int32), "positions_BxL": np.tile(np.arange(L, dtype=np.int32), (B, 1)),
            "lengths_B": np.full((B,), L, np.int32)}
