"""Multi-host preemption: SIGTERM reaches one process of two; both save the same step, exit 0, and resume exactly.

2 processes × 2 CPU devices on localhost through jax.distributed, the run's data axis over all 4 devices.
"""
from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from process_helpers import cpu_env, wait_for
from test_train import _synthetic_store

REPO = Path(__file__).resolve().parents[1]
NUM_STEPS = 8
CHECK_EVERY = 2  # checkpoint.preemption_check_every_steps: the processes agree on even steps only

_DRIVER = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    from test_train import _tiny_config
    from lrm import sharding
    from lrm.training import train as train_mod

    process_id, port, mode, workdir = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    config = _tiny_config(Path({stores!r}), num_steps={steps})
    config.model.num_blocks = 1
    config.train.eval_every_epochs = 100.0  # one validation at the end
    config.eval.batch_size = 64
    config.checkpoint.every_steps = 0  # saves only at the end and on preemption
    config.checkpoint.preemption_check_every_steps = {check_every}
    config.distributed.coordinator_address = "localhost:" + port
    config.distributed.num_processes = 2
    config.distributed.process_id = process_id
    assert sharding.initialize_distributed(config.distributed)
    real_check = train_mod._check_finite

    def check(step, *args):  # once per step: a marker, and a pause so the signal lands mid-run
        real_check(step, *args)
        print(f"STEP {{step}}", flush=True)
        if mode == "slow":
            time.sleep(0.3)

    train_mod._check_finite = check
    result = train_mod.train_and_evaluate(config, workdir)
    print("RESULT " + json.dumps({{"preempted": result.get("preempted", False), "steps": result["steps_run"]}}),
          flush=True)
""")


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return str(s.getsockname()[1])


def _start_pair(tmp_path: Path, mode: str, workdir: Path) -> list[subprocess.Popen]:
    script = tmp_path / "driver.py"
    script.write_text(_DRIVER.format(tests=str(REPO / "tests"), stores=str(tmp_path / "stores"), steps=NUM_STEPS,
                                     check_every=CHECK_EVERY))
    # The three runs compile the same programs: the session's compilation cache (conftest.py) lets the later
    # two skip that.
    env = cpu_env(2)
    port = _free_port()
    return [subprocess.Popen([sys.executable, str(script), str(p), port, mode, str(workdir)], cwd=REPO, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for p in (0, 1)]


def _finish(procs: list[subprocess.Popen]) -> list[dict]:
    outputs = []
    try:
        outputs = [p.communicate(timeout=180) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    codes = [p.returncode for p in procs]
    assert codes == [0, 0], "\n".join(f"process {i} exited {c}: {outputs[i][1][-2500:]}" for i, c in enumerate(codes))
    return [json.loads(out.split("RESULT ", 1)[1].splitlines()[0]) for out, _ in outputs]


def _final_state(workdir: Path) -> list[np.ndarray]:
    """The last train state (params + optimizer), written by 4 devices of 2 processes, read onto this one."""
    import jax
    import orbax.checkpoint as ocp

    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    registry.add("state", ocp.args.StandardRestore, ocp.StandardCheckpointHandler)
    manager = ocp.CheckpointManager((workdir / "checkpoints").resolve(), handler_registry=registry,
                                    options=ocp.CheckpointManagerOptions(read_only=True))
    try:
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=device),
                              manager.item_metadata(NUM_STEPS)["state"].tree)
        tree = manager.restore(NUM_STEPS, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))).state
    finally:
        manager.close()
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_sigterm_on_one_process_stops_both_at_the_same_step_and_resumes_exactly(tmp_path):
    _synthetic_store(tmp_path / "stores")
    reference = _finish(_start_pair(tmp_path, "fast", tmp_path / "reference"))  # uninterrupted
    assert reference == [{"preempted": False, "steps": NUM_STEPS}] * 2
    workdir = tmp_path / "run"
    preempted = _start_pair(tmp_path, "slow", workdir)
    wait_for(preempted[1], "STEP 3")
    preempted[1].send_signal(signal.SIGTERM)  # process 1 only
    results = _finish(preempted)
    saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert results[0] == results[1] and results[0]["preempted"], results
    stop = results[0]["steps"]
    assert stop % CHECK_EVERY == 0 and 3 <= stop < NUM_STEPS and saved == [stop], (results, saved)
    assert not (workdir / "results.json").exists()

    assert _finish(_start_pair(tmp_path, "fast", workdir)) == [{"preempted": False, "steps": NUM_STEPS}] * 2
    for x, y in zip(_final_state(tmp_path / "reference"), _final_state(workdir), strict=True):
        np.testing.assert_array_equal(x, y)  # bit-for-bit
    ra, rb = (json.loads((w / "results.json").read_text()) for w in (tmp_path / "reference", workdir))
    assert ra["test"] == rb["test"] and ra["tokens_seen"] == rb["tokens_seen"]
