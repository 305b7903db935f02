"""`bench.candidates`: re-ranking a finished run with the candidates restricted to a keep list."""
from __future__ import annotations

import json

import numpy as np
import pytest

from bench import candidates
from lrm.training import train as train_mod
from test_train import _synthetic_store, _tiny_config

ITEMS = 200  # many more items than test targets, so a keep list can drop ids that are nobody's target


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("candidates")
    _synthetic_store(root / "stores", items=ITEMS)
    train_mod.train_and_evaluate(_tiny_config(root / "stores", num_steps=4), root / "run")
    return root / "run"


def _targets(run) -> np.ndarray:
    """The distinct held-out test items of the run's users."""
    from data_pipeline.pipeline import make_eval_dataset
    from data_pipeline.store import SequenceStore
    from lrm.training.data import store_path
    from lrm.training.evaluate import held_out, run_config

    config = run_config(run)
    found = []
    for batch in make_eval_dataset(SequenceStore.open(store_path(config.data)), split="test",
                                   max_len=config.data.max_len, batch_size=8, process_index=0, process_count=1):
        target_B, _ = held_out(batch)
        found.extend(target_B[batch["weights_B"] == 1].tolist())
    return np.unique(np.asarray(found))


def test_keeping_every_id_reproduces_the_run(run, capsys, tmp_path):
    keep = tmp_path / "all.txt"
    keep.write_text("\n".join(map(str, range(1, ITEMS + 1))) + "\n")
    candidates.main([str(run), "--keep", str(keep)])
    table = capsys.readouterr().out
    r = candidates.restricted_ranks(run, candidates.read_ids(keep))
    assert r["removed"] == 0 and np.array_equal(r["ranks_kept"], r["ranks_all"])
    reported = json.loads((run / "results.json").read_text())["test"]
    for name in ("hr@10", "ndcg@10", "mrr"):
        assert r["kept_metrics"][name] == pytest.approx(reported[name], abs=1e-12)
    assert "users whose rank changed: 0" in table


def test_removed_ids_only_lift_targets_and_by_at_most_their_number(run):
    targets = _targets(run)
    others = np.setdiff1d(np.arange(1, ITEMS + 1), targets)
    assert others.size >= 50  # the fixture leaves ids that are nobody's target
    removed = others[::2]
    r = candidates.restricted_ranks(run, np.setdiff1d(np.arange(1, ITEMS + 1), removed))
    lift_U = r["ranks_all"] - r["ranks_kept"]
    assert lift_U.min() >= 0 and lift_U.max() <= removed.size and lift_U.sum() > 0
    # Only the targets left: nobody can rank below the number of other targets.
    only = candidates.restricted_ranks(run, targets)
    assert only["removed"] == ITEMS - targets.size
    assert only["ranks_kept"].max() <= targets.size
    assert np.all(only["ranks_kept"] <= r["ranks_kept"])


def test_bad_keep_lists(run, tmp_path):
    targets = _targets(run)
    with pytest.raises(ValueError, match="not in the keep list"):
        candidates.restricted_ranks(run, targets[1:])
    with pytest.raises(ValueError, match="outside the run's items"):
        candidates.restricted_ranks(run, np.append(targets, ITEMS + 7))
    bad = tmp_path / "bad.dat"
    bad.write_text("1::Toy Story (1995)::Animation\nTwo::x\n")
    with pytest.raises(ValueError, match=r"bad.dat:2: expected an item id"):
        candidates.read_ids(bad)
    movies = tmp_path / "movies.dat"
    movies.write_text("3::A::B\n1::C::D\n\n3::E::F\n")
    assert candidates.read_ids(movies).tolist() == [1, 3]
