"""The bag transport: drive :class:`NodeLogic` with a recorded bag, record what it publishes.

Messages are delivered in bag-time order; the bag's receive clock is the logic's clock
(``observe_clock(bag_time)`` before each message, its timer tick ``spin_once(bag_time)`` after it), so
the replay behaves like the live node fed at recording speed, only as fast as the machine allows.
``loops`` plays the bag that many times, like ``ros2 bag play --loop``: at each restart the clock
really goes back, which the logic handles as a time jump (``on_time_jump``). Everything the logic
publishes goes to ``output.mcap`` in the output directory, stamped (log time) with the replay time at
which it was published: the bag time, plus the bag's length (and a second) for every loop before, so
the output's log times never go back.

By default the reconstruction runs inline (deterministic: a replay gives the same result every time);
``threaded=True`` runs it on the worker thread as the live node does. The bag is then read as fast as
it can be, far faster than the pipeline runs, so frames are dropped by ``backlog_policy`` unless
``maximum_backlog_length`` is large (and services wait for the frames handed over before them).

Service calls can be scheduled at bag times (``service_calls``): a call at ``t`` runs after every
message with bag time ``<= t`` has been delivered and ticked, before the next one; calls after the
last message run after :meth:`NodeLogic.finish`. Their answers are in :attr:`ReplayResult.service_results`.

A damaged bag stops the replay at the damage: the error is logged and returned in
:attr:`ReplayResult.errors`, and everything mapped so far is kept.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..core.pipeline import ReconstructionPipeline
from ..io.bags import BagReader, BagReadError, BagTopicError, BagWriter
from ..io.interfaces import register_custom_types
from ..io.messages import RosbagsTypes, sec_to_ns
from .interface import SERVICES as NODE_SERVICES
from .interface import TF_STATIC_TOPIC, TF_TOPIC, image_topic_of, input_handlers, input_topics
from .logic import NodeLogic
from .outputs import OUTPUTS, output_topic_name
from .parameters import NodeParameters

__all__ = ["OUTPUT_BAG_NAME", "SERVICES", "ReplayResult", "ServiceCall", "ServiceCallError", "ServiceResult",
           "image_topic_of", "replay_bag"]  # image_topic_of: from .interface, kept importable here

log = logging.getLogger("neuralrecon_ros")

OUTPUT_BAG_NAME = "output.mcap"
#: services a replay can call, with how many arguments each takes
SERVICES = {service.name: int(service.takes_path) for service in NODE_SERVICES} | {"update_parameters": 1}


class ServiceCallError(ValueError):
    """A scheduled service call names no service or has the wrong arguments."""


@dataclass(frozen=True)
class ServiceCall:
    """A service call at bag time ``time_s`` (seconds, the bag's clock): ``service(*args)``."""

    time_s: float
    service: str
    args: tuple[Any, ...] = ()

    @classmethod
    def of(cls, spec: ServiceCall | Sequence[Any]) -> ServiceCall:
        """From ``(time_s, service, *args)``: ``(t, 'save_ply', '/tmp/mesh.ply')``, ``(t, 'reset')``."""
        if isinstance(spec, ServiceCall):
            call = spec
        else:
            if len(spec) < 2:
                raise ServiceCallError(f"service call {spec!r}: expected (time_s, service, *args)")
            call = cls(float(spec[0]), str(spec[1]), tuple(spec[2:]))
        if call.service not in SERVICES:
            raise ServiceCallError(f"service call {call.service!r}: no such service; expected one of "
                                   f"{', '.join(SERVICES)}")
        if len(call.args) != SERVICES[call.service]:
            raise ServiceCallError(f"service call {call.service!r} takes {SERVICES[call.service]} "
                                   f"argument(s), got {len(call.args)}")
        return call


@dataclass(frozen=True)
class ServiceResult:
    call: ServiceCall
    bag_time_s: float  # bag time of the last message delivered before the call
    success: bool
    message: str


@dataclass
class ReplayResult:
    counts: dict[str, int]  # pipeline counts: frames, keyframes, fragments
    dropped: dict[str, int]  # dropped messages by reason (node/logic.DROP_REASONS)
    received: dict[str, int]  # input messages by kind
    timings: dict[str, dict[str, float]]  # StageTimer summary (ms)
    output_bag: Path | None
    errors: list[str] = field(default_factory=list)  # e.g. the bag was damaged part-way
    messages_read: int = 0
    bag_duration_s: float = 0.0
    wall_time_s: float = 0.0
    meshes_published: int = 0
    time_jumps: int = 0
    fragments_skipped: int = 0
    published: dict[str, int] = field(default_factory=dict)  # messages per output key
    service_results: list[ServiceResult] = field(default_factory=list)


class MessageSink(Protocol):
    """Where a replay's messages go: the output bag (:class:`BagWriter`), a live view (``FoxgloveLiveView``)."""

    def add_topic(self, topic: str, msgtype: str, latched: bool = False) -> None: ...

    def write(self, topic: str, stamp_ns: int, msg: Any) -> None: ...


class _BagPublisher:
    """The logic's publisher: writes each message into the output bag (and the live view) at the replay time."""

    def __init__(self, writer: BagWriter, live: MessageSink | None = None) -> None:
        self.writer = writer
        self.sinks: list[MessageSink] = [writer] if live is None else [writer, live]
        self.types: RosbagsTypes = writer.types
        self.now_ns = 0
        self.topics = {output.key: output_topic_name(output.key) for output in OUTPUTS}
        self._lock = threading.Lock()  # the worker thread publishes too when the replay is threaded
        register_custom_types(writer.typestore)  # this package's messages (~/tsdf_layer)
        for sink in self.sinks:
            for output in OUTPUTS:
                sink.add_topic(self.topics[output.key], output.msgtype, latched=output.latched)

    def publish(self, topic_key: str, msg: Any) -> None:
        with self._lock:
            for sink in self.sinks:
                sink.write(self.topics[topic_key], self.now_ns, msg)


class _Pacer:
    """Holds the replay back to ``rate`` times the bag's own pace (None: as fast as it goes)."""

    def __init__(self, rate: float | None) -> None:
        if rate is not None and rate <= 0:
            raise ValueError(f"the replay rate must be positive, got {rate}")
        self.rate = rate
        self._start: tuple[float, int] | None = None  # (wall time, replay time ns) of the first message

    def wait_for(self, now_ns: int) -> None:
        if self.rate is None:
            return
        if self._start is None:
            self._start = (time.perf_counter(), now_ns)
            return
        wall, first_ns = self._start
        ahead = wall + (now_ns - first_ns) * 1e-9 / self.rate - time.perf_counter()
        if ahead > 0:
            time.sleep(ahead)


def _input_topics(reader: BagReader, params: NodeParameters, needs_depth: bool) -> dict[str, str]:
    """Bag topic -> input kind, checked against the bag (BagTopicError lists what the bag has)."""
    topics: dict[str, str] = {}
    for wanted in input_topics(params, needs_depth):
        if not wanted.sensor:  # TF: whichever of /tf and /tf_static the bag has
            if wanted.topic in reader.topics:
                reader.require(wanted.topic, wanted.accepted)
                topics[wanted.topic] = wanted.kind
            continue
        reader.require(wanted.topic, wanted.accepted, wanted.origin)
        topics[wanted.topic] = wanted.kind
    if params.pose_source == "tf" and not {TF_TOPIC, TF_STATIC_TOPIC} & topics.keys():
        raise BagTopicError(
            f"bag {reader.path} has neither {TF_TOPIC} nor {TF_STATIC_TOPIC}, so no camera pose can be "
            f"looked up (pose_source 'tf'); it has: {reader.describe_topics()}"
        )
    return topics


def _progress_bar(total: int | None, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total, unit="msg", desc="replay", disable=not (enabled and sys.stderr.isatty()), leave=False
    )


class _ServiceSchedule:
    """Scheduled service calls, run in time order against the logic."""

    def __init__(self, logic: NodeLogic, calls: Iterable[ServiceCall | Sequence[Any]]) -> None:
        self.logic = logic
        self.pending = sorted((ServiceCall.of(c) for c in calls), key=lambda c: c.time_s)
        self.results: list[ServiceResult] = []

    def run_until(self, time_ns: int | None, now_ns: int) -> None:
        """Run the calls due before bag time ``time_ns`` (None: all of them)."""
        while self.pending and (time_ns is None or sec_to_ns(self.pending[0].time_s) < time_ns):
            call = self.pending.pop(0)
            ok, message = getattr(self.logic, call.service)(*call.args)
            self.results.append(ServiceResult(call, now_ns * 1e-9, ok, message))


def replay_bag(
    bag_path: str | Path,
    output_dir: str | Path,
    params: NodeParameters,
    pipeline: ReconstructionPipeline,
    progress: bool = True,
    service_calls: Iterable[ServiceCall | Sequence[Any]] = (),
    threaded: bool = False,
    loops: int = 1,
    live: MessageSink | None = None,
    rate: float | None = None,
) -> ReplayResult:
    """Replay ``bag_path`` through the node logic into ``pipeline``; record outputs in ``output_dir``.

    ``service_calls``: ``(time_s, service, *args)`` tuples (see the module doc), ``time_s`` on the replay
    clock (the output bag's log time; the bag time in the first loop). Raises BagError
    (BagTopicError) before anything is mapped when the bag cannot be opened or lacks a configured
    topic, and ServiceCallError for a malformed call. ``output_dir/output.mcap`` is replaced if it exists.
    ``live``: a second sink (a live view) that gets the input messages and everything published, as the
    output bag does. ``rate``: replay at that multiple of the bag's own pace (1.0: as recorded) instead
    of as fast as the machine allows.
    """
    started = time.perf_counter()
    output_bag = Path(output_dir) / OUTPUT_BAG_NAME
    errors: list[str] = []
    calls = [ServiceCall.of(c) for c in service_calls]  # malformed calls fail before the replay starts
    if loops < 1:
        raise ValueError(f"loops must be at least 1, got {loops}")
    pacer = _Pacer(rate)
    with BagReader(bag_path) as reader:
        topics = _input_topics(reader, params, pipeline.needs_depth)
        total = loops * sum(reader.topics[t].count or 0 for t in topics) or None
        first_ns: int | None = None
        now_ns = 0  # replay clock: bag time + loop offset
        loop_offset_ns = 0
        read = 0
        with BagWriter(output_bag, overwrite=True) as writer:
            publisher = _BagPublisher(writer, live)
            if live is not None:  # the inputs too, so the view shows the camera image and TF
                for topic in topics:
                    live.add_topic(topic, reader.topics[topic].msgtype, latched=topic == TF_STATIC_TOPIC)
            logic = NodeLogic(params, pipeline, publisher, threaded=threaded)
            schedule = _ServiceSchedule(logic, calls)
            handlers = input_handlers(logic)
            try:
                with _progress_bar(total, progress) as bar:
                    try:
                        for _ in range(loops):
                            bag_ns = None
                            for message in reader.messages(topics):
                                bag_ns = message.stamp_ns
                                schedule.run_until(loop_offset_ns + bag_ns, now_ns)
                                now_ns = publisher.now_ns = loop_offset_ns + bag_ns
                                first_ns = bag_ns if first_ns is None else first_ns
                                pacer.wait_for(now_ns)
                                if live is not None:
                                    live.write(message.topic, now_ns, message.msg)
                                logic.observe_clock(bag_ns * 1e-9)
                                handlers[topics[message.topic]](message.msg)
                                logic.spin_once(bag_ns * 1e-9)
                                read += 1
                                bar.update()
                            if bag_ns is not None and first_ns is not None:
                                loop_offset_ns += bag_ns - first_ns + 1_000_000_000
                    except BagReadError as exc:
                        errors.append(str(exc))
                        log.error("%s; keeping what was mapped from the %d messages before it", exc, read)
                logic.finish()
                schedule.run_until(None, now_ns)
            finally:
                logic.close()
    status = logic.status()
    result = ReplayResult(
        counts=dict(pipeline.counts),
        dropped=dict(status["dropped"]),
        received=dict(status["received"]),
        timings=pipeline.timer.summary(),
        output_bag=output_bag,
        errors=errors,
        messages_read=read,
        bag_duration_s=(now_ns - first_ns) * 1e-9 if first_ns is not None else 0.0,
        wall_time_s=time.perf_counter() - started,
        meshes_published=logic.meshes_published,
        time_jumps=logic.time_jumps,
        fragments_skipped=status["fragments_skipped"],
        published=dict(status["published"]),
        service_results=schedule.results,
    )
    if result.dropped:
        by_reason = ", ".join(f"{k}={v}" for k, v in sorted(result.dropped.items()))
        log.info("dropped messages by reason: %s", by_reason)
    return result
