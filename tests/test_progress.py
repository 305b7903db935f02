"""The progress line's rates and ETA, including after a resume (the ETA counts only this process's steps)."""
import pytest

from lrm.training import metrics_writer
from lrm.training.metrics_writer import Progress


class _Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock(monkeypatch):
    c = _Clock()
    monkeypatch.setattr(metrics_writer.time, "perf_counter", c)
    return c


def test_fresh_run_eta_and_rates(clock):
    p = Progress(total_steps=100)
    p.add(examples=40, tokens=400)
    clock.t += 10.0  # 10 steps in 10 s -> 90 steps left take 90 s
    text, rates = p.line(10, 1.5)
    assert rates == {"examples_per_s": 4.0, "tokens_per_s": 40.0}
    assert text.endswith("ETA 1m30s")


def test_resumed_run_eta_counts_steps_since_resume(clock):
    p = Progress(total_steps=40_000, start_step=29_000)
    clock.t += 7.0  # 50 steps in 7 s since the resume -> 10,950 steps left take 1,533 s
    text, _ = p.line(29_050, 3.3)
    assert text.endswith("ETA 25m33s"), text
