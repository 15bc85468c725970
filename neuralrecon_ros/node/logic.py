"""Transport-agnostic node logic: messages in, posed frames to the pipeline, mesh markers out.

A transport (rclpy live, or a bag replay) owns subscriptions, timers and publishers and calls:

- ``on_image`` / ``on_camera_info`` / ``on_depth`` / ``on_tf`` / ``on_odometry`` per message,
- ``spin_once(now)`` on its timer tick (a bag replay: after every message),
- ``finish()`` at the end.

Nothing here blocks. Images wait in a bounded, time-ordered queue until their camera_info (and
depth, when the mode needs it) with the same stamp (or within ``approximate_sync_tolerance_s``)
and their pose ``T_global_camera`` (TF lookup at the image stamp) are available. A frame waits at
most ``max_wait_for_pose_s`` of *message time* (the newest stamp seen on any input, so a bag whose
header stamps and recording clock differ behaves the same), then it is dropped. Frames reach the
pipeline strictly in stamp order.

Not thread-safe: a transport calls it from one thread (rclpy: a single-threaded executor or a lock).

Every dropped message is counted by reason (:data:`DROP_REASONS`) and logged once per reason on the
``neuralrecon_ros`` logger. Time going backwards by more than :data:`TIME_JUMP_BACK_S` (a looping
bag, a restarted simulation) clears the TF history, the queue and the fragment under construction;
the map is kept.
"""

from __future__ import annotations

import bisect
import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ..core.geometry import PoseError, check_rigid
from ..core.pipeline import ReconstructionPipeline
from ..core.tf_buffer import ConnectivityError, ExtrapolationError, TransformBuffer, TransformTreeError
from ..core.types import CameraIntrinsics, Frame
from ..io.messages import (
    COLOR_ENCODINGS,
    DEPTH_ENCODINGS,
    MessageError,
    MessageTypes,
    UnsupportedEncodingError,
    camera_info_has_distortion,
    decode_camera_info,
    decode_compressed_image,
    decode_image,
    encode_mesh_marker,
    header_stamp_ns,
    pose_to_matrix,
    stamp_to_ns,
    transform_to_matrix,
)
from .parameters import NODE_NAME, NodeParameters

log = logging.getLogger("neuralrecon_ros")

#: a stamp this much older than the newest one seen means time jumped back (not mere reordering)
TIME_JUMP_BACK_S = 1.0

#: why messages are dropped (the keys of :attr:`NodeLogic.dropped`)
DROP_REASONS: dict[str, str] = {
    "unsupported_encoding": "image or depth encoding that cannot be decoded",
    "bad_image": "malformed image message (size, step, corrupt compressed data)",
    "bad_camera_info": "camera_info rejected (uncalibrated K, bad size)",
    "no_camera_info": "no camera_info with the image's stamp arrived in time",
    "no_depth": "depth mode: no depth image with the image's stamp arrived in time",
    "size_mismatch": "image size differs from camera_info, or depth does not match the image",
    "tf_missing": "camera frame not connected to the global frame in TF in time",
    "tf_extrapolation": "image stamp outside the TF history (too old, or TF never caught up)",
    "invalid_pose": "looked-up pose is not a finite rigid transform",
    "invalid_transform": "TF/odometry transform rejected (NaN, zero quaternion, loop)",
    "queue_full": "more frames waiting than maximum_input_queue_length (oldest dropped)",
    "time_backwards": "image not newer than the last processed frame, or queued when time jumped back",
}


class Publisher(Protocol):
    """What the transport offers the logic: message classes and publishing by topic key."""

    types: MessageTypes

    def publish(self, topic_key: str, msg: Any) -> None: ...


@dataclass(frozen=True)
class OutputTopic:
    key: str
    msgtype: str
    latched: bool  # transient_local, so late subscribers (RViz) get the last message
    description: str


#: everything the logic publishes; a transport creates these publishers up front
OUTPUTS: tuple[OutputTopic, ...] = (
    OutputTopic(
        "mesh_marker", "visualization_msgs/msg/Marker", True, "the mesh in global_frame (TRIANGLE_LIST)"
    ),
)


def output_topic_name(key: str, node_name: str = NODE_NAME) -> str:
    """Absolute name of output ``key`` (the node's private ``~/key``)."""
    return f"/{node_name}/{key}"


@dataclass
class _PendingFrame:
    index: int
    stamp_ns: int
    image: Any  # sensor_msgs/Image or CompressedImage, decoded only when the frame is processed
    frame_id: str
    intrinsics: CameraIntrinsics | None = None
    depth: Any = None

    @property
    def stamp(self) -> float:
        return self.stamp_ns * 1e-9


def _is_compressed(msg: Any) -> bool:
    return hasattr(msg, "format")


class NodeLogic:
    """The reconstruction node without a transport."""

    def __init__(
        self,
        params: NodeParameters,
        pipeline: ReconstructionPipeline,
        publisher: Publisher,
        mesh_publish_period_s: float | None = None,
    ) -> None:
        """``mesh_publish_period_s``: None publishes the mesh after every fragment; a period publishes
        it at most that often (by the transport clock, ``spin_once(now)``) whenever the map changed."""
        self.params = params
        self.pipeline = pipeline
        self.publisher = publisher
        self.mesh_publish_period_s = mesh_publish_period_s
        self.needs_depth = bool(pipeline.needs_depth)
        self.tf = TransformBuffer(cache_time_s=max(10.0, 4.0 * params.max_wait_for_pose_s))
        self.dropped: Counter[str] = Counter()
        self.received: Counter[str] = Counter()
        self.frames_processed = 0
        self.meshes_published = 0
        self.time_jumps = 0
        self._queue: list[_PendingFrame] = []
        self._infos: dict[int, CameraIntrinsics] = {}
        self._depths: dict[int, Any] = {}
        self._clock: float | None = None  # newest message stamp seen (s)
        self._next_index = 0
        self._last_processed_ns: int | None = None
        self._last_frame_stamp = 0.0
        self._map_changed = False  # since the last mesh publication
        self._fragment_closed = False
        self._last_publish: float | None = None
        self._odometry_child: str | None = None
        self._last_info_ns: int | None = None
        self._warned: set[str] = set()

    # --- bookkeeping ------------------------------------------------------------------------

    def _drop(self, reason: str, detail: str) -> None:
        self.dropped[reason] += 1
        if reason not in self._warned:
            self._warned.add(reason)
            log.warning(
                "dropped (%s): %s [further '%s' drops are counted, not logged]", reason, detail, reason
            )
        else:
            log.debug("dropped (%s): %s", reason, detail)

    def _warn_once(self, key: str, message: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(message, *args)

    def _observe(self, stamp: float) -> None:
        """Advance message time; detect time jumping backwards."""
        if self._clock is not None and stamp < self._clock - TIME_JUMP_BACK_S:
            self._time_jumped_back(stamp)
        self._clock = stamp if self._clock is None else max(self._clock, stamp)

    def _time_jumped_back(self, stamp: float) -> None:
        self.time_jumps += 1
        log.warning(
            "time jumped back from %.3f to %.3f s (looping bag or restarted clock): clearing TF history, "
            "%d queued frame(s) and the fragment under construction; the map is kept",
            self._clock, stamp, len(self._queue),
        )
        for entry in self._queue:
            self._drop("time_backwards", f"frame at t={entry.stamp:.3f} queued when time jumped back")
        self._queue.clear()
        self._infos.clear()
        self._depths.clear()
        self.tf.clear(static=False)
        self.pipeline.fragments.drop_pending()
        self._clock = stamp
        self._last_processed_ns = None

    @property
    def queue_length(self) -> int:
        return len(self._queue)

    def status(self) -> dict[str, Any]:
        """Counters for diagnostics and summaries."""
        return {
            "received": dict(self.received),
            "frames_processed": self.frames_processed,
            "queued": len(self._queue),
            "dropped": dict(self.dropped),
            "meshes_published": self.meshes_published,
            "time_jumps": self.time_jumps,
            "message_time": self._clock,
        }

    # --- inputs -----------------------------------------------------------------------------

    def on_image(self, msg: Any) -> None:
        """A colour image (``sensor_msgs/Image`` or ``CompressedImage``)."""
        self.received["image"] += 1
        stamp_ns = header_stamp_ns(msg)
        self._observe(stamp_ns * 1e-9)
        index, self._next_index = self._next_index, self._next_index + 1
        if not _is_compressed(msg) and msg.encoding not in COLOR_ENCODINGS:
            self._drop(
                "unsupported_encoding",
                f"image {index} has encoding '{msg.encoding}'; expected one of {', '.join(COLOR_ENCODINGS)} "
                f"(is image_topic a depth or raw Bayer stream?)",
            )
            return
        if self._last_processed_ns is not None and stamp_ns <= self._last_processed_ns:
            self._drop(
                "time_backwards",
                f"image {index} at t={stamp_ns * 1e-9:.6f} is not newer than the last processed frame "
                f"(t={self._last_processed_ns * 1e-9:.6f})",
            )
            return
        entry = _PendingFrame(index, stamp_ns, msg, str(msg.header.frame_id))
        bisect.insort(self._queue, entry, key=lambda e: e.stamp_ns)
        while len(self._queue) > self.params.maximum_input_queue_length:
            oldest = self._queue.pop(0)
            self._drop(
                "queue_full",
                f"frame at t={oldest.stamp:.3f}: {len(self._queue)} frames waiting "
                f"(maximum_input_queue_length = {self.params.maximum_input_queue_length})",
            )

    def on_camera_info(self, msg: Any) -> None:
        # camera_info and depth do not advance message time: some drivers stamp camera_info with 0
        self.received["camera_info"] += 1
        stamp_ns = header_stamp_ns(msg)
        self._last_info_ns = stamp_ns
        try:
            intrinsics = decode_camera_info(msg)
        except MessageError as exc:
            self._drop("bad_camera_info", str(exc))
            return
        if camera_info_has_distortion(msg):
            self._warn_once(
                "distortion", "camera_info has non-zero distortion %s (%s); it is ignored: feed rectified "
                "images (image_rect) for best results", list(np.asarray(msg.d)), msg.distortion_model,
            )
        self._store(self._infos, stamp_ns, intrinsics)

    def on_depth(self, msg: Any) -> None:
        """A depth image registered to the colour image (used when the mode needs depth)."""
        self.received["depth"] += 1
        if not self.needs_depth:
            return
        stamp_ns = header_stamp_ns(msg)
        if not _is_compressed(msg) and msg.encoding not in DEPTH_ENCODINGS:
            self._drop(
                "unsupported_encoding",
                f"depth image has encoding '{msg.encoding}'; expected {' or '.join(DEPTH_ENCODINGS)}",
            )
            return
        self._store(self._depths, stamp_ns, msg)

    def _store(self, store: dict[int, Any], stamp_ns: int, value: Any) -> None:
        store[stamp_ns] = value
        limit = max(64, 2 * self.params.maximum_input_queue_length)
        while len(store) > limit:  # unmatched extras (e.g. camera_info faster than images)
            del store[min(store)]

    def on_tf(self, msg: Any, static: bool) -> None:
        """A ``tf2_msgs/TFMessage`` from /tf (``static=False``) or /tf_static."""
        self.received["tf_static" if static else "tf"] += 1
        for transform in msg.transforms:
            stamp = stamp_to_ns(transform.header.stamp) * 1e-9
            parent, child = str(transform.header.frame_id), str(transform.child_frame_id)
            if not static:
                if child.lstrip("/") == self._odometry_child:
                    continue  # pose_source 'odometry' owns this edge
                self._observe(stamp)
            self._set_transform(parent, child, transform.transform, stamp, static)

    def on_odometry(self, msg: Any) -> None:
        """A ``nav_msgs/Odometry``; used as the pose source when ``pose_source`` is 'odometry'."""
        self.received["odometry"] += 1
        if self.params.pose_source != "odometry":
            return
        stamp_ns = header_stamp_ns(msg)
        self._observe(stamp_ns * 1e-9)
        parent, child = str(msg.header.frame_id), str(msg.child_frame_id)
        self._odometry_child = child.lstrip("/")
        self._set_transform(parent, child, msg.pose.pose, stamp_ns * 1e-9, False)

    def _set_transform(self, parent: str, child: str, geometry: Any, stamp: float, static: bool) -> None:
        """Insert a geometry_msgs Transform or Pose as ``T_parent_child``; count it if rejected."""
        try:
            T = pose_to_matrix(geometry) if hasattr(geometry, "position") else transform_to_matrix(geometry)
            self.tf.set_transform(parent, child, T, stamp, static=static)
        except (PoseError, TransformTreeError) as exc:
            self._drop("invalid_transform", f"'{parent}' <- '{child}' at t={stamp:.6f}: {exc}")

    # --- processing -------------------------------------------------------------------------

    def spin_once(self, now: float) -> None:
        """Timer tick: pair, pose and process every frame that is ready; publish if due."""
        self._process_queue(final=False)
        self._prune_stores()
        self._maybe_publish(now)

    def finish(self) -> None:
        """End of input: process what can still be posed, drop the rest, publish the final mesh."""
        self._process_queue(final=True)
        if self._map_changed:
            self._publish_mesh()

    def _take(self, store: dict[int, Any], stamp_ns: int) -> Any:
        """Pop the entry for ``stamp_ns`` (or the nearest within the sync tolerance), else None."""
        if stamp_ns in store:
            return store.pop(stamp_ns)
        tolerance_ns = round(self.params.approximate_sync_tolerance_s * 1e9)
        if tolerance_ns <= 0 or not store:
            return None
        nearest = min(store, key=lambda s: abs(s - stamp_ns))
        return store.pop(nearest) if abs(nearest - stamp_ns) <= tolerance_ns else None

    def _prune_stores(self) -> None:
        if self._clock is None:
            return
        horizon = self._clock - self.params.max_wait_for_pose_s - self.params.approximate_sync_tolerance_s
        horizon_ns = int(horizon * 1e9)
        for store in (self._infos, self._depths):
            for stamp_ns in [s for s in store if s < horizon_ns]:
                del store[stamp_ns]

    def _process_queue(self, final: bool) -> None:
        global_frame = self.params.global_frame
        while self._queue:
            entry = self._queue[0]
            expired = final or (self._clock or 0.0) - entry.stamp > self.params.max_wait_for_pose_s
            if entry.intrinsics is None:
                entry.intrinsics = self._take(self._infos, entry.stamp_ns)
            if self.needs_depth and entry.depth is None:
                entry.depth = self._take(self._depths, entry.stamp_ns)
            missing = "camera_info" if entry.intrinsics is None else (
                "depth" if self.needs_depth and entry.depth is None else None
            )
            if missing is not None:
                if not expired:
                    return  # frames go to the pipeline in order: the head waits, so do the others
                self._queue.pop(0)
                self._drop(f"no_{missing}", self._unpaired_message(entry, missing))
                continue
            try:
                T_global_camera = self.tf.lookup(global_frame, entry.frame_id, entry.stamp)
            except ExtrapolationError as exc:
                if exc.future and not expired:
                    return
                self._queue.pop(0)
                self._drop("tf_extrapolation", f"pose of '{entry.frame_id}' in '{global_frame}': {exc}")
                continue
            except ConnectivityError as exc:
                if not expired:
                    return
                self._queue.pop(0)
                self._drop("tf_missing", f"pose of '{entry.frame_id}' in '{global_frame}' at "
                                         f"t={entry.stamp:.6f}: {exc}")
                continue
            self._queue.pop(0)
            self._process(entry, T_global_camera)

    def _unpaired_message(self, entry: _PendingFrame, missing: str) -> str:
        topic = self.params.camera_info_topic if missing == "camera_info" else self.params.depth_topic
        message = (
            f"frame at t={entry.stamp:.6f}: no {missing} with this stamp on '{topic}' within "
            f"{self.params.max_wait_for_pose_s} s"
        )
        if missing == "camera_info" and self._last_info_ns is not None:
            offset = (self._last_info_ns - entry.stamp_ns) * 1e-9
            message += (
                f" (the last camera_info was stamped {offset:+.6f} s from it; if the driver stamps them "
                f"differently, raise approximate_sync_tolerance_s)"
            )
        elif missing == "camera_info":
            message += " (no camera_info received at all: check camera_info_topic)"
        return message

    def _process(self, entry: _PendingFrame, T_global_camera: np.ndarray) -> None:
        what = f"frame {entry.index} (t={entry.stamp:.6f})"
        try:
            with self.pipeline.timer.stage("decode"):
                image = self._decode(entry.image)
                depth = self._decode(entry.depth) if entry.depth is not None else None
        except UnsupportedEncodingError as exc:
            self._drop("unsupported_encoding", f"{what}: {exc}")
            return
        except MessageError as exc:
            self._drop("bad_image", f"{what}: {exc}")
            return
        intrinsics = entry.intrinsics
        assert intrinsics is not None
        height, width = image.shape[:2]
        if (width, height) != (intrinsics.width, intrinsics.height):
            self._drop("size_mismatch", f"{what}: image is {width}x{height} but camera_info says "
                                        f"{intrinsics.width}x{intrinsics.height}")
            return
        if depth is not None and not self._depth_matches(depth, width, height, what):
            return
        try:
            pose_name = f"pose of '{entry.frame_id}' in '{self.params.global_frame}'"
            T_global_camera = check_rigid(T_global_camera, pose_name)
        except PoseError as exc:
            self._drop("invalid_pose", f"{what}: {exc}")
            return
        if self._last_processed_ns is not None and entry.stamp_ns <= self._last_processed_ns:
            self._drop("time_backwards", f"{what} is not newer than the last processed frame")
            return
        frame = Frame(entry.stamp, image, intrinsics, T_global_camera, depth, entry.frame_id, entry.index)
        result = self.pipeline.process(frame)
        self._last_processed_ns = entry.stamp_ns
        self._last_frame_stamp = entry.stamp
        self.frames_processed += 1
        if result.fragment is not None:
            self._fragment_closed = True
        if result.fragment is not None or (result.update is not None and not result.update.is_empty):
            self._map_changed = True

    def _decode(self, msg: Any) -> np.ndarray:
        return decode_compressed_image(msg) if _is_compressed(msg) else decode_image(msg)

    def _depth_matches(self, depth: np.ndarray, width: int, height: int, what: str) -> bool:
        """Depth must be (H, W) with the colour image's aspect ratio (registered; may be scaled)."""
        if depth.ndim != 2:
            self._drop("unsupported_encoding", f"{what}: the depth topic carries a colour image")
            return False
        dh, dw = depth.shape
        if abs(dw / dh - width / height) > 0.01 * width / height:
            self._drop(
                "size_mismatch", f"{what}: depth is {dw}x{dh}, not registered to the {width}x{height} image"
            )
            return False
        return True

    # --- outputs ----------------------------------------------------------------------------

    def _maybe_publish(self, now: float) -> None:
        if self.mesh_publish_period_s is None:
            if self._fragment_closed:
                self._publish_mesh()
        elif self._map_changed and (
            self._last_publish is None or now - self._last_publish >= self.mesh_publish_period_s
        ):
            self._publish_mesh()
            self._last_publish = now

    def _publish_mesh(self) -> None:
        mesh = self.pipeline.mesh()
        with self.pipeline.timer.stage("publish_mesh"):
            marker = encode_mesh_marker(
                self.publisher.types, mesh, self._last_frame_stamp, self.params.global_frame
            )
            self.publisher.publish("mesh_marker", marker)
        self.meshes_published += 1
        self._map_changed = self._fragment_closed = False
