"""Training FLOPs done so far and the rate they are done at (model FLOP/s, MFU), per log interval.

The count is `lrm.flops`'s model convention: matmul FLOPs on real tokens, padding not counted, attention over
each user's own causal keys (`flops.train_n_eff` of the store's train rows). `tokens_seen` is this process's
count, so on several hosts the FLOP/s and MFU are per process, over its local devices.
"""
from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Iterator

import jax
import numpy as np

from lrm import flops


class MfuMeter:
    """Log-interval FLOP/s and MFU; time spent in `excluded()` blocks (evaluation) is not training time."""

    def __init__(self, model_cfg: Any, loss_cfg: Any, num_items: int, *, n_eff: float, device_kind: str,
                 num_devices: int, compute_dtype: str = "float32", matmul_precision: str | None = None,
                 start_tokens: int = 0, clock: Callable[[], float] = time.perf_counter):
        if num_devices < 1:
            raise ValueError(f"MfuMeter: num_devices must be >= 1, got {num_devices}")
        self._model_cfg, self._loss_cfg, self._num_items = model_cfg, loss_cfg, int(num_items)
        self.n_eff = float(n_eff)
        self.device_kind, self.num_devices = device_kind, int(num_devices)
        self.matmul_dtype = flops.matmul_dtype(compute_dtype, device_kind, matmul_precision)
        peak = flops.peak_flops(device_kind, self.matmul_dtype)
        self.peak_per_s = None if peak is None else peak * self.num_devices
        self._clock = clock
        self._last_time = clock()
        self._last_flops = self.flops(start_tokens)
        self._excluded_s = 0.0
        self.intervals: list[tuple[float, float]] = []  # (model FLOPs, training seconds) per log interval

    @classmethod
    def for_run(cls, config: Any, store: Any, *, start_tokens: int = 0) -> "MfuMeter":
        """A meter for a trainer config on this process's local devices."""
        device = jax.local_devices()[0]
        return cls(config.model, config.loss, store.num_items,
                   n_eff=flops.train_n_eff(store.lengths, store.protocol, config.data.max_len),
                   device_kind=device.device_kind, num_devices=jax.local_device_count(),
                   compute_dtype=config.model.get("dtype", "float32"),
                   matmul_precision=getattr(jax.config, "jax_default_matmul_precision", None),
                   start_tokens=start_tokens)

    def flops(self, tokens: int) -> float:
        """Model training FLOPs of `tokens` real tokens (every real token counted as a loss target)."""
        return flops.train_flops(self._model_cfg, self._loss_cfg, self._num_items, tokens=tokens, n_eff=self.n_eff)

    @contextlib.contextmanager
    def excluded(self, wait_for: Any = None) -> Iterator[None]:
        """Time inside is not training time. `wait_for` (e.g. the params) is blocked on first, so train steps
        still queued on the device are not mistaken for evaluation time."""
        if wait_for is not None:
            jax.block_until_ready(wait_for)
        t0 = self._clock()
        try:
            yield
        finally:
            self._excluded_s += self._clock() - t0

    def log(self, tokens_seen: int) -> dict[str, float]:
        """Closes a log interval: {"flops_seen", "model_flops_per_s"} and "mfu" where the peak is known (the
        metrics log holds numbers only; an unknown peak leaves the key out rather than inventing one)."""
        now = self._clock()
        seconds = max(now - self._last_time - self._excluded_s, 1e-9)
        total = self.flops(tokens_seen)
        done = total - self._last_flops
        self.intervals.append((done, seconds))
        self._last_time, self._last_flops, self._excluded_s = now, total, 0.0
        out = {"flops_seen": total, "model_flops_per_s": done / seconds}
        if self.peak_per_s is not None:
            out["mfu"] = done / seconds / self.peak_per_s
        return out

    def summary(self, tokens_seen: int) -> dict[str, Any]:
        """results.json entries. The means pool the log intervals after the first (which holds compilation);
        with a single interval, that one. None where nothing was timed or the peak is unknown."""
        timed = self.intervals[1:] if len(self.intervals) > 1 else self.intervals
        done, seconds = (float(np.sum([x[i] for x in timed])) for i in (0, 1)) if timed else (0.0, 0.0)
        rate = done / seconds if seconds > 0 else None
        return {
            "flops_seen": self.flops(tokens_seen),
            "model_flops_per_s": rate,
            "mfu": None if rate is None or self.peak_per_s is None else rate / self.peak_per_s,
            "flops_accounting": {
                "convention": "model FLOPs (training = 3 x forward, matmuls only) on real tokens; padding not "
                              "counted; attention over each user's own causal keys",
                "n_eff": self.n_eff, "flops_per_token": self.flops(1), "device_kind": self.device_kind,
                "num_devices": self.num_devices, "matmul_dtype": self.matmul_dtype, "peak_flops_per_s": self.peak_per_s,
                "timed_seconds": seconds, "timed_intervals": len(timed), "log_intervals": len(self.intervals)},
        }
