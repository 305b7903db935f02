"""Checkpoints that resume a run bit-for-bit, on orbax-checkpoint's `CheckpointManager`.

Layout in the workdir:
  checkpoints/<step>/  the last `checkpoint.keep` train states: params, optimizer state (item "state") and
                       a JSON item "meta": step, RNG scheme, Grain iterator states (one per process: each
                       reads its own share of the data), best-so-far bookkeeping, tokens seen and the config.
                       Saved every `checkpoint.every_steps`, at the end and on SIGTERM (at a step all
                       processes agree on: `PreemptionFlag`); asynchronously when `checkpoint.async`.
  best/<step>/         parameters picked on validation (the last `checkpoint.keep_best` improvements; the
                       newest is the best). Protocol "reference" stores its final parameters here.
Orbax writes each step into a temporary directory and renames it when complete, so a run killed during a
save finds only finished steps (plus a temporary directory that is cleaned up on the next start).

The trainer derives the key of step s as `fold_in(key(seed), s)`: the RNG state is (seed, step), recorded
in "meta" and checked on resume. Restores take their target shardings from the arrays the caller already
built, so a checkpoint written on one mesh or device count restores onto another.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import signal
import threading
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

RNG_SCHEME = "fold_in(key(seed), step)"
CHECKPOINT_DIR = "checkpoints"
BEST_DIR = "best"
# Config sections whose change makes a saved run a different run (resuming it would not be "the same run").
_FIXED_SECTIONS = ("seed", "data", "model", "loss", "optim")


@dataclasses.dataclass
class Resumed:
    """What a restored checkpoint gives back to the train loop."""

    step: int
    params: Any
    opt_state: Any
    data_iterator: dict
    best: dict  # {"metric": float | -inf, "step": int, "metrics": dict | None}
    evals_since_best: int
    tokens_seen: int
    train_seconds: float | None  # wall time of the train loop up to `step`; None in checkpoints older than the field


def abstract_like(tree: Any) -> Any:
    """ShapeDtypeStructs (with the arrays' shardings) to restore a checkpoint onto `tree`'s devices/mesh."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def _manager(directory: Path, *, max_to_keep: int, use_async: bool) -> ocp.CheckpointManager:
    # Two managers (train states, best) may finalise async saves at the same time; on several processes
    # their barriers must not share names ("barrier ... is already ongoing"), hence a prefix per directory.
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, enable_async_checkpointing=use_async, cleanup_tmp_directories=True, create=True,
        multiprocessing_options=ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=directory.name))
    return ocp.CheckpointManager(directory.resolve(), options=options)


def check_checkpoint_config(ckpt_cfg: Any) -> None:
    for name in ("every_steps", "keep", "keep_best"):
        value = ckpt_cfg[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "every_steps" else 1):
            low = "0 (0 = only at the end)" if name == "every_steps" else "1"
            raise ValueError(f"checkpoint.{name} must be an int >= {low}, got {value!r}")
    preemption_check_every_steps(ckpt_cfg)


def gather_json(value: Any) -> list:
    """Every process's JSON-able `value`, in process order ([value] for one process): two tiny all-gathers."""
    if jax.process_count() == 1:
        return [value]
    from jax.experimental import multihost_utils

    data = np.frombuffer(json.dumps(value).encode(), np.uint8).astype(np.int32)
    sizes = np.asarray(multihost_utils.process_allgather(np.asarray([data.size], np.int32))).reshape(-1)
    padded = np.zeros(int(sizes.max()), np.int32)
    padded[: data.size] = data
    gathered = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(sizes), -1)
    return [json.loads(gathered[p, : sizes[p]].astype(np.uint8).tobytes()) for p in range(len(sizes))]


def _own_iterator_state(meta: dict) -> dict:
    """This process's saved iterator state; with another process count, process 0's (whose fingerprint then
    makes the pipeline refuse it with a clear message)."""
    states = meta.get("data_iterators") or [meta["data_iterator"]]
    return states[jax.process_index()] if len(states) == jax.process_count() else states[0]


def _json_metric(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


class TrainCheckpointer:
    """Saves and restores train states and best parameters of one run (see the module docstring)."""

    def __init__(self, workdir: str | Path, ckpt_cfg: Any, config_dict: dict):
        check_checkpoint_config(ckpt_cfg)
        self.workdir = Path(workdir)
        self.every_steps = int(ckpt_cfg.every_steps)
        self._config = json.loads(json.dumps(config_dict, default=str))
        use_async = bool(ckpt_cfg["async"])
        self._states = _manager(self.workdir / CHECKPOINT_DIR, max_to_keep=int(ckpt_cfg.keep), use_async=use_async)
        self._best = _manager(self.workdir / BEST_DIR, max_to_keep=int(ckpt_cfg.keep_best), use_async=use_async)

    # ------------------------------------------------------------------------------------------ save
    def due(self, step: int) -> bool:
        return self.every_steps > 0 and step % self.every_steps == 0

    def save(self, step: int, params: Any, opt_state: Any, *, data_iterator: dict, best: dict,
             evals_since_best: int, tokens_seen: int, train_seconds: float | None) -> None:
        """Starts saving the train state of `step` (returns before the write ends when async).

        Every process calls it at the same steps; `data_iterator` is this process's iterator state."""
        data_iterators = gather_json(data_iterator)  # before any early return: a collective on every process
        if step in self._states.all_steps():
            return  # e.g. the final save right after a periodic one at the same step
        meta = {
            "step": int(step),
            "rng": {"seed": int(self._config["seed"]), "scheme": RNG_SCHEME},
            "data_iterator": data_iterator,  # the writer's (process 0's); read by checkpoints without the list
            "data_iterators": data_iterators,
            "best": {"metric": _json_metric(best["metric"]), "step": int(best["step"]), "metrics": best["metrics"]},
            "evals_since_best": int(evals_since_best),
            "tokens_seen": int(tokens_seen),
            "train_seconds": None if train_seconds is None else float(train_seconds),
            "config": self._config,
        }
        self._states.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave({"params": params, "opt_state": opt_state}),
            meta=ocp.args.JsonSave(meta)))

    def save_best(self, step: int, params: Any, metrics: dict | None) -> None:
        """Parameters chosen on validation at `step` (or the final ones when there is no validation)."""
        if step in self._best.all_steps():
            return
        self._best.save(step, args=ocp.args.Composite(
            params=ocp.args.StandardSave(params),
            meta=ocp.args.JsonSave({"step": int(step), "metrics": metrics, "config": self._config})))

    def wait(self) -> None:
        self._states.wait_until_finished()
        self._best.wait_until_finished()

    def close(self) -> None:
        self._states.close()
        self._best.close()

    # --------------------------------------------------------------------------------------- restore
    def latest_step(self) -> int | None:
        return self._states.latest_step()

    def restore(self, params: Any, opt_state: Any) -> Resumed | None:
        """The newest complete train state, placed like `params`/`opt_state`; None when there is none.

        Best checkpoints newer than the restored step belong to the part of the run that is redone and
        are deleted (the redone evaluations save them again, identically).
        """
        step = self._states.latest_step()
        if step is None:
            return None
        meta = self._states.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
        self._check_same_run(meta, step)  # before touching arrays: a different model fails with a clear message
        restored = self._states.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_like({"params": params, "opt_state": opt_state}))))
        for later in [s for s in self._best.all_steps() if s > step]:
            self._best.delete(later)
        best = dict(meta["best"])
        best["metric"] = -math.inf if best["metric"] is None else best["metric"]
        return Resumed(step=int(meta["step"]), params=restored.state["params"],
                       opt_state=restored.state["opt_state"], data_iterator=_own_iterator_state(meta), best=best,
                       evals_since_best=int(meta["evals_since_best"]), tokens_seen=int(meta["tokens_seen"]),
                       train_seconds=meta.get("train_seconds"))

    def restore_best(self, params: Any, step: int | None = None) -> Any:
        """Best parameters (of `step`, default the newest best checkpoint), placed like `params`."""
        step = self._best.latest_step() if step is None else step
        if step is None or step not in self._best.all_steps():
            raise FileNotFoundError(f"{self.workdir / BEST_DIR}: no best checkpoint for step {step}; "
                                    f"have {sorted(self._best.all_steps())}")
        return self._best.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(abstract_like(params)))).params

    def _check_same_run(self, meta: dict, step: int) -> None:
        where = self.workdir / CHECKPOINT_DIR / str(step)
        if meta.get("rng", {}).get("scheme") != RNG_SCHEME:
            raise ValueError(f"{where}: RNG scheme {meta.get('rng')} is not this trainer's {RNG_SCHEME!r}")
        saved, now = meta["config"], self._config
        changed = [k for k in _FIXED_SECTIONS if saved.get(k) != now.get(k)]
        if changed:
            raise ValueError(f"{where} was written by a run with different config sections {changed}; use a new "
                             "workdir (or delete its checkpoints/) to start a different run")
        others = sorted(k for k in set(saved) | set(now) if k not in _FIXED_SECTIONS and saved.get(k) != now.get(k))
        if others:
            logging.warning("resuming %s with changed config sections %s", where, others)


def _registry() -> ocp.handlers.DefaultCheckpointHandlerRegistry:
    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    for item, save, restore, handler in (("params", ocp.args.StandardSave, ocp.args.StandardRestore,
                                          ocp.StandardCheckpointHandler),
                                         ("state", ocp.args.StandardSave, ocp.args.StandardRestore,
                                          ocp.StandardCheckpointHandler),
                                         ("meta", ocp.args.JsonSave, ocp.args.JsonRestore, ocp.JsonCheckpointHandler)):
        registry.add(item, save, handler)
        registry.add(item, restore, handler)
    return registry


def _unwrap(tree: Any) -> Any:
    """nnx Variables are stored as {"value": array}: the plain nested dict `nnx.to_pure_dict` gives."""
    if isinstance(tree, dict):
        if set(tree) == {"value"} and not isinstance(tree["value"], dict):
            return tree["value"]
        return {k: _unwrap(v) for k, v in tree.items()}
    return tree


PARAM_SOURCES = ("best", "latest")


def load_params(workdir: str | Path, params_like: Any, *, source: str = "best",
                step: int | None = None) -> tuple[Any, dict]:
    """(parameters as an nnx State shaped like `params_like`, their meta) from a run's workdir.

    `source` "best": best/ (picked on validation; the final step under protocol "reference"); "latest":
    checkpoints/, a train state, so a run still going or preempted can be scored. `step`: that saved step
    instead of the newest. Loaded on the default device whatever mesh saved them; rows a sharded run padded
    onto vocab tables are cut.
    """
    if source not in PARAM_SOURCES:
        raise ValueError(f"source must be one of {PARAM_SOURCES}, got {source!r}")
    subdir, item = (BEST_DIR, "params") if source == "best" else (CHECKPOINT_DIR, "state")
    path = Path(workdir) / subdir
    if not path.is_dir():
        raise FileNotFoundError(f"{path} does not exist: is {workdir} a training workdir?")
    manager = ocp.CheckpointManager(path.resolve(), handler_registry=_registry(),
                                    options=ocp.CheckpointManagerOptions(read_only=True))
    try:
        have = sorted(manager.all_steps())
        if not have:
            raise FileNotFoundError(f"{path}: no complete checkpoint"
                                    + (" (did the run finish?)" if source == "best" else ""))
        step = have[-1] if step is None else int(step)
        if step not in have:
            raise FileNotFoundError(f"{path}: no checkpoint of step {step}; have {have}")
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])

        def abstract(m):  # a train state's metadata also holds non-array leaves of the optimizer state
            return jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=device) if hasattr(m, "shape") else m

        # A train state restores whole (orbax restores no sub-tree of an item); its optimizer state is dropped.
        target = jax.tree.map(abstract, manager.item_metadata(step)[item].tree)
        restored = manager.restore(step, args=ocp.args.Composite(
            **{item: ocp.args.StandardRestore(target), "meta": ocp.args.JsonRestore()}))
        meta = restored["meta"]
        saved = _unwrap(restored[item] if source == "best" else restored[item]["params"])
    finally:
        manager.close()
    path = path / str(step)
    want = nnx.to_pure_dict(params_like)
    def name(key_path) -> str:  # orbax stores the int keys of nnx.List layers as strings
        return "/".join(str(getattr(k, "key", k)) for k in key_path)

    flat_saved = {name(k): v for k, v in jax.tree_util.tree_flatten_with_path(saved)[0]}
    flat_want = [(name(k), v) for k, v in jax.tree_util.tree_flatten_with_path(want)[0]]
    if set(flat_saved) != {k for k, _ in flat_want}:
        differ = sorted(set(flat_saved) ^ {k for k, _ in flat_want})
        raise ValueError(f"{path}: parameters differ from the model's: {differ}")
    leaves = []
    for key, like in flat_want:
        x = np.asarray(flat_saved[key])
        if x.shape != like.shape:
            if x.shape[1:] != like.shape[1:] or x.shape[0] < like.shape[0]:
                raise ValueError(f"{path}: {key} has shape {x.shape}, the model wants {like.shape}")
            x = x[: like.shape[0]]  # vocab padding rows of a sharded run
        leaves.append(jax.numpy.asarray(x))
    pure = jax.tree_util.tree_unflatten(jax.tree.structure(want), leaves)
    nnx.replace_by_pure_dict(params_like, pure)
    return params_like, meta


def truncate_metrics(path: Path, step: int) -> None:
    """Drops metrics.jsonl rows the resumed run writes again: steps after `step`, and the final test row.

    The final row is the one marked `"final": true`; the periodic test evaluations of a protocol without a
    validation split (`reference`) are kept.
    """
    if not path.exists():
        return
    kept = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not a JSON line ({e})") from e
        if row.get("step", 0) <= step and not row.get("final", False):
            kept.append(line)
    path.write_text("".join(x + "\n" for x in kept))


def preemption_check_every_steps(ckpt_cfg: Any) -> int:
    """`checkpoint.preemption_check_every_steps` (default 1): how often processes agree on a SIGTERM."""
    value = ckpt_cfg.get("preemption_check_every_steps", 1)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"checkpoint.preemption_check_every_steps must be an int >= 1, got {value!r}")
    return value


def any_process(flag: bool) -> bool:
    """True on every process when `flag` is True on any: a tiny all-gather, a no-op for one process."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.asarray([flag], np.int32))))


class PreemptionFlag:
    """Turns SIGTERM into a stop that every process of the run agrees on (then they save and return).

    On a preemptible multi-host VM the signal may reach only some processes; each must save at the same
    step, or the checkpoint is inconsistent and the collective save deadlocks. `requested` is this
    process's own flag; `should_stop(step)` is the run's decision: every `check_every_steps` steps the
    processes all-gather their flags, so all of them see the same answer at the same step. A single process
    decides alone at every step, at no cost. Only the main thread may install signal handlers; elsewhere
    the local flag simply never rises.
    """

    def __init__(self, check_every_steps: int = 1) -> None:
        if isinstance(check_every_steps, bool) or not isinstance(check_every_steps, int) or check_every_steps < 1:
            raise ValueError(f"check_every_steps must be an int >= 1, got {check_every_steps!r}")
        self.check_every_steps = check_every_steps
        self.requested = False
        self.stopped = False
        self._previous = None

    def install(self) -> PreemptionFlag:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        logging.warning("SIGTERM: saving a checkpoint at the next step all processes agree on, then stopping")
        self.requested = True

    def should_stop(self, step: int) -> bool:
        """Called by every process after every step: whether the run saves and stops now (same on all)."""
        if jax.process_count() == 1:
            self.stopped = self.requested
        elif step % self.check_every_steps == 0:
            self.stopped = any_process(self.requested)
        return self.stopped

    def uninstall(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
