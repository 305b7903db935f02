"""`lrm-evaluate` (launch/evaluate.py): a saved run scored again outside the train loop must give exactly the
numbers the trainer reported, from best/ or from a train state in checkpoints/."""
from __future__ import annotations

import json
import shutil

import jax
import numpy as np
import optax
import pytest

from bench import compare
from launch import evaluate as cli
from lrm.metrics import per_user_metric
from lrm.training import sharded
from lrm.training import train as train_mod
from lrm.training.checkpointing import TrainCheckpointer, load_params
from lrm.training.evaluate import run_config
from lrm.training.optimizer import make_optimizer
from test_train import _synthetic_store, _tiny_config


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    _synthetic_store(root / "stores")
    _synthetic_store(root / "stores", protocol="reference")
    config = _tiny_config(root / "stores", num_steps=6)
    config.checkpoint.every_steps = 2
    config.checkpoint.keep = 3
    train_mod.train_and_evaluate(config, root / "looval")
    config = _tiny_config(root / "stores", num_steps=6)
    config.data.protocol = "reference"
    train_mod.train_and_evaluate(config, root / "reference")
    return root


def test_best_parameters_reproduce_results_json_exactly(runs, tmp_path, capsys):
    workdir = runs / "looval"
    out, per_user = tmp_path / "ev.json", tmp_path / "ev.npz"
    cli.main(["--workdir", str(workdir), "--out", str(out), "--per_user", str(per_user), "--popularity"])
    record = json.loads(out.read_text())
    results = json.loads((workdir / "results.json").read_text())
    assert record["step"] == results["best_step"] and record["protocol"] == "loo-val"
    assert record["reproduces_results_json"] == {"valid": True, "test": True}
    for split in ("valid", "test"):
        assert record["splits"][split] == results[split]  # same batches, same sums: bit for bit
        assert record["popularity_baseline"][split] == results["popularity_baseline"][split]
    arrays = np.load(per_user)
    ranks_U = arrays["test_ranks"]
    assert len(ranks_U) == len(arrays["test_users"]) == len(arrays["test_ce"]) == results["test"]["num_users"]
    assert np.all(np.diff(arrays["test_users"]) > 0)  # each user once, in store order
    assert per_user_metric(ranks_U, "ndcg@10").mean() == pytest.approx(results["test"]["ndcg@10"], abs=1e-12)
    assert arrays["test_ce"].mean() == pytest.approx(results["test"]["ce"], abs=1e-9)
    table = capsys.readouterr().out
    assert f"| test | {int(results['test']['num_users'])} | {results['test']['hr@5']:.4f} |" in table
    assert "| test (most popular) |" in table


def test_latest_train_state_is_the_trainers_own_resume_state(runs):
    workdir = runs / "looval"
    config = run_config(workdir)
    tx, _ = make_optimizer(config.optim, 6)  # the trainer's optimizer: its state restores into this structure
    _, params, opt_state, _ = sharded.create_state_from_config(config, 40, tx)
    ckpt = TrainCheckpointer(workdir, config.checkpoint, config.to_dict())
    resumed = ckpt.restore(params, opt_state)
    ckpt.close()
    _, like, _, _ = sharded.create_state_from_config(config, 40, optax.identity())
    loaded, meta = load_params(workdir, like, source="latest")
    assert meta["step"] == resumed.step == 6
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(resumed.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    _, older, _, _ = sharded.create_state_from_config(config, 40, optax.identity())
    older, meta = load_params(workdir, older, source="latest", step=4)
    assert meta["step"] == 4
    assert any(not np.array_equal(np.asarray(a), np.asarray(b))
               for a, b in zip(jax.tree.leaves(older), jax.tree.leaves(loaded)))


def test_reference_protocol_latest_equals_best_equals_results(runs, tmp_path):
    # Under "reference" best/ holds the final parameters, which are also the newest train state's.
    workdir = runs / "reference"
    results = json.loads((workdir / "results.json").read_text())
    best, _ = cli.evaluate_run(workdir)
    latest, _ = cli.evaluate_run(workdir, source="latest")
    assert list(best["splits"]) == ["test"]
    assert best["splits"]["test"] == latest["splits"]["test"] == results["test"]
    assert best["reproduces_results_json"] == {"test": True}
    assert latest["reproduces_results_json"] == {"test": None}  # not the reported parameters' source
    with pytest.raises(ValueError, match="protocol 'reference'"):
        cli.evaluate_run(workdir, splits=("valid",))


def test_overrides_and_bad_requests(runs, tmp_path):
    workdir = runs / "looval"
    sub, _ = cli.evaluate_run(workdir, splits=("test",), max_users=20, batch_size=7)
    assert sub["splits"]["test"]["num_users"] == 20 and sub["reproduces_results_json"] == {"test": None}
    assert sub["overrides"] == {"eval.max_users": 20, "eval.batch_size": 7}
    moved = tmp_path / "stores"
    shutil.copytree(runs / "stores", moved)
    elsewhere, _ = cli.evaluate_run(workdir, splits=("test",), store_root=str(moved))
    assert elsewhere["reproduces_results_json"] == {"test": True}  # same data read from elsewhere
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        cli.evaluate_run(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match=r"no checkpoint of step 5; have \[2, 4, 6\]"):
        cli.evaluate_run(workdir, source="latest", step=5)
    with pytest.raises(ValueError, match="source must be one of"):
        cli.evaluate_run(workdir, source="newest")


def test_a_run_whose_results_do_not_match_its_parameters_fails(runs, tmp_path):
    tampered = tmp_path / "tampered"
    shutil.copytree(runs / "looval", tampered)
    results = json.loads((tampered / "results.json").read_text())
    results["test"]["ndcg@10"] += 1e-4
    (tampered / "results.json").write_text(json.dumps(results))
    with pytest.raises(SystemExit, match="differ from its results.json"):
        cli.main(["--workdir", str(tampered), "--out", str(tmp_path / "ev.json")])
    record = json.loads((tmp_path / "ev.json").read_text())
    assert record["reproduces_results_json"] == {"valid": True, "test": False}


def test_a_run_evaluated_on_another_device_layout_is_not_compared(runs, tmp_path):
    other = tmp_path / "eight_devices"
    shutil.copytree(runs / "looval", other)
    results = json.loads((other / "results.json").read_text())
    assert (results["num_devices"], results["num_processes"]) == (1, 1)  # recorded by the trainer
    results["num_devices"] = 8
    (other / "results.json").write_text(json.dumps(results))
    record, _ = cli.evaluate_run(other, splits=("test",))
    assert record["reproduces_results_json"] == {"test": None}
    assert record["splits"]["test"] == json.loads((runs / "looval" / "results.json").read_text())["test"]
    with pytest.raises(ValueError, match="evaluated on 8 devices in 1 processes, this on 1 in 1"):
        compare.compare(other, runs / "looval")
