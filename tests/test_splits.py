import numpy as np
import pytest

from data_pipeline import splits

LENGTHS = np.array([1, 2, 3, 4, 5, 10])


def test_loo_val_hand_computed():
    b = splits.split_bounds(LENGTHS, "loo-val")
    assert set(b) == {"train", "valid", "test"}
    # train s[:n-2] needs >= 2 events; valid history s[:n-2] and test history s[:n-1] need >= 1.
    np.testing.assert_array_equal(b["train"], [-1, -1, -1, 2, 3, 8])
    np.testing.assert_array_equal(b["valid"], [-1, -1, 1, 2, 3, 8])
    np.testing.assert_array_equal(b["test"], [-1, 1, 2, 3, 4, 9])
    assert all(v.dtype == np.int64 for v in b.values())


def test_reference_hand_computed():
    b = splits.split_bounds(LENGTHS, "reference")
    assert set(b) == {"train", "test"}
    np.testing.assert_array_equal(b["train"], [-1, -1, 2, 3, 4, 9])
    np.testing.assert_array_equal(b["test"], [-1, 1, 2, 3, 4, 9])


def test_reference_has_no_valid_split_and_says_why():
    with pytest.raises(ValueError, match="no 'valid' split.*loo-val"):
        splits.history_lengths(LENGTHS, "reference", "valid")


def test_unknown_protocol_and_split_list_known_ones():
    with pytest.raises(ValueError, match=r"unknown split protocol 'loo'.*\['loo-val', 'reference'\]"):
        splits.split_bounds(LENGTHS, "loo")
    with pytest.raises(ValueError, match=r"unknown eval split 'dev'.*\['valid', 'test'\]"):
        splits.history_lengths(LENGTHS, "loo-val", "dev")


def test_bad_lengths_rejected():
    with pytest.raises(ValueError, match="1-D integer"):
        splits.split_bounds(np.ones((2, 2), np.int64), "loo-val")
    with pytest.raises(ValueError, match="1-D integer"):
        splits.split_bounds(np.array([1.0, 2.0]), "loo-val")
    with pytest.raises(ValueError, match="user row 1"):
        splits.split_bounds(np.array([3, -1]), "loo-val")


def test_report_counts_too_short_users():
    r = splits.split_report(LENGTHS, "loo-val")
    assert r["protocol"] == "loo-val" and r["users"] == 6 and r["events"] == 25
    assert r["parts"]["train"] == {"min_user_events": 4, "eligible_users": 3, "too_short_users": 3, "events": 13}
    assert r["parts"]["valid"] == {"min_user_events": 3, "eligible_users": 4, "too_short_users": 2, "events": 4}
    assert r["parts"]["test"] == {"min_user_events": 2, "eligible_users": 5, "too_short_users": 1, "events": 5}
    assert r["missing_parts"] == {}

    r = splits.split_report(LENGTHS, "reference")
    assert r["parts"]["train"] == {"min_user_events": 3, "eligible_users": 4, "too_short_users": 2, "events": 18}
    assert r["parts"]["test"]["eligible_users"] == 5
    assert set(r["parts"]) == {"train", "test"} and "valid" in r["missing_parts"]
    text = splits.format_split_report(r)
    assert "too short" in text and "valid none" in " ".join(text.split())


def test_bounds_match_the_table_on_random_users():
    """Bounds agree with slicing each user's events as the conventions table writes it."""
    lengths = np.random.default_rng(0).integers(1, 12, size=200)
    table = {
        "loo-val": {"train": lambda s: s[:-2], "valid": lambda s: (s[:-2], s[-2]), "test": lambda s: (s[:-1], s[-1])},
        "reference": {"train": lambda s: s[:-1], "test": lambda s: (s[:-1], s[-1])},
    }
    for protocol, parts in table.items():
        b = splits.split_bounds(lengths, protocol)
        for u, n in enumerate(lengths):
            s = list(range(n))
            train = parts["train"](s) if n >= 2 else []
            assert b["train"][u] == (len(train) if len(train) >= 2 else -1)
            for split in ("valid", "test"):
                if split not in parts:
                    continue
                drop = 2 if split == "valid" else 1
                if n - drop >= 1:
                    hist, target = parts[split](s)
                    assert b[split][u] == len(hist) and s[b[split][u]] == target
                else:
                    assert b[split][u] == -1
