"""The node's interface for both transports (rclpy live, bag replay): the topics it takes in by input
kind, the logic's handler of each kind, its services, and the mailbox between subscription callbacks
and the compute thread. (What it publishes: :data:`.outputs.OUTPUTS`.)
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .logic import NodeLogic
from .parameters import NodeParameters

TF_TOPIC = "/tf"
TF_STATIC_TOPIC = "/tf_static"
TF_TYPE = "tf2_msgs/msg/TFMessage"
IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE_TYPE = "sensor_msgs/msg/CompressedImage"
#: what an image topic of a bag may hold (the logic decodes both)
IMAGE_TYPES = (IMAGE_TYPE, COMPRESSED_IMAGE_TYPE)
#: kinds of input the mailbox bounds like the logic's frame queue
FRAME_KINDS = frozenset({"image", "depth"})


@dataclass(frozen=True)
class Service:
    name: str  # ~/<name>; the NodeLogic method of that name answers (success, message)
    srvtype: str
    takes_path: bool  # request: string path (SaveFile); else an empty request (Trigger)


SAVE_FILE_TYPE = "neuralrecon_ros_interfaces/srv/SaveFile"
TRIGGER_TYPE = "std_srvs/srv/Trigger"
SERVICES: tuple[Service, ...] = (
    Service("save_ply", SAVE_FILE_TYPE, True),
    Service("save_map", SAVE_FILE_TYPE, True),
    Service("load_map", SAVE_FILE_TYPE, True),
    Service("reset", TRIGGER_TYPE, False),
    Service("resend_tsdf_layer", TRIGGER_TYPE, False),
)


@dataclass(frozen=True)
class InputTopic:
    kind: str  # key of :func:`input_handlers`
    topic: str
    msgtype: str  # the type a live subscription takes
    accepted: tuple[str, ...]  # the types a recorded topic may have
    origin: str  # which parameters chose it (for messages)
    sensor: bool = True  # input_qos applies; False: TF, with tf2_ros's QoS


def image_topic_of(params: NodeParameters) -> str:
    """The colour topic as image_transport names it: ``<image_topic>/compressed`` for 'compressed'."""
    if params.image_transport == "compressed":
        return params.image_topic.rstrip("/") + "/compressed"
    return params.image_topic


def input_topics(params: NodeParameters, needs_depth: bool) -> list[InputTopic]:
    """Every topic the node takes in with these parameters (TF last)."""
    compressed = params.image_transport == "compressed"
    topics = [
        InputTopic("image", image_topic_of(params), COMPRESSED_IMAGE_TYPE if compressed else IMAGE_TYPE,
                   IMAGE_TYPES, f"image_topic, image_transport '{params.image_transport}'"),
        InputTopic("camera_info", params.camera_info_topic, "sensor_msgs/msg/CameraInfo",
                   ("sensor_msgs/msg/CameraInfo",), "camera_info_topic"),
    ]
    if needs_depth:
        topics.append(InputTopic("depth", params.depth_topic, IMAGE_TYPE, IMAGE_TYPES,
                                 f"depth_topic, needed by mode '{params.mode}'"))
    if params.pose_source == "odometry":
        topics.append(InputTopic("odometry", params.odometry_topic, "nav_msgs/msg/Odometry",
                                 ("nav_msgs/msg/Odometry",), "odometry_topic"))
    for kind, topic in (("tf", TF_TOPIC), ("tf_static", TF_STATIC_TOPIC)):
        topics.append(InputTopic(kind, topic, TF_TYPE, (TF_TYPE,), "TF", sensor=False))
    return topics


def input_handlers(logic: NodeLogic) -> dict[str, Callable[[Any], None]]:
    """The logic's handler for each input kind."""
    return {
        "image": logic.on_image,
        "camera_info": logic.on_camera_info,
        "depth": logic.on_depth,
        "odometry": logic.on_odometry,
        "tf": lambda msg: logic.on_tf(msg, static=False),
        "tf_static": lambda msg: logic.on_tf(msg, static=True),
    }


class InputMailbox:
    """Messages from subscription callbacks, handed to the compute thread in arrival order.

    Callbacks only :meth:`put` (cheap, never waits for the reconstruction), so TF and images keep
    arriving while the compute thread runs; the compute thread :meth:`drain` s the lot at its next
    tick. Kinds in ``bounded`` (images) keep at most ``max_per_kind`` waiting, dropping the oldest, as
    the node logic's own input queue does; everything together is capped at ``max_total`` (a stalled
    compute thread must not grow memory without bound). :meth:`take_dropped` hands the drops on.
    """

    def __init__(self, bounded: frozenset[str], max_per_kind: int, max_total: int = 100_000) -> None:
        if max_per_kind < 1 or max_total < max_per_kind:
            raise ValueError(f"bad mailbox bounds: max_per_kind={max_per_kind}, max_total={max_total}")
        self.bounded = bounded
        self.max_per_kind = max_per_kind
        self.max_total = max_total
        self.dropped: dict[str, int] = {}  # by kind, since the start
        self._new_drops: dict[str, int] = {}
        self._items: deque[tuple[str, Any]] = deque()
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def put(self, kind: str, msg: Any) -> None:
        with self._lock:
            if kind in self.bounded and self._counts.get(kind, 0) >= self.max_per_kind:
                self._drop_oldest(kind)
            elif len(self._items) >= self.max_total:
                self._drop_oldest(None)
            self._items.append((kind, msg))
            self._counts[kind] = self._counts.get(kind, 0) + 1

    def _drop_oldest(self, kind: str | None) -> None:
        for index, (item_kind, _) in enumerate(self._items):
            if kind is None or item_kind == kind:
                del self._items[index]
                self._counts[item_kind] -= 1
                self.dropped[item_kind] = self.dropped.get(item_kind, 0) + 1
                self._new_drops[item_kind] = self._new_drops.get(item_kind, 0) + 1
                return

    def drain(self) -> list[tuple[str, Any]]:
        with self._lock:
            items = list(self._items)
            self._items.clear()
            self._counts.clear()
        return items

    def take_dropped(self) -> dict[str, int]:
        """Drops by kind since the last call."""
        with self._lock:
            drops, self._new_drops = self._new_drops, {}
        return drops

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
