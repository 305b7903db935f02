"""MovieLens readers: ML-1M `ratings.dat`, ML-20M `ratings.csv`, ML-100K `u.data` → `Sequences`.

MovieLens ids are kept as they are (num_items = largest movie id; tables have num_items + 1 rows, row 0 is
padding). Each user's events are sorted by timestamp with a STABLE sort: ratings given in the same second keep
their order in the file. Rows are in ascending user id order.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from data_pipeline.datasets.events import DataFormatError, Sequences
from data_pipeline.datasets.rawtext import (
    INT32_MAX,
    check_range,
    parse_numeric_table,
    read_source,
    sequences_from_events,
    source_key,
)

_NAMES = ("user id", "movie id", "rating", "timestamp")


def _read_ratings(
    path: str | Path, *, dataset: str, sep: bytes, header: bytes | None = None, half_stars: bool = False
) -> Sequences:
    data, digest = read_source(path)
    decimal = (False, False, half_stars, False)
    cols, first_line = parse_numeric_table(path, data, sep=sep, names=_NAMES, decimal=decimal, header=header)
    users, items, ratings, times = (cols[n] for n in _NAMES)
    check_range(path, items, 1, INT32_MAX, first_line, "movie id")
    if half_stars:
        doubled = ratings * 2
        bad = np.flatnonzero((doubled != np.round(doubled)) | (doubled < 1) | (doubled > 10))
        if bad.size:
            i = int(bad[0])
            raise DataFormatError(path, first_line + i, f"rating {ratings[i]} is not a half star in [0.5, 5]")
        ratings = doubled.astype(np.int8)
    else:
        check_range(path, ratings, 1, 5, first_line, "rating")
    return sequences_from_events(
        dataset, users, items, times, ratings,
        num_items=int(items.max()), item_raw_ids=None, source_files={source_key(path): digest},
    )


def read_ml1m_ratings(path: str | Path) -> Sequences:
    """ML-1M `ratings.dat` (`UserID::MovieID::Rating::Timestamp`, ratings 1..5); a `.gz` file also works."""
    return _read_ratings(path, dataset="ml-1m", sep=b"::")


def read_ml20m_ratings(path: str | Path) -> Sequences:
    """ML-20M `ratings.csv` (header `userId,movieId,rating,timestamp`).

    Ratings are half stars 0.5..5.0; they are stored as rating * 2 (int8 1..10) so they stay exact.
    """
    return _read_ratings(path, dataset="ml-20m", sep=b",", header=b"userId,movieId,rating,timestamp", half_stars=True)


def read_ml100k(path: str | Path) -> Sequences:
    """ML-100K `u.data` (tab-separated user id, item id, rating 1..5, unix timestamp)."""
    return _read_ratings(path, dataset="ml-100k", sep=b"\t")
