import json

import numpy as np
import pytest

from data_pipeline import splits, store as store_mod
from data_pipeline.datasets.events import from_user_lists
from data_pipeline.store import SequenceStore, StoreError, write_store


def _seqs(*, timestamps=True, ratings=True, raw_items=True, user_ids=None):
    rng = np.random.default_rng(1)
    lengths = [1, 2, 3, 5, 8, 13]
    items = [rng.integers(1, 10, size=n) for n in lengths]
    times = [np.sort(rng.integers(10**9, 10**9 + 10**6, size=n)) for n in lengths] if timestamps else None
    rates = [rng.integers(1, 6, size=n) for n in lengths] if ratings else None
    raw = np.array(["<pad>"] + [f"item{i}" for i in range(1, 10)], dtype=object) if raw_items else None
    uids = user_ids if user_ids is not None else [100 + u for u in range(len(lengths))]
    return from_user_lists("toy", uids, items, times, rates, num_items=9, item_raw_ids=raw,
                           source_files={"ratings.dat": "ab" * 32})


def test_round_trip(tmp_path):
    seqs = _seqs()
    meta = write_store(seqs, tmp_path / "s", protocol="reference")
    st = SequenceStore.open(tmp_path / "s")
    assert st.metadata == meta == json.loads((tmp_path / "s" / "metadata.json").read_text())
    assert meta["format_version"] == store_mod.FORMAT_VERSION
    assert meta["counts"] == {"users": 6, "items": int(np.unique(seqs.item_ids).size), "events": 32,
                              "max_item_id": 9, "min_seq_len": 1, "mean_seq_len": 32 / 6, "max_seq_len": 13}
    assert meta["split"] == {"protocol": "reference", "report": splits.split_report(seqs.lengths, "reference")}
    assert meta["source_files"] == {"ratings.dat": "ab" * 32}
    assert meta["id_mapping"]["items"]["kind"] == "stored" and meta["has_ratings"] and meta["created_at"]
    assert (st.dataset, st.num_users, st.num_items, st.num_events) == ("toy", 6, 9, 32)
    assert st.has_timestamps and st.protocol == "reference"
    np.testing.assert_array_equal(st.lengths, seqs.lengths)
    assert st.lengths.dtype == np.int32
    for u in range(st.num_users):
        lo, hi = seqs.offsets[u], seqs.offsets[u + 1]
        items, times = st.user(u)
        assert items.dtype == np.int32 and times.dtype == np.int64
        np.testing.assert_array_equal(items, seqs.item_ids[lo:hi])
        np.testing.assert_array_equal(times, seqs.timestamps[lo:hi])
        np.testing.assert_array_equal(st.user(u, hi - lo - 1)[0], seqs.item_ids[hi - 1:hi])
        assert st.source_user_id(u) == 100 + u
    np.testing.assert_array_equal(st.ratings, seqs.ratings)
    assert list(st.item_raw_ids[:2]) == ["<pad>", "item1"]
    # Memory-mapped, not read whole.
    for a in (st.offsets, st.item_ids, st.timestamps, st.ratings, st.user_ids, st.item_raw_ids):
        assert isinstance(a, np.memmap)


def test_optional_arrays_absent_and_string_user_ids(tmp_path):
    seqs = _seqs(timestamps=False, ratings=False, raw_items=False,
                 user_ids=np.array([f"A{u}" for u in range(6)], dtype=object))
    meta = write_store(seqs, tmp_path / "s")
    assert not (tmp_path / "s" / "ratings.npy").exists() and not (tmp_path / "s" / "item_raw_ids.npy").exists()
    assert meta["id_mapping"]["items"]["kind"] == "identity" and meta["split"]["protocol"] == "loo-val"
    st = SequenceStore.open(tmp_path / "s")
    assert not st.has_timestamps and st.ratings is None and st.item_raw_ids is None
    assert st.source_user_id(3) == "A3" and isinstance(st.user_ids, np.memmap)
    assert not st.user(5)[1].any()


def test_refuses_overwrite_and_replaces_atomically(tmp_path):
    write_store(_seqs(), tmp_path / "s")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_store(_seqs(), tmp_path / "s", protocol="reference")
    assert SequenceStore.open(tmp_path / "s").protocol == "loo-val"
    write_store(_seqs(), tmp_path / "s", protocol="reference", overwrite=True)
    assert SequenceStore.open(tmp_path / "s").protocol == "reference"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # no temp or old dirs left behind


def test_crash_mid_write_leaves_no_store(tmp_path, monkeypatch):
    calls = []
    real_save = np.save

    def failing_save(path, *a, **k):
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk full")
        return real_save(path, *a, **k)

    monkeypatch.setattr(store_mod.np, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        write_store(_seqs(), tmp_path / "s")
    assert list(tmp_path.iterdir()) == []


def test_write_rejects_unknown_protocol(tmp_path):
    with pytest.raises(ValueError, match="unknown split protocol"):
        write_store(_seqs(), tmp_path / "s", protocol="random")
    assert not (tmp_path / "s").exists()


def test_open_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SequenceStore.open(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="metadata.json"):
        SequenceStore.open(tmp_path / "empty")

    write_store(_seqs(), tmp_path / "s")
    (tmp_path / "s" / "item_ids.npy").unlink()
    with pytest.raises(FileNotFoundError, match="item_ids.npy"):
        SequenceStore.open(tmp_path / "s")

    write_store(_seqs(), tmp_path / "s", overwrite=True)
    np.save(tmp_path / "s" / "timestamps.npy", np.zeros(31, np.int64))
    with pytest.raises(StoreError, match=r"timestamps.npy: shape \(31,\) inconsistent"):
        SequenceStore.open(tmp_path / "s")

    write_store(_seqs(), tmp_path / "s", overwrite=True)
    np.save(tmp_path / "s" / "item_ids.npy", np.ones(32, np.int64))
    with pytest.raises(StoreError, match="item_ids.npy: dtype int64"):
        SequenceStore.open(tmp_path / "s")

    write_store(_seqs(), tmp_path / "s", overwrite=True)
    meta_path = tmp_path / "s" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["format_version"] = 99
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(StoreError, match="format_version 99"):
        SequenceStore.open(tmp_path / "s")


def test_user_index_errors(tmp_path):
    write_store(_seqs(), tmp_path / "s")
    st = SequenceStore.open(tmp_path / "s")
    with pytest.raises(IndexError, match=r"user row 6 out of range \[0, 6\)"):
        st.user(6)
    with pytest.raises(IndexError, match="events \\[0, 3\\) out of range for user row 1"):
        st.user(1, 0, 3)
