"""CPU threads for torch, chosen deliberately: how many, and an OpenMP wait policy that does not spin.

Robots run many processes on few cores. torch's defaults (one OpenMP thread per core, threads that
spin-wait between parallel regions) collapse when other processes want the same cores: every
parallel region waits for a thread the scheduler has put aside, and spinning threads burn the share
the others need. Measured (``bench/bench_load.py``, 2 cores, two busy-looping processes): depth fusion
of a 90-frame 640x480 bag went from ~1 s of integration alone to ~30 s with torch's defaults, and to
~2x with one thread, the fair share of half the CPU.

Two settings, applied in one place (:func:`apply_thread_settings`, called by the node's pipeline
factory, so the live node and ``replay`` both get them):

- the **thread count**, parameter ``num_threads`` (0 = :func:`automatic_thread_count`);
- the **OpenMP wait policy** ``OMP_WAIT_POLICY=PASSIVE`` (idle threads sleep instead of spinning).
  OpenMP reads it once, when torch loads its runtime, so :func:`prefer_passive_wait` runs when the
  ``neuralrecon_ros`` package is imported (its ``__init__``), before any module imports torch. A value
  the user exported is kept (``OMP_WAIT_POLICY=ACTIVE`` restores spinning); if torch was imported before
  ``neuralrecon_ros``, the policy cannot change any more and :attr:`ThreadSettings.wait_policy` says so.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass

log = logging.getLogger("neuralrecon_ros")

WAIT_POLICY_VARIABLE = "OMP_WAIT_POLICY"
PREFERRED_WAIT_POLICY = "PASSIVE"
#: NeuralRecon's sparse convolutions on CPU gain little beyond this many threads (and share the robot)
MAX_AUTOMATIC_NETWORK_THREADS = 4

#: what prefer_passive_wait() found: the policy in force for this process's OpenMP runtime
_wait_policy_state: str | None = None


def prefer_passive_wait() -> str:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` unless the user chose a policy; returns what is in force.

    Returns the policy OpenMP will use ('PASSIVE', the user's value) or, when torch was already imported
    (its OpenMP runtime has read its settings), 'unchanged (torch imported first)'.
    """
    global _wait_policy_state
    if _wait_policy_state is not None:
        return _wait_policy_state
    if "torch" in sys.modules:
        _wait_policy_state = os.environ.get(WAIT_POLICY_VARIABLE) or "unchanged (torch imported first)"
    else:
        _wait_policy_state = os.environ.setdefault(WAIT_POLICY_VARIABLE, PREFERRED_WAIT_POLICY)
    return _wait_policy_state


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity: taskset, cpusets), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


def automatic_thread_count(mode: str, device: str, cores: int | None = None) -> int:
    """The thread count ``num_threads = 0`` stands for.

    - depth fusion: 1. A frame is a few small tensor passes (a few ms at 640x480); a second thread
      saves little when the cores are free and costs a scheduler slice per parallel region when they
      are not.
    - NeuralRecon on CUDA: 1 (the host thread only feeds the GPU).
    - NeuralRecon on CPU: all available cores up to :data:`MAX_AUTOMATIC_NETWORK_THREADS`; its
      convolutions are large enough to gain from them.
    """
    if mode == "neuralrecon" and device != "cuda":
        return max(1, min(cores if cores is not None else available_cores(), MAX_AUTOMATIC_NETWORK_THREADS))
    return 1


@dataclass(frozen=True)
class ThreadSettings:
    """What :func:`apply_thread_settings` set."""

    num_threads: int  # torch intra-op threads now
    requested: int  # the parameter (0 = automatic)
    wait_policy: str  # OMP_WAIT_POLICY in force, see prefer_passive_wait()

    def describe(self) -> str:
        how = "automatic" if self.requested == 0 else "num_threads"
        return f"torch CPU threads: {self.num_threads} ({how}), OpenMP wait policy: {self.wait_policy}"


def apply_thread_settings(num_threads: int, mode: str, device: str) -> ThreadSettings:
    """Set torch's intra-op thread count (process-wide; threads started later, such as the node's
    reconstruction worker, take it on their first parallel operation)."""
    import torch

    if num_threads < 0:
        raise ValueError(f"num_threads must be >= 0 (0 = automatic), got {num_threads}")
    count = num_threads or automatic_thread_count(mode, device)
    torch.set_num_threads(count)
    settings = ThreadSettings(torch.get_num_threads(), num_threads, prefer_passive_wait())
    log.info("%s", settings.describe())
    return settings
