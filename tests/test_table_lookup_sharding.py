"""The row-sharded item table is never gathered: lookups and losses run shard by shard (lrm.sharding.map_row_shards).

One subprocess with 8 fake CPU devices (XLA_FLAGS must be set before jax is imported) compiles one train step
per case (abstract state, nothing allocated) and reads its HLO; then it runs the item lookup and every loss
path (sampled gather, sampled dense, full, full chunked) with gradients on each mesh and compares them with
the plain single-device functions. That one train step on every mesh equals the single-device step is
tests/test_sharding.py's job. Without the per-shard path XLA's SPMD partitioner all-gathers table rows for
these lookups: half the table per device on (2,2,2), all of it on (1,8,1) and on (8,1,1) with vocab over all.

The HLO check: an all-gather / all-reduce / reduce-scatter that carries item-table rows of more than one
shard has a dimension of at least 2·(rows per shard) next to the embedding width. Every activation dimension
stays below that (B=16, L=11, K+1=17, B·L=176 against 2·126 or more rows; width 32), so the check cannot
take an activation for the table; gathered negative rows flattened to (B·L·K, D) would count, rightly.
Tolerances as in tests/test_sharding.py (float32 sums in another order): 1e-6 relative for losses, 1e-5 of
each gradient's largest entry.

Run the worker alone: python tests/test_table_lookup_sharding.py --worker
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from process_helpers import cpu_env

REPO = Path(__file__).resolve().parents[1]
NUM_ITEMS = 1000  # 1001 rows: padded to 1004 on 4 row shards, 1008 on 8
B, L, K, D = 16, 11, 16, 32
GRAD_TOL, LOSS_RTOL = 1e-5, 1e-6
# (mesh (data, fsdp, tensor), mesh.vocab_over, loss): every mesh of the issue, every loss path.
CASES = [
    ((2, 2, 2), "fsdp_tensor", "gather"),  # rows over fsdp×tensor, batch over data×fsdp
    ((1, 8, 1), "fsdp_tensor", "dense"),  # rows and batch both over fsdp: XLA gathered the whole table
    ((2, 4, 1), "fsdp_tensor", "full"),
    ((8, 1, 1), "all", "gather"),  # rows and batch both over data
    ((1, 1, 8), "all", "full"),  # rows over tensor only, the batch is not split
]
# Meshes for the function-level values: reduce-scatter + psum; reduce-scatter over 2 axes; psum with the
# table's width split over fsdp (vocab over tensor only).
FUNCTION_MESHES = [((2, 2, 2), "fsdp_tensor"), ((2, 2, 2), "all"), ((2, 2, 2), "tensor")]
# How `lrm.sharding.row_shards` splits a table of (40, 8): [row axes, width axes, batch axes kept, scatter
# axes], or None for the plain gather.
SPLITS = {((2, 2, 2), "fsdp_tensor"): [["fsdp", "tensor"], [], ["data"], ["fsdp"]],
          ((2, 2, 2), "all"): [["data", "fsdp", "tensor"], [], [], ["data", "fsdp"]],
          ((2, 2, 2), "tensor"): [["tensor"], ["fsdp"], ["data", "fsdp"], []],
          ((2, 4, 1), "fsdp_tensor"): [["fsdp"], [], ["data"], ["fsdp"]],
          ((1, 8, 1), "fsdp_tensor"): [["fsdp"], [], [], ["fsdp"]],
          ((1, 1, 8), "fsdp_tensor"): [["tensor"], [], [], []],
          ((8, 1, 1), "fsdp_tensor"): None,  # rows not split on this mesh
          ((1, 1, 1), "all"): None}
COLLECTIVE = re.compile(r"=\s*(.*?)\s(all-gather|all-reduce|reduce-scatter)(?:-start)?\(")
SHAPE = re.compile(r"[a-z]+\d*\[([\d,]*)\]")


def table_sized_collectives(hlo_text: str, rows_per_shard: int, dim: int) -> list[str]:
    """Collectives in a compiled module whose result (or operand, for async starts) holds table rows of
    several shards: a dim >= 2·rows_per_shard next to the width `dim`."""
    found = []
    for line in hlo_text.splitlines():
        m = COLLECTIVE.search(line)
        if not m:
            continue
        for shape in SHAPE.findall(m.group(1)):
            dims = [int(x) for x in shape.split(",") if x]
            if dim in dims and any(d >= 2 * rows_per_shard for d in dims):
                found.append(f"{m.group(2)} {dims}")
    return found


# ---------------------------------------------------------------- worker (8 fake devices, prints one JSON line)

def _worker() -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    from configs import tiny
    from lrm import losses
    from lrm import sharding as shd
    from lrm.models.embeddings import lookup_rows
    from lrm.training import compile_report, sharded
    from lrm.training.train import make_train_step

    devices = jax.devices()
    assert len(devices) == 8, devices

    def mesh_of(shape):
        devs = np.asarray(devices[: int(np.prod(shape))]).reshape(shape)
        return Mesh(devs, shd.MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3)

    def rules_of(vocab_over):
        return shd.rules_from_config(type("MeshCfg", (), {"vocab_over": vocab_over})())

    def compiled_train_step_hlo(shape, vocab_over, loss):
        """Compile only (abstract sharded state, as lrm.training.compile_report does): the HLO text."""
        c = tiny.get_config()
        c.data.max_len, c.model.max_seq_len = L - 1, L
        c.model.num_blocks, c.model.embed_dim, c.model.num_heads, c.model.head_dim = 1, D, 2, 16
        c.loss.num_negatives = K
        if loss == "full":
            c.loss.kind = "full_softmax"
        else:
            c.loss.scoring = loss
        mesh, rules = mesh_of(shape), rules_of(vocab_over)
        tx = optax.sgd(0.1)
        graphdef, params, opt_state, layout = sharded.create_state(
            c.model, num_items=NUM_ITEMS, seed=0, tx=tx, mesh=mesh, rules=rules, abstract=True)
        step = sharded.jit_train_step(make_train_step(graphdef, tx, c.loss, num_items=NUM_ITEMS, jit=False), layout)
        key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=layout.replicated)
        hlo = step.lower(params, opt_state, compile_report.abstract_batch(B, L, layout), key).compile().as_text()
        rows = params["embed"]["item"]["table"].shape[0]
        return hlo, rows, rows // shd.vocab_shards(dict(mesh.shape), rules)

    result = {"cases": {}}
    for shape, vocab_over, loss in CASES:
        hlo, rows, rows_per_shard = compiled_train_step_hlo(shape, vocab_over, loss)
        result["cases"][f"{shape} {vocab_over} {loss}"] = {
            "rows": rows, "rows_per_shard": rows_per_shard,
            "table_collectives": table_sized_collectives(hlo, rows_per_shard, D)}

    # Values and gradients of the lookup and every loss path on each mesh, against the plain functions.
    rng = np.random.default_rng(1)
    table_VxD = rng.normal(size=(40, 8)).astype(np.float32)
    table_VxD[38:] = 0.0  # rows padded for sharding: 37 items + padding row 0
    user_BxLxD = rng.normal(size=(8, 3, 8)).astype(np.float32)
    user_BxLxD /= np.linalg.norm(user_BxLxD, axis=-1, keepdims=True)
    ids_BxL = rng.integers(0, 38, size=(8, 3)).astype(np.int32)
    negatives_BxLxK = rng.integers(1, 38, size=(8, 3, 6)).astype(np.int32)
    negatives_BxLxK[0, 0, :2] = ids_BxL[0, 0]  # collisions with the positive are masked

    def f(table, user, ids, negatives):
        rows = lookup_rows(table, ids)
        kw = dict(temperature=0.05)
        parts = (losses.sampled_softmax_loss_with_negatives(user, table, ids, negatives, scoring="gather", **kw)[0],
                 losses.sampled_softmax_loss_with_negatives(user, table, ids, negatives, scoring="dense", **kw)[0],
                 losses.full_softmax_loss(user, table, ids, num_items=37, **kw)[0],
                 losses.full_softmax_loss(user, table, ids, num_items=37, chunk_size=3, **kw)[0])
        return jnp.sum(rows * jnp.cos(rows)) + sum((i + 1) * p for i, p in enumerate(parts)), (rows,) + parts

    odd_ids = np.array([[1, -1, 40], [0, 39, 5]] * 4, np.int32)  # -1 and 40 are outside the 40 rows
    in_range = (odd_ids >= 0) & (odd_ids < 40)
    args_np = (table_VxD, user_BxLxD, ids_BxL, negatives_BxLxK)

    @jax.jit
    def values_and_grads(table, user, ids, negatives, odd):
        return jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(table, user, ids, negatives), lookup_rows(table, odd)

    (_, aux_ref), grads_ref = values_and_grads(*args_np, odd_ids)[0]
    result["plain_has_no_shard_map"] = "shard_map" not in str(jax.make_jaxpr(f)(*args_np))
    result["splits"] = {}
    for shape, vocab_over in SPLITS:
        with shd.use_mesh(mesh_of(shape), rules_of(vocab_over)):
            split = shd.row_shards(table_VxD.shape)
        result["splits"][f"{shape} {vocab_over}"] = None if split is None else [
            list(split.row_axes), list(split.width_axes), list(split.batch_axes), list(split.scatter_axes)]
    result["functions"] = {}
    for shape, vocab_over in FUNCTION_MESHES:
        mesh, rules = mesh_of(shape), rules_of(vocab_over)
        table_spec = shd.logical_to_spec(("vocab", "embed"), table_VxD.shape, dict(mesh.shape), rules)
        bs = NamedSharding(mesh, P(shd.BATCH_AXES))
        args = (jax.device_put(table_VxD, NamedSharding(mesh, table_spec)),) + tuple(
            jax.device_put(x, bs) for x in args_np[1:] + (odd_ids,))
        with shd.use_mesh(mesh, rules):
            ((_, aux), grads), odd_rows = values_and_grads(*args)
        odd_rows = np.asarray(odd_rows)
        result["functions"][f"{shape} {vocab_over}"] = {
            "rows_diff": float(np.max(np.abs(np.asarray(aux[0]) - np.asarray(aux_ref[0])))),
            "losses": [float(x) for x in aux[1:]], "losses_ref": [float(x) for x in aux_ref[1:]],
            "grad_diff": [float(np.max(np.abs(np.asarray(g) - np.asarray(h)))) for g, h in zip(grads, grads_ref)],
            "grad_scale": [float(np.max(np.abs(np.asarray(h)))) for h in grads_ref],
            "nan_rows_where_out_of_range": bool(np.all(np.isnan(odd_rows).all(axis=-1) == ~in_range)),
            "in_range_rows_exact": bool(np.array_equal(odd_rows[in_range], table_VxD[odd_ids[in_range]]))}
    return result


def _run_worker():
    # The fixture passes cpu_env(8): the suite's XLA flags (LLVM -O0 halves the compile time; the SPMD
    # partitioning read here happens before it) plus 8 fake devices. Run by hand, it adds the devices itself.
    if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    sys.path.insert(0, str(REPO))
    out = _worker()
    print(json.dumps(out))


# ---------------------------------------------------------------- tests (run the worker once)

@pytest.fixture(scope="module")
def worker() -> dict:
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker"], cwd=REPO,
                          env=cpu_env(8), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


CASE_IDS = [f"{shape} {vocab_over} {loss}" for shape, vocab_over, loss in CASES]
FUNCTION_IDS = [f"{shape} {vocab_over}" for shape, vocab_over in FUNCTION_MESHES]


@pytest.mark.parametrize("case", CASE_IDS)
def test_train_step_never_gathers_the_item_table(worker, case):
    got = worker["cases"][case]
    assert got["rows_per_shard"] < got["rows"], "the table must be row-split in every case"
    assert 2 * got["rows_per_shard"] > B * L, "an activation dim could pass for table rows"
    assert got["table_collectives"] == [], f"table rows move between devices: {got['table_collectives']}"


@pytest.mark.parametrize("mesh", FUNCTION_IDS)
def test_lookup_and_losses_match_the_plain_functions(worker, mesh):
    got = worker["functions"][mesh]
    assert got["rows_diff"] == 0.0  # one row plus zeros from the other shards: exact
    assert got["losses"] == pytest.approx(got["losses_ref"], rel=LOSS_RTOL)  # gather, dense, full, full chunked
    for diff, scale in zip(got["grad_diff"], got["grad_scale"]):
        assert diff <= GRAD_TOL * scale


@pytest.mark.parametrize("mesh", FUNCTION_IDS)
def test_out_of_range_ids_give_nan_rows(worker, mesh):
    got = worker["functions"][mesh]
    assert got["nan_rows_where_out_of_range"], "an id outside the table must give a NaN row, not a silent zero"
    assert got["in_range_rows_exact"]


@pytest.mark.parametrize("mesh", list(SPLITS), ids=[f"{s} {v}" for s, v in SPLITS])
def test_one_place_decides_the_path(worker, mesh):
    assert worker["splits"][f"{mesh[0]} {mesh[1]}"] == SPLITS[mesh]


def test_plain_path_without_a_mesh(worker):
    assert worker["plain_has_no_shard_map"]


if __name__ == "__main__":
    if sys.argv[1:] != ["--worker"]:
        raise SystemExit("usage: python tests/test_table_lookup_sharding.py --worker")
    _run_worker()
