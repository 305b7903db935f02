"""Entry point: `lrm-export --workdir runs/x --output export/x` (also `python -m launch.export`).

Writes a serving artifact of the run's best parameters (see lrm/serving/export.py for its contents).
"""
from __future__ import annotations

import argparse
import logging

from lrm.serving.export import DEFAULT_NUM_CANDIDATES, export_artifact


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Export a trained run to a jax+numpy serving artifact.")
    parser.add_argument("--workdir", required=True, help="training workdir (config.json, best/, results.json)")
    parser.add_argument("--output", required=True, help="artifact directory to write")
    parser.add_argument("--platforms", default="", help="comma list (cpu,cuda,tpu); default: all that lower")
    parser.add_argument("--num_candidates", type=int, default=DEFAULT_NUM_CANDIDATES,
                        help="M: candidates per user that one call of the M-FALCON scoring function takes")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    platforms = tuple(p for p in args.platforms.split(",") if p) or None
    out = export_artifact(args.workdir, args.output, platforms=platforms, num_candidates=args.num_candidates)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
