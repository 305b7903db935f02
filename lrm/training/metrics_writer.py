"""Run logs: metrics.jsonl (one JSON object per line) and TensorBoard, written by process 0 only."""
from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import numpy as np


def json_default(x):
    """`json.dumps(default=...)` for the numpy scalars and arrays that results and fits carry."""
    if isinstance(x, (np.integer, np.floating)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x)}")


class MetricsWriter:
    def __init__(self, workdir: str | Path, *, tensorboard: bool = True):
        self.enabled = jax.process_index() == 0
        self._jsonl = None
        self._tb = None
        if not self.enabled:
            return
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(workdir / "metrics.jsonl", "a", buffering=1)
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(workdir / "tensorboard"))

    def write(self, step: int, split: str, metrics: dict[str, float], *, final: bool = False) -> None:
        """One row; `final` marks the end-of-run test row, which a resumed run writes again."""
        if not self.enabled:
            return
        row = {"step": int(step), "split": split, "time": time.time(), **{k: float(v) for k, v in metrics.items()}}
        if final:
            row["final"] = True
        self._jsonl.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for k, v in metrics.items():
                self._tb.add_scalar(f"{split}/{k}", float(v), int(step))

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()


class Progress:
    """One line per log interval: step, loss, examples/s, tokens/s, ETA."""

    def __init__(self, total_steps: int, start_step: int = 0):
        self.total = total_steps
        self.start_step = start_step  # a resumed run: the rate counts the steps taken since this process began
        self.start = time.perf_counter()
        self.last = self.start
        self.examples = 0
        self.tokens = 0

    def add(self, examples: int, tokens: int) -> None:
        self.examples += examples
        self.tokens += tokens

    def line(self, step: int, loss: float) -> tuple[str, dict[str, float]]:
        now = time.perf_counter()
        dt = max(now - self.last, 1e-9)
        rates = {"examples_per_s": self.examples / dt, "tokens_per_s": self.tokens / dt}
        elapsed = now - self.start
        eta = elapsed / max(step - self.start_step, 1) * (self.total - step)
        self.last, self.examples, self.tokens = now, 0, 0
        text = (f"step {step}/{self.total} | loss {loss:.4f} | {rates['examples_per_s']:,.0f} ex/s | "
                f"{rates['tokens_per_s']:,.0f} tok/s | ETA {_hms(eta)}")
        return text, rates


def _hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
