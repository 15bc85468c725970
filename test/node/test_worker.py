"""The reconstruction worker: order, backlog policies (deterministic, with a gated slow pipeline), errors."""

from __future__ import annotations

import threading

import pytest

from neuralrecon_ros.node.worker import Worker, WorkerError

TIMEOUT_S = 30.0


class GatedPipeline:
    """A pipeline stand-in whose frames take as long as the test says: each one waits for a release.

    ``started`` tells when a frame is being processed, so the test knows the worker is busy and
    submits the next frames into a backlog it controls exactly.
    """

    def __init__(self, gated: bool = True) -> None:
        self.gated = gated
        self.processed: list[int] = []
        self.abandoned = 0  # times the fragment under construction was discarded
        self.started = threading.Semaphore(0)
        self._release = threading.Semaphore(0)

    def process(self, frame: int) -> str:
        self.started.release()
        if self.gated:
            assert self._release.acquire(timeout=TIMEOUT_S), "the test never released the frame"
        if frame < 0:
            raise ValueError(f"bad frame {frame}")
        self.processed.append(frame)
        return f"done {frame}"

    def abandon_fragment(self) -> None:
        self.abandoned += 1

    def release(self, n: int = 1) -> None:
        for _ in range(n):
            self._release.release()

    def wait_started(self) -> None:
        assert self.started.acquire(timeout=TIMEOUT_S), "the worker never started a frame"


def make_worker(pipeline: GatedPipeline, threaded: bool = True, backlog: int = 3,
                policy: str = "drop_oldest_keyframe") -> Worker[int]:
    return Worker(pipeline.process, pipeline.abandon_fragment, threaded=threaded, maximum_backlog=backlog,
                  policy=policy)


def test_inline_worker_runs_frames_and_jobs_at_once_in_order():
    pipeline = GatedPipeline(gated=False)
    worker = make_worker(pipeline, threaded=False, backlog=1)
    order = []
    for frame in range(5):
        assert worker.submit_frame(frame) == []  # inline: never a backlog, so never a drop
        order.append(worker.submit_job(lambda f=frame: f"job after {f}", "job").result(timeout=0))
    assert pipeline.processed == [0, 1, 2, 3, 4] and order[-1] == "job after 4"
    outcomes = worker.take_outcomes()
    assert [(o.item, o.value, o.error) for o in outcomes] == [(f, f"done {f}", None) for f in range(5)]
    assert worker.take_outcomes() == [] and worker.idle and worker.backlog_length == 0


@pytest.mark.parametrize("threaded", [False, True])
def test_a_failing_frame_or_job_does_not_stop_the_worker(threaded):
    pipeline = GatedPipeline(gated=False)
    worker = make_worker(pipeline, threaded=threaded)
    worker.submit_frame(-1)
    failed = worker.submit_job(lambda: 1 / 0, "dividing")
    worker.submit_frame(2)
    assert worker.call(lambda: "still alive", "probe", timeout_s=TIMEOUT_S) == "still alive"
    with pytest.raises(ZeroDivisionError):
        failed.result(timeout=TIMEOUT_S)
    first, second = worker.take_outcomes()
    assert isinstance(first.error, ValueError) and str(first.error) == "bad frame -1"
    assert second.value == "done 2" and worker.job_errors == 1
    worker.close(timeout_s=TIMEOUT_S)


def test_drop_oldest_keyframe_drops_the_oldest_waiting_frame():
    pipeline = GatedPipeline()
    worker = make_worker(pipeline, backlog=3, policy="drop_oldest_keyframe")
    worker.submit_frame(0)
    pipeline.wait_started()  # frame 0 is being processed: the worker is busy from here on
    assert [worker.submit_frame(f) for f in (1, 2, 3)] == [[], [], []]
    assert worker.backlog_length == 3
    assert worker.submit_frame(4) == [1]  # the backlog is full: the oldest waiting frame goes
    assert worker.submit_frame(5) == [2]
    assert worker.backlog_length == 3 and worker.fragments_skipped == 0
    pipeline.release(4)
    assert worker.wait_idle(TIMEOUT_S)
    assert pipeline.processed == [0, 3, 4, 5] and pipeline.abandoned == 0
    worker.close(timeout_s=TIMEOUT_S)


def test_skip_fragment_drops_the_backlog_and_the_fragment_under_construction():
    pipeline = GatedPipeline()
    worker = make_worker(pipeline, backlog=2, policy="skip_fragment")
    order: list[str] = []
    worker.submit_frame(0)
    pipeline.wait_started()
    worker.submit_frame(1)
    worker.submit_job(lambda: order.append("job kept"), "job")  # jobs are never dropped
    worker.submit_frame(2)
    assert worker.submit_frame(3) == [1, 2]  # full: every waiting frame goes with its fragment ...
    assert worker.fragments_skipped == 1 and worker.backlog_length == 1
    pipeline.release(1)  # ... and the fragment is abandoned before frame 3 starts a new one
    pipeline.wait_started()
    assert order == ["job kept"] and pipeline.abandoned == 1 and pipeline.processed == [0]
    assert [worker.submit_frame(f) for f in (4, 5)] == [[], []]  # frame 3 is busy
    assert worker.submit_frame(6) == [4, 5] and worker.fragments_skipped == 2
    pipeline.release(2)
    assert worker.wait_idle(TIMEOUT_S)
    assert pipeline.processed == [0, 3, 6] and pipeline.abandoned == 2
    worker.close(timeout_s=TIMEOUT_S)


def test_clear_frames_keeps_jobs_and_the_frame_in_progress():
    pipeline = GatedPipeline()
    worker = make_worker(pipeline, backlog=10)
    ran = []
    worker.submit_frame(0)
    pipeline.wait_started()
    worker.submit_frame(1)
    worker.submit_job(lambda: ran.append("job"), "job")
    worker.submit_frame(2)
    assert worker.clear_frames() == [1, 2] and worker.backlog_length == 0
    pipeline.release(1)
    assert worker.wait_idle(TIMEOUT_S) and pipeline.processed == [0] and ran == ["job"]
    worker.close(timeout_s=TIMEOUT_S)


def test_settings_are_checked_and_can_change_between_frames():
    pipeline = GatedPipeline(gated=False)
    with pytest.raises(WorkerError, match="policy must be one of drop_oldest_keyframe, skip_fragment"):
        make_worker(pipeline, policy="newest")
    worker = make_worker(pipeline, threaded=False)
    with pytest.raises(WorkerError, match="maximum backlog must be >= 1"):
        worker.configure(maximum_backlog=0)
    assert worker.maximum_backlog == 3  # a rejected change changes nothing
    worker.configure(maximum_backlog=5, policy="skip_fragment")
    assert (worker.maximum_backlog, worker.policy) == (5, "skip_fragment")


def test_waiting_on_itself_is_refused_and_a_closed_worker_takes_nothing():
    pipeline = GatedPipeline(gated=False)
    worker = make_worker(pipeline, threaded=False)
    inner = worker.submit_job(lambda: worker.call(lambda: None, "inner"), "outer")
    with pytest.raises(WorkerError, match="'inner' was called from inside the worker's own work"):
        inner.result(timeout=0)
    worker.close()
    with pytest.raises(WorkerError, match="closed"):
        worker.submit_frame(1)
