"""Entry point: `lrm-train --config configs/hstu_beauty.py --workdir runs/x [--config.a.b=v ...]`.

The same command runs on one CPU, a GPU node, or every host of a cluster.
"""
from __future__ import annotations

import logging
import math
import os
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a get_config() file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for this run's config, logs, checkpoints, results.")


def _main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.getLogger().setLevel(logging.INFO)
    config = _CONFIG.value
    if config.get("compile_only", False):
        _fake_devices_for_compile_only(config)
    from lrm import sharding  # after flag parsing: keeps --help fast

    if sharding.initialize_distributed(config.distributed):
        import jax

        logging.info("process %d of %d, %d local / %d global devices", jax.process_index(), jax.process_count(),
                     jax.local_device_count(), jax.device_count())
        if jax.process_index() != 0:
            logging.getLogger().setLevel(logging.WARNING)  # process 0 alone logs progress
    from lrm.training.exit_codes import PREEMPTED
    from lrm.training.train import train_and_evaluate

    if train_and_evaluate(config, _WORKDIR.value).get("preempted"):
        sys.exit(PREEMPTED)  # not 0: a scheduler or sweep must not take a stopped run for a finished one


def _fake_devices_for_compile_only(config) -> None:
    """Compile for a mesh bigger than this machine: N fake CPU devices, N = the mesh's explicit size.

    Only when JAX_PLATFORMS is unset (set it, e.g. to `tpu` or `cuda`, to compile on the real backend) and
    every mesh size is explicit (no -1). Must run before jax is imported.
    """
    sizes = tuple(config.mesh.ici) + tuple(config.mesh.dcn)
    if "JAX_PLATFORMS" in os.environ or -1 in sizes:
        return
    if "jax" in sys.modules:
        raise RuntimeError("compile_only: jax was imported before the fake CPU devices could be set up")
    n = math.prod(sizes)
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={n}"
    logging.info("compile_only: compiling for %d fake CPU devices", n)


def main() -> None:
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(_main, argv=sys.argv)


if __name__ == "__main__":
    main()
