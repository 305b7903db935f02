"""Synthetic-data generation speed: the per-user generator against the batched one, and `generate` with workers.

    python -m bench.synthetic_gen [--users 30000] [--plain_users 3000] [--workers 1,2] [--repeats 2]

Uses the hstu_synthetic_zipf process (4,096 personas). Times per user; the ratio is measured in the same run.
"""
from __future__ import annotations

import argparse
import dataclasses
import time

from data_pipeline.datasets import synthetic as sy
from scaling_studies.sweeps.hstu_synthetic_zipf import SYNTHETIC_ZIPF


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=30_000)
    p.add_argument("--plain_users", type=int, default=3_000)
    p.add_argument("--workers", default="1,2")
    p.add_argument("--repeats", type=int, default=2)
    a = p.parse_args(argv)
    cfg = dataclasses.replace(SYNTHETIC_ZIPF, num_users=a.users)
    t = time.perf_counter()
    proc = sy.build_process(cfg)
    print(f"build_process: {time.perf_counter() - t:.1f} s ({cfg.num_personas} personas)")
    print("| repeat | generate_user µs/user | generate_users µs/user | ratio |")
    print("|---|---|---|---|")
    for r in range(a.repeats):
        t = time.perf_counter()
        for u in range(a.plain_users):
            sy.generate_user(cfg, proc, u)
        plain = (time.perf_counter() - t) / a.plain_users * 1e6
        t = time.perf_counter()
        sy.generate_users(cfg, proc, list(range(a.users)))
        batched = (time.perf_counter() - t) / a.users * 1e6
        print(f"| {r} | {plain:.0f} | {batched:.0f} | {plain / batched:.2f} |")
    print()
    print("| workers | generate() s (incl. build_process) | µs/user |")
    print("|---|---|---|")
    for w in [int(x) for x in a.workers.split(",")]:
        t = time.perf_counter()
        sy.generate(cfg, workers=w)
        dt = time.perf_counter() - t
        print(f"| {w} | {dt:.1f} | {dt / a.users * 1e6:.0f} |")


if __name__ == "__main__":
    main()
