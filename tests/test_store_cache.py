"""The cached sequence store is reused only while the data root holds the raw files it was built from."""
from __future__ import annotations

import ml_collections
import pytest

from data_pipeline.datasets import present_source_files
from lrm.training.data import StaleStoreError, open_or_build_store, store_path

SEQUENCES = "1 10 20 30\n2 20 30\n3 10 30 40 50\n"
RATINGS = "1::10::5::100\n1::20::3::150\n1::30::1::200\n2::20::4::70\n2::30::4::80\n3::10::2::5\n3::30::2::6\n"


def _data_cfg(root, stores, dataset="ml-1m", protocol="reference") -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({"dataset": dataset, "protocol": protocol, "data_root": str(root),
                                      "store_root": str(stores), "download": False})


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_present_source_files_follows_the_reader_fallbacks(tmp_path):
    assert present_source_files("ml-1m", tmp_path) == []
    _write(tmp_path / "ml-1m" / "sequences.txt", SEQUENCES)
    assert present_source_files("ml-1m", tmp_path) == [tmp_path / "ml-1m" / "sequences.txt"]
    _write(tmp_path / "ml-1m" / "ratings.dat", RATINGS)
    assert present_source_files("ml-1m", tmp_path) == [tmp_path / "ml-1m" / "ratings.dat"]
    _write(tmp_path / "amazon-s3rec" / "Beauty.txt", SEQUENCES)
    assert present_source_files("beauty", tmp_path) == [tmp_path / "amazon-s3rec" / "Beauty.txt"]
    _write(tmp_path / "amazon-s3rec" / "time_intervals" / "Beauty.txt", "1 0 1 2\n2 0 3\n3 0 0 0 1 1\n")
    assert present_source_files("beauty", tmp_path) == [
        tmp_path / "amazon-s3rec" / "Beauty.txt", tmp_path / "amazon-s3rec" / "time_intervals" / "Beauty.txt"]
    with pytest.raises(KeyError, match="ml-2m"):
        present_source_files("ml-2m", tmp_path)


def test_fallback_store_is_not_reused_once_ratings_dat_is_there(tmp_path):
    root, stores = tmp_path / "data", tmp_path / "stores"
    _write(root / "ml-1m" / "sequences.txt", SEQUENCES)
    cfg = _data_cfg(root, stores)
    store = open_or_build_store(cfg)
    assert not store.has_timestamps and store.num_events == 9
    assert open_or_build_store(cfg).num_events == 9  # same files: the cache is reused

    _write(root / "ml-1m" / "ratings.dat", RATINGS)
    with pytest.raises(StaleStoreError) as e:
        open_or_build_store(cfg)
    msg = str(e.value)
    path = store_path(cfg)
    assert str(path) in msg and str(root) in msg
    assert "ml-1m/ratings.dat is under the data root but the store was not built from it" in msg
    assert "ml-1m/sequences.txt was read to build the store but is not under the data root" in msg
    assert f"lrm-preprocess --dataset ml-1m --data_root {root} --out {path} --protocol reference --overwrite" in msg

    # Rebuilt from ratings.dat it has the timestamps, and is reused as long as ratings.dat is unchanged.
    import shutil
    shutil.rmtree(path)
    store = open_or_build_store(cfg)
    assert store.has_timestamps and store.num_events == 7
    assert open_or_build_store(cfg).num_events == 7


def test_changed_raw_file_is_detected_by_its_sha256(tmp_path):
    root, stores = tmp_path / "data", tmp_path / "stores"
    _write(root / "ml-1m" / "ratings.dat", RATINGS)
    cfg = _data_cfg(root, stores)
    recorded = open_or_build_store(cfg).metadata["source_files"]["ml-1m/ratings.dat"]
    _write(root / "ml-1m" / "ratings.dat", RATINGS + "4::10::5::1\n")
    with pytest.raises(StaleStoreError) as e:
        open_or_build_store(cfg)
    assert f"{root / 'ml-1m' / 'ratings.dat'} has sha256" in str(e.value) and recorded in str(e.value)


def test_store_from_another_data_root_is_not_used_silently(tmp_path):
    a, b, stores = tmp_path / "a", tmp_path / "b", tmp_path / "stores"
    _write(a / "ml-1m" / "ratings.dat", RATINGS)
    _write(b / "ml-1m" / "ratings.dat", RATINGS.replace("3::10::2::5", "3::40::2::5"))
    open_or_build_store(_data_cfg(a, stores))
    with pytest.raises(StaleStoreError, match="has sha256"):
        open_or_build_store(_data_cfg(b, stores))


def test_root_without_raw_files_uses_the_copied_store(tmp_path, monkeypatch):
    root, stores = tmp_path / "data", tmp_path / "stores"
    _write(root / "ml-1m" / "ratings.dat", RATINGS)
    open_or_build_store(_data_cfg(root, stores))
    # Only the stores were copied to this machine: an empty data root, or none set at all.
    assert open_or_build_store(_data_cfg(tmp_path / "empty", stores)).num_events == 7
    monkeypatch.delenv("LRM_DATA_DIR", raising=False)
    assert open_or_build_store(_data_cfg("", stores)).num_events == 7


def _build_meanwhile(monkeypatch, module, name, path, root):
    """Replaces module.name so that its first call first writes the store at `path`, as a concurrent run would."""
    from data_pipeline.datasets import load_dataset
    from data_pipeline.store import write_store

    real, calls = getattr(module, name), []

    def racing(*args, **kwargs):
        if not calls:
            calls.append(1)
            monkeypatch.setattr(module, name, real)  # the other process's build uses the real function
            write_store(load_dataset("ml-1m", root, download=False), path, protocol="reference")
            calls.append((path / "metadata.json").stat().st_ino)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, racing)
    return calls


@pytest.mark.parametrize("when", ["before this run writes", "while this run writes its arrays"])
def test_store_built_by_a_concurrent_run_is_used(tmp_path, monkeypatch, when):
    import numpy as np

    import lrm.training.data as data_mod
    root, stores = tmp_path / "data", tmp_path / "stores"
    _write(root / "ml-1m" / "ratings.dat", RATINGS)
    cfg = _data_cfg(root, stores)
    # The other run renames its finished store into place after this one found none.
    module, name = (data_mod, "load_dataset") if when.startswith("before") else (np, "save")
    other = _build_meanwhile(monkeypatch, module, name, store_path(cfg), root)
    assert open_or_build_store(cfg).num_events == 7
    assert (store_path(cfg) / "metadata.json").stat().st_ino == other[1]  # the other run's store, not replaced
    assert sorted(p.name for p in stores.iterdir()) == ["ml-1m-reference"]  # no temp dir left behind


def test_concurrent_build_into_a_broken_store_dir_still_fails(tmp_path):
    root, stores = tmp_path / "data", tmp_path / "stores"
    _write(root / "ml-1m" / "ratings.dat", RATINGS)
    cfg = _data_cfg(root, stores)
    store_path(cfg).mkdir(parents=True)  # a folder without metadata.json is not a store to use
    with pytest.raises(FileExistsError, match="ml-1m-reference already exists"):
        open_or_build_store(cfg)


def test_concurrent_store_from_other_raw_files_is_caught(tmp_path, monkeypatch):
    import lrm.training.data as data_mod
    a, b, stores = tmp_path / "a", tmp_path / "b", tmp_path / "stores"
    _write(a / "ml-1m" / "ratings.dat", RATINGS)
    _write(b / "ml-1m" / "ratings.dat", RATINGS.replace("3::10::2::5", "3::40::2::5"))
    cfg = _data_cfg(b, stores)
    _build_meanwhile(monkeypatch, data_mod, "load_dataset", store_path(cfg), a)
    with pytest.raises(StaleStoreError, match="has sha256"):
        open_or_build_store(cfg)
