"""End-to-end training: determinism, NaN stop, config errors, and a real-data run that beats popularity."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from batches import full_rows
from configs import tiny
from data_pipeline.datasets.events import from_user_lists
from data_pipeline.store import write_store
from lrm.training import train as train_mod
from process_helpers import cpu_env

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("LRM_TEST_DATA_DIR", REPO.parent / "shared" / "datasets"))


def _synthetic_store(root: Path, name: str = "synthetic-test", users: int = 96, items: int = 40,
                     protocol: str = "loo-val") -> None:
    """Users walk a ring of items (i -> i+1 mostly): learnable, so a few steps lower the loss."""
    rng = np.random.default_rng(0)
    item_lists, time_lists = [], []
    for _ in range(users):
        n = int(rng.integers(5, 15))
        start = int(rng.integers(1, items + 1))
        item_lists.append(((start - 1 + np.arange(n)) % items + 1).astype(np.int32))
        time_lists.append(np.cumsum(rng.integers(1, 86400 * 3, size=n)).astype(np.int64))
    seqs = from_user_lists(name, list(range(1, users + 1)), item_lists, time_lists, None, num_items=items,
                           item_raw_ids=None, source_files={})
    write_store(seqs, root / f"{name}-{protocol}", protocol=protocol)


def _tiny_config(store_root: Path, **train):
    c = tiny.get_config()
    c.data.dataset = "synthetic-test"
    c.data.store_root = str(store_root)
    c.data.max_len = 10
    c.model.max_seq_len = 11
    c.train.batch_size = 16
    c.train.num_steps = 12
    c.train.log_every_steps = 4
    c.train.eval_every_epochs = 1.0
    c.train.tensorboard = False
    c.loss.num_negatives = 8
    for k, v in train.items():
        c.train[k] = v
    return c


def _metric_rows(workdir: Path) -> list[dict]:
    return [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]


def _losses(workdir: Path) -> list[float]:
    return [r["loss"] for r in _metric_rows(workdir) if r["split"] == "train"]


def test_training_is_deterministic_for_a_seed(tmp_path):
    _synthetic_store(tmp_path / "stores")
    r1 = train_mod.train_and_evaluate(_tiny_config(tmp_path / "stores"), tmp_path / "a")
    r2 = train_mod.train_and_evaluate(_tiny_config(tmp_path / "stores"), tmp_path / "b")
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b")
    assert r1["test"] == r2["test"]
    results = json.loads((tmp_path / "a" / "results.json").read_text())
    assert results["protocol"] == "loo-val" and results["valid"] is not None
    assert results["split_report"] and results["popularity_baseline"]["test"]["num_users"] == 96
    assert (tmp_path / "a" / "best").exists()


def test_eval_cadence_does_not_change_training(tmp_path):
    """Quality runs thin out evaluations to save time; under the reference protocol (no selection) that must
    leave the trained model, hence the reported final-step test, unchanged."""
    _synthetic_store(tmp_path / "stores", protocol="reference")
    results = {}
    for name, every in (("often", 0.25), ("once", 100.0)):
        c = _tiny_config(tmp_path / "stores", eval_every_epochs=every)
        c.data.protocol = "reference"
        results[name] = train_mod.train_and_evaluate(c, tmp_path / name)
    evals = [[r for r in _metric_rows(tmp_path / n) if r["split"] != "train"] for n in ("often", "once")]
    assert len(evals[0]) > len(evals[1]) >= 1  # the cadence really differed
    assert _losses(tmp_path / "often") == _losses(tmp_path / "once")
    assert results["often"]["test"] == results["once"]["test"]


def test_all_train_windows_reach_the_trainer(tmp_path):
    """With rows shorter than most histories, `data.train_windows="all"` trains on every train event: more steps
    per epoch than the most-recent window, as many as the pipeline counts."""
    from data_pipeline.pipeline import train_epoch_size
    from data_pipeline.store import SequenceStore

    bad = _tiny_config(tmp_path / "stores")
    bad.data.train_windows = "recent"
    with pytest.raises(ValueError, match="unknown data.train_windows 'recent'; known: last, all"):
        train_mod.train_and_evaluate(bad, tmp_path / "bad")
    _synthetic_store(tmp_path / "stores")
    store = SequenceStore.open(tmp_path / "stores" / "synthetic-test-loo-val")
    steps = {}
    for windows in ("last", "all"):
        c = _tiny_config(tmp_path / "stores", num_steps=0, num_epochs=2, log_every_steps=1)
        c.data.max_len, c.model.max_seq_len, c.data.train_windows = 4, 5, windows
        train_mod.train_and_evaluate(c, tmp_path / windows)
        last = [r for r in _metric_rows(tmp_path / windows) if r["split"] == "train"][-1]
        size = train_epoch_size(store, max_len=4, batch_size=16, process_count=1, windows=windows)
        assert last["step"] == 2 * size["batches"], windows
        assert last["tokens_seen"] == 2 * size["tokens"], windows  # the batches really held these windows
        steps[windows] = last["step"]
    assert steps["all"] > steps["last"]


def test_nan_loss_stops_with_a_clear_error(tmp_path, monkeypatch):
    _synthetic_store(tmp_path / "stores")
    real = train_mod.sampled_softmax_loss

    def poisoned(*args, **kwargs):
        loss, aux = real(*args, **kwargs)
        return loss * float("nan"), aux

    monkeypatch.setattr(train_mod, "sampled_softmax_loss", poisoned)
    handler_before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(train_mod.NonFiniteLossError, match="loss is nan at step 1"):
        train_mod.train_and_evaluate(_tiny_config(tmp_path / "stores"), tmp_path / "run")
    assert signal.getsignal(signal.SIGTERM) is handler_before  # the preemption handler is removed on errors


def test_unknown_config_key_is_an_error(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "launch.train", "--config", str(REPO / "configs" / "tiny.py"),
         "--workdir", str(tmp_path), "--config.train.no_such_knob=3"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "no_such_knob" in proc.stderr


@pytest.mark.slow
@pytest.mark.skipif(not (DATA / "amazon-s3rec" / "Beauty.txt").exists(),
                    reason=f"Amazon Beauty not found under {DATA} (set LRM_TEST_DATA_DIR)")
def test_short_real_run_beats_most_popular(tmp_path):
    # Through the CLI, in a child with XLA's default optimisation: ~470 steps, so run time dominates, not compiles.
    proc = subprocess.run(
        [sys.executable, "-m", "launch.train", "--config", str(REPO / "configs" / "tiny.py"),
         "--workdir", str(tmp_path / "run"), f"--config.data.data_root={DATA}",
         f"--config.data.store_root={tmp_path / 'stores'}", "--config.data.pack=True",
         "--config.train.num_epochs=2",
         "--config.train.batch_size=32",  # packed rows of 21 slots: ~470 steps in ~25 s on 2 CPU cores
         "--config.optim.learning_rate=3e-3", "--config.train.tensorboard=False"],
        cwd=REPO, env=cpu_env(optimized=True), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    model_hr = results["valid"]["hr@10"]
    pop_hr = results["popularity_baseline"]["valid"]["hr@10"]
    assert results["time_bias"] is True  # time_intervals/ gives Beauty day-level times
    assert model_hr > 2.0 * pop_hr, (model_hr, pop_hr)


def test_logged_grad_norm_is_the_norm_of_the_step_sgd_takes():
    # With SGD at learning rate 1 the parameters move by exactly the gradient, so the logged grad_norm must equal
    # the L2 norm of that move, computed here without optax.
    import jax
    import optax
    from flax import nnx

    from lrm.models import build_model

    c = tiny.get_config()
    c.model.max_seq_len = 11
    c.model.dropout = 0.0
    c.loss.num_negatives = 8
    V, B, L = 40, 4, 10
    model = build_model(c.model, num_items=V, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    tx = optax.sgd(1.0)
    batch = full_rows(B, L, V)
    step = train_mod.make_train_step(graphdef, tx, c.loss)
    after, _, out = step(params, tx.init(params), batch, jax.random.key(0))
    moved = [np.asarray(a, np.float64) - np.asarray(b, np.float64)
             for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(after))]
    expected = np.sqrt(sum(np.sum(m * m) for m in moved))
    assert expected > 0
    np.testing.assert_allclose(float(out["grad_norm"]), expected, rtol=1e-5)
