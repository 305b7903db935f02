"""A real multi-host run: 2 processes × 4 CPU devices on localhost through jax.distributed
(launch/local_multiprocess.sh) against one process with 8 CPU devices, same config and mesh.

Why full softmax and no dropout here: the pipeline deals rows to processes round-robin, so the global batch
holds the same rows in a different order in the two runs; sampled negatives and dropout masks are drawn per
row position and would differ. The full-softmax loss is a sum over rows, so the two runs must agree up to
float32 summation order (~1e-6 relative per step; we allow 2e-5 after 4 Adam steps).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from data_pipeline.datasets.events import from_user_lists
from data_pipeline.store import write_store
from process_helpers import cpu_env

REPO = Path(__file__).resolve().parents[1]


def _store(root: Path) -> None:
    rng = np.random.default_rng(0)
    items, times = [], []
    for _ in range(64):
        n = int(rng.integers(5, 12))
        start = int(rng.integers(1, 31))
        items.append(((start - 1 + np.arange(n)) % 30 + 1).astype(np.int32))
        times.append(np.cumsum(rng.integers(1, 86400, size=n)).astype(np.int64))
    seqs = from_user_lists("mh-test", list(range(1, 65)), items, times, None, num_items=30, item_raw_ids=None,
                           source_files={})
    write_store(seqs, root / "mh-test-loo-val", protocol="loo-val")


def _flags(store_root: Path, workdir: Path) -> list[str]:
    return ["--config", str(REPO / "configs" / "tiny.py"), "--workdir", str(workdir),
            "--config.data.dataset=mh-test", f"--config.data.store_root={store_root}",
            "--config.data.download=False", "--config.data.max_len=10", "--config.model.max_seq_len=11",
            "--config.model.dropout=0.0", "--config.loss.kind=full_softmax", "--config.train.batch_size=16",
            "--config.train.num_steps=4", "--config.train.log_every_steps=1", "--config.train.eval_every_epochs=100",
            "--config.train.tensorboard=False", "--config.eval.batch_size=32", "--config.mesh.ici=(2,2,2)"]


def _train_losses(workdir: Path) -> list[float]:
    rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["split"] == "train"]


def test_two_processes_match_one_process(tmp_path):
    _store(tmp_path / "stores")
    env = cpu_env(8, LOG_DIR=str(tmp_path))
    one = subprocess.Popen([sys.executable, "-m", "launch.train", *_flags(tmp_path / "stores", tmp_path / "one")],
                           cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    two = subprocess.run([str(REPO / "launch" / "local_multiprocess.sh"), "2", "4", "--",
                          *_flags(tmp_path / "stores", tmp_path / "two")],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    out_one = one.communicate(timeout=600)[0]
    assert one.returncode == 0, out_one[-4000:]
    assert two.returncode == 0, (two.stdout[-3000:], two.stderr[-3000:])
    log1 = (tmp_path / "process_1.log").read_text()
    assert "process 1 of 2, 4 local / 8 global devices" in log1
    assert not (tmp_path / "two" / "metrics.jsonl").read_text().count('"split": "train"') > 4  # process 0 alone
    one_losses, two_losses = _train_losses(tmp_path / "one"), _train_losses(tmp_path / "two")
    assert len(one_losses) == len(two_losses) == 4
    np.testing.assert_allclose(two_losses, one_losses, rtol=2e-5)
    res_one = json.loads((tmp_path / "one" / "results.json").read_text())
    res_two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert res_one["test"]["num_users"] == res_two["test"]["num_users"] == 64
    assert res_two["test"]["hr@10"] == res_one["test"]["hr@10"]
