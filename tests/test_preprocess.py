"""The preprocess CLI: raw files → a store that SequenceStore.open accepts, with counts and split report printed."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

DATA_DIR = Path(os.environ.get("LRM_TEST_DATA_DIR", Path(__file__).resolve().parents[1].parent / "shared" / "datasets"))

store = pytest.importorskip("data_pipeline.store", reason="data_pipeline/store.py not written yet")
from data_pipeline import preprocess  # noqa: E402  (imports store)


def test_beauty_store_roundtrip(tmp_path, capsys):
    if not (DATA_DIR / "amazon-s3rec" / "Beauty.txt").is_file():
        pytest.skip(f"Beauty not present under {DATA_DIR} (set LRM_TEST_DATA_DIR)")
    out = tmp_path / "beauty"
    rc = preprocess.main(["--dataset", "beauty", "--data_root", str(DATA_DIR), "--out", str(out),
                          "--protocol", "reference", "--no_download"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "22,363 users" in printed and "12,101 items" in printed and "198,502 events" in printed
    assert "split protocol reference" in printed and "226cce9c" in printed

    s = store.SequenceStore.open(out)
    assert s.metadata["split"]["protocol"] == "reference"
    assert s.metadata["counts"]["users"] == 22363 and s.metadata["has_timestamps"]
    assert s.metadata["source_files"]["amazon-s3rec/Beauty.txt"].startswith("226cce9c")
    assert int(s.offsets[-1]) == 198502 and np.asarray(s.item_ids).max() == 12101
    # user 1's line in Beauty.txt is "1 1 2 3 4 5"
    assert np.asarray(s.item_ids[s.offsets[0]:s.offsets[1]]).tolist() == [1, 2, 3, 4, 5]


def test_fixture_store_default_protocol(tmp_path, capsys):
    root = tmp_path / "raw"
    (root / "ml-100k").mkdir(parents=True)
    (root / "ml-100k" / "u.data").write_text("1\t5\t3\t20\n1\t6\t4\t10\n1\t7\t4\t30\n2\t5\t1\t5\n")
    out = tmp_path / "store"
    assert preprocess.main(["--dataset", "ml-100k", "--data_root", str(root), "--out", str(out), "--no_download"]) == 0
    s = store.SequenceStore.open(out)
    assert s.metadata["split"]["protocol"] == "loo-val"
    assert np.asarray(s.item_ids).tolist() == [6, 5, 7, 5]
    assert "too short" in capsys.readouterr().out


def test_missing_files_give_instructions(tmp_path, capsys):
    rc = preprocess.main(["--dataset", "ml-20m", "--data_root", str(tmp_path), "--out", str(tmp_path / "s"),
                          "--no_download"])
    assert rc == 1
    err = capsys.readouterr().err
    assert str(tmp_path / "ml-20m" / "ratings.csv") in err and "files.grouplens.org" in err
    assert not (tmp_path / "s").exists()


def test_unknown_dataset_is_rejected(tmp_path):
    with pytest.raises(SystemExit):
        preprocess.main(["--dataset", "ml-2m", "--data_root", str(tmp_path), "--out", str(tmp_path / "s")])
