"""Device mesh from config and the one table that maps logical axis names to mesh axes.

Mesh axes: `data` (pure data parallel), `fsdp` (data parallel with parameters and optimizer state sharded),
`tensor` (attention heads / MLP columns split). The mesh is the product of a per-slice (ICI) shape and a
cross-slice / cross-host (DCN) shape; one `-1` in each fills the devices left. Users change parallelism only
in config (`config.mesh`); the rules below then give every parameter and activation its PartitionSpec.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # batches split over both data-parallel axes

# Logical axis -> mesh axes, in priority order. A mesh axis already used by an earlier dimension of the same
# array is skipped (the item table's embed dim stays whole because its rows already take fsdp), and a mesh
# axis whose size does not divide the dimension is dropped (the dimension is then replicated over it).
RULES: dict[str, tuple[str, ...]] = {
    "vocab": ("fsdp", "tensor"),  # item-table rows; mesh.vocab_over="all" adds "data" in front
    "embed": ("fsdp",),  # FSDP: dense weights split along the model width
    "heads": ("tensor",),  # tensor parallel over attention heads
    "mlp": ("tensor",),
    "qkv": (),
    "head_dim": (),
    "position": (),
    "time_bucket": (),
    "norm": (),
    # activations
    "batch": BATCH_AXES,
    "length": (),
    "act_embed": (),
    "act_heads": ("tensor",),
}
# "tensor": rows only over an axis the batch is not split over; XLA then partitions every row gather as a
# masked local gather + all-reduce. With "fsdp_tensor"/"all" the batch and the rows share axes and XLA may
# all-gather table rows for a gather (measured: half the table on 2x2x2, all of it on 1x8x1; docs/benchmarks.md).
VOCAB_OVER = {"fsdp_tensor": ("fsdp", "tensor"), "all": ("data", "fsdp", "tensor"), "tensor": ("tensor",)}


def rules_from_config(mesh_cfg: Any | None = None) -> dict[str, tuple[str, ...]]:
    """The rule table, with the item-table row axes chosen by `mesh.vocab_over`."""
    rules = dict(RULES)
    vocab_over = "fsdp_tensor" if mesh_cfg is None else mesh_cfg.vocab_over
    if vocab_over not in VOCAB_OVER:
        raise ValueError(f"mesh.vocab_over must be one of {sorted(VOCAB_OVER)}, got {vocab_over!r}")
    rules["vocab"] = VOCAB_OVER[vocab_over]
    return rules


def _fill(shape: Sequence[int], total: int, what: str) -> tuple[int, ...]:
    shape = tuple(int(s) for s in shape)
    if len(shape) != len(MESH_AXES):
        raise ValueError(f"{what} must give {len(MESH_AXES)} sizes for {MESH_AXES}, got {shape}")
    if any(s == 0 or s < -1 for s in shape) or shape.count(-1) > 1:
        raise ValueError(f"{what}={shape}: sizes must be positive, with at most one -1 to fill the rest")
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if total % known:
            raise ValueError(f"{what}={shape}: {total} devices are not divisible by {known}")
        shape = tuple(total // known if s == -1 else s for s in shape)
    if math.prod(shape) != total:
        raise ValueError(f"{what}={shape} needs {math.prod(shape)} devices, have {total}")
    return shape


def mesh_shapes(mesh_cfg: Any, num_devices: int, num_slices: int = 1) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(ici_shape, dcn_shape) with -1 filled; DCN spans `num_slices` (slices or hosts), ICI the rest."""
    if num_devices % num_slices:
        raise ValueError(f"{num_devices} devices do not split into {num_slices} slices")
    dcn = _fill(mesh_cfg.dcn, num_slices, "mesh.dcn")
    ici = _fill(mesh_cfg.ici, num_devices // num_slices, "mesh.ici")
    return ici, dcn


def _num_slices(devices: Sequence[Any]) -> int:
    return len({getattr(d, "slice_index", 0) for d in devices})


def make_mesh(mesh_cfg: Any, devices: Sequence[Any] | None = None) -> Mesh:
    """A Mesh over all (or the given) devices, axes MESH_AXES with Auto axis types (GSPMD propagation).

    With several TPU slices (or `mesh.dcn` > 1) the device order puts the DCN part outermost, so only the
    axes that carry DCN sizes talk across slices.
    """
    devices = list(jax.devices() if devices is None else devices)
    num_slices = _num_slices(devices)
    dcn_cfg = tuple(mesh_cfg.dcn)
    if num_slices > 1:
        granules = num_slices
    elif -1 in dcn_cfg:
        granules = jax.process_count()
    else:
        granules = math.prod(dcn_cfg)
    ici, dcn = mesh_shapes(mesh_cfg, len(devices), granules)
    axis_types = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    if math.prod(dcn) == 1:
        if devices == list(jax.devices()):
            return jax.make_mesh(ici, MESH_AXES, axis_types=axis_types)
        return Mesh(np.asarray(devices).reshape(ici), MESH_AXES, axis_types=axis_types)
    from jax.experimental import mesh_utils

    if num_slices > 1:
        grid = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices=devices)
    elif jax.process_count() > 1:  # several hosts of one slice / GPU nodes: hosts are the DCN granule
        grid = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices=devices, process_is_granule=True)
    else:  # one process (e.g. fake CPU devices for compile_only): DCN blocks of consecutive devices, outermost
        n = len(MESH_AXES)
        grid = np.asarray(devices).reshape(dcn + ici).transpose([i for k in range(n) for i in (k, k + n)])
        grid = grid.reshape([d * i for d, i in zip(dcn, ici)])
    return Mesh(grid, MESH_AXES, axis_types=axis_types)


def axis_sizes(mesh: Mesh | Mapping[str, int]) -> dict[str, int]:
    return dict(mesh.shape) if not isinstance(mesh, Mapping) else dict(mesh)


def logical_to_spec(logical_axes: Sequence[str | None], shape: Sequence[int], sizes: Mapping[str, int],
                    rules: Mapping[str, tuple[str, ...]] | None = None) -> P:
    """PartitionSpec of one array from its logical axis names (see RULES for the skip/drop behaviour)."""
    rules = RULES if rules is None else rules
    if len(logical_axes) != len(shape):
        raise ValueError(f"logical axes {tuple(logical_axes)} do not match shape {tuple(shape)}")
    used: set[str] = set()
    spec = []
    for name, dim in zip(logical_axes, shape):
        if name is not None and name not in rules:
            raise ValueError(f"logical axis {name!r} has no sharding rule; known: {sorted(rules)}")
        axes = []
        for axis in rules.get(name, ()) if name is not None else ():
            size = sizes.get(axis, 1)
            if axis in used or size == 1:
                continue
            if dim % (math.prod(sizes[a] for a in axes) * size) == 0:
                axes.append(axis)
        used.update(axes)
        spec.append(None if not axes else axes[0] if len(axes) == 1 else tuple(axes))
    while spec and spec[-1] is None:
        spec.pop()
    return P(*spec)


def _is_variable(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


def tree_specs(tree: Any, sizes: Mapping[str, int], rules: Mapping[str, tuple[str, ...]] | None = None) -> Any:
    """Spec per nnx.Variable (from its `logical_axes`) for a params or optimizer-state tree; other leaves
    (step counters, scalars) are replicated. The result is a pytree prefix of `tree`."""

    def spec(x):
        if _is_variable(x):
            axes = x.get_metadata().get("logical_axes")
            if axes is None:
                raise ValueError(f"parameter of shape {x.shape} has no logical_axes metadata")
            return logical_to_spec(axes, x.shape, sizes, rules)
        return P()

    return jax.tree.map(spec, tree, is_leaf=_is_variable)


def tree_shardings(tree: Any, mesh: Mesh, rules: Mapping[str, tuple[str, ...]] | None = None) -> Any:
    return jax.tree.map(lambda s: NamedSharding(mesh, s), tree_specs(tree, axis_sizes(mesh), rules),
                        is_leaf=lambda x: isinstance(x, P))


def vocab_shards(sizes: Mapping[str, int], rules: Mapping[str, tuple[str, ...]] | None = None) -> int:
    """How many ways the item table's rows are split: the product of the vocab rule's mesh axes."""
    rules = RULES if rules is None else rules
    return math.prod(sizes.get(a, 1) for a in rules["vocab"])


def padded_vocab(num_rows: int, sizes: Mapping[str, int], rules: Mapping[str, tuple[str, ...]] | None = None) -> int:
    """Rows rounded up to a multiple of the vocab shard count (padding rows are zero and never scored)."""
    k = vocab_shards(sizes, rules)
    return -(-num_rows // k) * k


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis over data×fsdp, everything else replicated."""
    return NamedSharding(mesh, P(BATCH_AXES))


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
    """Activation sharding constraint by logical names under the mesh set with `use_mesh`; no-op without one
    (single-device runs and eager code stay untouched)."""
    mesh = _current_mesh()
    if mesh is None or math.prod(mesh.shape.values()) == 1:
        return x
    spec = logical_to_spec(logical_axes, x.shape, dict(mesh.shape), _ACTIVE_RULES[-1])
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


@dataclasses.dataclass(frozen=True)
class RowShards:
    """How the active mesh splits an item table's rows, for the per-shard lookups of `map_row_shards`."""

    mesh: Mesh
    table_spec: P  # the table's own PartitionSpec: the map takes the shards where they already are
    row_axes: tuple[str, ...]  # mesh axes over the rows, major first
    width_axes: tuple[str, ...]  # mesh axes over the width (the table's FSDP split when the rows skip fsdp)
    batch_axes: tuple[str, ...]  # batch axes the rows do not use: the batch stays split over them in the map
    scatter_axes: tuple[str, ...]  # batch axes the rows also use: partial sums are reduce-scattered over them

    @property
    def num_shards(self) -> int:
        return math.prod(self.mesh.shape[a] for a in self.row_axes)

    @property
    def scatter_size(self) -> int:
        """How many devices' batch slices each shard scores (its own included): the scatter axes' product."""
        return math.prod(self.mesh.shape[a] for a in self.scatter_axes)


def _axes(entry: Any) -> tuple[str, ...]:
    return () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)


def row_shards(table_shape: Sequence[int]) -> RowShards | None:
    """The split of a ("vocab", "embed") table under the mesh of `use_mesh`, or None when every device holds
    all rows (no mesh, one device, or row axes of size 1): callers then take the plain jnp path.

    The one place that decides between a plain gather and the per-shard lookup: XLA partitions a row gather
    on a table whose rows share a mesh axis with the batch by all-gathering table rows (half the table on
    2x2x2, all of it on 1x8x1), so every lookup of a split table goes through `map_row_shards` instead.
    """
    mesh = _current_mesh()
    if mesh is None or math.prod(mesh.shape.values()) == 1:
        return None
    sizes = dict(mesh.shape)
    spec = logical_to_spec(("vocab", "embed"), table_shape, sizes, _ACTIVE_RULES[-1])
    row_axes = _axes(spec[0]) if len(spec) else ()
    if not row_axes:
        return None
    width_axes = _axes(spec[1]) if len(spec) > 1 else ()
    split = tuple(a for a in BATCH_AXES if sizes[a] > 1)
    return RowShards(mesh, spec, row_axes, width_axes, tuple(a for a in split if a not in row_axes),
                     tuple(a for a in split if a in row_axes))


def shard_map(f: Callable, mesh: Mesh, in_specs: Any, out_specs: Any) -> Callable:
    """`jax.shard_map` (jax >= 0.6) or `jax.experimental.shard_map` (older), with replication checks on so
    that autodiff transposes the collectives exactly."""
    if hasattr(jax, "shard_map"):
        return jax.shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs)
    from jax.experimental.shard_map import shard_map as experimental_shard_map

    return experimental_shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs)


def map_row_shards(fn: Callable[..., tuple[jax.Array, ...]], shards: RowShards, table_VxD: jax.Array,
                   *batch_args: jax.Array) -> tuple[jax.Array, ...]:
    """Sum over the row shards of `fn(table_RxD, first_row, *local_batch_args)`, run on every device.

    `fn` sees only the R rows this device holds (ids `first_row .. first_row + R - 1`) and returns partial
    results, each with the batch as its leading dimension, that are exact for the ids it holds and zero for
    the others. The batch arguments (ids, user embeddings: small next to the table) are all-gathered over
    the row axes so that every shard sees every id; the partial results are reduce-scattered back to the
    batch sharding over the axes the batch shares with the rows and summed over the rest. No table row
    leaves its device, and autodiff gives a row-sharded table gradient.
    """
    sizes = dict(shards.mesh.shape)
    batch = batch_args[0].shape[0]
    batch_axes, scatter_axes = shards.batch_axes, shards.scatter_axes
    if batch % math.prod(sizes[a] for a in batch_axes + scatter_axes):
        batch_axes, scatter_axes = (), ()  # an odd batch: every device keeps all rows of it
    rest_axes = tuple(a for a in shards.row_axes if a not in scatter_axes)

    def local(table_RxD, *args):
        if shards.width_axes:  # FSDP-split width: gather this shard's columns (its own rows only)
            table_RxD = jax.lax.all_gather(table_RxD, shards.width_axes, axis=1, tiled=True)
        first_row = jax.lax.axis_index(shards.row_axes) * table_RxD.shape[0]
        outs = tuple(fn(table_RxD, first_row, *args))
        if scatter_axes:
            outs = tuple(jax.lax.psum_scatter(x, scatter_axes, scatter_dimension=0, tiled=True) for x in outs)
        return tuple(jax.lax.psum(x, rest_axes) for x in outs) if rest_axes else outs

    in_batch = P(batch_axes or None)
    mapped = shard_map(local, shards.mesh, in_specs=(shards.table_spec,) + (in_batch,) * len(batch_args),
                       out_specs=P((batch_axes + scatter_axes) or None))  # one spec for every output
    return mapped(table_VxD, *batch_args)


_ACTIVE: list[Mesh] = []
_ACTIVE_RULES: list[Mapping[str, tuple[str, ...]]] = []


def _current_mesh() -> Mesh | None:
    return _ACTIVE[-1] if _ACTIVE else None


class use_mesh:  # noqa: N801  (used as a context manager, like jax.sharding.use_mesh)
    """Makes `constrain` active while tracing the step functions; nothing global beyond this module."""

    def __init__(self, mesh: Mesh, rules: Mapping[str, tuple[str, ...]] | None = None):
        self.mesh, self.rules = mesh, RULES if rules is None else rules

    def __enter__(self) -> Mesh:
        _ACTIVE.append(self.mesh)
        _ACTIVE_RULES.append(self.rules)
        return self.mesh

    def __exit__(self, *exc) -> None:
        _ACTIVE.pop()
        _ACTIVE_RULES.pop()


def initialize_distributed(dist_cfg: Any) -> bool:
    """Join the other processes of a multi-host run; returns True when jax.distributed was initialised.

    Explicit (`distributed.coordinator_address` + `num_processes` + `process_id`, e.g. from
    launch/local_multiprocess.sh), else automatic on a TPU pod or under SLURM (JAX reads the environment),
    else a single process and nothing to do.
    """
    import os

    if dist_cfg.coordinator_address:
        if dist_cfg.num_processes < 1 or not 0 <= dist_cfg.process_id < dist_cfg.num_processes:
            raise ValueError(f"distributed.coordinator_address={dist_cfg.coordinator_address!r} needs "
                             f"num_processes >= 1 and 0 <= process_id < num_processes, got "
                             f"{dist_cfg.num_processes}, {dist_cfg.process_id}")
        jax.distributed.initialize(coordinator_address=dist_cfg.coordinator_address,
                                   num_processes=int(dist_cfg.num_processes), process_id=int(dist_cfg.process_id))
        return True
    under_slurm = int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in os.environ
    on_tpu_pod = "," in os.environ.get("TPU_WORKER_HOSTNAMES", "") or "MEGASCALE_COORDINATOR_ADDRESS" in os.environ
    if under_slurm or on_tpu_pod:
        jax.distributed.initialize()
        return True
    return False
