"""M-FALCON: many candidates scored in one pass equal one run per candidate; exported, loaded, served."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from lrm.kernels.hstu_attention import relative_bias
from lrm.kernels.hstu_attention.reference import attention_mask_BxLxL
from lrm.models import build_model
from lrm.models.retrieval import candidate_batch, normalized_item_table, score_candidates
from process_helpers import post, start_server

REPO = Path(__file__).resolve().parents[1]
NUM_ITEMS = 30
MAX_SEQ_LEN = 9


def model_cfg(name: str, **overrides) -> ml_collections.ConfigDict:
    cfg = dict(name=name, embed_dim=8, num_blocks=2, num_heads=2, head_dim=4 if name == "sasrec" else 3,
               max_seq_len=MAX_SEQ_LEN, dropout=0.2, attention_impl="xla", ffn_dim=8)
    cfg.update(overrides)
    return ml_collections.ConfigDict(cfg)


def histories(lengths: list[int], N: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Right-padded (ids, times) of the given lengths, and a query time after each history."""
    rng = np.random.default_rng(seed)
    B = len(lengths)
    valid = np.arange(N)[None, :] < np.asarray(lengths)[:, None]
    ids = np.where(valid, rng.integers(1, NUM_ITEMS + 1, (B, N)), 0).astype(np.int32)
    ts = (np.cumsum(rng.integers(0, 300_000, (B, N)), axis=1) + 1_000_000_000).astype(np.int32)
    ts = np.where(valid, ts, 0).astype(np.int32)
    query = np.asarray([ts[b, n - 1] + 7_000 * (b + 1) for b, n in enumerate(lengths)], np.int32)
    return ids, ts, query


def ordinary_row(ids, ts, query, n, L, candidate=None) -> dict:
    """The ordinary batch row (no candidate machinery), built by hand in L slots: history[:n], then
    `candidate` (if any) as the next event at position n and time `query`. Each slot queries the time bias
    at its next event's time: slot n-1 (and the candidate) at `query`."""
    row_ids, row_ts = ids[:n], ts[:n]
    if candidate is not None:
        row_ids, row_ts = np.append(row_ids, candidate), np.append(row_ts, query)
    query_ts = np.append(ts[1:n], [query] * (len(row_ids) - n + 1))
    k = len(row_ids)
    pad = lambda x: np.pad(np.asarray(x, np.int32), (0, L - k))  # noqa: E731
    return {"item_ids_BxL": pad(row_ids), "timestamps_BxL": pad(row_ts), "target_ids_BxL": pad(np.zeros(k)),
            "target_timestamps_BxL": pad(query_ts), "segment_ids_BxL": pad(np.ones(k)),
            "positions_BxL": pad(np.arange(k)), "lengths_B": np.int32(k)}


def stack_rows(rows: list[dict]) -> dict:
    return {key: np.stack([r[key] for r in rows]) for key in rows[0]}


# ---------------------------------------------------------------- relative bias indexed by positions
def test_position_index_hand_computed_and_equal_to_slots_on_ordinary_rows():
    # candidates at slots 3, 4 share position 3 (history length): offsets to history are those of slot 3
    index = relative_bias.position_index_BxLxL(jnp.asarray([[0, 1, 2, 3, 3]]), 4)
    np.testing.assert_array_equal(np.asarray(index)[0, 4], [0, 1, 2, 3, 3])
    np.testing.assert_array_equal(np.asarray(index)[0, :, 4], [6, 5, 4, 3, 3])
    # packed contract rows (positions restart per segment): equal to the slot index wherever visible
    segments = jnp.asarray([[1, 1, 1, 2, 2, 2, 2, 0], [1, 1, 1, 1, 1, 1, 0, 0]])
    positions = jnp.asarray([[0, 1, 2, 0, 1, 2, 3, 0], [0, 1, 2, 3, 4, 5, 0, 0]])
    table = jnp.asarray(np.random.default_rng(0).normal(size=2 * 8 - 1), jnp.float32)
    by_slot = relative_bias.relative_bias_BxLxL(L=8, pos_bias_table=table)
    by_position = relative_bias.relative_bias_BxLxL(L=8, pos_bias_table=table, positions_BxL=positions)
    visible = np.asarray(attention_mask_BxLxL(segments))
    np.testing.assert_array_equal(np.asarray(by_position)[visible], np.broadcast_to(by_slot, (2, 8, 8))[visible])
    # a position outside the table is NaN, never a clamped entry
    far = relative_bias.relative_bias_BxLxL(L=2, pos_bias_table=table, positions_BxL=jnp.asarray([[0, 8]]))
    assert np.isnan(np.asarray(far)[0, 1, 0]) and np.isfinite(np.asarray(far)[0, 0, 0])


# ---------------------------------------------------------------- single pass == one run per candidate
@pytest.mark.parametrize("name, overrides", [("hstu", {}), ("hstu", {"use_time_bias": False, "scan_layers": True}),
                                             ("sasrec", {})])
def test_single_pass_equals_one_run_per_candidate(name, overrides):
    model = build_model(model_cfg(name, **overrides), num_items=NUM_ITEMS, rngs=nnx.Rngs(params=3))
    N, M, lengths = 6, 5, [2, 6, 4]  # N + M = 11 slots > max_seq_len = 9: only positions must fit
    ids, ts, query = histories(lengths, N)
    cands = np.random.default_rng(1).integers(1, NUM_ITEMS + 1, (3, M)).astype(np.int32)
    cands[0, 3] = cands[0, 1]

    @jax.jit
    def single_pass(ids, ts, query, cands):
        batch = candidate_batch(ids, ts, query, cands)
        return model(batch, deterministic=True, num_candidates=M), score_candidates(model, ids, ts, query, cands)

    out_BxLxD, (retrieval, target_aware) = jax.tree.map(np.asarray, single_pass(ids, ts, query, cands))
    # the references: ordinary forward passes, the history alone and history + one candidate (B·M rows)
    forward = jax.jit(lambda batch: model(batch, deterministic=True))
    alone = np.asarray(forward(stack_rows([ordinary_row(ids[b], ts[b], query[b], n, MAX_SEQ_LEN)
                                           for b, n in enumerate(lengths)])))
    brute = np.asarray(forward(stack_rows([ordinary_row(ids[b], ts[b], query[b], n, MAX_SEQ_LEN, cands[b, c])
                                           for b, n in enumerate(lengths) for c in range(M)])))
    table = np.asarray(normalized_item_table(model.item_table()))
    for b, n in enumerate(lengths):
        # history tokens cannot see the candidates: their outputs are those of the history alone
        np.testing.assert_allclose(out_BxLxD[b, :n], alone[b, :n], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(retrieval[b], table[cands[b]] @ alone[b, n - 1], rtol=1e-5, atol=1e-6)
        brute_MxD = brute[b * M:(b + 1) * M, n]  # the appended candidate's output, one run each
        np.testing.assert_allclose(out_BxLxD[b, n:n + M], brute_MxD, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(target_aware[b], np.sum(table[cands[b]] * brute_MxD, axis=1), rtol=1e-5,
                                   atol=1e-6)
        assert np.all(out_BxLxD[b, n + M:] == 0)  # padding stays zero
    # a repeated candidate scores the same (its own key sits in another slot: float32 summation order only)
    np.testing.assert_allclose(target_aware[0, 3], target_aware[0, 1], rtol=1e-6)
    assert retrieval[0, 3] == retrieval[0, 1]
    assert len(np.unique(np.round(target_aware, 5))) > M  # not a constant: the candidates differ


def test_candidate_mask_and_layout():
    ids, ts, query = histories([2, 3], 3)
    batch = candidate_batch(jnp.asarray(ids), jnp.asarray(ts), jnp.asarray(query), jnp.asarray([[7, 8], [9, 9]]))
    np.testing.assert_array_equal(batch["item_ids_BxL"], [[ids[0, 0], ids[0, 1], 7, 8, 0], [*ids[1], 9, 9]])
    np.testing.assert_array_equal(batch["positions_BxL"], [[0, 1, 2, 2, 0], [0, 1, 2, 3, 3]])
    np.testing.assert_array_equal(batch["timestamps_BxL"][1], [*ts[1], query[1], query[1]])
    np.testing.assert_array_equal(batch["target_timestamps_BxL"][1], [ts[1, 1], ts[1, 2], query[1], query[1],
                                                                      query[1]])
    np.testing.assert_array_equal(batch["target_timestamps_BxL"][0], [ts[0, 1], query[0], query[0], query[0], 0])
    np.testing.assert_array_equal(batch["lengths_B"], [4, 5])
    mask = np.asarray(attention_mask_BxLxL(batch["segment_ids_BxL"], num_targets_B=jnp.asarray([2, 2])))
    np.testing.assert_array_equal(mask[0, 3], [1, 1, 0, 1, 0])  # the 2nd candidate: history and itself
    np.testing.assert_array_equal(mask[1, 2], [1, 1, 1, 0, 0])  # the last history event: causal as usual


def test_candidate_errors():
    ids, ts, query = histories([2], 8)
    model = build_model(model_cfg("hstu"), num_items=NUM_ITEMS, rngs=nnx.Rngs(params=0))
    with pytest.raises(ValueError, match="position 9, .*max_seq_len=9"):
        score_candidates(model, np.pad(ids, ((0, 0), (0, 1))), np.pad(ts, ((0, 0), (0, 1))), query, ids[:, :2])
    with pytest.raises(ValueError, match="at least one candidate"):
        score_candidates(model, ids, ts, query, np.zeros((1, 0), np.int32))
    batch = candidate_batch(jnp.asarray(ids), jnp.asarray(ts), jnp.asarray(query), jnp.asarray([[1, 2]]))
    with pytest.raises(ValueError, match="num_candidates must be an int >= 0"):
        model(batch, deterministic=True, num_candidates=-1)
    pallas = build_model(model_cfg("hstu", attention_impl="pallas"), num_items=NUM_ITEMS, rngs=nnx.Rngs(params=0))
    with pytest.raises(NotImplementedError, match="attention_impl='pallas'"):
        pallas(batch, deterministic=True, num_candidates=2)
    # an unknown candidate id: a clear error on concrete input; under jit it poisons its user's row with NaN
    # (the models' rule for bad ids), no other row
    two = [np.concatenate([x, x]) for x in (ids, ts, query)]
    bad = np.asarray([[NUM_ITEMS + 1, 1], [2, 1]], np.int32)
    with pytest.raises(ValueError, match=f"= {NUM_ITEMS + 1} is outside"):
        score_candidates(model, *two, bad)
    _, target_aware = jax.jit(lambda *a: score_candidates(model, *a))(*two, bad)
    assert np.isnan(np.asarray(target_aware)[0]).all() and np.isfinite(np.asarray(target_aware)[1]).all()


# ---------------------------------------------------------------- artifact, loader, HTTP
M_EXPORT = 4


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    """A workdir with a best checkpoint (no training: the parameters are an initialisation), exported by the
    `lrm-export` entry point."""
    from launch import export as export_cli
    from lrm.training.checkpointing import TrainCheckpointer
    from test_train import _synthetic_store, _tiny_config

    root = tmp_path_factory.mktemp("mfalcon")
    _synthetic_store(root / "stores")
    config = _tiny_config(root / "stores")
    config.model.num_blocks = 1
    model = build_model(config.model, num_items=40, rngs=nnx.Rngs(params=5))
    (root / "run").mkdir()
    (root / "run" / "config.json").write_text(config.to_json_best_effort())
    ckpt = TrainCheckpointer(root / "run", config.checkpoint, config.to_dict())
    ckpt.save_best(1, nnx.split(model, nnx.Param)[1], None)
    ckpt.wait()
    ckpt.close()
    export_cli.main(["--workdir", str(root / "run"), "--output", str(root / "artifact"), "--platforms", "cpu",
                     "--num_candidates", str(M_EXPORT)])
    return root


REQUEST = {"item_ids": [[3, 4, 5], list(range(1, 15))], "timestamps": [[10, 20, 90_000], list(range(100, 114))],
           "candidates": [[6, 1, 6], [15, 2, 40, 7]], "query_times": [200_000, 500]}

_FRESH = textwrap.dedent("""
    import json, sys
    from lrm.serving.loader import Recommender
    rec = Recommender.load(sys.argv[1])
    req = json.loads(open(sys.argv[2]).read())
    out = {kind: [s.tolist() for s in rec.score_candidates(req["item_ids"], req["timestamps"], req["candidates"],
                                                           req["query_times"], kind=kind)]
           for kind in ("retrieval", "target_aware")}
    # the scores /recommend ranks the whole catalogue by, looked up at the candidates
    ids, scores = rec.recommend(req["item_ids"], req["timestamps"], k=rec.num_items, exclude_history=False,
                                query_times=req["query_times"])
    out["recommend"] = [[float(s[list(i).index(c)]) for c in cands]
                        for i, s, cands in zip(ids, scores, req["candidates"])]
    assert "lrm.models" not in sys.modules and "flax" not in sys.modules, sorted(sys.modules)
    print(json.dumps(out))
""")


def test_artifact_in_a_fresh_process_matches_the_single_pass(artifact, tmp_path):
    from lrm.serving.export import build_from_workdir

    meta = json.loads((artifact / "artifact" / "metadata.json").read_text())
    assert meta["format_version"] == 3 and meta["num_candidates"] == M_EXPORT and "candidates" in meta["functions"]
    (tmp_path / "req.json").write_text(json.dumps(REQUEST))
    (tmp_path / "fresh.py").write_text(_FRESH)
    proc = subprocess.run([sys.executable, str(tmp_path / "fresh.py"), str(artifact / "artifact"),
                           str(tmp_path / "req.json")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])

    model, config, _, _ = build_from_workdir(artifact / "run")
    N = config["data"]["max_len"]
    ids = np.asarray([np.pad(x[-N:], (0, N - len(x[-N:]))) for x in REQUEST["item_ids"]], np.int32)
    ts = np.asarray([np.pad(x[-N:], (0, N - len(x[-N:]))) for x in REQUEST["timestamps"]], np.int32)
    cands = np.asarray([c + [c[0]] * (M_EXPORT - len(c)) for c in REQUEST["candidates"]], np.int32)
    want = jax.jit(lambda *a: score_candidates(model, *a))(ids, ts, np.asarray(REQUEST["query_times"], np.int32),
                                                            cands)
    for kind, want_BxM in zip(("retrieval", "target_aware"), want):
        for u, c in enumerate(REQUEST["candidates"]):
            np.testing.assert_allclose(got[kind][u], np.asarray(want_BxM)[u, : len(c)], rtol=1e-5, atol=1e-6)
    assert got["retrieval"][0][0] == got["retrieval"][0][2]  # a repeated candidate, the same score
    for u in range(2):  # the one-pass retrieval scores are the encoder path's
        np.testing.assert_allclose(got["retrieval"][u], got["recommend"][u], rtol=1e-5, atol=1e-6)


def test_loader_rejects_bad_candidate_requests(artifact):
    from lrm.serving.loader import Recommender, RequestError

    rec = Recommender.load(artifact / "artifact")
    ok = ([[1, 2]], [[1, 2]])
    for cands, kind, match in (([[]], "retrieval", "0 candidates"), ([[1, 2, 3, 4, 5]], "retrieval", "1..4 per user"),
                               ([[41]], "retrieval", "unknown item id 41"), ([[1.0]], "retrieval", "integer"),
                               ("x", "retrieval", "list of per-user lists"), ([[1], [2]], "retrieval", "2 users"),
                               ([[1]], "best", "kind must be")):
        with pytest.raises(RequestError, match=match):
            rec.score_candidates(*ok, cands, kind=kind)
    with pytest.raises(RequestError, match="empty history"):
        rec.score_candidates([[]], [[]], [[1]])


def test_http_score_answers_bad_requests_with_4xx(artifact):
    proc, port = start_server(artifact / "artifact")
    try:
        base = {"item_ids": [[1, 2]], "timestamps": [[5, 9]], "candidates": [[3, 4]]}
        bad = [b"{not json", b"[1]", json.dumps({"item_ids": [[1]], "timestamps": [[1]]}).encode(),
               json.dumps({**base, "candidates": [[999]]}).encode(),
               json.dumps({**base, "candidates": [[1, 2, 3, 4, 5]]}).encode(),
               json.dumps({**base, "candidates": [[]]}).encode(),
               json.dumps({**base, "candidates": [["3"]]}).encode(),
               json.dumps({**base, "item_ids": [[]], "timestamps": [[]]}).encode(),
               json.dumps({**base, "kind": 5}).encode(), json.dumps({**base, "k": 3}).encode()]
        for body in bad:
            status, reply = post(port, "/score", body)
            assert 400 <= status < 500 and reply["error"], (body, status, reply)
        status, reply = post(port, "/score", json.dumps(REQUEST).encode())
        assert status == 200 and [len(s) for s in reply["scores"]] == [3, 4], reply
        status, reply = post(port, "/recommend", json.dumps({k: base[k] for k in ("item_ids", "timestamps")}).encode())
        assert status == 200, reply
        assert post(port, "/nowhere", b"{}")[0] == 404 and proc.poll() is None
    finally:
        proc.kill()
        proc.wait()
