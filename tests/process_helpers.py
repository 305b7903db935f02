"""Helpers for tests that drive subprocesses: wait for a marker line, start the HTTP server, POST JSON."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NO_LLVM_OPT = "--xla_backend_optimization_level=0"  # the suite's compile-time setting (tests/conftest.py)


def cpu_env(num_devices: int | None = None, *, optimized: bool = False, **extra: str) -> dict[str, str]:
    """This environment for a child on the CPU backend with `num_devices` fake devices (None: one), keeping the
    suite's other XLA_FLAGS (tests/conftest.py) so children compile like the test process does; `optimized`
    drops the suite's LLVM -O0 for a child whose run time, not its compile time, dominates."""
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count") and not (optimized and f == NO_LLVM_OPT)]
    if num_devices is not None:
        flags.append(f"--xla_force_host_platform_device_count={num_devices}")
    return {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": " ".join(flags), **extra}


def wait_for(proc: subprocess.Popen, marker: str, timeout: float = 120) -> str:
    """The first stdout line of `proc` that starts with `marker`; kills it and fails with its output if none."""
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if line.startswith(marker):
            return line
    proc.kill()
    raise AssertionError(f"no {marker!r} line; stdout: {''.join(seen)[-2000:]}\nstderr: {proc.stderr.read()[-3000:]}")


def start_server(artifact: Path) -> tuple[subprocess.Popen, int]:
    """`python -m lrm.serving.http` on a free port; (process, port) once it says it is serving."""
    proc = subprocess.Popen([sys.executable, "-m", "lrm.serving.http", "--artifact", str(artifact), "--port", "0"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line.startswith("serving"):
        proc.kill()
        raise AssertionError(proc.stderr.read()[-3000:] if proc.poll() is not None else line)
    return proc, int(line.rsplit(":", 1)[1])


def post(port: int, route: str, body: bytes) -> tuple[int, dict]:
    """(HTTP status, JSON reply) of a POST to the local server; 4xx/5xx replies are returned, not raised."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{route}", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
