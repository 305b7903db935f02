"""Grain input pipelines: store → fixed-shape numpy batches (keys and semantics in docs/conventions.md).

Train: cut each train-eligible user's train part into pieces of at most `max_len + 1` events — its most
recent ones (`windows="last"`, the reference's truncation), or the whole train part in consecutive chunks
(`windows="all"`) — then per epoch shuffle the pieces from (seed, epoch), lay them out one piece per row (or
packed greedily, several per row), pad the row count to a multiple of `process_count * batch_size` with empty
rows, and give process p the rows p, p + process_count, … . Every process therefore runs the same number of
steps per epoch, sees disjoint pieces (disjoint users with "last"), and together they see every piece exactly
once per epoch.

The per-epoch layout (a "plan") is computed in numpy from the lengths alone; batches of an epoch are a
random-access `grain.MapDataset`, so the iterator state is just (epoch, batch) and resuming is exact.
"""
from __future__ import annotations

import dataclasses
import functools
import logging

import grain
import numpy as np

from data_pipeline import splits
from data_pipeline.store import SequenceStore

_INT32 = np.iinfo(np.int32)
WINDOWS = ("last", "all")
_ROW_KEYS = ("item_ids_BxL", "timestamps_BxL", "target_ids_BxL", "target_timestamps_BxL",
             "segment_ids_BxL", "positions_BxL")


def _resolve_processes(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    if process_index is None and process_count is None:
        import jax  # lazy: only when the caller leaves the sharding to JAX

        process_index, process_count = jax.process_index(), jax.process_count()
    elif process_index is None or process_count is None:
        raise ValueError("give both process_index and process_count, or neither (then JAX decides)")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, process_count={process_count})")
    return int(process_index), int(process_count)


def _check_sizes(max_len: int, batch_size: int) -> None:
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


def _empty_batch(batch_size: int, row_len: int) -> dict[str, np.ndarray]:
    batch = {k: np.zeros((batch_size, row_len), np.int32) for k in _ROW_KEYS}
    batch["lengths_B"] = np.zeros(batch_size, np.int32)
    return batch


def _times_int32(times: np.ndarray, store: SequenceStore, u: int) -> np.ndarray:
    if times.size and (times.min() < _INT32.min or times.max() > _INT32.max):
        raise ValueError(f"{store.path}: user row {u} (source id {store.source_user_id(u)!r}) has timestamps "
                         f"in [{int(times.min())}, {int(times.max())}], outside int32; shift them before "
                         "writing the store")
    return times.astype(np.int32)


def _put_segment(batch: dict, b: int, start: int, segment: int, items: np.ndarray, times: np.ndarray, *,
                 shifted: bool, last_target: int, last_target_time: int) -> None:
    """Writes one user's tokens at slots [start, start+n) of row b.

    `shifted`: token t predicts token t+1 (train); otherwise only the last token has a target (eval).
    The last token's target is `last_target` (0 = none) at `last_target_time`. Either way token t queries the
    time bias at its next event's time (`ts[t+1]`, known in eval too), so a history reads the same in both.
    """
    n = len(items)
    s = slice(start, start + n)
    batch["item_ids_BxL"][b, s] = items
    batch["timestamps_BxL"][b, s] = times
    batch["target_timestamps_BxL"][b, start:start + n - 1] = times[1:]
    if shifted:
        batch["target_ids_BxL"][b, start:start + n - 1] = items[1:]
    batch["target_ids_BxL"][b, start + n - 1] = last_target
    batch["target_timestamps_BxL"][b, start + n - 1] = last_target_time
    batch["segment_ids_BxL"][b, s] = segment
    batch["positions_BxL"][b, s] = np.arange(n, dtype=np.int32)
    batch["lengths_B"][b] = start + n


# ----------------------------------------------------------------------------------------------- train


def _pack_rows(counts: np.ndarray, capacity: int) -> np.ndarray:
    """Row index of each user, packing in the given order into rows of `capacity` tokens.

    Next-fit that keeps the emptier of (open row, new row) open: O(1) per user, users stay in shuffled
    order within a row, and a user that fills a row alone does not close a half-empty one.
    """
    row_of = np.empty(len(counts), np.int64)
    open_row, open_free, num_rows = -1, 0, 0
    for i, c in enumerate(counts.tolist()):
        if c <= open_free:
            row_of[i] = open_row
            open_free -= c
        else:
            row_of[i] = num_rows
            if capacity - c > open_free:
                open_row, open_free = num_rows, capacity - c
            num_rows += 1
    return row_of


@dataclasses.dataclass(frozen=True)
class _Pieces:
    """Train rows' contents before the shuffle: piece p is events [start[p], end[p]) of store user user[p]."""
    user: np.ndarray  # int64 [P]
    start: np.ndarray  # int64 [P]
    end: np.ndarray  # int64 [P]

    @property
    def lengths(self) -> np.ndarray:
        return self.end - self.start


def _train_pieces(train_len: np.ndarray, row_len: int, windows: str) -> _Pieces:
    """"last": each eligible user's most recent `row_len` train events. "all": the whole train part cut into
    consecutive `row_len` chunks counted back from the most recent event (the oldest chunk holds the remainder),
    so every train event is in exactly one piece; a chunk's last event then targets the next chunk's first."""
    if windows not in WINDOWS:
        raise ValueError(f"train windows must be one of {WINDOWS}, got {windows!r}")
    users = np.flatnonzero(train_len >= 0)
    t = train_len[users].astype(np.int64)
    if windows == "last":
        return _Pieces(users, t - np.minimum(t, row_len), t)
    counts = -(-t // row_len)
    first = np.cumsum(counts) - counts
    k = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(first, counts)  # chunk index from the end
    end = np.repeat(t, counts) - k * row_len
    return _Pieces(np.repeat(users, counts), np.maximum(end - row_len, 0), end)


@dataclasses.dataclass(frozen=True)
class _EpochPlan:
    row_offsets: np.ndarray  # int64 [R+1]: pieces of global row r are row_pieces[row_offsets[r]:row_offsets[r+1]]
    row_pieces: np.ndarray  # int64: piece indices, in row then segment order
    num_batches: int  # per process; rows padded to num_batches * batch_size * process_count


def _epoch_plan(piece_len: np.ndarray, *, seed: int, epoch: int, row_len: int, pack: bool,
                batch_size: int, process_count: int) -> _EpochPlan:
    rng = np.random.default_rng([seed, epoch])
    pieces = rng.permutation(len(piece_len)).astype(np.int64)
    if pack:
        row_of = _pack_rows(piece_len[pieces], row_len)
        pieces = pieces[np.argsort(row_of, kind="stable")]
        per_row = np.bincount(row_of, minlength=int(row_of.max()) + 1 if len(row_of) else 0)
    else:
        per_row = np.ones(len(pieces), np.int64)
    row_offsets = np.concatenate([[0], np.cumsum(per_row)]).astype(np.int64)
    rows_per_step = batch_size * process_count
    num_batches = -(-len(per_row) // rows_per_step)
    return _EpochPlan(row_offsets, pieces, num_batches)


@dataclasses.dataclass(frozen=True)
class _TrainSpec:
    store: SequenceStore
    protocol: str
    train_len: np.ndarray  # int64 [U], -1 = not train-eligible
    max_len: int
    batch_size: int
    seed: int
    pack: bool
    process_index: int
    process_count: int
    num_epochs: int | None
    prefetch: int
    num_threads: int
    windows: str

    @property
    def row_len(self) -> int:
        return self.max_len + 1

    @functools.cached_property
    def pieces(self) -> _Pieces:
        return _train_pieces(self.train_len, self.row_len, self.windows)

    def plan(self, epoch: int) -> _EpochPlan:
        return _epoch_plan(self.pieces.lengths, seed=self.seed, epoch=epoch, row_len=self.row_len,
                           pack=self.pack, batch_size=self.batch_size, process_count=self.process_count)

    def build_batch(self, plan: _EpochPlan, j: int) -> dict[str, np.ndarray]:
        batch = _empty_batch(self.batch_size, self.row_len)
        num_rows = len(plan.row_offsets) - 1
        for b in range(self.batch_size):
            r = self.process_index + self.process_count * (int(j) * self.batch_size + b)
            if r >= num_rows:
                continue  # padding row: lengths 0, no targets
            start = 0
            for seg, p in enumerate(plan.row_pieces[plan.row_offsets[r]:plan.row_offsets[r + 1]].tolist(), 1):
                u, lo, hi = int(self.pieces.user[p]), int(self.pieces.start[p]), int(self.pieces.end[p])
                has_next = hi < int(self.train_len[u])  # an earlier chunk: its last event targets the next one's first
                items, times = self.store.user(u, lo, hi + has_next)
                times = _times_int32(times, self.store, u)
                n = hi - lo
                _put_segment(batch, b, start, seg, items[:n], times[:n], shifted=True,
                             last_target=int(items[n]) if has_next else 0, last_target_time=int(times[-1]))
                start += n
        return batch

    def fingerprint(self) -> dict:
        return {"store": self.store.identity(), "protocol": self.protocol, "seed": self.seed, "max_len": self.max_len,
                "batch_size": self.batch_size, "pack": self.pack, "windows": self.windows,
                "process_index": self.process_index, "process_count": self.process_count}


class _TrainIterator(grain.DatasetIterator):
    """Walks epochs; each epoch is a prefetched MapDataset of batches. State: (epoch, batches done)."""

    def __init__(self, spec: _TrainSpec):
        super().__init__()
        self._spec = spec
        self._epoch, self._batch = 0, 0
        self._inner = None

    def _open_epoch(self) -> None:
        plan = self._spec.plan(self._epoch)
        ds = grain.MapDataset.range(self._batch, plan.num_batches).map(
            functools.partial(self._spec.build_batch, plan))
        options = grain.ReadOptions(num_threads=self._spec.num_threads,
                                    prefetch_buffer_size=self._spec.prefetch)
        self._inner = iter(ds.to_iter_dataset(options))

    def _close_epoch(self) -> None:
        if self._inner is not None:
            close = getattr(self._inner, "close", None)  # older grain iterators have no close()
            if close is not None:
                close()  # stops the epoch's prefetch threads
            self._inner = None

    def __next__(self) -> dict[str, np.ndarray]:
        while True:
            if self._spec.num_epochs is not None and self._epoch >= self._spec.num_epochs:
                raise StopIteration
            if self._inner is None:
                self._open_epoch()
            try:
                batch = next(self._inner)
            except StopIteration:
                self._close_epoch()
                self._epoch, self._batch = self._epoch + 1, 0
                continue
            self._batch += 1
            return batch

    def get_state(self) -> dict:
        return {"epoch": self._epoch, "batch": self._batch, **self._spec.fingerprint()}

    def set_state(self, state: dict) -> None:
        mine = self._spec.fingerprint()
        if "store" not in state:  # saved before stores were fingerprinted: nothing to compare it with
            logging.warning("iterator state has no store identity (older checkpoint); not checked against %s",
                            self._spec.store.path)
            mine.pop("store")
        if "windows" not in state:  # saved before train windows existed: those pipelines cut "last" windows
            state = {**state, "windows": "last"}
        diff = {k: (state.get(k), v) for k, v in mine.items() if state.get(k) != v}
        if diff:
            raise ValueError(f"iterator state was saved by a different pipeline; (saved, this) differ: {diff}")
        self._close_epoch()
        self._epoch, self._batch = int(state["epoch"]), int(state["batch"])

    def close(self) -> None:
        self._close_epoch()
        if hasattr(super(), "close"):
            super().close()


class _TrainIterDataset(grain.IterDataset):
    def __init__(self, spec: _TrainSpec):
        super().__init__()
        self._spec = spec

    def __iter__(self) -> _TrainIterator:
        return _TrainIterator(self._spec)

    def __str__(self) -> str:
        return f"TrainIterDataset({self._spec.store.dataset!r}, {self._spec.fingerprint()})"


def _train_len(store: SequenceStore, protocol: str | None) -> np.ndarray:
    protocol = protocol or store.protocol
    train_len = splits.train_lengths(store.lengths, protocol)
    if not (train_len >= 0).any():
        raise ValueError(f"{store.path}: no user has a train part of >= {splits.MIN_TRAIN_EVENTS} events "
                         f"under protocol {protocol!r}")
    return train_len


def make_train_dataset(
    store: SequenceStore,
    *,
    max_len: int,
    batch_size: int,
    seed: int,
    pack: bool = False,
    num_epochs: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    prefetch: int = 2,
    num_threads: int | None = None,
    protocol: str | None = None,
    windows: str = "last",
) -> grain.IterDataset:
    """Train batches for this process; `num_epochs=None` repeats forever. Deterministic for a seed.

    `protocol` overrides the store's recorded split protocol; `num_threads` (default: `prefetch`) threads
    build batches ahead; `windows` picks which train events rows hold (module docstring). Rows of lengths 0
    pad the last batch of an epoch (none are dropped).
    """
    _check_sizes(max_len, batch_size)
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if num_epochs is not None and num_epochs < 0:
        raise ValueError(f"num_epochs must be >= 0 or None, got {num_epochs}")
    if prefetch < 0:
        raise ValueError(f"prefetch must be >= 0, got {prefetch}")
    pi, pc = _resolve_processes(process_index, process_count)
    protocol = protocol or store.protocol
    spec = _TrainSpec(store, protocol, _train_len(store, protocol), int(max_len), int(batch_size), int(seed),
                      bool(pack), pi, pc, num_epochs, int(prefetch),
                      int(prefetch if num_threads is None else num_threads), windows)
    spec.pieces  # cut (and check `windows`) now, not on the first batch
    return _TrainIterDataset(spec)


def train_epoch_size(
    store: SequenceStore,
    *,
    max_len: int,
    batch_size: int,
    pack: bool = False,
    seed: int = 0,
    epoch: int = 0,
    process_count: int | None = None,
    protocol: str | None = None,
    windows: str = "last",
) -> dict[str, int]:
    """Users, pieces, tokens, rows and batches (= steps, the same on every process) of one train epoch.

    Without packing this does not depend on seed/epoch; with packing the row count of `epoch` is given
    (it varies slightly from epoch to epoch with the shuffle).
    """
    _check_sizes(max_len, batch_size)
    pc = _resolve_processes(None, None)[1] if process_count is None else int(process_count)
    train_len = _train_len(store, protocol)
    pieces = _train_pieces(train_len, max_len + 1, windows)
    plan = _epoch_plan(pieces.lengths, seed=seed, epoch=epoch, row_len=max_len + 1, pack=pack,
                       batch_size=batch_size, process_count=pc)
    rows = len(plan.row_offsets) - 1
    return {
        "users": int((train_len >= 0).sum()),
        "pieces": int(len(pieces.user)),
        "tokens": int(pieces.lengths.sum()),
        "rows": rows,
        "padding_rows": plan.num_batches * batch_size * pc - rows,
        "batches": plan.num_batches,
    }


# ------------------------------------------------------------------------------------------------ eval


def eval_users(store: SequenceStore, split: str, *, protocol: str | None = None) -> np.ndarray:
    """int64: store rows of the users that have a `split` example, ascending."""
    return np.flatnonzero(splits.history_lengths(store.lengths, protocol or store.protocol, split) >= 0)


def make_eval_dataset(
    store: SequenceStore,
    *,
    split: str,
    max_len: int,
    batch_size: int,
    process_index: int | None = None,
    process_count: int | None = None,
    protocol: str | None = None,
    max_users: int = 0,
) -> grain.MapDataset:
    """Eval batches for this process (random access, `len()` = batches; the same count on every process).

    `max_users > 0` evaluates only the first `max_users` eligible users in store order (a fixed subset, the
    same for every run: for large synthetic stores where scoring every user would dominate a short run).

    Process p gets eligible users p, p + process_count, … in store order; rows of `weights_B = 0`,
    `user_index_B = -1`, `lengths_B = 0` pad the last batches.
    """
    _check_sizes(max_len, batch_size)
    pi, pc = _resolve_processes(process_index, process_count)
    hist = splits.history_lengths(store.lengths, protocol or store.protocol, split)
    users = np.flatnonzero(hist >= 0)
    if users.size == 0:
        raise ValueError(f"{store.path}: no user has a {split!r} example under protocol "
                         f"{protocol or store.protocol!r}")
    if max_users < 0:
        raise ValueError(f"make_eval_dataset: max_users must be >= 0 (0 = all), got {max_users}")
    if max_users:
        users = users[:max_users]
    mine = users[pi::pc]
    num_batches = -(-(-(-users.size // pc)) // batch_size)
    row_len = max_len + 1

    def build(j: int) -> dict[str, np.ndarray]:
        batch = _empty_batch(batch_size, row_len)
        batch["weights_B"] = np.zeros(batch_size, np.float32)
        batch["user_index_B"] = np.full(batch_size, -1, np.int32)
        for b, u in enumerate(mine[int(j) * batch_size:(int(j) + 1) * batch_size].tolist()):
            h = int(hist[u])
            n = min(h, max_len)
            items, times = store.user(u, h - n, h + 1)  # history tail + the held-out event
            times = _times_int32(times, store, u)
            _put_segment(batch, b, 0, 1, items[:-1], times[:-1], shifted=False, last_target=int(items[-1]),
                         last_target_time=int(times[-1]))
            batch["weights_B"][b] = 1.0
            batch["user_index_B"][b] = u
        return batch

    return grain.MapDataset.range(num_batches).map(build)
