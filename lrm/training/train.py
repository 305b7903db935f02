"""The train loop, top to bottom: data → model → jit step → periodic validation → best checkpoint → test.

Everything a run did lands in its workdir: config.json, metrics.jsonl, tensorboard/, checkpoints/ (train
states; a run resumes from them exactly), best/ (parameters picked on validation) and results.json.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from data_pipeline.pipeline import WINDOWS, make_train_dataset, train_epoch_size
from data_pipeline.splits import split_report
from lrm.losses import full_softmax_loss, sampled_softmax_loss
from lrm.models import build_model
from lrm.models.embeddings import check_batch
from lrm.training import evaluate as ev
from lrm.training.checkpointing import (PreemptionFlag, TrainCheckpointer, preemption_check_every_steps,
                                        truncate_metrics)
from lrm.training import sharded
from lrm.training.data import open_or_build_store
from lrm.training.metrics_writer import MetricsWriter, Progress, json_default
from lrm.training.mfu import MfuMeter
from lrm.training.optimizer import make_optimizer


class NonFiniteLossError(FloatingPointError):
    pass


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, loss_cfg, *,
                    num_items: int | None = None, jit: bool = True) -> Any:
    """`num_items`: the real catalogue size when the table is padded for sharding (padding rows are cut
    before the loss); `jit=False` leaves compiling to the caller (lrm.training.sharded adds shardings)."""
    def loss_fn(params, batch, key):
        model = nnx.merge(graphdef, params)
        dropout_key, negatives_key = jax.random.split(key)
        user_emb_BxLxD = model(batch, deterministic=False, dropout_key=dropout_key)
        table_VxD = model.item_table()
        if num_items is not None and table_VxD.shape[0] != num_items + 1:  # vocab padded for sharding
            return sharded.padded_table_loss(user_emb_BxLxD, table_VxD, batch["target_ids_BxL"], negatives_key,
                                             num_items=num_items, loss_cfg=loss_cfg)
        if loss_cfg.kind == "sampled_softmax":
            return sampled_softmax_loss(user_emb_BxLxD, table_VxD, batch["target_ids_BxL"], negatives_key,
                                        num_negatives=loss_cfg.num_negatives, temperature=loss_cfg.temperature,
                                        scoring=loss_cfg.scoring)
        return full_softmax_loss(user_emb_BxLxD, table_VxD, batch["target_ids_BxL"],
                                 temperature=loss_cfg.temperature)

    def train_step(params, opt_state, batch, key):
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, key)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, {"loss": loss, "grad_norm": optax.tree.norm(grads),
                                   "num_targets": aux["num_targets"]}

    return jax.jit(train_step) if jit else train_step


def _validate_config(config: ml_collections.ConfigDict) -> None:
    if config.loss.kind not in ("sampled_softmax", "full_softmax"):
        raise ValueError(f"unknown loss.kind {config.loss.kind!r}; known: sampled_softmax, full_softmax")
    if config.model.max_seq_len < config.data.max_len + 1:
        raise ValueError(f"model.max_seq_len={config.model.max_seq_len} must be >= data.max_len + 1 "
                         f"= {config.data.max_len + 1} (rows hold max_len history events plus the target)")
    if config.data.train_windows not in WINDOWS:
        raise ValueError(f"unknown data.train_windows {config.data.train_windows!r}; known: {', '.join(WINDOWS)}")
    for name in ("batch_size", "log_every_steps"):
        if config.train[name] <= 0:
            raise ValueError(f"train.{name} must be positive, got {config.train[name]}")


def _check_finite(step: int, loss, schedule, last_eval_step: int) -> None:
    loss = float(loss)
    if not math.isfinite(loss):
        raise NonFiniteLossError(
            f"loss is {loss} at step {step} (learning rate {float(schedule(step)):.3g}); stopping the run. "
            f"The last selected evaluation was at step {last_eval_step}.")


def _batch_counts(batch: dict) -> tuple[int, int]:
    """(examples, real tokens) in a train batch: an example is a row segment, i.e. a user's window (packed rows
    hold several; with `data.train_windows="all"` a long history is several examples)."""
    return int(np.asarray(batch["segment_ids_BxL"]).max(axis=1).sum()), int(np.asarray(batch["lengths_B"]).sum())


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    _validate_config(config)
    config = ml_collections.ConfigDict(config.to_dict())  # a private copy we may annotate
    is_main = jax.process_index() == 0
    if config.get("compile_only", False) and config.get("compile_num_items", 0) > 0:
        from lrm.training import compile_report
        return compile_report.run(config, int(config.compile_num_items), make_train_step)

    store = open_or_build_store(config.data)
    notes = []
    if config.model.use_time_bias and not store.has_timestamps:
        config.model.use_time_bias = False
        notes.append(f"time bias OFF: dataset {store.dataset!r} in this store has no timestamps")
        logging.warning(notes[-1])
    if is_main:
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))

    if config.get("compile_only", False):
        from lrm.training import compile_report
        return compile_report.run(config, store.num_items, make_train_step)
    local_batch = sharded.process_batch_size(config.train.batch_size)
    steps_per_epoch = train_epoch_size(store, max_len=config.data.max_len, batch_size=local_batch,
                                       pack=config.data.pack, seed=config.seed, windows=config.data.train_windows,
                                       process_count=jax.process_count())["batches"]
    total_steps = config.train.num_steps or int(math.ceil(config.train.num_epochs * steps_per_epoch))
    eval_every = max(int(round(config.train.eval_every_epochs * steps_per_epoch)), 1)
    has_valid = store.protocol != "reference"

    tx, schedule = make_optimizer(config.optim, total_steps)
    graphdef, params, opt_state, layout = sharded.create_state_from_config(config, store.num_items, tx)
    train_step = sharded.jit_train_step(
        make_train_step(graphdef, tx, config.loss, num_items=store.num_items, jit=False), layout)
    eval_step = sharded.make_eval_step(graphdef, layout, temperature=config.loss.temperature,
                                       chunk_size=config.eval.chunk_size)
    eval_kw = dict(max_len=config.data.max_len, batch_size=config.eval.batch_size, max_rank=config.eval.max_rank,
                   max_users=config.eval.max_users)
    select_split = "valid" if has_valid else "test"

    train_ds = make_train_dataset(store, max_len=config.data.max_len, batch_size=local_batch,
                                  seed=config.seed, pack=config.data.pack, prefetch=config.data.prefetch,
                                  windows=config.data.train_windows)
    writer = MetricsWriter(workdir, tensorboard=config.train.tensorboard)
    logging.info("dataset %s (%d users, %d items), protocol %s, %d steps (%d/epoch), eval every %d",
                 store.dataset, store.num_users, store.num_items, store.protocol, total_steps, steps_per_epoch,
                 eval_every)

    base_key = jax.random.key(config.seed)
    best = {"metric": -math.inf, "step": 0, "metrics": None}
    best_params = sharded.snapshot(params, layout.param_shardings)
    evals_since_best = 0
    t_start = time.perf_counter()
    tokens_seen = 0
    prior_seconds: float | None = 0.0  # train-loop wall time of earlier processes of this run (resumes)
    step = 0
    pending = None
    train_iter = iter(train_ds)
    ckpt = TrainCheckpointer(workdir, config.checkpoint, config.to_dict())
    resumed = ckpt.restore(params, opt_state)  # automatic resume: exact, from the newest complete checkpoint
    if resumed is not None:
        step, params, opt_state, tokens_seen = resumed.step, resumed.params, resumed.opt_state, resumed.tokens_seen
        prior_seconds = resumed.train_seconds
        best, evals_since_best = resumed.best, resumed.evals_since_best
        train_iter.set_state(resumed.data_iterator)
        best_params = ckpt.restore_best(params, best["step"]) if has_valid and best["step"] else best_params
        truncate_metrics(workdir / "metrics.jsonl", step)
        logging.info("resumed from %s at step %d", workdir / "checkpoints", step)
    progress = Progress(total_steps, start_step=step)
    meter = MfuMeter.for_run(config, store, start_tokens=tokens_seen)  # after a resume: counts on from there
    preempt = PreemptionFlag(preemption_check_every_steps(config.checkpoint)).install()
    try:
        while step < total_steps:
            batch = next(train_iter)
            if step == 0:
                check_batch(batch, store.num_items)
            users, tokens = _batch_counts(batch)
            progress.add(users, tokens)
            tokens_seen += tokens
            params, opt_state, out = train_step(params, opt_state, batch, jax.random.fold_in(base_key, step))
            if pending is not None:  # the previous step's loss: checking it does not stall the step just queued
                _check_finite(*pending, schedule, best["step"])
            step += 1
            pending = (step, out["loss"])
            if step % config.train.log_every_steps == 0 or step == total_steps:
                _check_finite(*pending, schedule, best["step"])
                loss = float(out["loss"])
                text, rates = progress.line(step, loss)
                if is_main:
                    logging.info(text)
                writer.write(step, "train", {"loss": loss, "grad_norm": float(out["grad_norm"]),
                                             "learning_rate": float(schedule(step)), "tokens_seen": tokens_seen,
                                             "total_steps": total_steps,
                                             **rates, **meter.log(tokens_seen)})
            if step % eval_every == 0 or step == total_steps:
                with meter.excluded(params):  # evaluation is not training time for FLOP/s and MFU
                    metrics = sharded.evaluate(eval_step, params, store, select_split, **eval_kw)
                writer.write(step, select_split, metrics)
                if is_main:
                    logging.info("eval %s @%d: %s", select_split, step,
                                 " ".join(f"{k}={metrics[k]:.4f}" for k in ("hr@10", "ndcg@10", "mrr", "ce")))
                improved = selection_score(metrics, config.train.select_metric) > best["metric"]
                if has_valid and improved:
                    best = {"metric": selection_score(metrics, config.train.select_metric), "step": step,
                            "metrics": metrics}
                    best_params = sharded.snapshot(params, layout.param_shardings)
                    evals_since_best = 0
                    ckpt.save_best(step, best_params, metrics)  # the snapshot: `params` is donated next step
                elif has_valid:
                    evals_since_best += 1
                    if 0 < config.train.early_stopping_patience <= evals_since_best:
                        logging.info("early stop at step %d: no %s gain in %d evaluations", step,
                                     config.train.select_metric, evals_since_best)
                        break
            stop = preempt.should_stop(step)  # SIGTERM on any process: all of them save this step and stop
            if ckpt.due(step) or stop:
                ckpt.save(step, params, opt_state, data_iterator=train_iter.get_state(), best=best,
                          evals_since_best=evals_since_best, tokens_seen=tokens_seen,
                          train_seconds=_total_seconds(prior_seconds, t_start))
            if stop:
                break
    finally:  # also when the loop raises (NaN loss): never leave SIGTERM swallowed
        preempt.uninstall()
    ckpt.save(step, params, opt_state, data_iterator=train_iter.get_state(), best=best,
              evals_since_best=evals_since_best, tokens_seen=tokens_seen,
              train_seconds=_total_seconds(prior_seconds, t_start))
    if preempt.stopped:
        ckpt.wait()
        ckpt.close()
        writer.close()
        logging.info("preempted: saved step %d; run again with the same workdir to resume", step)
        return {"preempted": True, "steps_run": step}
    this_process_seconds = time.perf_counter() - t_start
    train_seconds = None if prior_seconds is None else prior_seconds + this_process_seconds

    if has_valid:
        final_params, selected = best_params, f"best validation {config.train.select_metric} at step {best['step']}"
    else:
        final_params, selected = params, f"final step {step} (protocol 'reference' has no validation split)"
        best = {"metric": None, "step": step, "metrics": None}
    test = sharded.evaluate(eval_step, final_params, store, "test", **eval_kw)
    writer.write(best["step"], "test", test, final=True)
    baseline = {s: ev.evaluate_popularity(store, s, **eval_kw) for s in (["valid"] if has_valid else []) + ["test"]}
    results = {
        "dataset": store.dataset,
        "protocol": store.protocol,
        "model": config.model.name,
        "time_bias": bool(config.model.use_time_bias),
        "notes": notes,
        "selected": selected,
        "best_step": best["step"],
        "steps_run": step,
        "valid": best["metrics"],
        "test": test,
        "popularity_baseline": baseline,
        "split_report": split_report(store.lengths, store.protocol),
        "num_params": int(sum(x.size for x in jax.tree.leaves(params))),
        "num_devices": jax.device_count(),  # the eval's per-device batch shapes (lrm-evaluate compares like with like)
        "num_processes": jax.process_count(),
        # The host cores this process could run on (side-by-side CPU runs: the context of train_seconds).
        "cpu_affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "tokens_seen": tokens_seen,
        **meter.summary(tokens_seen),  # flops_seen, model_flops_per_s, mfu (None where the peak is unknown)
        "train_seconds": train_seconds,  # all processes of the run (resumes included); None if not recorded
        "train_seconds_this_process": this_process_seconds,
        "config": config.to_dict(),
    }
    if not has_valid:
        ckpt.save_best(step, final_params, None)  # every process writes its own shards
    ckpt.wait()
    ckpt.close()
    if is_main:
        (workdir / "results.json").write_text(json.dumps(results, indent=2, default=json_default))
        logging.info("test (%s): %s", selected, " ".join(f"{k}={v:.4f}" for k, v in test.items()))
    writer.close()
    return results


def _total_seconds(prior: float | None, t_start: float) -> float | None:
    """Train-loop wall time of the whole run so far; None when a resumed checkpoint did not record its share."""
    return None if prior is None else prior + time.perf_counter() - t_start


LOWER_IS_BETTER = ("ce",)


def selection_score(metrics: dict, name: str) -> float:
    """The validation metric as a higher-is-better score (cross-entropy is negated)."""
    if name not in metrics:
        raise KeyError(f"train.select_metric={name!r} is not an eval metric; have {sorted(metrics)}")
    return -float(metrics[name]) if name in LOWER_IS_BETTER else float(metrics[name])

