"""Export → artifact → jax+numpy loader and HTTP endpoint: same top-K as the framework, bad requests get 4xx."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data_pipeline.pipeline import make_eval_dataset
from data_pipeline.store import SequenceStore
from lrm.models.retrieval import last_token_embeddings, normalized_item_table
from lrm.serving.export import build_from_workdir, export_artifact
from lrm.training import train as train_mod
from lrm.training.data import store_path
from process_helpers import post, start_server
from test_train import _synthetic_store, _tiny_config

REPO = Path(__file__).resolve().parents[1]
K = 5


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    _synthetic_store(root / "stores")
    config = _tiny_config(root / "stores", num_steps=6)
    train_mod.train_and_evaluate(config, root / "run")
    export_artifact(root / "run", root / "artifact")
    return root


def _framework_top_k(root: Path) -> tuple[dict, np.ndarray, np.ndarray]:
    """Test-split histories and the in-framework top-K (history and id 0 excluded), from lrm.models."""
    model, config, _, _ = build_from_workdir(root / "run")
    store = SequenceStore.open(store_path(_tiny_config(root / "stores").data))
    batch = next(iter(make_eval_dataset(store, split="test", max_len=config["data"]["max_len"], batch_size=8)))
    user_BxD = last_token_embeddings(model(batch, deterministic=True), jnp.asarray(batch["lengths_B"]))
    scores_BxV = np.array(user_BxD @ normalized_item_table(model.item_table()).T)
    scores_BxV[:, 0] = -np.inf
    lengths = batch["lengths_B"]
    request = {"item_ids": [], "timestamps": [], "query_times": []}
    for b in range(len(lengths)):
        n = int(lengths[b])
        hist = batch["item_ids_BxL"][b, :n]
        scores_BxV[b, hist] = -np.inf
        request["item_ids"].append(hist.tolist())
        request["timestamps"].append(batch["timestamps_BxL"][b, :n].tolist())
        request["query_times"].append(int(batch["target_timestamps_BxL"][b, n - 1]))
    top_BxK = np.argsort(-scores_BxV, axis=1, kind="stable")[:, :K]
    return request, top_BxK, np.take_along_axis(scores_BxV, top_BxK, axis=1)


_FRESH = textwrap.dedent("""
    import json, sys
    from lrm.serving.loader import Recommender
    rec = Recommender.load(sys.argv[1])
    req = json.loads(open(sys.argv[2]).read())
    ids, scores = rec.recommend(req["item_ids"], req["timestamps"], k=int(sys.argv[3]),
                                query_times=req["query_times"])
    assert "lrm.models" not in sys.modules and "flax" not in sys.modules, sorted(sys.modules)
    print(json.dumps({"ids": ids.tolist(), "scores": scores.tolist()}))
""")


def test_artifact_in_a_fresh_process_matches_the_framework(artifact, tmp_path):
    meta = json.loads((artifact / "artifact" / "metadata.json").read_text())
    assert meta["max_len"] == 10 and "cpu" in meta["platforms"] and "cuda" in meta["platforms"]
    assert meta["test_metrics"] is not None and meta["jax_version"] == jax.__version__
    request, want_ids, want_scores = _framework_top_k(artifact)
    (tmp_path / "req.json").write_text(json.dumps(request))
    (tmp_path / "fresh.py").write_text(_FRESH)
    proc = subprocess.run([sys.executable, str(tmp_path / "fresh.py"), str(artifact / "artifact"),
                           str(tmp_path / "req.json"), str(K)], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    np.testing.assert_array_equal(np.asarray(got["ids"]), want_ids)
    np.testing.assert_allclose(np.asarray(got["scores"]), want_scores, rtol=1e-5, atol=1e-6)


def test_loader_keeps_most_recent_events_and_rejects_bad_input(artifact):
    from lrm.serving.loader import Recommender, RequestError

    rec = Recommender.load(artifact / "artifact")
    long_ids, long_ts = list(range(1, 31)), list(range(100, 130))
    ids_a, scores_a = rec.recommend([long_ids], [long_ts], k=3)
    ids_b, scores_b = rec.recommend(np.asarray([long_ids[-10:]]), np.asarray([long_ts[-10:]]), k=3)
    np.testing.assert_array_equal(ids_a, ids_b)
    np.testing.assert_array_equal(scores_a, scores_b)
    assert not set(ids_b[0]) & set(long_ids[-10:])  # history excluded
    for ids, ts, match in (([[]], [[]], "empty history"), ([[999]], [[1]], "unknown item id 999"),
                           ([[1, 2]], [[1]], "2 item ids but 1 timestamps"), ([["a"]], [[1]], "must be an integer"),
                           ("x", [[1]], "list of per-user lists")):
        with pytest.raises(RequestError, match=match):
            rec.recommend(ids, ts, k=3)
    with pytest.raises(RequestError, match="k must be"):
        rec.recommend([[1]], [[1]], k=0)


def test_http_endpoint_answers_bad_requests_with_4xx_and_stays_up(artifact):
    proc, port = start_server(artifact / "artifact")
    try:
        bad = [b"{not json", b"[1, 2]", json.dumps({"item_ids": [[1]]}).encode(),
               json.dumps({"item_ids": [[999999]], "timestamps": [[1]]}).encode(),
               json.dumps({"item_ids": [[]], "timestamps": [[]]}).encode(),
               json.dumps({"item_ids": [["1"]], "timestamps": [[1]]}).encode(),
               json.dumps({"item_ids": [[1]], "timestamps": [[1]], "k": "ten"}).encode(),
               json.dumps({"item_ids": [[1]], "timestamps": [[1]], "surprise": 1}).encode(),
               b"\xff\xfe"]
        for body in bad:
            status, reply = post(port, "/recommend", body)
            assert 400 <= status < 500 and reply["error"], (body, status, reply)
        status, reply = post(port, "/recommend", json.dumps({"item_ids": [list(range(1, 40)), [3]],
                                                "timestamps": [list(range(39)), [5]], "k": 4}).encode())
        assert status == 200 and np.asarray(reply["item_ids"]).shape == (2, 4), reply
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=30) as r:
            assert json.loads(r.read())["status"] == "ok"
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


def test_loader_refuses_time_bias_artifacts_exported_before_the_query_time_fix(artifact, tmp_path):
    import shutil

    from lrm.serving.loader import Recommender

    meta = json.loads((artifact / "artifact" / "metadata.json").read_text())
    assert meta["format_version"] == 3 and meta["time_bias"] is True
    old = tmp_path / "old"
    shutil.copytree(artifact / "artifact", old)
    for time_bias in (True, False):
        (old / "metadata.json").write_text(json.dumps(dict(meta, format_version=2, time_bias=time_bias)))
        if time_bias:
            with pytest.raises(ValueError, match="format_version 2 with the time bias.*re-export"):
                Recommender.load(old)
        else:  # without the time bias the query times are never read: an old artifact serves as before
            assert Recommender.load(old).max_len == meta["max_len"]
