"""The bag transport: drive :class:`NodeLogic` with a recorded bag, record what it publishes.

Messages are delivered in bag-time order; after each one the logic's timer tick runs with the bag
clock (``spin_once(bag_time)``), so the replay behaves like the live node fed at recording speed,
only as fast as the machine allows. Everything the logic publishes goes to ``output.mcap`` in the
output directory, stamped with the bag time at which it was published.

A damaged bag stops the replay at the damage: the error is logged and returned in
:attr:`ReplayResult.errors`, and everything mapped so far is kept.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.pipeline import ReconstructionPipeline
from ..io.bags import BagReader, BagReadError, BagTopicError, BagWriter
from ..io.messages import RosbagsTypes
from .logic import OUTPUTS, NodeLogic, output_topic_name
from .parameters import NodeParameters

log = logging.getLogger("neuralrecon_ros")

OUTPUT_BAG_NAME = "output.mcap"
TF_TOPIC = "/tf"
TF_STATIC_TOPIC = "/tf_static"
IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
TF_TYPE = "tf2_msgs/msg/TFMessage"


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


class _BagPublisher:
    """The logic's publisher: writes each message into the output bag at the current bag time."""

    def __init__(self, writer: BagWriter) -> None:
        self.writer = writer
        self.types: RosbagsTypes = writer.types
        self.now_ns = 0
        self.topics = {output.key: output_topic_name(output.key) for output in OUTPUTS}
        for output in OUTPUTS:
            writer.add_topic(self.topics[output.key], output.msgtype, latched=output.latched)

    def publish(self, topic_key: str, msg: Any) -> None:
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


def replay_bag(
    bag_path: str | Path,
    output_dir: str | Path,
    params: NodeParameters,
    pipeline: ReconstructionPipeline,
    progress: bool = True,
    mesh_publish_period_s: float | None = None,
) -> ReplayResult:
    """Replay ``bag_path`` through the node logic into ``pipeline``; record outputs in ``output_dir``.

    Raises BagError (BagTopicError) before anything is mapped when the bag cannot be opened or
    lacks a configured topic. ``output_dir/output.mcap`` is replaced if it exists.
    """
    started = time.perf_counter()
    output_bag = Path(output_dir) / OUTPUT_BAG_NAME
    errors: list[str] = []
    with BagReader(bag_path) as reader:
        topics = _input_topics(reader, params, pipeline.needs_depth)
        total = sum(reader.topics[t].count or 0 for t in topics) or None
        first_ns: int | None = None
        now_ns = 0
        read = 0
        with BagWriter(output_bag, overwrite=True) as writer:
            publisher = _BagPublisher(writer)
            logic = NodeLogic(params, pipeline, publisher, mesh_publish_period_s=mesh_publish_period_s)
            handlers = {
                "image": logic.on_image,
                "camera_info": logic.on_camera_info,
                "depth": logic.on_depth,
                "odometry": logic.on_odometry,
                "tf": lambda msg: logic.on_tf(msg, static=False),
                "tf_static": lambda msg: logic.on_tf(msg, static=True),
            }
            with _progress_bar(total, progress) as bar:
                try:
                    for message in reader.messages(topics):
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
    )
    if result.dropped:
        by_reason = ", ".join(f"{k}={v}" for k, v in sorted(result.dropped.items()))
        log.info("dropped messages by reason: %s", by_reason)
    return result
