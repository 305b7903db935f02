"""bench.profile_step: the trace summary on a hand-built trace, and a real jax.profiler trace of a train step."""
from __future__ import annotations

import pytest

from bench import profile_step
from test_train import _synthetic_store, _tiny_config


def _trace(lines: dict[tuple[str, str], list[tuple[str, float, float]]]) -> dict:
    """A Chrome-trace dict: {(process, thread): [(name, start ms, duration ms)]} with µs units as jax writes."""
    events, pids = [], {}
    for tid, ((proc, thread), spans) in enumerate(lines.items()):
        pid = pids.setdefault(proc, len(pids) + 1)
        events.append({"ph": "M", "name": "process_name", "pid": pid, "args": {"name": proc}})
        events.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": thread}})
        events += [{"ph": "X", "pid": pid, "tid": tid, "name": n, "ts": t * 1e3, "dur": d * 1e3} for n, t, d in spans]
    return {"traceEvents": events}


def test_summary_counts_busy_time_once_and_ops_by_self_time():
    trace = _trace({
        ("/device:GPU:0", "XLA Ops"): [("fusion.A", 0, 10), ("fusion.B", 20, 5), ("fusion.A", 30, 10),
                                       ("inner.C", 32, 4)],  # C nested in the second A
        ("/device:GPU:0", "Stream #7(Compute)"): [("kernel_a", 0, 10), ("kernel_b", 20, 5), ("kernel_a", 30, 10)],
        ("/device:GPU:0", "XLA Modules"): [("jit_step", 0, 45)],
        ("/host:CPU", "python"): [("step", 0, 60), ("dispatch", 5, 10), ("dispatch", 8, 2)],
    })
    s = profile_step.summarize(trace, steps=2, wall_ms_per_step=30.0)
    busy = {(r["process"], r["thread"]): r for r in s["lines"]}
    assert busy[("/device:GPU:0", "XLA Ops")]["busy_ms_per_step"] == pytest.approx(25 / 2)  # union: 10+5+10
    assert busy[("/host:CPU", "python")]["busy_ms_per_step"] == pytest.approx(60 / 2)
    assert busy[("/device:GPU:0", "XLA Modules")]["device"] and not busy[("/host:CPU", "python")]["device"]
    ops = {o["name"]: o["ms_per_step"] for o in s["top_ops"]}
    # Only the XLA Ops line: the stream's kernels and the module span are the same time again.
    assert ops == pytest.approx({"fusion.A": 16 / 2, "inner.C": 4 / 2, "fusion.B": 5 / 2})
    assert s["device_self_ms_per_step"] == pytest.approx(25 / 2)
    assert s["op_lines"] == ["/device:GPU:0 / XLA Ops"]
    table = profile_step.format_summary(s)
    assert "| fusion.A | 8.000 | 64.0% |" in table and "| /host:CPU | python |  | 3 | 30.000 | 100% |" in table


def test_summary_without_xla_ops_lines_uses_the_executor_threads():
    trace = _trace({("/host:CPU", "tf_XLAEigen/1"): [("ynn_fusion", 0, 3), ("wrapped_scatter", 4, 1),
                                                     ("SlinkyThreadPool::Await", 5, 1)],
                    ("/host:CPU", "tf_XLAPjRtCpuClient/2"): [("ThunkExecutor::Execute (wait for completion)", 0, 5)],
                    ("/host:CPU", "python"): [("step", 0, 6)]})
    s = profile_step.summarize(trace, steps=1, wall_ms_per_step=6.0)
    assert {o["name"] for o in s["top_ops"]} == {"ynn_fusion", "wrapped_scatter"}  # idle waits are no ops
    assert s["device_self_ms_per_step"] == pytest.approx(4.0)


def test_profile_traces_a_real_train_step(tmp_path):
    _synthetic_store(tmp_path / "stores")
    s = profile_step.profile(_tiny_config(tmp_path / "stores"), steps=2, warmup=1, out=tmp_path / "prof")
    assert s["steps"] == 2 and s["wall_ms_per_step"] > 0
    assert any(r["device"] for r in s["lines"]) and s["top_ops"] and s["device_self_ms_per_step"] > 0
    assert list((tmp_path / "prof").glob("plugins/profile/*/*.trace.json.gz"))
