"""HSTU attention speed and memory: the fused Pallas kernels against the XLA reference.

  python -m bench.attention                      # L in {256, 1024, 4096, 8192} x H·d in {256, 1024}
  python -m bench.attention --quick              # L in {256, 1024}, H·d = 256
  python -m bench.attention --interpret --L 64 --hd 32 --tokens 128   # CPU smoke run of the kernels

Causal HSTU attention with the research model's relative bias (position + time tables; --no-bias drops
them) on full-length rows, bf16 by default. The batch is `--tokens // L` rows, so every row of the table
does about the same work per token and the device stays full. Each (impl, L, H·d) runs in its own
subprocess, so peak memory (`memory_stats()['peak_bytes_in_use']`) belongs to that configuration alone and
an out-of-memory failure (expected for the XLA reference at long L: it materialises B·H·L² scores) is a
table entry, not a crash.

TFLOP/s counts the matmuls of exact attention, FlashAttention-style: forward 4·B·H·L²·d (QKᵀ and AV),
forward+backward 3.5x that (QKᵀ recomputed, dV, dP, dQ, dK); causal counts half. The bias-gradient
kernel's extra recompute is overhead, not counted. Times are medians after compilation and warm-up.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

FULL_L = (256, 1024, 4096, 8192)
FULL_HD = (256, 1024)
QUICK_L = (256, 1024)
QUICK_HD = (256,)
INTERPRET_MAX_TOKENS = 1024  # interpret mode is a Python-speed emulator: smoke sizes only


def _attention_fn(impl: str, interpret: bool, blocks: list[int] | None):
    from lrm.kernels.hstu_attention import hstu_attention_reference, pallas_gpu, pallas_tpu
    from lrm.kernels.hstu_attention.blocks import GPUBlockSizes, TPUBlockSizes

    if impl == "xla":
        return hstu_attention_reference
    backend = jax.default_backend()
    if backend == "cpu" and not interpret:
        raise SystemExit("the Pallas kernels do not compile for CPU: run on GPU/TPU, or pass --interpret "
                         f"with at most {INTERPRET_MAX_TOKENS} tokens for a smoke run")
    module, sizes = (pallas_tpu, TPUBlockSizes) if backend == "tpu" else (pallas_gpu, GPUBlockSizes)
    block_sizes = None if blocks is None else sizes(*blocks)
    return lambda *a, **kw: module.hstu_attention(*a, **kw, block_sizes=block_sizes, interpret=interpret)


def _inputs(B: int, L: int, H: int, d: int, dtype, bias: bool):
    keys = jax.random.split(jax.random.key(0), 6)
    q, k, v = (0.5 * jax.random.normal(key, (B, L, H, d), dtype) for key in keys[:3])
    kw = dict(lengths_B=jnp.full((B,), L, jnp.int32), norm_len=L)
    tables = {}
    if bias:
        ts_BxL = jnp.cumsum(jax.random.randint(keys[3], (B, L), 0, 86_400), axis=1).astype(jnp.int32)
        kw.update(timestamps_BxL=ts_BxL, query_timestamps_BxL=ts_BxL)
        tables = dict(pos_bias_table=0.02 * jax.random.normal(keys[4], (2 * L - 1,), jnp.float32),
                      time_bias_table=0.02 * jax.random.normal(keys[5], (129,), jnp.float32))
    return (q, k, v), kw, tables


def _median_ms(fn, args, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e3


def run_one(a: argparse.Namespace) -> dict:
    """Time one (impl, L, H·d) in this process; returns the table row."""
    H, d = a.hd // a.head_dim, a.head_dim
    B = max(1, a.tokens // a.L)
    if a.interpret and B * a.L > INTERPRET_MAX_TOKENS:
        raise SystemExit(f"--interpret is for smoke runs: B·L = {B * a.L} > {INTERPRET_MAX_TOKENS} tokens")
    attn = _attention_fn(a.impl, a.interpret, a.blocks)
    (q, k, v), kw, tables = _inputs(B, a.L, H, d, jnp.dtype(a.dtype), a.bias)

    forward = jax.jit(lambda q, k, v, tables: attn(q, k, v, **kw, **tables))

    def loss(q, k, v, tables):
        return jnp.sum(attn(q, k, v, **kw, **tables).astype(jnp.float32))

    fwd_bwd = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)))
    row = dict(impl=a.impl, L=a.L, hd=a.hd, H=H, B=B)
    fwd_flops = 4 * B * H * a.L * a.L * d * 0.5  # causal: half of dense
    for name, fn, flops in (("fwd", forward, fwd_flops), ("fwd_bwd", fwd_bwd, 3.5 * fwd_flops)):
        ms = _median_ms(fn, (q, k, v, tables), a.warmup, a.iters)
        row[f"{name}_ms"] = ms
        row[f"{name}_tflops"] = flops / (ms * 1e-3) / 1e12
    stats = jax.devices()[0].memory_stats() or {}
    row["peak_mib"] = stats.get("peak_bytes_in_use", float("nan")) / 2**20
    return row


def _run_isolated(a: argparse.Namespace, impl: str, L: int, hd: int) -> dict:
    cmd = [sys.executable, "-m", "bench.attention", "--worker", "--impl", impl, "--L", str(L), "--hd", str(hd),
           "--head-dim", str(a.head_dim), "--tokens", str(a.tokens), "--dtype", a.dtype,
           "--warmup", str(a.warmup), "--iters", str(a.iters)]
    cmd += ["--interpret"] if a.interpret else []
    cmd += ["--no-bias"] if not a.bias else []
    cmd += ["--blocks", ",".join(map(str, a.blocks))] if a.blocks else []
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode == 0 and lines:
        return json.loads(lines[-1])
    error = (proc.stderr.strip().splitlines() or ["failed"])[-1]
    status = "OOM" if "RESOURCE_EXHAUSTED" in proc.stderr or "out of memory" in proc.stderr.lower() else "error"
    return dict(impl=impl, L=L, hd=hd, status=status, error=error[:120])


def _print_table(rows: list[dict], a: argparse.Namespace) -> None:
    print(f"\nHSTU attention, causal, {a.dtype}, head_dim {a.head_dim}, {a.tokens} tokens per batch, "
          f"bias={'pos+time' if a.bias else 'none'}, device: {jax.devices()[0].device_kind}")
    header = f"{'impl':7} {'L':>6} {'H·d':>5} {'H':>3} {'B':>5} {'fwd ms':>9} {'TFLOP/s':>8} " \
             f"{'fwd+bwd ms':>11} {'TFLOP/s':>8} {'peak MiB':>9}"
    print(header + "\n" + "-" * len(header))
    for r in rows:
        if "status" in r:
            print(f"{r['impl']:7} {r['L']:>6} {r['hd']:>5}  {r['status']}: {r['error']}")
            continue
        peak = "n/a" if np.isnan(r["peak_mib"]) else f"{r['peak_mib']:.1f}"  # CPU has no memory_stats
        print(f"{r['impl']:7} {r['L']:>6} {r['hd']:>5} {r['H']:>3} {r['B']:>5} {r['fwd_ms']:>9.3f} "
              f"{r['fwd_tflops']:>8.2f} {r['fwd_bwd_ms']:>11.3f} {r['fwd_bwd_tflops']:>8.2f} {peak:>9}")


def _int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--L", type=_int_list, default=None, help="comma-separated sequence lengths")
    p.add_argument("--hd", type=_int_list, default=None, help="comma-separated H·d (model width of attention)")
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--tokens", type=int, default=65536, help="tokens per batch (B = tokens // L)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--impls", default="pallas,xla")
    p.add_argument("--quick", action="store_true", help=f"L in {QUICK_L}, H·d in {QUICK_HD}")
    p.add_argument("--no-bias", dest="bias", action="store_false", help="no position/time bias tables")
    p.add_argument("--blocks", type=_int_list, default=None, help="block_q,block_k,block_q_bwd,block_k_bwd")
    p.add_argument("--interpret", action="store_true", help="Pallas interpret mode (CPU smoke runs)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--impl", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        a.L, a.hd = a.L[0], a.hd[0]
        print(json.dumps(run_one(a)))
        return
    lengths = a.L or (QUICK_L if a.quick else FULL_L)
    widths = a.hd or (QUICK_HD if a.quick else FULL_HD)
    for hd in widths:
        if hd % a.head_dim:
            raise SystemExit(f"H·d={hd} is not a multiple of --head-dim {a.head_dim}")
    rows = [_run_isolated(a, impl, L, hd) for hd in widths for L in lengths for impl in a.impls.split(",")]
    _print_table(rows, a)


if __name__ == "__main__":
    main()
