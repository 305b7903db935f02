"""Serving latency and throughput of an exported encoder + top-k over catalogues of several sizes.

  python -m bench.serving --recipe hstu_beauty --catalogues 12101,1000000 --batches 1,64 --iters 50
  python -m bench.serving --artifact export/x ...

Without --artifact the recipe's model is randomly initialised and exported (latency does not depend on the
weights). The catalogue table is random unit rows of the encoder's width for every size other than the
artifact's own. Times the whole `Recommender.recommend` call (input validation, encoder, scoring, top-k,
host copies) after two warm-up calls; histories are max_len random events.
"""
from __future__ import annotations

import argparse
import importlib
import json
import platform
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lrm.models import build_model
from lrm.serving.export import export_function, serving_function
from lrm.serving.loader import Recommender


def _recipe_artifact(recipe: str, out: Path, num_items: int) -> Path:
    config = importlib.import_module(f"configs.{recipe}").get_config()
    config.model.attention_impl = "xla"
    model = build_model(config.model, num_items=num_items, rngs=nnx.Rngs(params=0))
    max_len = int(config.data.max_len)
    (b,) = jax.export.symbolic_shape("b")
    spec = [jax.ShapeDtypeStruct((b, max_len), jnp.int32)] * 2 + [jax.ShapeDtypeStruct((b,), jnp.int32)]
    data, plats = export_function(serving_function(model), spec, None)
    out.mkdir(parents=True, exist_ok=True)
    (out / "encoder.jaxexport").write_bytes(data)
    table = np.asarray(model.item_table(), np.float32)
    np.save(out / "item_table.npy", table / np.maximum(np.linalg.norm(table, axis=1, keepdims=True), 1e-6))
    (out / "metadata.json").write_text(json.dumps({
        "max_len": max_len, "num_items": num_items, "embed_dim": int(table.shape[1]), "platforms": list(plats),
        "dataset": f"random ({recipe})", "model": config.model.name}))
    return out


def _with_catalogue(base: Recommender, size: int, rng: np.random.Generator) -> Recommender:
    if size == base.num_items:
        return base
    table = rng.standard_normal((size + 1, int(base.metadata["embed_dim"])), dtype=np.float32)
    table /= np.linalg.norm(table, axis=1, keepdims=True)
    meta = dict(base.metadata, num_items=size)
    rec = Recommender(base.path, meta, base._encoder, table, None)
    rec.num_items = base.num_items  # histories are ids the encoder knows; the scored catalogue is `size`
    return rec


def bench(rec: Recommender, batch: int, iters: int, k: int, rng: np.random.Generator) -> dict:
    n = rec.max_len
    ids = rng.integers(1, rec.num_items + 1, size=(batch, n))
    ts = np.cumsum(rng.integers(1, 86400, size=(batch, n)), axis=1)
    for _ in range(2):
        rec.recommend(ids, ts, k=k)
    lat = []
    for _ in range(iters):
        t0 = time.perf_counter()
        rec.recommend(ids, ts, k=k)
        lat.append(time.perf_counter() - t0)
    lat_ms = np.asarray(lat) * 1e3
    return {"p50_ms": float(np.percentile(lat_ms, 50)), "p99_ms": float(np.percentile(lat_ms, 99)),
            "users_per_s": batch * iters / float(np.sum(lat))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", default="", help="artifact directory; default: a random recipe model")
    parser.add_argument("--recipe", default="hstu_beauty")
    parser.add_argument("--catalogues", default="12101,1000000")
    parser.add_argument("--batches", default="1,64")
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    sizes = [int(x) for x in args.catalogues.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.artifact) if args.artifact else _recipe_artifact(args.recipe, Path(tmp), sizes[0])
        base = Recommender.load(path)
        print(f"# {jax.default_backend()} ({platform.processor() or platform.machine()}, {jax.device_count()} "
              f"device(s)), jax {jax.__version__}; encoder max_len={base.max_len}, D={base.metadata['embed_dim']}, "
              f"{base.metadata.get('dataset')}; k={args.k}, {args.iters} timed calls")
        print(f"{'catalogue':>10} {'batch':>6} {'p50 ms':>9} {'p99 ms':>9} {'users/s':>10}")
        for size in sizes:
            rec = _with_catalogue(base, size, rng)
            for batch in (int(x) for x in args.batches.split(",")):
                r = bench(rec, batch, args.iters, args.k, rng)
                print(f"{size:>10} {batch:>6} {r['p50_ms']:>9.2f} {r['p99_ms']:>9.2f} {r['users_per_s']:>10.0f}",
                      flush=True)


if __name__ == "__main__":
    main()
