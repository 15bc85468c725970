"""Hypothesis profiles for the property-based (fuzz) tests.

``ci`` (the default) is deterministic: every run generates the same cases (``derandomize``), no example
database is written, and no per-example deadline applies (the machines are shared). Each fuzz test states
its number of cases with ``@settings(max_examples=...)``. ``explore`` draws fresh random cases on every run,
for hunting new defects locally: ``pytest --hypothesis-profile=explore test/io/test_fuzz_messages.py``.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

_COMMON = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow], "print_blob": True}
settings.register_profile("ci", derandomize=True, database=None, **_COMMON)
settings.register_profile("explore", **_COMMON)
settings.load_profile("ci")
