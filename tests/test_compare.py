"""Paired bootstrap of two runs' per-user ranks: the per-user metrics, the interval's coverage, and
`bench.compare` end to end on two tiny runs."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from bench import compare
from lrm.metrics import METRIC_KS, NDCG_KS, paired_bootstrap, per_user_metric, summarize
from lrm.training import train as train_mod
from test_train import _synthetic_store, _tiny_config


def test_per_user_metrics_average_to_the_accumulator():
    rank_U = np.random.default_rng(0).integers(1, 3000, size=500)
    rank_U[:40] = np.arange(1, 41)
    want = summarize(rank_U, None, max_rank=2500)
    for name in [f"hr@{k}" for k in METRIC_KS] + [f"ndcg@{k}" for k in NDCG_KS] + ["mrr"]:
        assert per_user_metric(rank_U, name, max_rank=2500).mean() == pytest.approx(want[name], rel=1e-12), name
    assert per_user_metric(np.array([1, 2, 3]), "ndcg@5").tolist() == pytest.approx([1.0, 1 / np.log2(3), 0.5])
    with pytest.raises(ValueError, match="unknown metric 'hr@7'"):
        per_user_metric(rank_U, "hr@7")
    with pytest.raises(ValueError, match="ranks >= 1"):
        per_user_metric(np.array([1, 0]), "hr@10")


def test_identical_runs_differ_by_exactly_zero():
    rank_U = np.random.default_rng(1).integers(1, 100, size=300)
    r = paired_bootstrap(rank_U, rank_U.copy(), ("hr@10", "ndcg@10"))
    for m in r.values():
        assert m["diff"] == m["lo"] == m["hi"] == 0.0 and m["a"] == m["b"]


def _paired_population(rng, n):
    """A is B with 30% of users moved to a 4x better rank: HR@10 rises by 0.3 * P(10 < rank_B <= 40)."""
    rank_b = rng.geometric(0.02, size=n)
    better = rng.random(n) < 0.3
    rank_a = np.where(better, np.maximum(rank_b // 4, 1), rank_b)
    return rank_a, rank_b


def test_interval_covers_the_true_difference_about_95_percent_of_the_time():
    p = 0.02  # P(10 < rank <= 40) for a geometric(p) rank
    truth = 0.3 * ((1 - p) ** 10 - (1 - p) ** 40)
    rng = np.random.default_rng(2)
    covered, widths = 0, []
    reps = 200
    for rep in range(reps):
        rank_a, rank_b = _paired_population(rng, 400)
        m = paired_bootstrap(rank_a, rank_b, ("hr@10",), num_resamples=1000, seed=rep)["hr@10"]
        covered += m["lo"] <= truth <= m["hi"]
        widths.append(m["hi"] - m["lo"])
    # Binomial(200, 0.95) lies in [181, 199] with probability > 0.999; a percentile interval of a mean of
    # 400 bounded values is close to nominal.
    assert 181 <= covered <= 199, covered
    # Pairing: the interval is narrower than the unpaired one (full width, from the two per-model errors).
    rank_a, rank_b = _paired_population(np.random.default_rng(3), 400)
    unpaired = 2 * 1.96 * np.sqrt(sum(np.var(per_user_metric(r, "hr@10")) / 400 for r in (rank_a, rank_b)))
    assert np.mean(widths) < unpaired


def test_bad_inputs():
    with pytest.raises(ValueError, match="same users"):
        paired_bootstrap(np.ones(3, int), np.ones(4, int), ("hr@10",))
    with pytest.raises(ValueError, match="at least 1000"):
        paired_bootstrap(np.ones(3, int), np.ones(3, int), ("hr@10",), num_resamples=100)
    with pytest.raises(ValueError, match="level"):
        paired_bootstrap(np.ones(3, int), np.ones(3, int), ("hr@10",), level=95)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    _synthetic_store(root / "stores")
    for seed in (0, 1):
        config = _tiny_config(root / "stores", num_steps=6)
        config.seed = seed
        train_mod.train_and_evaluate(config, root / f"run{seed}")
    return root


def test_compare_two_runs_end_to_end(two_runs, capsys):
    a, b = two_runs / "run0", two_runs / "run1"
    out = two_runs / "cmp.json"
    compare.main([str(a), str(b), "--metrics", "hr@10,ndcg@10", "--json", str(out)])
    table = capsys.readouterr().out
    result = json.loads(out.read_text())
    res_a, res_b = (json.loads((w / "results.json").read_text())["test"] for w in (a, b))
    assert result["num_users"] == res_a["num_users"] == res_b["num_users"]
    for name in ("hr@10", "ndcg@10"):
        m = result["metrics"][name]
        assert m["a"] == pytest.approx(res_a[name], abs=1e-12) and m["b"] == pytest.approx(res_b[name], abs=1e-12)
        assert m["diff"] == pytest.approx(res_a[name] - res_b[name], abs=1e-12)
        assert m["lo"] <= m["diff"] <= m["hi"]
        assert f"| {name.upper()} | {m['a']:.4f} | {m['b']:.4f} |" in table
    same = compare.compare(a, a, metrics=("hr@10",))["metrics"]["hr@10"]
    assert same["diff"] == same["lo"] == same["hi"] == 0.0


def test_compare_refuses_runs_it_cannot_pair(two_runs, tmp_path):
    # A run whose results.json does not match its parameters.
    tampered = tmp_path / "tampered"
    shutil.copytree(two_runs / "run0", tampered)
    res = json.loads((tampered / "results.json").read_text())
    res["test"]["hr@10"] += 0.01
    (tampered / "results.json").write_text(json.dumps(res))
    with pytest.raises(ValueError, match="differs from results.json"):
        compare.compare(tampered, two_runs / "run1")
    # A run on a store of other data.
    other_root = tmp_path / "other"
    _synthetic_store(other_root / "stores", users=80)
    config = _tiny_config(other_root / "stores", num_steps=2)
    train_mod.train_and_evaluate(config, other_root / "run")
    with pytest.raises(ValueError, match="different data"):
        compare.compare(two_runs / "run0", other_root / "run")
    with pytest.raises(FileNotFoundError, match="finished training workdir"):
        compare.compare(tmp_path / "nothing", two_runs / "run1")


def test_other_data_pairs_two_stores_of_the_same_users_by_source_id(two_runs, tmp_path, capsys):
    """Two stores of the same users in another item order (as two tie orders of the same ratings would be):
    refused as other data unless --other_data, then paired user by user; other users are refused even so."""
    from data_pipeline.datasets.events import from_user_lists
    from data_pipeline.store import write_store
    from lrm.metrics import per_user_metric
    from lrm.training.evaluate import rank_run

    rng = np.random.default_rng(0)  # the users of _synthetic_store, each walking the ring the other way
    item_lists, time_lists = [], []
    for _ in range(96):
        n = int(rng.integers(5, 15))
        start = int(rng.integers(1, 41))
        item_lists.append(((start - 1 - np.arange(n)) % 40 + 1).astype(np.int32))
        time_lists.append(np.cumsum(rng.integers(1, 86400 * 3, size=n)).astype(np.int64))
    reversed_seqs = from_user_lists("synthetic-test", list(range(1, 97)), item_lists, time_lists, None,
                                    num_items=40, item_raw_ids=None,
                                    source_files={"synthetic/ring_backwards.txt": "0" * 64})  # another raw file
    write_store(reversed_seqs, tmp_path / "stores" / "synthetic-test-loo-val", protocol="loo-val")
    train_mod.train_and_evaluate(_tiny_config(tmp_path / "stores", num_steps=6), tmp_path / "run")
    a, b = two_runs / "run0", tmp_path / "run"
    with pytest.raises(ValueError, match="different data.*--other_data"):
        compare.compare(a, b)
    compare.main([str(a), str(b), "--metrics", "hr@10,mrr", "--other_data", "--json", str(tmp_path / "c.json")])
    assert "paired by source user id" in capsys.readouterr().out
    result = json.loads((tmp_path / "c.json").read_text())
    assert result["other_data"] and result["num_users"] == 96
    ranks_a, ranks_b = (rank_run(w, ("test",))["test"].ranks_U for w in (a, b))
    for name in ("hr@10", "mrr"):
        m = result["metrics"][name]
        assert m["a"] == pytest.approx(per_user_metric(ranks_a, name).mean(), abs=1e-12)
        assert m["b"] == pytest.approx(per_user_metric(ranks_b, name).mean(), abs=1e-12)
    other_users = tmp_path / "other"
    _synthetic_store(other_users / "stores", users=80)
    train_mod.train_and_evaluate(_tiny_config(other_users / "stores", num_steps=2), other_users / "run")
    with pytest.raises(ValueError, match="pairs users by source id, and the runs scored different test users"):
        compare.compare(a, other_users / "run", other_data=True)


def test_compare_on_a_user_segment(two_runs, tmp_path, capsys):
    from lrm.metrics import per_user_metric
    from lrm.training.evaluate import rank_run

    a, b = two_runs / "run0", two_runs / "run1"
    full_a, full_b = (rank_run(w, ("test",))["test"] for w in (a, b))
    segment = [str(u) for u in range(1, 97, 3)]  # source ids of the synthetic store's users 1..96
    rows = np.asarray([int(u) - 1 for u in segment])  # its rows hold users 1..96 in order
    seg = tmp_path / "users.txt"
    seg.write_text("\n".join(segment) + "\n\n")
    compare.main([str(a), str(b), "--metrics", "hr@10,mrr", "--users", str(seg), "--json", str(tmp_path / "c.json")])
    assert f"test split, {len(segment)} users (the listed segment)" in capsys.readouterr().out
    result = json.loads((tmp_path / "c.json").read_text())
    assert result["num_users"] == len(segment)
    for name in ("hr@10", "mrr"):
        m = result["metrics"][name]
        want_a = per_user_metric(full_a.ranks_U[np.isin(full_a.users_U, rows)], name).mean()
        want_b = per_user_metric(full_b.ranks_U[np.isin(full_b.users_U, rows)], name).mean()
        assert m["a"] == pytest.approx(want_a, abs=1e-12) and m["b"] == pytest.approx(want_b, abs=1e-12)
    # A segment that differs from all users gives other numbers than the whole split (the filter acts).
    whole = compare.compare(a, b, metrics=("mrr",))["metrics"]["mrr"]
    assert whole["a"] != result["metrics"]["mrr"]["a"]
    seg.write_text("1\n999\n")
    with pytest.raises(ValueError, match="1 listed users are not test users"):
        compare.compare(a, b, users=compare.read_user_ids(seg))
    seg.write_text("4\n7\n4\n")
    with pytest.raises(ValueError, match="'4' is listed twice"):
        compare.read_user_ids(seg)
    seg.write_text("\n")
    with pytest.raises(ValueError, match="no user ids"):
        compare.read_user_ids(seg)


def test_rescore_here_compares_runs_scored_elsewhere_and_shows_the_drift(two_runs, tmp_path):
    """A run scored on another platform (results.json a few users' ranks off, as a GPU's TF32 eval reads) is
    refused by default, and compared under --rescore_here on ranks recomputed here, with the drift shown."""
    elsewhere = tmp_path / "gpu_run"
    shutil.copytree(two_runs / "run0", elsewhere)
    res = json.loads((elsewhere / "results.json").read_text())
    true_ndcg = res["test"]["ndcg@10"]
    res["test"]["ndcg@10"] += 2e-4
    (elsewhere / "results.json").write_text(json.dumps(res))
    with pytest.raises(ValueError, match="--rescore_here"):
        compare.compare(elsewhere, two_runs / "run1")

    here = compare.compare(elsewhere, two_runs / "run1", metrics=("hr@10", "ndcg@10"), rescore_here=True)
    exact = compare.compare(two_runs / "run0", two_runs / "run1", metrics=("hr@10", "ndcg@10"))
    assert here["metrics"] == exact["metrics"]  # the same parameters give the same ranks here
    drift = here["rescored_here"]["a"]["ndcg@10"]
    assert drift["here"] == pytest.approx(true_ndcg, abs=1e-12)
    assert drift["reported"] == pytest.approx(true_ndcg + 2e-4, abs=1e-12)
    assert set(here["rescored_here"]) == {"a", "b"}
    table = compare.format_table(here)
    assert f"{drift['here']:.4f} ({drift['reported']:.4f})" in table and "re-scored here" in table

    # What --rescore_here does not forgive: other users (other data) or another step than the reported one.
    res["test"]["num_users"] += 1
    (elsewhere / "results.json").write_text(json.dumps(res))
    with pytest.raises(ValueError, match="not the data the run was scored on"):
        compare.compare(elsewhere, two_runs / "run1", rescore_here=True)
    res["test"]["num_users"] -= 1
    res["best_step"] += 1
    (elsewhere / "results.json").write_text(json.dumps(res))
    with pytest.raises(ValueError, match="reported best step"):
        compare.compare(elsewhere, two_runs / "run1", rescore_here=True)
