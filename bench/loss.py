"""Cost of the sampled-softmax loss (forward + backward) beside the one matmul it cannot avoid.

  python -m bench.loss --recipes sasrec_ml1m,hstu_beauty --batch_size 80

For each recipe: the loss on the shapes of a real training batch (rows x slots from the pipeline, the
recipe's D and K, the store's V), timed with `scoring="gather"` and `"dense"`, and the time of one
[rows·slots, D] x [D, V] matmul: the floor of dense scoring, which needs three of them (forward logits, and
the user and table gradients). It answers "where does a CPU training step go" for small-catalogue recipes.
`--ratios 16,32,64` adds a second table: the same batch shapes with synthetic tables of V = ratio·K rows,
gather against dense, to locate the V/K where dense scoring stops paying (`lrm.losses.DENSE_SCORING_MAX_RATIO`).
Medians over timed repeats after compilation; compare the ratios within one run.
"""
from __future__ import annotations

import argparse
import platform

import jax
import jax.numpy as jnp

from bench.attention import _median_ms
from bench.throughput import recipe_config
from data_pipeline.pipeline import make_train_dataset
from lrm import losses
from lrm.models.embeddings import l2_normalize
from lrm.training.data import open_or_build_store


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", default="sasrec_ml1m,hstu_beauty")
    p.add_argument("--batch_size", type=int, default=0, help="rows per batch; 0 = the recipe's train.batch_size")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--store_root", default="stores")
    p.add_argument("--ratios", default="", help="comma-separated V/K ratios for the crossover table (synthetic V)")
    args = p.parse_args(argv)
    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()} "
          f"({platform.processor() or platform.machine()}), jax {jax.__version__}")
    print("| recipe | rows x slots | D | V | K | scoring | loss fwd+bwd ms | one matmul ms | loss / matmul |")
    print("|---|---|---|---|---|---|---|---|---|")
    crossover = []
    for name in args.recipes.split(","):
        config = recipe_config(name, args.store_root)
        store = open_or_build_store(config.data)
        rows = args.batch_size or config.train.batch_size
        batch = next(iter(make_train_dataset(store, max_len=config.data.max_len, batch_size=rows, seed=0,
                                             pack=True)))
        target_ids_BxL = jnp.asarray(batch["target_ids_BxL"])
        (b, length), dim, k = target_ids_BxL.shape, config.model.embed_dim, config.loss.num_negatives
        timings = _time_scorings(target_ids_BxL, dim, k, store.num_items + 1, config.loss.temperature, args.repeats)
        for scoring in ("gather", "dense"):
            print(f"| {name} | {b} x {length} | {dim} | {store.num_items + 1:,} | {k} | {scoring} | "
                  f"{timings[scoring]:,.0f} | {timings['matmul']:,.0f} | {timings[scoring] / timings['matmul']:.1f}x |")
        crossover.append((name, target_ids_BxL, dim, k, config.loss.temperature))
    if args.ratios:
        _crossover_table(crossover, [int(r) for r in args.ratios.split(",")], args.repeats)


def _time_scorings(target_ids_BxL: jax.Array, dim: int, k: int, num_rows: int, temperature: float,
                   repeats: int) -> dict[str, float]:
    """Median ms of the loss (forward + backward) per scoring, and of one [B·L, D] x [D, V] matmul."""
    target_ids_BxL = jnp.minimum(target_ids_BxL, num_rows - 1)  # synthetic tables may be smaller than the store's
    user_BxLxD = l2_normalize(jax.random.normal(jax.random.key(0), (*target_ids_BxL.shape, dim)))
    table_VxD = jax.random.normal(jax.random.key(1), (num_rows, dim)) * 0.1
    negatives_BxLxK = losses.sample_negatives(jax.random.key(2), (*target_ids_BxL.shape, k), num_rows)
    matmul = jax.jit(lambda u, t: u.reshape(-1, dim) @ t.T)
    out = {"matmul": _median_ms(matmul, (user_BxLxD, table_VxD), warmup=1, iters=repeats)}
    for scoring in ("gather", "dense"):
        def loss(u, t, scoring=scoring):
            return losses.sampled_softmax_loss_with_negatives(
                u, t, target_ids_BxL, negatives_BxLxK, temperature=temperature, scoring=scoring)[0]
        step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
        out[scoring] = _median_ms(step, (user_BxLxD, table_VxD), warmup=1, iters=repeats)
    return out


def _crossover_table(recipes: list, ratios: list[int], repeats: int) -> None:
    print(f"\nV = ratio x K (synthetic tables); auto picks dense up to ratio {losses.DENSE_SCORING_MAX_RATIO}")
    print("| recipe | rows x slots | K | V/K | V | gather ms | dense ms | gather / dense |")
    print("|---|---|---|---|---|---|---|---|")
    for name, target_ids_BxL, dim, k, temperature in recipes:
        b, length = target_ids_BxL.shape
        for ratio in ratios:
            t = _time_scorings(target_ids_BxL, dim, k, ratio * k, temperature, repeats)
            print(f"| {name} | {b} x {length} | {k} | {ratio} | {ratio * k:,} | {t['gather']:,.0f} | "
                  f"{t['dense']:,.0f} | {t['gather'] / t['dense']:.2f}x |")


if __name__ == "__main__":
    main()
