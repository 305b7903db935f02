"""Sharding benchmarks: compile-only per-device memory for big item tables on big meshes, and train
examples/s against the number of (CPU) devices at a fixed global batch.

  python -m bench.sharding memory --rows 1000000,10000000,100000000 --devices 8,64,256
  python -m bench.sharding throughput --devices 1,2,4,8 --steps 10

Each point runs in its own subprocess with N fake CPU devices (XLA_FLAGS is read once, at jax import), so
nothing is allocated for the memory table: it comes from the shardings (params, optimizer state) and from
XLA's memory_analysis of the compiled step (temporaries; CPU backend). Throughput on fake CPU devices shares
this machine's cores: it shows the sharded step's overhead, not a speed-up.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

GIB = 1024.0 ** 3


def _mesh_for(n: int) -> tuple[int, int, int]:
    """(data, fsdp, tensor): tensor 2 and data 2 where the count allows, fsdp the rest."""
    tensor = 2 if n >= 4 else 1
    data = 2 if n >= 8 else 1
    return data, n // (tensor * data), tensor


def _config(recipe: str):
    import importlib

    return importlib.import_module(f"configs.{recipe}").get_config()


def memory_point(recipe: str, rows: int, devices: int, batch_per_shard: int) -> dict:
    from lrm.training import compile_report
    from lrm.training.train import make_train_step

    c = _config(recipe)
    c.mesh.ici = _mesh_for(devices)
    c.mesh.vocab_over = "all"
    c.train.num_steps = 1
    data, fsdp, _ = c.mesh.ici
    c.train.batch_size = batch_per_shard * data * fsdp
    t0 = time.perf_counter()
    r = compile_report.compile_train_step(c, rows, make_train_step)
    r["compile_s"] = time.perf_counter() - t0
    r["global_batch"] = c.train.batch_size
    return r


def throughput_point(recipe: str, devices: int, global_batch: int, steps: int) -> dict:
    import jax
    import numpy as np

    from lrm.training import sharded
    from lrm.training.optimizer import make_optimizer
    from lrm.training.train import make_train_step

    c = _config(recipe)
    c.mesh.ici = (devices, 1, 1)
    tx, _ = make_optimizer(c.optim, steps + 2)
    mesh = sharded.shd.make_mesh(c.mesh)
    num_items = 1000
    graphdef, params, opt_state, layout = sharded.create_state(c.model, num_items=num_items, seed=0, tx=tx,
                                                               mesh=mesh, rules=sharded.shd.rules_from_config(c.mesh))
    step = sharded.jit_train_step(make_train_step(graphdef, tx, c.loss, num_items=num_items, jit=False), layout)
    batch = _synthetic_batch(global_batch, c.data.max_len + 1, num_items)
    times = []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        params, opt_state, out = step(params, opt_state, batch, jax.random.key(i))
        jax.block_until_ready(out["loss"])
        times.append(time.perf_counter() - t0)
    step_s = float(np.median(times[2:]))
    return {"devices": devices, "global_batch": global_batch, "step_s": step_s,
            "examples_per_s": global_batch / step_s}


def _synthetic_batch(B: int, L: int, num_items: int) -> dict:
    """Full rows of random items: the step's cost does not depend on the ids."""
    import numpy as np

    rng = np.random.default_rng(0)
    ids = rng.integers(1, num_items + 1, size=(B, L)).astype(np.int32)
    times = np.cumsum(rng.integers(1, 10_000, size=(B, L)), axis=1).astype(np.int32)
    return {"item_ids_BxL": ids, "timestamps_BxL": times, "target_ids_BxL": np.roll(ids, -1, axis=1),
            "target_timestamps_BxL": times, "segment_ids_BxL": np.ones((B, L), np.int32),
            "positions_BxL": np.broadcast_to(np.arange(L, dtype=np.int32), (B, L)).copy(),
            "lengths_B": np.full(B, L, np.int32)}


def _run_child(args: list[str], devices: int) -> dict:
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"}
    proc = subprocess.run([sys.executable, "-m", "bench.sharding", "_child", *args], env=env, capture_output=True,
                          text=True)
    if proc.returncode:
        raise RuntimeError(f"bench child {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("part", choices=["memory", "throughput", "_child"])
    p.add_argument("--recipe", default="hstu_beauty")
    p.add_argument("--rows", default="1000000,10000000,100000000")
    p.add_argument("--devices", default=None)
    p.add_argument("--batch_per_shard", type=int, default=8)
    p.add_argument("--global_batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--child", default="")
    a = p.parse_args()
    if a.part == "_child":
        kind, *vals = a.child.split(":")
        if kind == "memory":
            out = memory_point(a.recipe, int(vals[0]), int(vals[1]), a.batch_per_shard)
        else:
            out = throughput_point(a.recipe, int(vals[0]), a.global_batch, a.steps)
        print(json.dumps(out))
        return
    common = ["--recipe", a.recipe, "--batch_per_shard", str(a.batch_per_shard), "--global_batch",
              str(a.global_batch), "--steps", str(a.steps)]
    if a.part == "memory":
        devices = [int(x) for x in (a.devices or "8,64,256").split(",")]
        print(f"compile-only, {a.recipe}, vocab over all devices, {a.batch_per_shard} rows per batch shard; "
              "GiB per device")
        print("| rows | devices | mesh (data,fsdp,tensor) | params | optimizer | temporaries | GFLOP/step | "
              "table rows all-gathered | compile s |")
        print("|---:|---:|---|---:|---:|---:|---:|---:|---:|")
        for rows in [int(x) for x in a.rows.split(",")]:
            for n in devices:
                r = _run_child(common + ["--child", f"memory:{rows}:{n}"], n)
                print(f"| {rows:,} | {n} | {_mesh_for(n)} | {r['params_bytes_per_device'] / GIB:.3f} | "
                      f"{r['opt_state_bytes_per_device'] / GIB:.3f} | {r['temp_bytes_per_device'] / GIB:.3f} | "
                      f"{r['flops_per_device'] / 1e9:.2f} | {r['table_rows_all_gathered']:,} | {r['compile_s']:.1f} |",
                      flush=True)
    else:
        devices = [int(x) for x in (a.devices or "1,2,4,8").split(",")]
        print(f"train step, {a.recipe}, global batch {a.global_batch}, mesh (N,1,1), fake CPU devices")
        print("| devices | step ms | examples/s |")
        print("|---:|---:|---:|")
        for n in devices:
            r = _run_child(common + ["--child", f"throughput:{n}"], n)
            print(f"| {n} | {r['step_s'] * 1e3:.1f} | {r['examples_per_s']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
