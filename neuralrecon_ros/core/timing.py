"""Per-stage wall-clock timing with median / p95 / total summaries (for summary.json and diagnostics)."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np


class StageTimer:
    """Collects durations per named stage."""

    def __init__(self) -> None:
        self._samples: dict[str, list[float]] = defaultdict(list)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self._samples[name].append((time.perf_counter() - start) * 1000.0)

    def add(self, name: str, milliseconds: float) -> None:
        self._samples[name].append(float(milliseconds))

    def discard_last(self, name: str) -> None:
        """Drop the latest sample of a stage (the timed call turned out to do nothing)."""
        samples = self._samples.get(name)
        if samples:
            samples.pop()
            if not samples:
                del self._samples[name]

    def last(self, name: str) -> float | None:
        samples = self._samples.get(name)
        return samples[-1] if samples else None

    def summary(self) -> dict[str, dict[str, float]]:
        """``{stage: {"count", "median", "p95", "total"}}`` in milliseconds."""
        out = {}
        for name, samples in sorted(self._samples.items()):
            values = np.asarray(samples)
            out[name] = {
                "count": len(values),
                "median": float(np.median(values)),
                "p95": float(np.percentile(values, 95)),
                "total": float(values.sum()),
            }
        return out

    def reset(self) -> None:
        self._samples.clear()
