"""The on-disk sequence store: CSR numpy files written once by preprocess, opened read-only as memmaps.

Layout of a store directory:
  metadata.json      format version, counts, split protocol + report, input checksums, files (dtype, shape)
  offsets.npy        int64 [U+1]   events of user row u are [offsets[u], offsets[u+1])
  item_ids.npy       int32 [E]     1..num_items
  timestamps.npy     int64 [E]     seconds (all zero when has_timestamps is false)
  ratings.npy        int8  [E]     only when the source has ratings
  user_ids.npy       [U]           source user id of each row (integer or fixed-width string)
  item_raw_ids.npy   [num_items+1] source id of each item id; only when items were remapped
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np

from data_pipeline import splits
from data_pipeline.datasets.events import Sequences

FORMAT_VERSION = 1
METADATA_FILE = "metadata.json"


class StoreError(ValueError):
    """A store directory is malformed; the message names the store and the file."""


def _plain_array(name: str, a: np.ndarray) -> np.ndarray:
    """Object arrays (e.g. Python str ids) are stored as fixed-width strings so they can be memory-mapped."""
    a = np.asarray(a)
    if a.dtype == object:
        try:
            a = a.astype(str)
        except Exception as e:  # noqa: BLE001 - re-raised with the array's name
            raise ValueError(f"{name}: object array cannot be stored as strings: {e}") from e
    return a


def _counts(seqs: Sequences) -> dict:
    n = seqs.lengths
    return {
        "users": seqs.num_users,
        "items": int(np.unique(seqs.item_ids).size),
        "events": seqs.num_events,
        "max_item_id": int(seqs.num_items),
        "min_seq_len": int(n.min()),
        "mean_seq_len": float(n.mean()),
        "max_seq_len": int(n.max()),
    }


def write_store(seqs: Sequences, out_dir: str | Path, *, protocol: str = "loo-val", overwrite: bool = False) -> dict:
    """Writes `seqs` as a store at `out_dir` atomically (temp dir + rename) and returns its metadata."""
    splits.get_protocol(protocol)
    if seqs.num_users == 0:
        raise ValueError(f"{seqs.dataset}: refusing to write a store with no users")
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already exists; pass overwrite=True to replace it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)

    arrays = {
        "offsets": np.asarray(seqs.offsets, np.int64),
        "item_ids": np.asarray(seqs.item_ids, np.int32),
        "timestamps": np.asarray(seqs.timestamps, np.int64),
        "user_ids": _plain_array("user_ids", seqs.user_ids),
    }
    if seqs.ratings is not None:
        arrays["ratings"] = np.asarray(seqs.ratings, np.int8)
    if seqs.item_raw_ids is not None:
        raw = _plain_array("item_raw_ids", seqs.item_raw_ids)
        if raw.shape != (seqs.num_items + 1,):
            raise ValueError(f"{seqs.dataset}: item_raw_ids has shape {raw.shape}, want ({seqs.num_items + 1},)")
        arrays["item_raw_ids"] = raw
        item_map = {"kind": "stored", "file": "item_raw_ids.npy",
                    "description": "item_raw_ids[i] is the source id of item id i (row 0 is padding)"}
    else:
        item_map = {"kind": "identity", "description": "item ids are the source ids"}

    lengths = seqs.lengths
    metadata = {
        "format_version": FORMAT_VERSION,
        "dataset": seqs.dataset,
        "counts": _counts(seqs),
        "has_timestamps": bool(seqs.has_timestamps),
        "has_ratings": seqs.ratings is not None,
        "timestamp_range": [int(seqs.timestamps.min()), int(seqs.timestamps.max())],
        "id_mapping": {
            "items": item_map,
            "users": {"kind": "stored", "file": "user_ids.npy",
                      "description": "user_ids[u] is the source id of user row u"},
        },
        "split": {"protocol": protocol, "report": splits.split_report(lengths, protocol)},
        "source_files": dict(seqs.source_files),
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "files": {f"{k}.npy": {"dtype": v.dtype.str, "shape": list(v.shape)} for k, v in arrays.items()},
    }

    tmp = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        for name, a in arrays.items():
            np.save(tmp / f"{name}.npy", a, allow_pickle=False)
        with open(tmp / METADATA_FILE, "w") as f:
            json.dump(metadata, f, indent=2)
        if overwrite and out_dir.exists():  # move the old store aside only once the new one is complete
            old = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(out_dir, old)
            os.rename(tmp, out_dir)
            shutil.rmtree(old)
        else:
            try:
                os.rename(tmp, out_dir)
            except OSError as e:  # another writer renamed its copy into place after the check above
                if not out_dir.exists():
                    raise
                raise FileExistsError(f"{out_dir} was written by another process meanwhile") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return metadata


class SequenceStore:
    """A read-only store; event arrays are memmaps, so opening costs O(users), not O(events)."""

    def __init__(self, path: Path, metadata: dict, arrays: dict[str, np.ndarray]):
        self.path = path
        self.metadata = metadata
        self.offsets: np.ndarray = arrays["offsets"]
        self.item_ids: np.ndarray = arrays["item_ids"]
        self.timestamps: np.ndarray = arrays["timestamps"]
        self.ratings: np.ndarray | None = arrays.get("ratings")
        self.user_ids: np.ndarray = arrays["user_ids"]
        self.item_raw_ids: np.ndarray | None = arrays.get("item_raw_ids")
        lengths = np.diff(np.asarray(self.offsets))
        if lengths.size and lengths.min() < 1:
            u = int(np.argmin(lengths))
            raise StoreError(f"{path / 'offsets.npy'}: user row {u} has {int(lengths[u])} events (must be >= 1)")
        self.lengths: np.ndarray = lengths.astype(np.int32)

    @classmethod
    def open(cls, path: str | Path) -> "SequenceStore":
        """Opens the store at `path`, checking format version, file presence, dtypes and shapes."""
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"sequence store {path} does not exist or is not a directory")
        meta_path = path / METADATA_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(f"{meta_path}: missing; {path} is not a sequence store (run preprocess)")
        try:
            metadata = json.loads(meta_path.read_text())
        except json.JSONDecodeError as e:
            raise StoreError(f"{meta_path}: not valid JSON: {e}") from e
        version = metadata.get("format_version")
        if version != FORMAT_VERSION:
            raise StoreError(f"{meta_path}: format_version {version!r}, this code reads {FORMAT_VERSION}; "
                             "re-run preprocess to rebuild the store")
        for key in ("dataset", "counts", "has_timestamps", "split", "files"):
            if key not in metadata:
                raise StoreError(f"{meta_path}: missing key {key!r}")
        splits.get_protocol(metadata["split"]["protocol"])

        c = metadata["counts"]
        u, e, n_items = int(c["users"]), int(c["events"]), int(c["max_item_id"])
        want = {"offsets": (np.int64, u + 1), "item_ids": (np.int32, e), "timestamps": (np.int64, e),
                "user_ids": (None, u)}
        if metadata.get("has_ratings"):
            want["ratings"] = (np.int8, e)
        if metadata.get("id_mapping", {}).get("items", {}).get("kind") == "stored":
            want["item_raw_ids"] = (None, n_items + 1)
        arrays = {}
        for name, (dtype, length) in want.items():
            f = path / f"{name}.npy"
            if not f.is_file():
                raise FileNotFoundError(f"{f}: missing from sequence store {path}")
            try:
                a = np.load(f, mmap_mode="r", allow_pickle=False)
            except ValueError as err:
                raise StoreError(f"{f}: cannot be memory-mapped: {err}") from err
            if a.shape != (length,):
                raise StoreError(f"{f}: shape {a.shape} inconsistent with metadata (want ({length},))")
            if dtype is not None and a.dtype != dtype:
                raise StoreError(f"{f}: dtype {a.dtype}, want {np.dtype(dtype)}")
            arrays[name] = a
        off = arrays["offsets"]
        if off[0] != 0 or off[-1] != e:
            raise StoreError(f"{path / 'offsets.npy'}: must start at 0 and end at {e} events, "
                             f"got {int(off[0])}..{int(off[-1])}")
        return cls(path, metadata, arrays)

    @property
    def dataset(self) -> str:
        return self.metadata["dataset"]

    @property
    def num_users(self) -> int:
        return int(self.metadata["counts"]["users"])

    @property
    def num_events(self) -> int:
        return int(self.metadata["counts"]["events"])

    @property
    def num_items(self) -> int:
        """Largest item id; embedding tables have num_items + 1 rows."""
        return int(self.metadata["counts"]["max_item_id"])

    @property
    def has_timestamps(self) -> bool:
        return bool(self.metadata["has_timestamps"])

    @property
    def protocol(self) -> str:
        return self.metadata["split"]["protocol"]

    def identity(self) -> dict:
        """What makes two stores the same data: dataset, counts and the sha256 of the raw files read.

        Saved with a pipeline's iterator state, so a run does not resume onto a store rebuilt from other data.
        """
        sources = json.dumps(self.metadata.get("source_files", {}), sort_keys=True).encode()
        return {"dataset": self.dataset, "users": self.num_users, "events": self.num_events,
                "max_item_id": self.num_items, "sources_sha256": hashlib.sha256(sources).hexdigest()}

    def _check_user(self, u: int) -> int:
        if not 0 <= u < self.num_users:
            raise IndexError(f"{self.path}: user row {u} out of range [0, {self.num_users})")
        return int(u)

    def user(self, u: int, start: int = 0, stop: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(item_ids int32[n], timestamps int64[n]) of user row `u` in time order (copies, not views).

        `start`/`stop` select events [start, stop) of the user, so a pipeline reads only what a row needs.
        """
        u = self._check_user(u)
        lo, hi = int(self.offsets[u]), int(self.offsets[u + 1])
        stop = hi - lo if stop is None else stop
        if not 0 <= start <= stop <= hi - lo:
            raise IndexError(f"{self.path}: events [{start}, {stop}) out of range for user row {u} "
                             f"with {hi - lo} events")
        return np.array(self.item_ids[lo + start:lo + stop]), np.array(self.timestamps[lo + start:lo + stop])

    def source_user_id(self, u: int):
        """The source dataset's id of user row `u` (for error messages and result files)."""
        return self.user_ids[self._check_user(u)].item()

    def __repr__(self) -> str:
        return (f"SequenceStore({str(self.path)!r}, dataset={self.dataset!r}, users={self.num_users}, "
                f"events={self.num_events}, max_item_id={self.num_items}, protocol={self.protocol!r})")
