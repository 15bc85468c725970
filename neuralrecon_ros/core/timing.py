"""Per-stage wall-clock timing with median / p95 / total summaries (for summary.json and diagnostics).

Memory is bounded: a node runs for days (30 frames/s is 2.6 M samples per stage a day), so each stage
keeps only its most recent :data:`DEFAULT_WINDOW` samples. ``count`` and ``total`` cover every sample
since the last :meth:`StageTimer.reset`; ``median`` and ``p95`` describe the recent window (all samples
of a run shorter than the window).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

#: samples per stage kept for median / p95 (about two minutes of frames at 30 Hz)
DEFAULT_WINDOW = 4096


@dataclass
class _Stage:
    recent: deque[float]
    count: int = 0
    total: float = 0.0


class StageTimer:
    """Collects durations per named stage; bounded memory (see the module doc)."""

    def __init__(self, window: int = DEFAULT_WINDOW) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1 sample, got {window}")
        self.window = int(window)
        self._stages: dict[str, _Stage] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, (time.perf_counter() - start) * 1000.0)

    def add(self, name: str, milliseconds: float) -> None:
        stage = self._stages.get(name)
        if stage is None:
            stage = self._stages[name] = _Stage(deque(maxlen=self.window))
        value = float(milliseconds)
        stage.recent.append(value)
        stage.count += 1
        stage.total += value

    def discard_last(self, name: str) -> None:
        """Drop the latest sample of a stage (the timed call turned out to do nothing)."""
        stage = self._stages.get(name)
        if stage is None or not stage.recent:
            return
        stage.total -= stage.recent.pop()
        stage.count -= 1
        if stage.count == 0:
            del self._stages[name]

    def last(self, name: str) -> float | None:
        stage = self._stages.get(name)
        return stage.recent[-1] if stage is not None and stage.recent else None

    def totals(self) -> dict[str, tuple[int, float]]:
        """``{stage: (count, total ms)}`` over every sample; cheap enough to call after every frame."""
        return {name: (stage.count, stage.total) for name, stage in self._stages.items()}

    def num_samples_held(self) -> int:
        """Samples held in memory over all stages (at most ``window`` per stage)."""
        return sum(len(stage.recent) for stage in self._stages.values())

    def summary(self) -> dict[str, dict[str, float]]:
        """``{stage: {"count", "median", "p95", "total"}}`` in milliseconds (median, p95: recent window)."""
        out = {}
        for name, stage in sorted(self._stages.items()):
            if not stage.recent:  # every sample in the window was discarded
                continue
            values = np.fromiter(stage.recent, dtype=np.float64, count=len(stage.recent))
            out[name] = {
                "count": stage.count,
                "median": float(np.median(values)),
                "p95": float(np.percentile(values, 95)),
                "total": float(stage.total),
            }
        return out

    def reset(self) -> None:
        self._stages.clear()
