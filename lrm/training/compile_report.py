"""Compile-only mode: lower and compile the sharded train step for the configured mesh without allocating
parameters or reading data, and report per-device memory and FLOPs, so a table size can be checked against a
device's memory before renting the machines.

A mesh larger than this machine: run on CPU with fake devices (`launch/train.py` sets
XLA_FLAGS=--xla_force_host_platform_device_count=N for you when `compile_only` asks for more devices than
it sees). Parameter / optimizer-state bytes per device are exact for any backend (they follow from the
shardings); temporaries and FLOPs are those of the backend that compiled (CPU here), a guide for GPU/TPU.
"""
from __future__ import annotations

import logging
import math
import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lrm import sharding as shd
from lrm.training import sharded
from lrm.training.optimizer import make_optimizer

BATCH_KEYS_BxL = ("item_ids_BxL", "timestamps_BxL", "target_ids_BxL", "target_timestamps_BxL",
                  "segment_ids_BxL", "positions_BxL")


def per_device_bytes(tree: Any) -> int:
    """Bytes one device holds of a tree of sharded ShapeDtypeStructs / arrays (the largest shard)."""
    total = 0
    for x in jax.tree.leaves(tree):
        shard = x.sharding.shard_shape(x.shape)
        total += math.prod(shard) * np.dtype(x.dtype).itemsize
    return total


_ALL_GATHER = re.compile(r"= \(?[a-z]+\d*\[([\d,]*)\][^ ]* all-gather(?:-start)?\(")


def largest_all_gather(hlo_text: str) -> int:
    """Elements in the largest all-gather result of a compiled module: shows whether a table gets gathered."""
    sizes = [math.prod(int(x) for x in m.group(1).split(",") if x) for m in _ALL_GATHER.finditer(hlo_text)]
    return max(sizes, default=0)


def table_rows_all_gathered(hlo_text: str, rows_per_shard: int, dim: int) -> int:
    """Most item-table rows any all-gather rebuilds on one device (0: the table is never gathered).

    An all-gather result counts when one of its dims is a multiple (> 1) of the rows per shard and another
    is the embedding width: that is table rows from several shards."""
    most = 0
    for m in _ALL_GATHER.finditer(hlo_text):
        dims = [int(x) for x in m.group(1).split(",") if x]
        if dim in dims:
            rows = [d for d in dims if d > rows_per_shard and d % rows_per_shard == 0]
            most = max([most] + rows)
    return most


def abstract_batch(global_batch: int, row_len: int, layout: sharded.Layout) -> dict:
    b = layout.batch_sharding
    batch = {k: jax.ShapeDtypeStruct((global_batch, row_len), jnp.int32, sharding=b) for k in BATCH_KEYS_BxL}
    batch["lengths_B"] = jax.ShapeDtypeStruct((global_batch,), jnp.int32, sharding=b)
    return batch


def compile_train_step(config: ml_collections.ConfigDict, num_items: int, make_step: Callable,
                       devices: list | None = None) -> dict[str, Any]:
    """Lower + compile one train step on the config's mesh; returns the per-device report (bytes, flops)."""
    mesh = shd.make_mesh(config.mesh, devices)
    rules = shd.rules_from_config(config.mesh)
    tx, _ = make_optimizer(config.optim, max(int(config.train.num_steps), 1))
    graphdef, params, opt_state, layout = sharded.create_state(
        config.model, num_items=num_items, seed=config.seed, tx=tx, mesh=mesh, rules=rules, abstract=True)
    step = sharded.jit_train_step(make_step(graphdef, tx, config.loss, num_items=num_items, jit=False), layout)
    batch = abstract_batch(int(config.train.batch_size), int(config.data.max_len) + 1, layout)
    key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=layout.replicated)
    compiled = step.lower(params, opt_state, batch, key).compile()
    hlo = compiled.as_text()
    rows = shd.padded_vocab(num_items + 1, dict(mesh.shape), rules)
    rows_per_shard = rows // shd.vocab_shards(dict(mesh.shape), rules)
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):  # older jax: one dict per computation
        cost = cost[0] if cost else {}
    report = {
        "mesh": dict(mesh.shape),
        "num_items": num_items,
        "table_rows_padded": rows,
        "params_bytes_per_device": per_device_bytes(params),
        "opt_state_bytes_per_device": per_device_bytes(opt_state),
        "temp_bytes_per_device": int(getattr(mem, "temp_size_in_bytes", -1)) if mem is not None else -1,
        "argument_bytes_per_device": int(getattr(mem, "argument_size_in_bytes", -1)) if mem is not None else -1,
        "output_bytes_per_device": int(getattr(mem, "output_size_in_bytes", -1)) if mem is not None else -1,
        "flops_per_device": float((cost or {}).get("flops", -1.0)),
        "largest_all_gather_elems": largest_all_gather(hlo),
        "table_rows_all_gathered": table_rows_all_gathered(hlo, rows_per_shard, int(config.model.embed_dim)),
        "backend": jax.default_backend(),
    }
    return report


def format_report(r: dict[str, Any]) -> str:
    gib = 1024.0 ** 3
    return (f"compile-only: mesh {r['mesh']} ({r['backend']}), {r['num_items']} items "
            f"(table padded to {r['table_rows_padded']} rows)\n"
            f"  per device: params {r['params_bytes_per_device'] / gib:.3f} GiB, optimizer state "
            f"{r['opt_state_bytes_per_device'] / gib:.3f} GiB, temporaries {r['temp_bytes_per_device'] / gib:.3f} "
            f"GiB (arguments {r['argument_bytes_per_device'] / gib:.3f}, outputs "
            f"{r['output_bytes_per_device'] / gib:.3f})\n"
            f"  per device: {r['flops_per_device'] / 1e9:.3f} GFLOP per step (XLA cost analysis); largest "
            f"all-gather {r['largest_all_gather_elems']:,} elements; item-table rows all-gathered by XLA: "
            f"{r['table_rows_all_gathered']:,} of {r['table_rows_padded']:,}")


def run(config: ml_collections.ConfigDict, num_items: int, make_step: Callable) -> dict[str, Any]:
    report = compile_train_step(config, num_items, make_step)
    if jax.process_index() == 0:
        print(format_report(report), flush=True)
        logging.info("compile-only report: %s", report)
    return report
