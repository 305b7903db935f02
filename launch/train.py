"""Entry point: `lrm-train --config configs/hstu_beauty.py --workdir runs/x [--config.a.b=v ...]`.

The same command runs on one CPU, a GPU node, or every host of a cluster.
"""
from __future__ import annotations

import logging
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a get_config() file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for this run's config, logs, checkpoints, results.")


def _main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.getLogger().setLevel(logging.INFO)
    from lrm.training.train import train_and_evaluate  # after flag parsing: keeps --help fast

    train_and_evaluate(_CONFIG.value, _WORKDIR.value)


def main() -> None:
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(_main, argv=sys.argv)


if __name__ == "__main__":
    main()
