"""Runs in a subprocess with 8 fake CPU devices (XLA_FLAGS set before jax is imported); prints one JSON line.

Used by tests/test_sharding.py: one train step (loss + gradients) and one eval step on every mesh, compared
with the same step on a single device, plus the item-table shard shapes and a compile-only report.
"""
from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import json  # noqa: E402
import sys  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import Mesh  # noqa: E402

from configs import tiny  # noqa: E402
from lrm import sharding as shd  # noqa: E402
from lrm.metrics import rank_targets  # noqa: E402
from lrm.training import compile_report, sharded  # noqa: E402
from lrm.training.train import make_train_step  # noqa: E402
from sharding_fixtures import NUM_ITEMS, batch  # noqa: E402

MESHES = [(8, 1, 1), (2, 4, 1), (2, 2, 2), (1, 1, 8)]


def config() -> ml_collections.ConfigDict:
    c = tiny.get_config()
    c.data.max_len = 10
    c.model.max_seq_len = 11
    c.model.num_heads = 2
    c.model.num_blocks = 1  # one block keeps the eight compiles fast; block boundaries are still crossed
    c.model.embed_dim = 32
    c.loss.num_negatives = 16
    return c


def grads_as_state() -> optax.GradientTransformation:
    """An 'optimizer' that keeps the gradients as its state and leaves params alone: the train step's
    opt_state output is then exactly its gradients, sharded like the params."""
    return optax.GradientTransformation(lambda p: jax.tree.map(jnp.zeros_like, p),
                                        lambda g, s, p=None: (jax.tree.map(jnp.zeros_like, g), g))


def run_mesh(cfg, devices, shape, *, with_eval: bool = True):
    mesh = Mesh(np.asarray(devices).reshape(shape), shd.MESH_AXES,
                axis_types=(jax.sharding.AxisType.Auto,) * 3)
    rules = shd.rules_from_config(cfg.mesh)
    tx = grads_as_state()
    graphdef, params, opt_state, layout = sharded.create_state(cfg.model, num_items=NUM_ITEMS, seed=cfg.seed,
                                                               tx=tx, mesh=mesh, rules=rules)
    table = params["embed"]["item"]["table"][...]
    shard_rows = sorted({s.data.shape[0] for s in table.addressable_shards})
    padded_zero = bool(np.all(np.asarray(table)[NUM_ITEMS + 1:] == 0))
    specs = {jax.tree_util.keystr(p): str(x.sharding.spec)
             for p, x in jax.tree_util.tree_leaves_with_path(params)}
    step = sharded.jit_train_step(make_train_step(graphdef, tx, cfg.loss, num_items=NUM_ITEMS, jit=False), layout,
                                  donate=False)
    _, grads, out = step(params, opt_state, batch(), jax.random.key(7))
    table_grad = np.asarray(grads["embed"]["item"]["table"][...])
    padded_zero = padded_zero and bool(np.all(table_grad[NUM_ITEMS + 1:] == 0))  # padding rows: no gradient
    grads_np = {jax.tree_util.keystr(p): np.asarray(g)[: NUM_ITEMS + 1] if "table" in jax.tree_util.keystr(p)
                else np.asarray(g) for p, g in jax.tree_util.tree_leaves_with_path(grads)}
    eb = batch(seed=1)
    eb["target_ids_BxL"] = np.where(np.arange(11)[None, :] == eb["lengths_B"][:, None] - 1,
                                    eb["target_ids_BxL"], 0).astype(np.int32)
    rank_B = ce_B = None
    if with_eval:
        eval_step = sharded.make_eval_step(graphdef, layout, temperature=cfg.loss.temperature, chunk_size=5)
        rank_B, ce_B = eval_step(params, eb)
    return {"loss": float(out["loss"]), "grads": grads_np, "rows": len(table), "shard_rows": shard_rows,
            "padded_zero": padded_zero, "specs": specs, "rank": rank_B, "ce": ce_B,
            "table": np.asarray(table)[: NUM_ITEMS + 1], "params": params, "graphdef": graphdef, "eval_batch": eb}


def main() -> None:
    cfg = config()
    devices = jax.devices()
    assert len(devices) == 8, devices
    ref = run_mesh(cfg, devices[:1], (1, 1, 1), with_eval=False)  # eval reference: lrm.metrics below
    # The unsharded ranking from lrm.metrics on the reference params, for the sharded eval to match.
    from flax import nnx
    from lrm.models.retrieval import last_token_embeddings

    model = nnx.merge(ref["graphdef"], ref["params"])
    eb = ref["eval_batch"]
    user = last_token_embeddings(model(eb, deterministic=True), jnp.maximum(eb["lengths_B"], 1))
    last = eb["lengths_B"] - 1
    out = rank_targets(user, eb["target_ids_BxL"][np.arange(16), last], eb["item_ids_BxL"], ref["table"],
                       temperature=cfg.loss.temperature, chunk_size=5)
    result = {"metrics_rank": np.asarray(out["rank_B"]).tolist(), "metrics_ce": np.asarray(out["ce_B"]).tolist(),
              "meshes": {}}
    for shape in [(1, 1, 1)] + MESHES:
        r = ref if shape == (1, 1, 1) else run_mesh(cfg, devices, shape)
        if r["rank"] is None:
            r = {**r, "rank": out["rank_B"], "ce": out["ce_B"]}
        diffs = {k: float(np.max(np.abs(r["grads"][k] - ref["grads"][k]))) for k in ref["grads"]}
        scale = {k: float(np.max(np.abs(ref["grads"][k]))) for k in ref["grads"]}
        result["meshes"][str(shape)] = {
            "loss": r["loss"], "grad_max_abs_diff": diffs, "grad_max_abs": scale, "rows": r["rows"],
            "shard_rows": r["shard_rows"], "padded_zero": r["padded_zero"], "specs": r["specs"],
            "rank": np.asarray(r["rank"]).tolist(), "ce": np.asarray(r["ce"]).tolist()}
    hybrid = ml_collections.ConfigDict({"ici": (-1, 2, 1), "dcn": (2, 1, 1), "vocab_over": "fsdp_tensor"})
    hybrid_mesh = shd.make_mesh(hybrid)
    result["hybrid_mesh"] = {"shape": dict(hybrid_mesh.shape),
                             "ids": np.vectorize(lambda d: d.id)(hybrid_mesh.devices).tolist()}
    cfg.mesh.ici = (2, 2, 2)
    cfg.train.batch_size = 16
    report = compile_report.compile_train_step(cfg, 1001, make_train_step)
    result["compile_only"] = report
    cfg.mesh.vocab_over = "tensor"  # rows off the batch axes: XLA's row gathers then need no table rows
    result["compile_only_vocab_tensor"] = compile_report.compile_train_step(cfg, 1001, make_train_step)
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
