"""StageTimer: exact summaries against numpy on the same samples, and memory bounded on long runs."""

from __future__ import annotations

import numpy as np
import pytest

from neuralrecon_ros.core.timing import DEFAULT_WINDOW, StageTimer


def test_summary_matches_numpy_on_every_sample_of_a_short_run() -> None:
    rng = np.random.default_rng(0)
    samples = rng.uniform(1.0, 50.0, size=300)
    timer = StageTimer()
    for value in samples:
        timer.add("integrate", value)
    summary = timer.summary()["integrate"]
    assert summary["count"] == 300
    assert summary["total"] == pytest.approx(samples.sum(), rel=1e-12)
    assert summary["median"] == pytest.approx(np.median(samples), rel=1e-12)
    assert summary["p95"] == pytest.approx(np.percentile(samples, 95), rel=1e-12)
    assert timer.last("integrate") == samples[-1]


def test_long_run_holds_at_most_the_window_yet_counts_and_totals_every_sample() -> None:
    window = 100
    timer = StageTimer(window=window)
    values = np.arange(1, 10_001, dtype=np.float64)  # a long run: 100 x the window
    for value in values:
        timer.add("decode", value)
        timer.add("integrate", 2 * value)
    assert timer.num_samples_held() == 2 * window  # was 20,000 before the bound
    summary = timer.summary()
    assert summary["decode"]["count"] == 10_000
    assert summary["decode"]["total"] == values.sum()
    recent = values[-window:]  # quantiles describe the most recent window
    assert summary["decode"]["median"] == np.median(recent)
    assert summary["integrate"]["p95"] == np.percentile(2 * recent, 95)
    assert DEFAULT_WINDOW >= 1000  # a replay of a few minutes is summarised over all its frames


def test_discard_last_undoes_the_sample_in_count_total_and_quantiles() -> None:
    timer = StageTimer(window=4)
    for value in (1.0, 2.0, 3.0):
        timer.add("network", value)
    timer.add("network", 100.0)
    timer.discard_last("network")
    summary = timer.summary()["network"]
    assert (summary["count"], summary["total"], summary["median"]) == (3, 6.0, 2.0)
    for _ in range(3):
        timer.discard_last("network")
    assert "network" not in timer.summary() and timer.last("network") is None
    timer.discard_last("network")  # nothing left: no error


def test_stage_context_times_the_block_and_rejects_a_zero_window() -> None:
    timer = StageTimer()
    with timer.stage("mesh_update"):
        pass
    assert timer.summary()["mesh_update"]["count"] == 1 and timer.last("mesh_update") >= 0.0
    with pytest.raises(ValueError, match="window"):
        StageTimer(window=0)
