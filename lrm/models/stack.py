"""Running a stack of identical blocks: plain loop, per-block rematerialisation, or one lax.scan.

Scan stacks the blocks' parameters (leading layer axis) inside the step and runs one compiled body for all
of them: compile time no longer grows with depth. Parameters stay one module per block, so checkpoints,
logical axes and shardings are the same whichever way the stack runs.
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from lrm import sharding

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,  # keep only block inputs, recompute the rest
    "nothing_saveable": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,  # keep matmul outputs, recompute elementwise ops
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
ACT_BxLxD = ("batch", "length", "act_embed")


def check_remat(value: object) -> None:
    if value not in REMAT_POLICIES:
        raise ValueError(f"model config: remat must be one of {tuple(REMAT_POLICIES)}, got {value!r}")


def run_blocks(blocks: Sequence[nnx.Module], x_BxLxD: jax.Array,
               apply: Callable[[nnx.Module, jax.Array, jax.Array | int], jax.Array], *, remat: str = "none",
               scan: bool = False) -> jax.Array:
    """x ← apply(block_i, x, i) for each block, with an activation sharding constraint at every boundary.

    `i` is a Python int in the loop and a traced int32 under scan; `apply` must treat both alike.
    """
    check_remat(remat)
    if not blocks:
        return x_BxLxD
    graphdef, _ = nnx.split(blocks[0])

    def body(x, state, index):
        return sharding.constrain(apply(nnx.merge(graphdef, state), x, index), ACT_BxLxD)

    if remat != "none":
        body = jax.checkpoint(body, policy=REMAT_POLICIES[remat])
    x_BxLxD = sharding.constrain(x_BxLxD, ACT_BxLxD)
    states = [nnx.split(block)[1] for block in blocks]
    if not scan:
        for index, state in enumerate(states):
            x_BxLxD = body(x_BxLxD, state, index)
        return x_BxLxD
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *states)
    x_BxLxD, _ = jax.lax.scan(lambda x, xs: (body(x, *xs), None), x_BxLxD,
                              (stacked, jnp.arange(len(states), dtype=jnp.int32)))
    return x_BxLxD
