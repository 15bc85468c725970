"""The reconstruction worker: runs pipeline work in submission order, on its own thread or inline.

Two kinds of work go through one FIFO:

- **frames** (posed frames for the pipeline): they may wait in a bounded *backlog*. When a new frame
  finds ``maximum_backlog`` frames already waiting, the backlog policy decides what goes:

  - ``drop_oldest_keyframe``: the oldest waiting frame is dropped; the fragment under construction goes
    on with the newer frames.
  - ``skip_fragment``: every waiting frame is dropped and an ``abandon_fragment`` job is queued ahead of
    the new frame, so the keyframes collected so far are discarded and the new frame starts a fresh
    fragment.

  Either way no fragment is ever handed to the network half-built. The dropped frames are returned to
  the caller, who counts them.
- **jobs** (publishing, services, resets, parameter changes, statistics): never dropped, each with a
  :class:`concurrent.futures.Future` for its result.

``threaded=False`` runs everything inline, in the caller's thread, as soon as it is submitted: the same
code path, deterministic (bag replay, tests); the backlog then never holds more than the frame being
submitted. ``threaded=True`` runs a daemon thread, so the caller (the node's timer) returns at once and
TF and images keep flowing while a fragment is reconstructed.

The outcome of every frame (its result, or the exception it raised) is kept until the caller collects
it with :meth:`Worker.take_outcomes`; a failing frame or job never stops the worker.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

log = logging.getLogger("neuralrecon_ros")

#: values of the ``backlog_policy`` parameter
BACKLOG_POLICIES = ("drop_oldest_keyframe", "skip_fragment")

Item = TypeVar("Item")


class WorkerError(RuntimeError):
    """The worker was used wrongly (bad policy, closed, waited on from its own thread)."""


@dataclass
class Outcome(Generic[Item]):
    """What happened to one frame: ``value`` returned by ``run_frame``, or the ``error`` it raised."""

    item: Item
    value: Any = None
    error: BaseException | None = None


@dataclass
class _Task:
    item: Any = None  # a frame, or None for a job
    job: Callable[[], Any] | None = None
    future: Future | None = None
    name: str = ""


class Worker(Generic[Item]):
    """Runs ``run_frame(item)`` for submitted frames and arbitrary jobs, in order."""

    def __init__(
        self,
        run_frame: Callable[[Item], Any],
        abandon_fragment: Callable[[], Any],
        *,
        threaded: bool,
        maximum_backlog: int,
        policy: str,
        name: str = "neuralrecon-worker",
    ) -> None:
        self.run_frame = run_frame
        self.abandon_fragment = abandon_fragment
        self.threaded = threaded
        self.maximum_backlog = maximum_backlog
        self.policy = policy
        self._check_settings()
        #: how many times skip_fragment discarded the fragment under construction
        self.fragments_skipped = 0
        #: jobs that raised (their futures hold the exception; fire-and-forget jobs are also logged)
        self.job_errors = 0
        self._tasks: deque[_Task] = deque()
        self._frames_waiting = 0
        self._outcomes: list[Outcome[Item]] = []
        self._busy = False
        self._closed = False
        self._running_inline = False
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        if threaded:
            self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
            self._thread.start()

    def _check_settings(self) -> None:
        if self.policy not in BACKLOG_POLICIES:
            raise WorkerError(
                f"backlog policy must be one of {', '.join(BACKLOG_POLICIES)}, got {self.policy!r}")
        if self.maximum_backlog < 1:
            raise WorkerError(f"maximum backlog must be >= 1, got {self.maximum_backlog}")

    # --- submitting ---------------------------------------------------------------------------

    def configure(self, maximum_backlog: int | None = None, policy: str | None = None) -> None:
        """Change the backlog bound or policy (applies from the next submitted frame)."""
        with self._cond:
            old = (self.maximum_backlog, self.policy)
            if maximum_backlog is not None:
                self.maximum_backlog = maximum_backlog
            if policy is not None:
                self.policy = policy
            try:
                self._check_settings()
            except WorkerError:
                self.maximum_backlog, self.policy = old
                raise

    def submit_frame(self, item: Item) -> list[Item]:
        """Queue a frame; returns the waiting frames the backlog policy dropped to make room."""
        with self._cond:
            self._check_open()
            dropped: list[Item] = []
            if self._frames_waiting >= self.maximum_backlog:
                if self.policy == "drop_oldest_keyframe":
                    dropped = self._remove_frames(first_only=True)
                else:
                    dropped = self._remove_frames(first_only=False)
                    self.fragments_skipped += 1
                    skip = _Task(job=self.abandon_fragment, future=Future(), name="skip fragment")
                    self._tasks.append(skip)
            self._tasks.append(_Task(item=item))
            self._frames_waiting += 1
            self._cond.notify_all()
        self._run_inline()
        return dropped

    def submit_job(self, job: Callable[[], Any], name: str) -> Future:
        """Queue ``job`` behind everything submitted so far; its result (or exception) goes to the future."""
        future: Future = Future()
        with self._cond:
            self._check_open()
            self._tasks.append(_Task(job=job, future=future, name=name))
            self._cond.notify_all()
        self._run_inline()
        return future

    def call(self, job: Callable[[], Any], name: str, timeout_s: float | None = None) -> Any:
        """Run ``job`` in order after the queued work and return its result (raises what it raised)."""
        on_thread = self._thread is not None and threading.current_thread() is self._thread
        if on_thread or self._running_inline:
            raise WorkerError(f"'{name}' was called from inside the worker's own work; it would wait forever")
        return self.submit_job(job, name).result(timeout=timeout_s)

    def clear_frames(self) -> list[Item]:
        """Remove every waiting frame (not the one being processed); returns them."""
        with self._cond:
            dropped = self._remove_frames(first_only=False)
            self._cond.notify_all()
        return dropped

    def _remove_frames(self, first_only: bool) -> list[Item]:
        kept: deque[_Task] = deque()
        removed: list[Item] = []
        for task in self._tasks:
            if task.job is None and not (first_only and removed):
                removed.append(task.item)
            else:
                kept.append(task)
        self._tasks = kept
        self._frames_waiting -= len(removed)
        return removed

    def _check_open(self) -> None:
        if self._closed:
            raise WorkerError("the worker is closed")

    # --- state --------------------------------------------------------------------------------

    @property
    def backlog_length(self) -> int:
        """Frames waiting (not counting one being processed)."""
        with self._cond:
            return self._frames_waiting

    @property
    def idle(self) -> bool:
        with self._cond:
            return not self._tasks and not self._busy

    def take_outcomes(self) -> list[Outcome[Item]]:
        """The outcomes of the frames finished since the last call, in order."""
        with self._cond:
            outcomes, self._outcomes = self._outcomes, []
        return outcomes

    def wait_idle(self, timeout_s: float | None = None) -> bool:
        """Block until everything submitted has run; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._tasks and not self._busy, timeout=timeout_s)

    def close(self, timeout_s: float | None = None) -> None:
        """Finish what is queued, then stop the thread; later submissions raise WorkerError."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)

    # --- running ------------------------------------------------------------------------------

    def _next(self) -> _Task | None:
        """Pop the next task and mark the worker busy (call with the condition held)."""
        if not self._tasks:
            return None
        task = self._tasks.popleft()
        if task.job is None:
            self._frames_waiting -= 1
        self._busy = True
        return task

    def _run_inline(self) -> None:
        if self.threaded or self._running_inline:
            return  # the thread runs it; or a job submitted from a running job runs after it
        self._running_inline = True
        try:
            while True:
                with self._cond:
                    task = self._next()
                if task is None:
                    return
                self._run(task)
        finally:
            self._running_inline = False

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._tasks or self._closed)
                task = self._next()
                if task is None:  # closed and drained
                    return
            self._run(task)

    def _run(self, task: _Task) -> None:
        try:
            if task.job is None:
                outcome: Outcome[Item] = Outcome(task.item)
                try:
                    outcome.value = self.run_frame(task.item)
                except Exception as exc:  # one bad frame must not stop the worker
                    outcome.error = exc
                with self._cond:
                    self._outcomes.append(outcome)
            else:
                assert task.future is not None
                try:
                    task.future.set_result(task.job())
                except Exception as exc:
                    self.job_errors += 1
                    log.error("%s failed: %s: %s", task.name, type(exc).__name__, exc)
                    task.future.set_exception(exc)
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()
