"""bench.ml1m_ties: two orders of the same ratings compared on hand-built files with known answers, the
errors for files that are not two orders of the same data, and (when present) the shared ML-1M files."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.ml1m_ties import format_report, main, tie_report
from data_pipeline.datasets.amazon import read_s3rec_sequences
from data_pipeline.datasets.movielens import read_ml1m_ratings

DATA_DIR = Path(os.environ.get("LRM_TEST_DATA_DIR", Path(__file__).resolve().parents[1].parent / "shared" / "datasets"))

# User 1: items 10, 11 share second 100 (file order 11, 10), then 12 and 13 share second 200 (file order 13, 12).
# User 2: no ties. User 3: all three in one second.
RATINGS = """1::11::5::100
1::13::4::200
1::10::3::100
1::12::3::200
2::20::4::10
2::21::4::20
3::30::1::5
3::31::2::5
3::32::3::5
"""


def _files(tmp_path: Path, sequences: str) -> tuple[Path, Path]:
    r, s = tmp_path / "ratings.dat", tmp_path / "sequences.txt"
    r.write_text(RATINGS)
    s.write_text(sequences)
    return r, s


def _report(tmp_path: Path, sequences: str) -> dict[str, int]:
    r, s = _files(tmp_path, sequences)
    counts, last_differs = tie_report(read_ml1m_ratings(r), read_s3rec_sequences(s, dataset="ml-1m"))
    assert len(last_differs) == counts["last_differs"]
    return counts


def test_counts_where_two_orders_of_the_same_ratings_disagree(tmp_path):
    # Stable order: user 1 = 11 10 13 12, user 2 = 20 21, user 3 = 30 31 32.
    c = _report(tmp_path, "1 10 11 12 13\n2 20 21\n3 30 32 31\n")
    assert c == {"users": 3, "events": 9, "events_sharing_a_second": 7, "identical_order": 1,
                 "last_differs": 2, "second_to_last_differs": 2, "last_shares_second_with_previous": 2}
    table = format_report(c)
    assert "| users whose last event (the test event) differs between the orders | 2 | 66.7% of users |" in table
    assert "| events in a second shared with another event of the same user | 7 | 77.8% of events |" in table


def test_the_same_order_differs_nowhere(tmp_path):
    c = _report(tmp_path, "1 11 10 13 12\n2 20 21\n3 30 31 32\n")
    assert (c["identical_order"], c["last_differs"], c["second_to_last_differs"]) == (3, 0, 0)


@pytest.mark.parametrize("sequences, words", [
    ("1 11 10 13 12\n2 20 21\n", "user 3 has timed events but no row"),
    ("1 11 10 13 14\n2 20 21\n3 30 31 32\n", "user 1: the ordered sequence holds other items"),
    ("1 11 10 13\n2 20 21\n3 30 31 32\n", "user 1: the ordered sequence holds other items"),
    ("1 11 13 10 12\n2 20 21\n3 30 31 32\n", "user 1: the ordered sequence goes back in time at position 2"),
])
def test_files_that_are_not_two_orders_of_the_same_data_are_errors(tmp_path, sequences, words):
    with pytest.raises(ValueError, match=words):
        _report(tmp_path, sequences)


def test_cli_prints_the_table_and_writes_the_segments(tmp_path, capsys):
    r, s = _files(tmp_path, "1 10 11 12 13\n2 20 21\n3 30 32 31\n")
    assert main(["--timed", str(r), "--ordered", str(s), "--segments", str(tmp_path / "seg")]) == 0
    assert "| users in both files | 3 | |" in capsys.readouterr().out
    assert (tmp_path / "seg" / "last_differs.txt").read_text() == "1\n3\n"
    assert (tmp_path / "seg" / "last_same.txt").read_text() == "2\n"


def test_shared_ml1m_files():
    timed, ordered = (DATA_DIR / "ml-1m" / f for f in ("ratings_users1-2999.dat.gz", "sequences.txt"))
    for p in (timed, ordered):
        if not p.is_file():
            pytest.skip(f"real dataset file {p} not present (set LRM_TEST_DATA_DIR to the shared datasets folder)")
    c, _ = tie_report(read_ml1m_ratings(timed), read_s3rec_sequences(ordered, dataset="ml-1m"))
    assert c == {"users": 2999, "events": 487650, "events_sharing_a_second": 377990, "identical_order": 9,
                 "last_differs": 777, "second_to_last_differs": 1179, "last_shares_second_with_previous": 1268}
