"""Training and evaluation throughput of the reference recipes, padding vs packing, on this machine.

  python -m bench.throughput --recipes hstu_beauty,hstu_ml1m --steps 20
  python -m bench.throughput --attention_impls pallas,xla     # on GPU/TPU: fused kernels vs the jnp reference

Prints one table: train examples/s (users), real tokens/s, padded-slot utilisation, and eval users/s.
Rates are medians over timed steps after compilation and warm-up; compare ratios within one run.
"""
from __future__ import annotations

import argparse
import importlib
import platform
import time

import jax
import numpy as np

from data_pipeline.pipeline import make_eval_dataset, make_train_dataset
from lrm.training import sharded
from lrm.training.data import open_or_build_store
from lrm.training.optimizer import make_optimizer
from lrm.training.train import make_train_step


def recipe_config(name: str, store_root: str):
    """configs/<name>.py reading stores under `store_root`; ML-1M under the protocol of its published numbers."""
    config = importlib.import_module(f"configs.{name}").get_config()
    config.data.store_root = store_root
    if config.data.dataset == "ml-1m":
        config.data.protocol = "reference"
    return config


def train_setup(config, store, total_steps: int):
    """The trainer's own path: state on the configured mesh (one device here), the jitted sharded step, and the
    train batches. Returns (graphdef, layout, params, opt_state, step_fn, batch iterator)."""
    tx, _ = make_optimizer(config.optim, total_steps=total_steps)
    graphdef, params, opt_state, layout = sharded.create_state_from_config(config, store.num_items, tx)
    step_fn = sharded.jit_train_step(
        make_train_step(graphdef, tx, config.loss, num_items=store.num_items, jit=False), layout)
    it = iter(make_train_dataset(store, max_len=config.data.max_len, batch_size=config.train.batch_size,
                                 seed=0, pack=config.data.pack))
    return graphdef, layout, params, opt_state, step_fn, it


def _train_rates(config, store, pack: bool, scoring: str, steps: int, warmup: int) -> dict:
    config.data.pack = pack
    config.loss.scoring = scoring
    graphdef, layout, params, opt_state, step_fn, it = train_setup(config, store, steps + warmup)
    key = jax.random.key(0)
    times, users, tokens, slots = [], 0, 0, 0
    for i in range(warmup + steps):
        batch = next(it)
        t0 = time.perf_counter()
        params, opt_state, out = step_fn(params, opt_state, batch, jax.random.fold_in(key, i))
        jax.block_until_ready(out["loss"])
        if i >= warmup:
            times.append(time.perf_counter() - t0)
            users += int(batch["segment_ids_BxL"].max(axis=1).sum())
            tokens += int(batch["lengths_B"].sum())
            slots += batch["item_ids_BxL"].size
    per_step = float(np.median(times))
    return {"examples_per_s": users / steps / per_step, "tokens_per_s": tokens / steps / per_step,
            "utilisation": tokens / slots, "step_ms": per_step * 1e3, "state": (graphdef, layout, params)}


def _eval_rate(config, store, graphdef, layout, params, max_batches: int) -> float:
    eval_step = sharded.make_eval_step(graphdef, layout, temperature=config.loss.temperature,
                                       chunk_size=config.eval.chunk_size)
    batches = make_eval_dataset(store, split="test", max_len=config.data.max_len, batch_size=config.eval.batch_size)
    n, elapsed = 0, 0.0
    for i, batch in enumerate(batches):
        if i > max_batches:
            break
        t0 = time.perf_counter()
        eval_step(params, {k: v for k, v in batch.items() if k != "user_index_B"})  # returns host arrays
        if i > 0:  # the first call compiles
            elapsed += time.perf_counter() - t0
            n += int(batch["weights_B"].sum())
    return n / elapsed if elapsed else float("nan")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", default="hstu_beauty,hstu_ml1m")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--eval_batches", type=int, default=10)
    p.add_argument("--store_root", default="stores")
    p.add_argument("--scorings", default="auto",
                   help="sampled-softmax scorings to time, comma-separated from auto,gather,dense")
    p.add_argument("--attention_impls", default="auto",
                   help="model.attention_impl values to time, comma-separated from auto,pallas,xla")
    args = p.parse_args(argv)
    dev = jax.devices()[0]
    print(f"device: {dev.device_kind} x{jax.device_count()} ({platform.processor() or platform.machine()}), "
          f"jax {jax.__version__}")
    print("| recipe | attention | rows | scoring | train ex/s | train tok/s | slot use | step ms | eval users/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.recipes.split(","):
        config = recipe_config(name, args.store_root)
        store = open_or_build_store(config.data)
        scorings = args.scorings.split(",")
        for impl, pack, scoring in [(i, p, sc) for i in args.attention_impls.split(",") for p in (False, True)
                                    for sc in scorings]:
            config.model.attention_impl = impl
            r = _train_rates(config, store, pack, scoring, args.steps, args.warmup)
            first = not pack and scoring == scorings[0]
            eval_rate = _eval_rate(config, store, *r["state"], args.eval_batches) if first else float("nan")
            print(f"| {name} | {impl} | {'packed' if pack else 'padded'} | {scoring} | {r['examples_per_s']:,.0f} | "
                  f"{r['tokens_per_s']:,.0f} | {r['utilisation']:.0%} | {r['step_ms']:.0f} | "
                  f"{'' if np.isnan(eval_rate) else f'{eval_rate:,.0f}'} |")


if __name__ == "__main__":
    main()
