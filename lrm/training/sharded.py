"""Sharded training state and steps: params/optimizer state created directly sharded, the train and eval
steps jit-compiled with explicit in/out shardings, and batches assembled from each process's share.

The item table's rows are padded to a multiple of the vocab shard count; padding rows are zero, get no
gradient, are never sampled as negatives, never enter a softmax and never rank (see `padded_table_loss`).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from lrm import losses
from lrm import sharding as shd
from lrm.metrics import RankingAccumulator
from lrm.models import build_model
from lrm.models.retrieval import last_token_embeddings
from lrm.training.sharded_rank import sharded_rank_targets


@dataclasses.dataclass(frozen=True)
class Layout:
    """Everything a sharded step needs to know about the mesh and the arrays on it."""

    mesh: Mesh
    rules: dict[str, tuple[str, ...]]
    num_items: int
    param_shardings: Any
    opt_shardings: Any

    @property
    def sizes(self) -> dict[str, int]:
        return dict(self.mesh.shape)

    @property
    def batch_sharding(self) -> NamedSharding:
        return shd.batch_sharding(self.mesh)

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())

    @property
    def batch_shards(self) -> int:
        return math.prod(self.sizes[a] for a in shd.BATCH_AXES)


def padded_table_loss(user_emb_BxLxD: jax.Array, table_VxD: jax.Array, target_ids_BxL: jax.Array, key: jax.Array,
                      *, num_items: int, loss_cfg: Any) -> tuple[jax.Array, dict]:
    """The configured loss on a vocab-padded table, equal to the loss on the real rows.

    Both losses take the padded table whole (slicing a row-sharded array reshards it, which gathers table
    rows) and score it shard by shard (`lrm.losses`). Sampled softmax draws the negatives from the real ids
    1..num_items exactly as `sampled_softmax_loss` does on an unpadded table; the full softmax is told which
    rows are items.
    """
    if loss_cfg.kind == "sampled_softmax":
        if loss_cfg.num_negatives < 1:
            raise ValueError(f"loss.num_negatives must be >= 1, got {loss_cfg.num_negatives}")
        negative_ids_BxLxK = losses.sample_negatives(key, target_ids_BxL.shape + (loss_cfg.num_negatives,),
                                                     num_items + 1)
        return losses.sampled_softmax_loss_with_negatives(
            user_emb_BxLxD, table_VxD, target_ids_BxL, negative_ids_BxLxK, temperature=loss_cfg.temperature,
            scoring=loss_cfg.get("scoring", "auto"))
    return losses.full_softmax_loss(user_emb_BxLxD, table_VxD, target_ids_BxL, temperature=loss_cfg.temperature,
                                    num_items=num_items)


def pad_vocab(params: nnx.State, rows: int) -> nnx.State:
    """Zero rows appended to every ("vocab", ...) parameter up to `rows`."""

    def pad(v):
        if isinstance(v, nnx.Variable) and (v.get_metadata().get("logical_axes") or (None,))[0] == "vocab":
            extra = rows - v.shape[0]
            if extra:
                v = v.replace(jnp.pad(v[...], ((0, extra),) + ((0, 0),) * (v.ndim - 1)))
        return v

    return jax.tree.map(pad, params, is_leaf=lambda x: isinstance(x, nnx.Variable))


def create_state(model_cfg: ml_collections.ConfigDict, *, num_items: int, seed: int,
                 tx: optax.GradientTransformation, mesh: Mesh,
                 rules: dict[str, tuple[str, ...]] | None = None,
                 abstract: bool = False) -> tuple[nnx.GraphDef, Any, Any, Layout]:
    """(graphdef, params, opt_state, layout): the init is one jit whose out_shardings place every array on
    its shards as it is created, so no host ever holds the whole table. `abstract=True` returns
    ShapeDtypeStructs with shardings instead (compile-only runs)."""
    rules = shd.rules_from_config(None) if rules is None else rules
    rows = shd.padded_vocab(num_items + 1, dict(mesh.shape), rules)

    def init():
        model = build_model(model_cfg, num_items=num_items, rngs=nnx.Rngs(params=seed))
        _, params = nnx.split(model, nnx.Param)
        params = pad_vocab(params, rows)
        return params, tx.init(params)

    abs_model = nnx.eval_shape(lambda: build_model(model_cfg, num_items=num_items, rngs=nnx.Rngs(params=seed)))
    graphdef, _ = nnx.split(abs_model, nnx.Param)
    abs_params, abs_opt = jax.eval_shape(init)
    layout = Layout(mesh, rules, num_items, shd.tree_shardings(abs_params, mesh, rules),
                    shd.tree_shardings(abs_opt, mesh, rules))
    if abstract:
        put = lambda t, s: jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),  # noqa: E731
                                        t, _expand(s, t))
        return graphdef, put(abs_params, layout.param_shardings), put(abs_opt, layout.opt_shardings), layout
    params, opt_state = jax.jit(init, out_shardings=(layout.param_shardings, layout.opt_shardings))()
    return graphdef, params, opt_state, layout


def create_state_from_config(config: ml_collections.ConfigDict, num_items: int,
                             tx: optax.GradientTransformation) -> tuple[nnx.GraphDef, Any, Any, Layout]:
    """`create_state` on the mesh and rules of `config.mesh`."""
    mesh = shd.make_mesh(config.mesh)
    return create_state(config.model, num_items=num_items, seed=config.seed, tx=tx, mesh=mesh,
                        rules=shd.rules_from_config(config.mesh))


def process_batch_size(global_batch: int) -> int:
    """Rows this process feeds per step: `train.batch_size` is the global batch, split evenly over processes."""
    n = jax.process_count()
    if global_batch % n:
        raise ValueError(f"train.batch_size={global_batch} (global) must be divisible by the {n} processes")
    return global_batch // n


def _expand(prefix: Any, tree: Any) -> Any:
    """A sharding prefix tree broadcast to the full structure of `tree`."""
    return jax.tree.map(lambda s, sub: jax.tree.map(lambda _: s, sub), prefix, tree,
                        is_leaf=lambda x: isinstance(x, NamedSharding))


def jit_train_step(step_fn: Callable, layout: Layout, *, donate: bool = True) -> Callable:
    """`step_fn(params, opt_state, batch, key) -> (params, opt_state, metrics)` jit-compiled with explicit
    shardings; traced under `use_mesh` so the models' activation constraints apply."""
    b = layout.batch_sharding
    jitted = jax.jit(step_fn, in_shardings=(layout.param_shardings, layout.opt_shardings, b, layout.replicated),
                     out_shardings=(layout.param_shardings, layout.opt_shardings, layout.replicated),
                     donate_argnums=(0, 1) if donate else ())

    class Step:
        def __call__(self, params, opt_state, batch, key):
            with shd.use_mesh(layout.mesh, layout.rules):
                return jitted(params, opt_state, put_batch(batch, layout), key)

        def lower(self, params, opt_state, batch, key):
            with shd.use_mesh(layout.mesh, layout.rules):
                return jitted.lower(params, opt_state, batch, key)

    return Step()


def put_batch(batch: dict, layout: Layout) -> dict:
    """This process's numpy rows → global arrays split over data×fsdp (each process feeds its share)."""
    n = jax.process_count()
    out = {}
    for k, v in batch.items():
        if isinstance(v, jax.Array):
            out[k] = v
            continue
        v = np.asarray(v)
        global_shape = (v.shape[0] * n,) + v.shape[1:]
        if global_shape[0] % layout.batch_shards:
            raise ValueError(f"global batch of {global_shape[0]} rows (batch[{k!r}]) is not divisible by the "
                             f"{layout.batch_shards} data×fsdp shards of mesh {layout.sizes}")
        out[k] = jax.make_array_from_process_local_data(layout.batch_sharding, v, global_shape)
    return out


def snapshot(tree: Any, shardings: Any) -> Any:
    """A device-side copy (same shardings) that survives the next step's buffer donation."""
    return jax.jit(lambda t: jax.tree.map(jnp.copy, t), out_shardings=shardings)(tree)


def make_eval_step(graphdef: nnx.GraphDef, layout: Layout, *, temperature: float, chunk_size: int) -> Callable:
    """Sharded eval: user embeddings split over data×fsdp, the item table scored shard by shard and merged;
    returns this process's rows of (rank_B, ce_B) as numpy."""
    vocab_axes = tuple(a for a in layout.rules["vocab"] if layout.sizes[a] > 1)

    def step(params, batch):
        model = nnx.merge(graphdef, params)
        user_emb_BxLxD = model(batch, deterministic=True)
        user_emb_BxD = last_token_embeddings(user_emb_BxLxD, jnp.maximum(batch["lengths_B"], 1))
        last_B = jnp.maximum(batch["lengths_B"] - 1, 0)
        target_B = jnp.take_along_axis(batch["target_ids_BxL"], last_B[:, None], axis=1)[:, 0]
        return sharded_rank_targets(user_emb_BxD, target_B, batch["item_ids_BxL"], model.item_table(),
                                    num_items=layout.num_items, mesh=layout.mesh, vocab_axes=vocab_axes,
                                    temperature=temperature, chunk_size=chunk_size)

    b = layout.batch_sharding
    jitted = jax.jit(step, in_shardings=(layout.param_shardings, b), out_shardings=(b, b))

    def eval_step(params, batch):
        with shd.use_mesh(layout.mesh, layout.rules):
            rank_B, ce_B = jitted(params, put_batch(batch, layout))
        return local_rows(rank_B, layout), local_rows(ce_B, layout)

    return eval_step


def local_rows(x: jax.Array, layout: Layout) -> np.ndarray:
    """This process's rows of a batch-sharded global array (the inverse of `put_batch`)."""
    if jax.process_count() == 1:
        return np.asarray(x)
    local = multihost_utils.global_array_to_host_local_array(x, layout.mesh, P(shd.BATCH_AXES))
    return np.asarray(local)


def evaluate(eval_step: Callable, params, store, split: str, *, max_len: int, batch_size: int,
             max_rank: int, max_users: int = 0) -> dict[str, float]:
    """Metrics of `eval_step` over a split: `batch_size` is global; each process feeds and scores its share
    of the users and the metric sums are added over processes."""
    from data_pipeline.pipeline import make_eval_dataset

    n = jax.process_count()
    if batch_size % n:
        raise ValueError(f"eval.batch_size={batch_size} must be divisible by the {n} processes")
    acc = RankingAccumulator(max_rank=max_rank)
    for batch in make_eval_dataset(store, split=split, max_len=max_len, batch_size=batch_size // n,
                                   max_users=max_users):
        rank_B, ce_B = eval_step(params, {k: v for k, v in batch.items() if k != "user_index_B"})
        acc.add(rank_B, ce_B, batch["weights_B"])
    if n > 1:
        sums = multihost_utils.process_allgather(acc.to_array()).reshape(n, -1)
        flags = sums[:, -1]
        total = sums.sum(axis=0)
        total[-1] = flags.max()
        acc = RankingAccumulator.from_array(total, max_rank=max_rank)
    return acc.result()
