"""The bag transport: drive :class:`NodeLogic` with a recorded bag, record what it publishes.

Messages are delivered in bag-time order; after each one the logic's timer tick runs with the bag
clock (``spin_once(bag_time)``), so the replay behaves like the live node fed at recording speed,
only as fast as the machine allows. Everything the logic publishes goes to ``output.mcap`` in the
output directory, stamped (log time) with the bag time at which it was published.

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
from typing import Any

from ..core.pipeline import ReconstructionPipeline
from ..io.bags import BagReader, BagReadError, BagTopicError, BagWriter
from ..io.messages import RosbagsTypes, sec_to_ns
from .logic import NodeLogic
from .outputs import OUTPUTS, output_topic_name
from .parameters import NodeParameters

log = logging.getLogger("neuralrecon_ros")

OUTPUT_BAG_NAME = "output.mcap"
TF_TOPIC = "/tf"
TF_STATIC_TOPIC = "/tf_static"
IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
TF_TYPE = "tf2_msgs/msg/TFMessage"
#: services a replay can call, with how many arguments each takes
SERVICES = {"save_ply": 1, "save_map": 1, "load_map": 1, "reset": 0, "update_parameters": 1}


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


class _BagPublisher:
    """The logic's publisher: writes each message into the output bag at the current bag time."""

    def __init__(self, writer: BagWriter) -> None:
        self.writer = writer
        self.types: RosbagsTypes = writer.types
        self.now_ns = 0
        self.topics = {output.key: output_topic_name(output.key) for output in OUTPUTS}
        self._lock = threading.Lock()  # the worker thread publishes too when the replay is threaded
        for output in OUTPUTS:
            writer.add_topic(self.topics[output.key], output.msgtype, latched=output.latched)

    def publish(self, topic_key: str, msg: Any) -> None:
        with self._lock:
            self.writer.write(self.topics[topic_key], self.now_ns, msg)


def image_topic_of(params: NodeParameters) -> str:
    """The colour topic as image_transport names it: ``<image_topic>/compressed`` for 'compressed'."""
    if params.image_transport == "compressed":
        return params.image_topic.rstrip("/") + "/compressed"
    return params.image_topic


def _input_topics(reader: BagReader, params: NodeParameters, needs_depth: bool) -> dict[str, str]:
    """Bag topic -> input kind, checked against the bag (BagTopicError lists what the bag has)."""
    image_topic = image_topic_of(params)
    topics = {image_topic: "image", params.camera_info_topic: "camera_info"}
    reader.require(image_topic, IMAGE_TYPES, f"image_topic, image_transport '{params.image_transport}'")
    reader.require(params.camera_info_topic, "sensor_msgs/msg/CameraInfo", "camera_info_topic")
    if needs_depth:
        reader.require(params.depth_topic, IMAGE_TYPES, f"depth_topic, needed by mode '{params.mode}'")
        topics[params.depth_topic] = "depth"
    if params.pose_source == "odometry":
        reader.require(params.odometry_topic, "nav_msgs/msg/Odometry", "odometry_topic")
        topics[params.odometry_topic] = "odometry"
    tf_topics = [t for t in (TF_TOPIC, TF_STATIC_TOPIC) if t in reader.topics]
    if params.pose_source == "tf" and not tf_topics:
        raise BagTopicError(
            f"bag {reader.path} has neither {TF_TOPIC} nor {TF_STATIC_TOPIC}, so no camera pose can be "
            f"looked up (pose_source 'tf'); it has: {reader.describe_topics()}"
        )
    for topic in tf_topics:
        reader.require(topic, TF_TYPE)
        topics[topic] = "tf_static" if topic == TF_STATIC_TOPIC else "tf"
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
) -> ReplayResult:
    """Replay ``bag_path`` through the node logic into ``pipeline``; record outputs in ``output_dir``.

    ``service_calls``: ``(time_s, service, *args)`` tuples (see the module doc). Raises BagError
    (BagTopicError) before anything is mapped when the bag cannot be opened or lacks a configured
    topic, and ServiceCallError for a malformed call. ``output_dir/output.mcap`` is replaced if it exists.
    """
    started = time.perf_counter()
    output_bag = Path(output_dir) / OUTPUT_BAG_NAME
    errors: list[str] = []
    calls = [ServiceCall.of(c) for c in service_calls]  # malformed calls fail before the replay starts
    with BagReader(bag_path) as reader:
        topics = _input_topics(reader, params, pipeline.needs_depth)
        total = sum(reader.topics[t].count or 0 for t in topics) or None
        first_ns: int | None = None
        now_ns = 0
        read = 0
        with BagWriter(output_bag, overwrite=True) as writer:
            publisher = _BagPublisher(writer)
            logic = NodeLogic(params, pipeline, publisher, threaded=threaded)
            schedule = _ServiceSchedule(logic, calls)
            handlers = {
                "image": logic.on_image,
                "camera_info": logic.on_camera_info,
                "depth": logic.on_depth,
                "odometry": logic.on_odometry,
                "tf": lambda msg: logic.on_tf(msg, static=False),
                "tf_static": lambda msg: logic.on_tf(msg, static=True),
            }
            try:
                with _progress_bar(total, progress) as bar:
                    try:
                        for message in reader.messages(topics):
                            schedule.run_until(message.stamp_ns, now_ns)
                            now_ns = publisher.now_ns = message.stamp_ns
                            first_ns = now_ns if first_ns is None else first_ns
                            handlers[topics[message.topic]](message.msg)
                            logic.spin_once(now_ns * 1e-9)
                            read += 1
                            bar.update()
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
