"""Latency in rounds: one stall cannot move the median; a busy machine is flagged."""

from __future__ import annotations

import itertools

import pytest
import torch

from kdistill import measure


class FakeClock:
    """perf_counter that advances by the next duration (ms) at every second call (a pass)."""

    def __init__(self, durations_ms):
        self.durations = iter(durations_ms)
        self.now, self.calls = 0.0, 0

    def __call__(self):
        self.calls += 1
        if self.calls % 2 == 0:
            self.now += next(self.durations) / 1e3
        return self.now


def _time(monkeypatch, durations, **kw):
    monkeypatch.setattr(measure.time, "perf_counter", FakeClock(durations))
    return measure.latency_ms(torch.nn.Identity(), (4,), warmup=0, **kw)


def test_one_stall_does_not_move_the_median(monkeypatch):
    durations = [1.0] * 50
    durations[7] = 96.0  # the outlier that once went into results.json as the p50
    out = _time(monkeypatch, durations, repeats=50, rounds=5)
    assert out["p50"] == pytest.approx(1.0) and out["min"] == pytest.approx(1.0)
    assert not out["busy"] and out["spread_pct"] == 0.0 and out["repeats"] == 50


def test_a_busy_machine_is_retried_then_flagged(monkeypatch, caplog, recwarn):
    # every attempt: rounds alternating 1 ms and 3 ms (spread 200%)
    noisy = itertools.cycle([1.0] * 10 + [3.0] * 10)
    with caplog.at_level("WARNING", logger="kdistill.measure"):
        out = _time(monkeypatch, noisy, repeats=50, rounds=5, attempts=2)
    assert "machine was busy" in caplog.text and not recwarn.list  # a logged line, no Python warning
    assert out["busy"] and out["spread_pct"] > 100 * measure.BUSY_SPREAD
    # a steady second attempt is kept and not flagged
    steady = itertools.chain([1.0] * 10 + [3.0] * 10 + [1.0] * 30, itertools.repeat(2.0))
    out = _time(monkeypatch, steady, repeats=50, rounds=5, attempts=3)
    assert not out["busy"] and out["p50"] == pytest.approx(2.0)
