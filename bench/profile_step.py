"""Where a training step's time goes: a jax.profiler trace of a few steps of a recipe, summarised.

  python -m bench.profile_step --recipe hstu_ml1m --steps 5 --out /tmp/lrm_profile
  python -m bench.profile_step --recipe hstu_beauty --set model.attention_impl=xla --set data.pack=True ...

Why: on an H200 (docs/benchmarks.md, 2026-12-04) the recipes' steps took 12-35 ms at ~0.1% MFU, and the fused
attention kernels changed nothing, so the time is elsewhere: in the device's other ops, or in the host
(dispatch, transfers) leaving the device idle. The summary says which: each trace line's busy time per step (the
union of its events, so nested spans count once) against the step's wall time, and the ops with the most self
time (an event's duration less its nested events') on the device lines — the GPU's streams and XLA op lines, or
on CPU the XLA executor threads. The raw trace stays under --out for Perfetto (ui.perfetto.dev) or TensorBoard.
"""
from __future__ import annotations

import argparse
import collections
import gzip
import json
import time
from pathlib import Path

import numpy as np


def _events(trace: dict) -> tuple[dict, dict, list[dict]]:
    procs = {e["pid"]: e["args"]["name"] for e in trace["traceEvents"]
             if e.get("ph") == "M" and e.get("name") == "process_name"}
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in trace["traceEvents"]
               if e.get("ph") == "M" and e.get("name") == "thread_name"}
    spans = [e for e in trace["traceEvents"] if e.get("ph") == "X" and "dur" in e]
    return procs, threads, spans


def _busy_us(spans: list[dict]) -> float:
    """Length of the union of the spans' intervals."""
    total, end = 0.0, -np.inf
    for e in sorted(spans, key=lambda e: e["ts"]):
        start, stop = e["ts"], e["ts"] + e["dur"]
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


def _self_us(spans: list[dict]) -> list[tuple[str, float]]:
    """(name, duration less the nested spans' durations) for spans of one thread."""
    out, stack = [], []  # stack of [name, stop, self]
    for e in sorted(spans, key=lambda e: (e["ts"], -e["dur"])):
        start, stop = e["ts"], e["ts"] + e["dur"]
        while stack and stack[-1][1] <= start:
            name, _, own = stack.pop()
            out.append((name, own))
        if stack:
            stack[-1][2] -= min(stop, stack[-1][1]) - start
        stack.append([e["name"], stop, float(e["dur"])])
    out.extend((name, own) for name, _, own in stack)
    return out


def is_device_line(process: str, thread: str) -> bool:
    """A trace line whose events are the device's work: a GPU/TPU process, or XLA's CPU executor threads."""
    if process.startswith("/device:"):
        return True
    return process.startswith("/host:CPU") and thread.startswith("tf_XLA")


def summarize(trace: dict, *, steps: int, wall_ms_per_step: float, top: int = 20) -> dict:
    """Busy time per trace line and the top ops by self time on the device lines, per step."""
    procs, threads, spans = _events(trace)
    by_line = collections.defaultdict(list)
    for e in spans:
        by_line[(procs.get(e["pid"], str(e["pid"])), threads.get((e["pid"], e["tid"]), str(e["tid"])))].append(e)
    lines = sorted(({"process": p, "thread": t, "device": is_device_line(p, t), "events": len(v),
                     "busy_ms_per_step": _busy_us(v) / 1e3 / steps} for (p, t), v in by_line.items()),
                   key=lambda r: -r["busy_ms_per_step"])
    # Ops are counted once: on a GPU's "XLA Ops" lines when the trace has them (its stream lines hold the same
    # time as kernels, its module and step lines as spans over many ops), else on every other device line.
    device = [(p, t) for p, t in by_line if is_device_line(p, t)]
    op_lines = [(p, t) for p, t in device if "XLA Ops" in t] or [
        (p, t) for p, t in device if "XLA Modules" not in t and "Steps" not in t]
    self_ms = collections.Counter()
    for line in op_lines:
        for name, own in _self_us(by_line[line]):
            if "wait" not in name.lower():  # CPU executor threads' idle spans ("... (wait for completion)", Await)
                self_ms[name] += own / 1e3 / steps
    total = sum(self_ms.values())
    ops = [{"name": n, "ms_per_step": ms, "share": ms / total if total else float("nan")}
           for n, ms in self_ms.most_common(top)]
    return {"steps": steps, "wall_ms_per_step": wall_ms_per_step, "lines": lines, "top_ops": ops,
            "device_self_ms_per_step": total, "op_lines": [f"{p} / {t}" for p, t in sorted(op_lines)]}


def format_summary(s: dict) -> str:
    out = [f"{s['steps']} steps, wall {s['wall_ms_per_step']:.2f} ms per step (median); "
           f"device ops' self time {s['device_self_ms_per_step']:.2f} ms per step (summed over the op lines: "
           f"{', '.join(s['op_lines'])})", "",
           "| process | line | device | events | busy ms / step | busy / wall |", "|---|---|---|---|---|---|"]
    for r in s["lines"]:
        out.append(f"| {r['process']} | {r['thread']} | {'yes' if r['device'] else ''} | {r['events']} | "
                   f"{r['busy_ms_per_step']:.3f} | {r['busy_ms_per_step'] / s['wall_ms_per_step']:.0%} |")
    out += ["", "| device op (self time) | ms / step | share |", "|---|---|---|"]
    out += [f"| {o['name'][:90]} | {o['ms_per_step']:.3f} | {o['share']:.1%} |" for o in s["top_ops"]]
    return "\n".join(out)


def profile(config, *, steps: int, warmup: int, out: Path) -> dict:
    """Trace `steps` train steps of `config` (after `warmup` untraced ones) into `out`; returns the summary."""
    import jax

    from bench.throughput import train_setup
    from lrm.training.data import open_or_build_store

    store = open_or_build_store(config.data)
    _, _, params, opt_state, step_fn, it = train_setup(config, store, steps + warmup)
    batches = [next(it) for _ in range(warmup + steps)]  # the input pipeline stays out of the trace
    key = jax.random.key(0)
    for i in range(warmup):
        params, opt_state, o = step_fn(params, opt_state, batches[i], jax.random.fold_in(key, i))
        jax.block_until_ready(o["loss"])
    out.mkdir(parents=True, exist_ok=True)
    walls = []
    with jax.profiler.trace(str(out)):
        for i in range(warmup, warmup + steps):
            t0 = time.perf_counter()
            params, opt_state, o = step_fn(params, opt_state, batches[i], jax.random.fold_in(key, i))
            jax.block_until_ready(o["loss"])
            walls.append(time.perf_counter() - t0)
    traces = sorted(out.glob("plugins/profile/*/*.trace.json.gz"), key=lambda p: p.stat().st_mtime)
    if not traces:
        raise FileNotFoundError(f"jax.profiler wrote no *.trace.json.gz under {out}/plugins/profile")
    with gzip.open(traces[-1]) as f:
        trace = json.load(f)
    return summarize(trace, steps=steps, wall_ms_per_step=float(np.median(walls)) * 1e3)


def main(argv: list[str] | None = None) -> None:
    import jax

    from bench.quality import apply_overrides
    from bench.throughput import recipe_config

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="hstu_ml1m", help="a configs/<name>.py")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--store_root", default="stores")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    p.add_argument("--out", default="/tmp/lrm_profile", help="trace folder (kept) and summary.json")
    a = p.parse_args(argv)
    config = recipe_config(a.recipe, a.store_root)
    apply_overrides(config, dict(kv.split("=", 1) for kv in a.set))
    print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}, recipe {a.recipe} {' '.join(a.set)}")
    summary = profile(config, steps=a.steps, warmup=a.warmup, out=Path(a.out))
    (Path(a.out) / "summary.json").write_text(json.dumps(summary, indent=2))
    print(format_summary(summary))


if __name__ == "__main__":
    main()
