"""The one in-memory form every reader returns: per-user event sequences in CSR layout."""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Iterator

import numpy as np


class DataFormatError(ValueError):
    """A raw input file is malformed; the message names the file and the line."""

    def __init__(self, path: str | Path, line_no: int | None, what: str):
        where = f"{path}:{line_no}" if line_no is not None else str(path)
        super().__init__(f"{where}: {what}")
        self.path = str(path)
        self.line_no = line_no


@dataclasses.dataclass(frozen=True)
class Sequences:
    """Users' events in time order, CSR: events of row u are `[offsets[u], offsets[u+1])`.

    Item ids are final (1..num_items, 0 is padding). `user_ids` and `item_raw_ids` keep the source ids so
    results can be mapped back.
    """

    dataset: str
    user_ids: np.ndarray  # [U] source user id of each row (int64 or str)
    offsets: np.ndarray  # int64 [U+1]
    item_ids: np.ndarray  # int32 [E]
    timestamps: np.ndarray  # int64 [E], seconds; zeros when has_timestamps is False
    ratings: np.ndarray | None  # int8 [E] or None
    num_items: int  # largest item id; tables have num_items + 1 rows
    has_timestamps: bool
    item_raw_ids: np.ndarray | None  # [num_items + 1] source id of each item id; None when ids are kept as-is
    source_files: dict[str, str]  # file name -> sha256 of the bytes read

    def __post_init__(self):
        u = len(self.user_ids)
        if self.offsets.shape != (u + 1,) or self.offsets[0] != 0:
            raise ValueError(f"{self.dataset}: offsets must have shape ({u + 1},) and start at 0")
        e = int(self.offsets[-1])
        for name in ("item_ids", "timestamps"):
            if getattr(self, name).shape != (e,):
                raise ValueError(f"{self.dataset}: {name} has shape {getattr(self, name).shape}, want ({e},)")
        if self.ratings is not None and self.ratings.shape != (e,):
            raise ValueError(f"{self.dataset}: ratings has shape {self.ratings.shape}, want ({e},)")
        if np.any(np.diff(self.offsets) < 1):
            raise ValueError(f"{self.dataset}: a user has an empty history")
        if e and (self.item_ids.min() < 1 or self.item_ids.max() > self.num_items):
            raise ValueError(f"{self.dataset}: item ids must lie in 1..{self.num_items}")

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_events(self) -> int:
        return int(self.offsets[-1])

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def counts(self) -> dict[str, int]:
        """Users, distinct items seen, events: the figures dataset READMEs quote."""
        return {
            "users": self.num_users,
            "items": int(np.unique(self.item_ids).size),
            "events": self.num_events,
            "max_item_id": self.num_items,
        }

    def iter_events(self) -> Iterator[tuple]:
        """(user, item, timestamp[, rating]) in user-then-time order."""
        for u in range(self.num_users):
            lo, hi = self.offsets[u], self.offsets[u + 1]
            for e in range(lo, hi):
                ev = (self.user_ids[u], int(self.item_ids[e]), int(self.timestamps[e]))
                yield ev + ((int(self.ratings[e]),) if self.ratings is not None else ())


def sha256_of(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def from_user_lists(
    dataset: str,
    user_ids: list,
    item_lists: list[np.ndarray],
    time_lists: list[np.ndarray] | None,
    rating_lists: list[np.ndarray] | None,
    *,
    num_items: int,
    item_raw_ids: np.ndarray | None,
    source_files: dict[str, str],
) -> Sequences:
    """Builds CSR arrays from per-user lists that are already in time order."""
    lengths = np.fromiter((len(x) for x in item_lists), dtype=np.int64, count=len(item_lists))
    offsets = np.zeros(len(item_lists) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    cat = lambda xs, dt: np.concatenate(xs).astype(dt) if xs else np.zeros(0, dt)  # noqa: E731
    items = cat(item_lists, np.int32)
    times = cat(time_lists, np.int64) if time_lists is not None else np.zeros(len(items), np.int64)
    ratings = cat(rating_lists, np.int8) if rating_lists is not None else None
    return Sequences(
        dataset=dataset,
        user_ids=np.asarray(user_ids),
        offsets=offsets,
        item_ids=items,
        timestamps=times,
        ratings=ratings,
        num_items=int(num_items),
        has_timestamps=time_lists is not None,
        item_raw_ids=item_raw_ids,
        source_files=source_files,
    )
