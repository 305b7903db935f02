"""The suite is compile-bound on CPU (tiny models, many fresh `jax.jit`s), so two settings cut compile time,
for the xdist workers and for every process the tests start (they inherit the environment):

- One persistent XLA compilation cache per test session: most tests train, evaluate or export tiny models
  whose programs are identical from test to test. A fresh directory per session (removed at the end), so a
  run's time is that of a fresh machine and no entry outlives the code that compiled it. A
  JAX_COMPILATION_CACHE_DIR set by the caller is used as is.
- LLVM optimisation off (`--xla_backend_optimization_level=0`): about half the compile time. XLA's HLO passes
  (fusion, SPMD partitioning, layout) still run, so the programs tested are the ones that ship, compiled to
  slower machine code; float results can differ from an optimised build in the last bits, which no test's
  tolerance depends on. LRM_TEST_XLA_OPTIMIZE=1 runs the suite with XLA's default optimisation instead.
"""
from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile

from process_helpers import NO_LLVM_OPT

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    # Set before the xdist workers start (they inherit the environment), so all share one directory.
    _cache_dir = tempfile.mkdtemp(prefix="lrm-test-xla-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache_dir
    atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")  # tiny programs compile fast, but often

if os.environ.get("LRM_TEST_XLA_OPTIMIZE") != "1" and NO_LLVM_OPT not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {NO_LLVM_OPT}".strip()

if "jax" in sys.modules:  # a plugin imported jax before this file: its config has already read the environment
    import jax

    jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs",
                      float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))
