"""Checkpoints resume exactly: SIGTERM / SIGKILL mid-run, SIGKILL mid-save, restore onto other meshes."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest

from lrm.training import train as train_mod
from lrm.training.checkpointing import truncate_metrics
from process_helpers import cpu_env, wait_for
from test_train import _synthetic_store, _tiny_config

REPO = Path(__file__).resolve().parents[1]
NUM_STEPS = 16  # 96 users / batch 16 = 6 steps per epoch: evaluations at 6, 12, 16; checkpoints every 4

# Runs one training in a subprocess; `mode` adds a marker (and a pause) where the test will kill it.
_DRIVER = textwrap.dedent("""
    import asyncio, json, sys, time
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from test_train import _tiny_config
    from lrm.training import train as train_mod

    mode, workdir = sys.argv[1], sys.argv[2]
    config = _tiny_config(Path({stores!r}), num_steps={steps})
    config.checkpoint.every_steps = 4
    real_check = train_mod._check_finite

    def check(step, *args):  # called once per step: a marker, and a pause so a kill lands mid-run
        real_check(step, *args)
        print(f"STEP {{step}}", flush=True)
        if mode == "slow":
            time.sleep(0.1)

    train_mod._check_finite = check
    if mode == "hang-in-save-8":
        from orbax.checkpoint._src.path import atomicity

        real_finalize = atomicity.AtomicRenameTemporaryPath.finalize

        async def finalize(self):
            final = Path(str(self.get_final()))
            if final.name == "8" and final.parent.name == "checkpoints":
                print(f"MID-SAVE {{final}}", flush=True)
                await asyncio.sleep(3600)
            await real_finalize(self)

        atomicity.AtomicRenameTemporaryPath.finalize = finalize
    result = train_mod.train_and_evaluate(config, workdir)
    print("RESULT " + json.dumps({{"preempted": result.get("preempted", False), "steps": result["steps_run"]}}),
          flush=True)
""")


def _start(tmp_path: Path, mode: str, workdir: Path) -> subprocess.Popen:
    script = tmp_path / "driver.py"
    script.write_text(_DRIVER.format(tests=str(REPO / "tests"), stores=str(tmp_path / "stores"), steps=NUM_STEPS))
    return subprocess.Popen([sys.executable, str(script), mode, str(workdir)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.split("RESULT ", 1)[1].splitlines()[0])


def _final_state(workdir: Path, step: int = NUM_STEPS) -> list[np.ndarray]:
    tree = ocp.PyTreeCheckpointer().restore((workdir / "checkpoints" / str(step) / "state").resolve())
    import jax

    return [np.asarray(x) for x in jax.tree.leaves(tree)]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """One uninterrupted run (same config as the driver's), the yardstick of every resume test."""
    root = tmp_path_factory.mktemp("ckpt")
    _synthetic_store(root / "stores")
    config = _tiny_config(root / "stores", num_steps=NUM_STEPS)
    config.checkpoint.every_steps = 4
    train_mod.train_and_evaluate(config, root / "reference")
    return root


def _assert_same_run(a: Path, b: Path) -> None:
    ra, rb = (json.loads((w / "results.json").read_text()) for w in (a, b))
    assert ra["test"] == rb["test"] and ra["valid"] == rb["valid"] and ra["best_step"] == rb["best_step"]
    assert ra["tokens_seen"] == rb["tokens_seen"]
    for x, y in zip(_final_state(a), _final_state(b), strict=True):
        np.testing.assert_array_equal(x, y)  # bit-for-bit
    rows = lambda w: [{k: v for k, v in json.loads(r).items() if k in ("step", "split", "loss", "ndcg@10")}  # noqa: E731
                      for r in (w / "metrics.jsonl").read_text().splitlines()]
    assert rows(a) == rows(b)


def test_sigkill_mid_save_then_sigterm_then_resume_equals_an_uninterrupted_run(reference_run, tmp_path):
    root, workdir = reference_run, tmp_path / "run"
    ckpts = workdir / "checkpoints"
    # 1. SIGKILL mid-run, while the async save of step 8 is being finalised: only step 4 is complete.
    proc = _start(root, "hang-in-save-8", workdir)
    wait_for(proc, "MID-SAVE")
    proc.kill()
    proc.wait()
    finished = sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())
    assert finished == [4], sorted(p.name for p in ckpts.iterdir())
    assert any("tmp" in p.name for p in ckpts.iterdir()), "the interrupted save left no temporary directory"

    # 2. Resume from step 4 (not from scratch, not from the half-written 8); SIGTERM (preemption) at step 10:
    #    the trainer saves at the end of the step and exits cleanly without results.
    proc = _start(root, "slow", workdir)
    assert wait_for(proc, "STEP").strip() == "STEP 5"
    assert not any("tmp" in p.name for p in ckpts.iterdir())  # cleaned up on restart
    wait_for(proc, "STEP 10")
    proc.send_signal(signal.SIGTERM)
    result = _finish(proc)
    assert result["preempted"] and 10 <= result["steps"] < NUM_STEPS
    saved_at_stop = json.loads((ckpts / str(result["steps"]) / "meta" / "metadata").read_text())["train_seconds"]
    assert (ckpts / str(result["steps"])).is_dir() and not (workdir / "results.json").exists()

    # 3. Resume to the end: parameters, optimizer state, metrics and results equal the uninterrupted run's.
    result = _finish(_start(root, "fast", workdir))
    assert result == {"preempted": False, "steps": NUM_STEPS}
    _assert_same_run(root / "reference", workdir)
    # the run's train time adds up all three processes' shares, not only the last one's
    res = json.loads((workdir / "results.json").read_text())
    assert res["train_seconds"] > saved_at_stop > 0
    assert res["train_seconds"] == pytest.approx(saved_at_stop + res["train_seconds_this_process"])


_MESH_SAVE = textwrap.dedent("""
    import json, sys
    import jax, numpy as np, optax
    from flax import nnx
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import ml_collections
    from configs import tiny
    from lrm.models import build_model
    from lrm.training.checkpointing import TrainCheckpointer

    workdir, mode = sys.argv[1], sys.argv[2]
    cfg = tiny.get_config()
    model = build_model(cfg.model, num_items=47, rngs=nnx.Rngs(params=0))
    _, params = nnx.split(model, nnx.Param)
    tx = optax.adam(1e-3)

    def place(tree, mesh, axes):  # the item table's width and uvqk's input dim split, the rest replicated
        def put(path, x):
            name = jax.tree_util.keystr(path)
            spec = P(None, axes) if "table" in name else P(axes) if "uvqk" in name else P()
            return jax.device_put(x, NamedSharding(mesh, spec))
        return jax.tree_util.tree_map_with_path(put, tree)

    ckpt_cfg = ml_collections.ConfigDict({"every_steps": 1, "keep": 1, "keep_best": 1, "async": True})

    def restore_onto(mesh):
        zeros = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), params)  # restored values must come from disk
        fresh = place(zeros, mesh, ("fsdp", "tensor")) if mesh is not None else jax.tree.map(jax.numpy.asarray, zeros)
        ckpt = TrainCheckpointer(workdir, ckpt_cfg, cfg.to_dict())
        resumed = ckpt.restore(fresh, tx.init(fresh))
        best = ckpt.restore_best(fresh, 3)
        expected = np.load(workdir + "/expected.npz")
        for i, (x, b) in enumerate(zip(jax.tree.leaves(resumed.params), jax.tree.leaves(best), strict=True)):
            np.testing.assert_array_equal(np.asarray(x), expected[f"arr_{i}"])
            np.testing.assert_array_equal(np.asarray(b), expected[f"arr_{i}"])
        table = resumed.params["embed"]["item"]["table"].value
        want = fresh["embed"]["item"]["table"].value.sharding
        assert table.sharding == want, (table.sharding, want)
        assert resumed.step == 3 and resumed.data_iterator == {"epoch": 0, "batch": 3} and resumed.tokens_seen == 7
        assert resumed.train_seconds == 12.5
        print("RESTORED", len(table.sharding.device_set), flush=True)

    if mode == "save":
        assert jax.device_count() == 8
        mesh8 = Mesh(np.array(jax.devices()).reshape(8), ("x",))
        saved = place(params, mesh8, "x")
        ckpt = TrainCheckpointer(workdir, ckpt_cfg, cfg.to_dict())
        ckpt.save(3, saved, tx.init(saved), data_iterator={"epoch": 0, "batch": 3},
                  best={"metric": 0.5, "step": 3, "metrics": {"ndcg@10": 0.5}}, evals_since_best=0, tokens_seen=7,
                  train_seconds=12.5)
        ckpt.save_best(3, saved, {"ndcg@10": 0.5})
        ckpt.wait()
        np.savez(workdir + "/expected.npz", *[np.asarray(x) for x in jax.tree.leaves(saved)])
        print("SAVED", len(saved["embed"]["item"]["table"].value.sharding.device_set), flush=True)
        # the same params restored onto a (2,2,2) mesh, sharded differently
        restore_onto(Mesh(np.array(jax.devices()).reshape(2, 2, 2), ("data", "fsdp", "tensor")))
    else:
        assert jax.device_count() == 1
        restore_onto(None)
""")


def test_checkpoint_from_8_devices_restores_on_1_device_and_on_a_2x2x2_mesh(tmp_path):
    script = tmp_path / "mesh.py"
    script.write_text(_MESH_SAVE)
    env8, env1 = cpu_env(8), cpu_env()
    outputs = []
    for mode, env in (("save", env8), ("one", env1)):
        proc = subprocess.run([sys.executable, str(script), str(tmp_path), mode], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, proc.stderr[-3000:]
        outputs += [x for x in proc.stdout.strip().splitlines() if x.startswith(("SAVED", "RESTORED"))]
    assert outputs == ["SAVED 8", "RESTORED 8", "RESTORED 1"]


def test_truncate_metrics_drops_rows_the_resumed_run_writes_again(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"step": 4, "split": "train"}, {"step": 6, "split": "valid"}, {"step": 8, "split": "train"},
            {"step": 6, "split": "test", "final": True}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    truncate_metrics(path, 6)
    assert [json.loads(x) for x in path.read_text().splitlines()] == rows[:2]
    # Protocol 'reference': the periodic evaluations are test rows; those up to the resume step stay.
    rows = [{"step": 4, "split": "train"}, {"step": 4, "split": "test"}, {"step": 6, "split": "test"},
            {"step": 8, "split": "train"}, {"step": 8, "split": "test"}, {"step": 8, "split": "test", "final": True}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    truncate_metrics(path, 6)
    assert [json.loads(x) for x in path.read_text().splitlines()] == rows[:3]
    path.write_text('{"step": 1}\nnot json\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2"):
        truncate_metrics(path, 6)


def test_changed_model_config_refuses_to_resume(reference_run, tmp_path):
    config = _tiny_config(reference_run / "stores", num_steps=NUM_STEPS)
    config.model.embed_dim = 16
    import shutil

    shutil.copytree(reference_run / "reference" / "checkpoints", tmp_path / "run" / "checkpoints")
    with pytest.raises(ValueError, match=r"different config sections \['model'\]"):
        train_mod.train_and_evaluate(config, tmp_path / "run")


def test_reference_protocol_resume_keeps_the_test_evaluations_already_logged(tmp_path):
    """Protocol 'reference' evaluates on test during training: continuing a finished 12-step run to 18 steps logs
    exactly the rows of an uninterrupted 18-step run (constant LR), the earlier test evaluations included."""
    _synthetic_store(tmp_path / "stores", protocol="reference")

    def config(num_steps):
        c = _tiny_config(tmp_path / "stores", num_steps=num_steps)
        c.data.protocol = "reference"
        return c

    train_mod.train_and_evaluate(config(12), tmp_path / "resumed")
    train_mod.train_and_evaluate(config(18), tmp_path / "resumed")
    straight = train_mod.train_and_evaluate(config(18), tmp_path / "straight")
    timing = ("time", "examples_per_s", "tokens_per_s", "model_flops_per_s")
    # total_steps is the length each process was asked for: 12, then 18 for the continued run
    rows = lambda w: [{k: v for k, v in json.loads(r).items() if k not in timing + ("total_steps",)}  # noqa: E731
                      for r in (w / "metrics.jsonl").read_text().splitlines()]
    assert rows(tmp_path / "resumed") == rows(tmp_path / "straight")
    for name, total_of in (("straight", lambda step: 18), ("resumed", lambda step: 12 if step <= 12 else 18)):
        train = [json.loads(r) for r in (tmp_path / name / "metrics.jsonl").read_text().splitlines()
                 if json.loads(r)["split"] == "train"]
        assert train and all(r["total_steps"] == total_of(r["step"]) for r in train), name
    tests = [(r["step"], r.get("final", False)) for r in rows(tmp_path / "straight") if r["split"] == "test"]
    assert tests == [(6, False), (12, False), (18, False), (18, True)]
    assert straight["protocol"] == "reference" and straight["valid"] is None
