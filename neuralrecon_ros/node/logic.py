"""Transport-agnostic node logic: messages in, posed frames to the reconstruction worker, outputs out.

A transport (rclpy live, or a bag replay) owns subscriptions, timers and publishers and calls:

- ``on_image`` / ``on_camera_info`` / ``on_depth`` / ``on_tf`` / ``on_odometry`` per message,
- ``spin_once(now)`` on its timer tick (a bag replay: after every message), ``now`` in seconds of the
  transport's clock,
- the services ``save_ply(path)``, ``save_map(path)``, ``load_map(path)``, ``reset()``,
  ``resend_tsdf_layer()`` and ``update_parameters(values)``, each returning ``(success, message)`` and never raising,
- ``finish()`` at the end of input and ``close()`` before it goes away.

Nothing here blocks on input. Images wait in a bounded, time-ordered queue until their camera_info (and
depth, when the mode needs it) with the same stamp (or within ``approximate_sync_tolerance_s``) and
their pose ``T_global_camera`` (TF lookup at the image stamp) are available. A frame waits at most
``max_wait_for_pose_s`` of *message time* (the newest stamp seen on any input, so a bag whose header
stamps and recording clock differ behaves the same), then it is dropped. Posed frames go to the
:class:`~.worker.Worker` strictly in stamp order; it decodes them and runs the pipeline, on its own
thread (``threaded=True``: the live node) or inline (the bag replay, tests). When it falls behind,
``backlog_policy`` decides what is dropped (never a half-built fragment). Map outputs are computed on
the worker too (:mod:`.outputs`); ``/diagnostics`` is published here (:mod:`.diagnostics`), rate-limited
on the transport clock so it also reports when no input arrives at all.

Calls into one NodeLogic come from one thread at a time (rclpy: the transport's lock); the worker is
the only other thread and touches only the pipeline and the map outputs.

Every dropped message is counted by reason (:data:`DROP_REASONS`) and logged once per reason on the
``neuralrecon_ros`` logger.

Time jumps are decided by the transport's clock, never by message stamps (as tf2 does): the transport
calls :meth:`NodeLogic.observe_clock` with its clock (live: the node's ROS clock, ``/clock`` under
``use_sim_time``; replay: the bag's receive clock) before it hands over what arrived, and ``spin_once``
does too. The clock going back by more than :data:`CLOCK_JUMP_BACK_S` (a looping bag, a restarted
simulator) drops what depends on time: the TF history, the queued and waiting frames and the fragment
under construction. The map is kept unless ``on_time_jump`` is 'clear_map'. A message whose header
stamp is older than what was already taken in while the clock moves on (a driver flushing its buffer, a
relay delivering late) is stale: it is dropped as ``stale_stamp`` and nothing else changes. No input
empties the map; ``reset()`` does.
"""

from __future__ import annotations

import bisect
import logging
import os
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.config import ParameterError, config_fields
from ..core.geometry import PoseError, check_rigid
from ..core.keyframes import KeyframeConfig
from ..core.mapping.config import DepthFusionConfig
from ..core.pipeline import FrameResult, ReconstructionPipeline
from ..core.tf_buffer import (
    ConnectivityError,
    ExtrapolationError,
    StaleTransformError,
    TransformBuffer,
    TransformLookupError,
    TransformTreeError,
)
from ..core.types import CameraIntrinsics, Frame
from ..io.map_file import MapFileError, load_map_into, save_map
from ..io.messages import (
    COLOR_ENCODINGS,
    DEPTH_ENCODINGS,
    MessageError,
    UnsupportedEncodingError,
    camera_info_has_distortion,
    decode_camera_info,
    decode_compressed_image,
    decode_image,
    header_stamp_ns,
    pose_to_matrix,
    sec_to_ns,
    stamp_to_ns,
    transform_to_matrix,
)
from ..io.ply import write_ply
from .diagnostics import DiagnosticsReporter, NodeSample, PipelineStats, gather_pipeline_stats
from .outputs import OUTPUTS, MapOutputs, Publisher, RateLimiter, output_topic_name
from .parameters import NODE_NAME, RUNTIME_PARAMETERS, NodeParameters
from .worker import Worker

__all__ = ["DROP_REASONS", "OUTPUTS", "RUNTIME_PARAMETERS", "NodeLogic", "Publisher", "output_topic_name"]

log = logging.getLogger("neuralrecon_ros")

#: the transport's clock going back by more than this is a time jump (smaller steps: clock jitter)
CLOCK_JUMP_BACK_S = 1.0
#: a header stamp further ahead of message time than this, beyond how far the clock moved since message time
#: last advanced, is refused (``future_stamp``): one corrupt stamp must not stall the node. Stamps that stay
#: that far ahead for FUTURE_STAMP_CONFIRM_S of clock are followed: the source's clock stepped forward.
FUTURE_STAMP_S = 10.0
FUTURE_STAMP_CONFIRM_S = 2.0
#: at most this many stale messages wait to see whether the clock jumps back after them (see _refuse)
HELD_STALE_LIMIT = 64

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
    "stale_stamp": "header stamp older than what was already taken in: an image, camera_info or depth not "
                   "newer than the last processed frame or with a stamp already taken in (re-delivered), "
                   "TF/odometry older than the kept TF history",
    "clock_jump": "frame waiting (queued or for the worker) when the clock jumped back",
    "future_stamp": "image, TF or odometry stamped far ahead of message time while the clock did not move that far",
    "backlog_full": "backlog_policy 'drop_oldest_keyframe': the oldest frame waiting for the worker",
    "backlog_skip": "backlog_policy 'skip_fragment': waiting frames, dropped with the fragment being built",
    "pipeline_error": "the reconstruction pipeline raised on the frame (logged)",
    "lost_in_transport": "lost by the middleware before it reached the node (best-effort input: large images "
                         "and too small a receive buffer; see docs/ros.md, QoS)",
}

#: kinds of input message (the keys of :attr:`NodeLogic.received`)
INPUT_KINDS = ("image", "camera_info", "depth", "odometry", "tf", "tf_static")


class FrameRejected(Exception):
    """The worker found a frame unusable (decoding, sizes); ``reason`` is a key of DROP_REASONS."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


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

    @property
    def what(self) -> str:
        return f"frame {self.index} (t={self.stamp:.6f})"


@dataclass
class _PosedFrame:
    """A frame handed to the worker: its messages, its pose, and where the map-clearing centre is."""

    entry: _PendingFrame
    T_global_camera: np.ndarray
    clearing_origin: np.ndarray | None = None  # global position of map_clearing_frame; None = the camera


def _is_compressed(msg: Any) -> bool:
    return hasattr(msg, "format")


def _decode(msg: Any) -> np.ndarray:
    return decode_compressed_image(msg) if _is_compressed(msg) else decode_image(msg)


class ServiceError(ValueError):
    """A service request is unusable as given (empty path, a directory, ...)."""


class NodeLogic:
    """The reconstruction node without a transport."""

    def __init__(
        self,
        params: NodeParameters,
        pipeline: ReconstructionPipeline,
        publisher: Publisher,
        threaded: bool = False,
    ) -> None:
        """``threaded``: run the pipeline on a worker thread (live); False runs it inline (deterministic)."""
        self.params = params
        self.pipeline = pipeline
        self.publisher = publisher
        self.needs_depth = bool(pipeline.needs_depth)
        self.tf = TransformBuffer(cache_time_s=self._tf_cache_time())
        self.dropped: Counter[str] = Counter()
        self.received: Counter[str] = Counter()
        self.frames_processed = 0
        self.time_jumps = 0
        self.outputs = MapOutputs(params, pipeline, publisher)
        self.worker: Worker[_PosedFrame] = Worker(
            self._run_frame, self._abandon_fragment, threaded=threaded,
            maximum_backlog=params.maximum_backlog_length, policy=params.backlog_policy,
        )
        self.diagnostics = DiagnosticsReporter(NODE_NAME)
        self.diagnostics_published = 0
        self._diagnostics_limiter = RateLimiter()
        self._stats: tuple[PipelineStats, dict[str, int], int] = (PipelineStats(), {}, 0)
        self._queue: list[_PendingFrame] = []
        self._infos: dict[int, CameraIntrinsics] = {}
        self._depths: dict[int, Any] = {}
        self._clock: float | None = None  # message time: the newest header stamp taken in (s)
        self._clock_advanced_at: float | None = None  # the transport's clock when message time last advanced
        self._future_since: float | None = None  # the transport's clock at the first of a run of future stamps
        self._now: float | None = None  # the transport's clock, as last observed (s)
        self._next_index = 0
        self._last_processed_ns: int | None = None  # newest stamp handed to the worker
        self._publish_pending = False
        self._stats_pending = False
        self._odometry_child: str | None = None
        self._last_info_ns: int | None = None
        self._warned: set[str] = set()
        # live: a steady clock (spin_once's ``steady``) carries the outputs' clock on while no input
        # advances message time, so the backlog and the final map still reach the topics
        self._steady: float | None = None
        self._steady_at_input: float | None = None  # steady time when message time last advanced
        self._clock_at_input: float | None = None
        #: stamps taken in per kind and not yet behind the last processed frame (finds re-deliveries)
        self._taken: dict[str, set[int]] = {"image": set(), "camera_info": set(), "depth": set()}
        #: (kind, message, clock at arrival, drop message) of stale camera messages and TF samples (kind 'tf',
        #: a TransformStamped) stamped over CLOCK_JUMP_BACK_S before the last processed frame: a new timeline?
        self._held: deque[tuple[str, Any, float, str]] = deque()

    def _tf_cache_time(self) -> float:
        return max(10.0, 4.0 * self.params.max_wait_for_pose_s)

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
        """Advance message time (the newest stamp taken in); stamps never signal a time jump."""
        if self._clock is None or stamp > self._clock:
            self._clock, self._clock_advanced_at = stamp, self._now

    def _future(self, what: str, stamp: float) -> str | None:
        """Why ``stamp`` is refused as running ahead of message time faster than the clock moves (None: it
        is not; a run of such stamps lasting FUTURE_STAMP_CONFIRM_S of clock is followed)."""
        clock, now, since = self._clock, self._now, self._clock_advanced_at
        if clock is None or now is None or since is None:
            return None
        moved = max(0.0, now - since)
        if stamp - clock - moved <= FUTURE_STAMP_S:
            self._future_since = None
            return None
        if self._future_since is None:
            self._future_since = now
        if now - self._future_since >= FUTURE_STAMP_CONFIRM_S:
            log.warning("stamps have run %.3f s ahead of message time for %.1f s of clock: following them (the "
                        "source's clock stepped forward)", stamp - clock, now - self._future_since)
            self._future_since = None
            return None
        return (f"{what} at t={stamp:.6f} is {stamp - clock:.3f} s ahead of message time (t={clock:.6f}) while the "
                f"clock moved {moved:.3f} s: a corrupt stamp (the map is unaffected; stamps that stay ahead for "
                f"{FUTURE_STAMP_CONFIRM_S:g} s are followed)")

    def _stale(self, kind: str, what: str, stamp_ns: int, tolerance_ns: int = 0) -> str | None:
        """Why a message can never be used: stamped no newer than the last frame handed to the worker, or
        with a stamp already taken in for its kind (re-delivered). None: it is new, and now taken in."""
        last = self._last_processed_ns
        if last is not None and stamp_ns <= last - tolerance_ns:
            return (f"{what} at t={stamp_ns * 1e-9:.6f} is {(last - stamp_ns) * 1e-9:.3f} s older than the last "
                    f"processed frame (t={last * 1e-9:.6f}) while the clock moves on: a late or re-delivered "
                    "message (the map is unaffected)")
        taken = self._taken[kind]
        if stamp_ns in taken:
            return (f"{what} at t={stamp_ns * 1e-9:.6f}: a {kind} with this stamp was already taken in "
                    "(a re-delivered message; the map is unaffected)")
        taken.add(stamp_ns)
        while len(taken) > self._store_limit():
            taken.remove(min(taken))
        return None

    def _forget_taken(self, before_ns: int) -> None:
        """Stamps up to ``before_ns`` need no record: the stamp rule or the pruning horizon covers them."""
        for kind, taken in self._taken.items():
            if taken and min(taken) <= before_ns:
                self._taken[kind] = {s for s in taken if s > before_ns}

    def observe_clock(self, now: float) -> None:
        """The transport's clock (s): its going back is a time jump. Call before handing over what arrived."""
        previous, self._now = self._now, now
        if previous is not None and now < previous - CLOCK_JUMP_BACK_S:
            self._time_jumped_back(previous, now)
        self._expire_held(final=False)

    def _refuse(self, kind: str, msg: Any, stamp_ns: int, reason: str) -> None:
        """Drop a stale image, camera_info or depth image as ``stale_stamp``.

        One stamped more than CLOCK_JUMP_BACK_S before the last processed frame may instead be the first
        of a new timeline whose clock jump has not reached the node yet (live, a looping player's data can
        arrive before its ``/clock``): it is held until the clock has moved on by CLOCK_JUMP_BACK_S, then
        dropped; a jump back within that time hands it over again, in the new timeline.
        """
        last = self._last_processed_ns
        if self._now is None or last is None or last - stamp_ns <= sec_to_ns(CLOCK_JUMP_BACK_S):
            self._drop("stale_stamp", reason)
            return
        self._held.append((kind, msg, self._now, reason))
        while len(self._held) > HELD_STALE_LIMIT:
            self._release(self._held.popleft())

    def _expire_held(self, final: bool) -> None:
        while self._held and (final or self._now is None or self._now - self._held[0][2] > CLOCK_JUMP_BACK_S):
            self._release(self._held.popleft())

    def _release(self, held: tuple[str, Any, float, str]) -> None:
        """No clock jump came: a held camera message is stale after all, a held TF sample is taken in now."""
        kind, msg, _, reason = held
        if kind == "tf":
            self._take_transform(msg)
        else:
            self._drop("stale_stamp", reason)

    def _time_jumped_back(self, previous: float, now: float) -> None:
        self.time_jumps += 1
        clear_map = self.params.on_time_jump == "clear_map"
        waiting = self.worker.clear_frames()
        log.warning(
            "clock jumped back from %.3f to %.3f s (looping bag or restarted simulator): dropping the TF history, "
            "%d queued and %d waiting frame(s) and the fragment under construction; %s (on_time_jump '%s')",
            previous, now, len(self._queue), len(waiting),
            "clearing the map" if clear_map else "the map is kept", self.params.on_time_jump,
        )
        for entry in [*self._queue, *(posed.entry for posed in waiting)]:
            self._drop("clock_jump", f"{entry.what} was waiting when the clock jumped back")
        self._queue.clear()
        self._infos.clear()
        self._depths.clear()
        for taken in self._taken.values():
            taken.clear()
        self.tf.clear(static=False)
        if clear_map:
            self.worker.submit_job(lambda: self._reset_map(now), "clear the map after the time jump")
        else:
            self.worker.submit_job(self._abandon_fragment, "drop the fragment after the time jump")
        self._clock = self._clock_advanced_at = self._future_since = None
        self._last_processed_ns = None
        held, self._held = list(self._held), deque()
        handlers = {"image": self.on_image, "camera_info": self.on_camera_info, "depth": self.on_depth}
        for kind, msg, _, reason in held:  # the new timeline's first messages, if they came before the jump
            if kind == "tf":
                self._take_transform(msg)
                continue
            if header_stamp_ns(msg) > sec_to_ns(now + CLOCK_JUMP_BACK_S):
                self._drop("stale_stamp", reason)
                continue
            self.received[kind] -= 1  # counted when it arrived
            handlers[kind](msg)

    @property
    def queue_length(self) -> int:
        return len(self._queue)

    @property
    def meshes_published(self) -> int:
        return self.outputs.published["mesh"]

    def status(self) -> dict[str, Any]:
        """Counters for summaries (diagnostics carry the same and more)."""
        self._collect()
        return {
            "received": dict(self.received),
            "frames_processed": self.frames_processed,
            "queued": len(self._queue),
            "backlog": self.worker.backlog_length,
            "dropped": dict(self.dropped),
            "fragments_skipped": self.worker.fragments_skipped,
            "published": {**self.outputs.published, "diagnostics": self.diagnostics_published},
            "publish_errors": self.outputs.errors,
            "time_jumps": self.time_jumps,
            "message_time": self._clock,
        }

    # --- inputs -----------------------------------------------------------------------------

    def on_image(self, msg: Any) -> None:
        """A colour image (``sensor_msgs/Image`` or ``CompressedImage``)."""
        self.received["image"] += 1
        stamp_ns = header_stamp_ns(msg)
        index, self._next_index = self._next_index, self._next_index + 1
        if (future := self._future(f"image {index}", stamp_ns * 1e-9)) is not None:
            self._drop("future_stamp", future)
            return
        self._observe(stamp_ns * 1e-9)
        if not _is_compressed(msg) and msg.encoding not in COLOR_ENCODINGS:
            self._drop(
                "unsupported_encoding",
                f"image {index} has encoding '{msg.encoding}'; expected one of {', '.join(COLOR_ENCODINGS)} "
                f"(is image_topic a depth or raw Bayer stream?)",
            )
            return
        if (stale := self._stale("image", f"image {index}", stamp_ns)) is not None:
            self._refuse("image", msg, stamp_ns, stale)
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
        if (stale := self._stale("camera_info", "camera_info", stamp_ns, self._sync_tolerance_ns())) is not None:
            self._refuse("camera_info", msg, stamp_ns, stale)
            return
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
        if (stale := self._stale("depth", "depth image", stamp_ns, self._sync_tolerance_ns())) is not None:
            self._refuse("depth", msg, stamp_ns, stale)
            return
        self._store(self._depths, stamp_ns, msg)

    def _sync_tolerance_ns(self) -> int:
        return round(self.params.approximate_sync_tolerance_s * 1e9)

    def _store_limit(self) -> int:
        return max(64, 2 * self.params.maximum_input_queue_length)

    def _store(self, store: dict[int, Any], stamp_ns: int, value: Any) -> None:
        store[stamp_ns] = value
        limit = self._store_limit()
        while len(store) > limit:  # unmatched extras (e.g. camera_info faster than images)
            del store[min(store)]

    def on_tf(self, msg: Any, static: bool) -> None:
        """A ``tf2_msgs/TFMessage`` from /tf (``static=False``) or /tf_static."""
        self.received["tf_static" if static else "tf"] += 1
        last = self._last_processed_ns
        for transform in msg.transforms:
            if static:
                self._take_transform(transform, static=True)
            elif (last is not None and self._now is not None
                  and last - stamp_to_ns(transform.header.stamp) > sec_to_ns(CLOCK_JUMP_BACK_S)):
                # as for camera messages (_refuse): it may be the new timeline's first pose, its clock jump
                # still to come (it would be lost with the TF history): held, then taken in either way
                self._held.append(("tf", transform, self._now, ""))
                while len(self._held) > HELD_STALE_LIMIT:
                    self._release(self._held.popleft())
            else:
                self._take_transform(transform)

    def _take_transform(self, transform: Any, static: bool = False) -> None:
        """One geometry_msgs/TransformStamped of a TFMessage into the TF buffer."""
        stamp = stamp_to_ns(transform.header.stamp) * 1e-9
        parent, child = str(transform.header.frame_id), str(transform.child_frame_id)
        if not static and child.lstrip("/") == self._odometry_child:
            return  # pose_source 'odometry' owns this edge
        if not static and (future := self._future(f"transform '{parent}' <- '{child}'", stamp)) is not None:
            self._drop("future_stamp", future)
            return
        # only an accepted transform advances message time: a rejected one must change nothing
        if self._set_transform(parent, child, transform.transform, stamp, static) and not static:
            self._observe(stamp)

    def on_odometry(self, msg: Any) -> None:
        """A ``nav_msgs/Odometry``; used as the pose source when ``pose_source`` is 'odometry'."""
        self.received["odometry"] += 1
        if self.params.pose_source != "odometry":
            return
        stamp_ns = header_stamp_ns(msg)
        parent, child = str(msg.header.frame_id), str(msg.child_frame_id)
        if (future := self._future(f"odometry '{parent}' <- '{child}'", stamp_ns * 1e-9)) is not None:
            self._drop("future_stamp", future)
            return
        if self._set_transform(parent, child, msg.pose.pose, stamp_ns * 1e-9, False):  # rejected: no effect
            self._observe(stamp_ns * 1e-9)
            self._odometry_child = child.lstrip("/")

    def _set_transform(self, parent: str, child: str, geometry: Any, stamp: float, static: bool) -> bool:
        """Insert a geometry_msgs Transform or Pose as ``T_parent_child``; False (counted) if rejected."""
        try:
            T = pose_to_matrix(geometry) if hasattr(geometry, "position") else transform_to_matrix(geometry)
            self.tf.set_transform(parent, child, T, stamp, static=static)
        except (PoseError, TransformTreeError) as exc:
            self._drop("invalid_transform", f"'{parent}' <- '{child}' at t={stamp:.6f}: {exc}")
            return False
        except StaleTransformError as exc:
            self._drop("stale_stamp", f"{exc} (a late or re-delivered message; the map is unaffected)")
            return False
        return True

    # --- processing -------------------------------------------------------------------------

    def spin_once(self, now: float, steady: float | None = None) -> None:
        """Timer tick: pair, pose and hand over every frame that is ready; publish what is due.

        ``steady`` (live transports): a monotonic clock (s). Output rates then go on with it while no
        input arrives (and /diagnostics follows it), so outputs never freeze when the input (or a
        simulated clock) stops. Without it, rates follow message time and the transport clock only.
        """
        self.observe_clock(now)
        self._collect()
        self._process_queue(final=False)
        self._prune_stores()
        if steady is not None:
            if self._clock != self._clock_at_input or self._steady_at_input is None:
                self._clock_at_input, self._steady_at_input = self._clock, steady
            self._steady = steady
        self._request_publication()
        self._collect()
        diagnostics_clock = now if steady is None else steady
        if self._diagnostics_limiter.due(diagnostics_clock, self.params.diagnostics_rate_hz):
            self._diagnostics_limiter.mark(diagnostics_clock)
            self._publish_diagnostics(now)

    def count_dropped(self, reason: str, count: int, detail: str) -> None:
        """Drops the transport saw before the logic did (lost in the middleware, its own mailbox full)."""
        for _ in range(count):
            self._drop(reason, detail)

    def _output_clock(self) -> float | None:
        """Message time, carried on by the steady clock since the last input advanced it (live only)."""
        clock, steady, since = self._clock, self._steady, self._steady_at_input
        if clock is None or steady is None or since is None:
            return clock
        return clock + max(0.0, steady - since)

    def finish(self) -> None:
        """End of input: process what can still be posed, drop the rest, publish the final state."""
        self._expire_held(final=True)
        self._process_queue(final=True)
        self.worker.wait_idle()
        self._collect()
        clock = self._clock
        if clock is not None:
            self.worker.call(lambda: self.outputs.publish_due(clock, final=True), "final publication")
        if self.params.diagnostics_rate_hz > 0 and self._now is not None:
            self._publish_diagnostics(self._now, fresh=True)

    def close(self) -> None:
        """Stop the worker (after what it has queued)."""
        self.worker.close()

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
        if self._queue:  # a queued frame's stamp must stay on record however old it is
            horizon_ns = min(horizon_ns, self._queue[0].stamp_ns)
        self._forget_taken(horizon_ns - 1)

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
            self._submit(entry, T_global_camera)

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

    def _submit(self, entry: _PendingFrame, T_global_camera: np.ndarray) -> None:
        """Check the pose and the order, then hand the frame to the worker (backlog policy applies)."""
        try:
            pose_name = f"pose of '{entry.frame_id}' in '{self.params.global_frame}'"
            T_global_camera = check_rigid(T_global_camera, pose_name)
        except PoseError as exc:
            self._drop("invalid_pose", f"{entry.what}: {exc}")
            return
        last = self._last_processed_ns
        if last is not None and entry.stamp_ns <= last:  # only out-of-order arrivals get here
            self._drop("stale_stamp", f"{entry.what} is not newer than the last processed frame "
                                      f"(t={last * 1e-9:.6f})")
            return
        posed = _PosedFrame(entry, T_global_camera, self._clearing_origin(entry))
        policy = self.worker.policy
        dropped = self.worker.submit_frame(posed)
        self._last_processed_ns = entry.stamp_ns
        self._forget_taken(entry.stamp_ns - self._sync_tolerance_ns())
        reason = "backlog_full" if policy == "drop_oldest_keyframe" else "backlog_skip"
        for old in dropped:
            self._drop(reason, f"{old.entry.what}: more than maximum_backlog_length = "
                               f"{self.worker.maximum_backlog} frames waiting for the reconstruction "
                               f"(backlog_policy '{policy}')")

    def _clearing_origin(self, entry: _PendingFrame) -> np.ndarray | None:
        """Global position of ``map_clearing_frame`` at the frame's stamp; None: the camera's (default)."""
        frame = getattr(self.params, "map_clearing_frame", "")
        if not frame:
            return None
        try:
            return self.tf.lookup(self.params.global_frame, frame, entry.stamp)[:3, 3].copy()
        except TransformLookupError as exc:
            self._warn_once("clearing_frame", "map_clearing_frame '%s' cannot be looked up (%s); the map is "
                            "bounded around the camera instead [logged once]", frame, exc)
            return None

    def _run_frame(self, posed: _PosedFrame) -> FrameResult:
        """Worker thread: decode, check sizes, run the pipeline, note what changed for the outputs."""
        entry = posed.entry
        what = entry.what
        try:
            with self.pipeline.timer.stage("decode"):
                image = _decode(entry.image)
                depth = _decode(entry.depth) if entry.depth is not None else None
        except UnsupportedEncodingError as exc:
            raise FrameRejected("unsupported_encoding", f"{what}: {exc}") from None
        except MessageError as exc:
            raise FrameRejected("bad_image", f"{what}: {exc}") from None
        intrinsics = entry.intrinsics
        assert intrinsics is not None
        height, width = image.shape[:2]
        if (width, height) != (intrinsics.width, intrinsics.height):
            raise FrameRejected("size_mismatch", f"{what}: image is {width}x{height} but camera_info says "
                                                 f"{intrinsics.width}x{intrinsics.height}")
        if depth is not None:
            _check_depth(depth, width, height, what)
        frame = Frame(entry.stamp, image, intrinsics, posed.T_global_camera, depth, entry.frame_id,
                      entry.index)
        self.pipeline.set_clearing_origin(posed.clearing_origin)
        try:
            result = self.pipeline.process(frame)
        except PoseError as exc:  # a finite pose the map cannot use (beyond its range): nothing was changed
            raise FrameRejected("invalid_pose", f"{what}: {exc}") from None
        self.outputs.note_frame(frame, result, entry.stamp_ns)
        return result

    def _abandon_fragment(self) -> None:
        """Worker thread: discard the keyframes of the fragment under construction."""
        dropped = self.pipeline.fragments.drop_pending()
        if dropped:
            log.info("discarded the %d keyframe(s) of the fragment under construction", dropped)

    def _reset_map(self, stamp: float | None) -> tuple[bool, str]:
        """Worker thread: clear the map, the fragment under construction and recurrent state."""
        blocks = self.pipeline.tsdf_map.num_blocks
        self.pipeline.reset()
        self.outputs.map_replaced(stamp)
        return True, f"map cleared ({blocks} blocks dropped)"

    def _collect(self) -> None:
        """Count the outcomes of the frames the worker finished."""
        for outcome in self.worker.take_outcomes():
            error = outcome.error
            if error is None:
                self.frames_processed += 1
            elif isinstance(error, FrameRejected):
                self._drop(error.reason, str(error))
            else:
                if "pipeline_error" not in self._warned:
                    log.error("%s failed in the pipeline", outcome.item.entry.what, exc_info=error)
                self._drop("pipeline_error", f"{outcome.item.entry.what}: {type(error).__name__}: {error}")

    # --- outputs ----------------------------------------------------------------------------

    def _request_publication(self) -> None:
        """Queue one publication check behind the frames handed over so far (coalesced)."""
        if self._publish_pending or self._clock is None:
            return
        self._publish_pending = True
        self.worker.submit_job(self._publish_job, "publishing the map outputs")

    def _publish_job(self) -> None:
        self._publish_pending = False
        clock = self._output_clock()
        if clock is not None:
            self.outputs.publish_due(clock)

    def _refresh_stats(self) -> None:
        """Worker thread: snapshot the pipeline's statistics for the next diagnostics."""
        self._stats_pending = False
        stats = gather_pipeline_stats(self.pipeline)
        self._stats = (stats, dict(self.outputs.published), self.outputs.errors)

    def _publish_diagnostics(self, now: float, fresh: bool = False) -> None:
        """Publish /diagnostics; the pipeline's statistics come from the worker, which (threaded) may
        still be busy: then the snapshot of the last report is used, unless ``fresh`` waits for it."""
        if fresh:
            self.worker.call(self._refresh_stats, "statistics")
        elif not self._stats_pending:
            self._stats_pending = True
            self.worker.submit_job(self._refresh_stats, "statistics")
        self._collect()
        stats, published, publish_errors = self._stats
        sample = NodeSample(
            now=now,
            received={kind: self.received.get(kind, 0) for kind in INPUT_KINDS},
            frames_processed=self.frames_processed,
            queue_length=len(self._queue),
            backlog_length=self.worker.backlog_length,
            dropped={reason: self.dropped.get(reason, 0) for reason in DROP_REASONS},
            time_jumps=self.time_jumps,
            fragments_skipped=self.worker.fragments_skipped,
            published={out.key: published.get(out.key, 0) for out in OUTPUTS} | {
                "diagnostics": self.diagnostics_published},
            publish_errors=publish_errors,
            pipeline=stats,
            image_topic=self.params.image_topic,
        )
        self.publisher.publish("diagnostics", self.diagnostics.message(self.publisher.types, sample))
        self.diagnostics_published += 1

    # --- services ---------------------------------------------------------------------------

    def save_ply(self, path: str) -> tuple[bool, str]:
        """Write the current mesh (global frame) to ``path`` as binary PLY."""

        def job(target: Path) -> tuple[bool, str]:
            mesh = self.pipeline.mesh()
            if mesh.is_empty:
                return False, f"nothing written to {target}: the mesh is empty (no map yet, or it was reset)"
            write_ply(target, mesh)
            return True, f"wrote {len(mesh.faces)} triangles, {len(mesh.vertices)} vertices to {target}"

        return self._file_service("save_ply", path, job, writes=True)

    def save_map(self, path: str) -> tuple[bool, str]:
        """Write the whole map (geometry, TSDF, weights, colours, recurrent state) to ``path``."""

        def job(target: Path) -> tuple[bool, str]:
            save_map(target, self.pipeline, frame_id=self.params.global_frame)
            return True, f"saved {self.pipeline.tsdf_map.num_blocks} blocks to {target}"

        return self._file_service("save_map", path, job, writes=True)

    def load_map(self, path: str) -> tuple[bool, str]:
        """Replace the map with the one in ``path``; on any error the current map is kept."""

        def job(target: Path) -> tuple[bool, str]:
            snapshot = load_map_into(self.pipeline, target, frame_id=self.params.global_frame)
            self.outputs.map_replaced(self._clock)
            return True, f"loaded {snapshot.num_blocks} blocks from {target}"

        return self._file_service("load_map", path, job, writes=False)

    def reset(self) -> tuple[bool, str]:
        """Clear the map, the fragment under construction and the network's recurrent state."""
        return self._service("reset", lambda: self._reset_map(self._clock))

    def resend_tsdf_layer(self) -> tuple[bool, str]:
        """Publish every map block on ~/tsdf_layer now (for a late joiner or a replica that lost a message)."""
        return self._service("resend_tsdf_layer", lambda: self.outputs.resend_tsdf_layer(self._clock))

    def _file_service(self, name: str, path: str, job: Callable[[Path], tuple[bool, str]],
                      writes: bool) -> tuple[bool, str]:
        try:
            target = self.resolve_path(path)
            if target.is_dir():
                raise ServiceError(f"{target} is a directory; give a file path")
            if writes:
                target.parent.mkdir(parents=True, exist_ok=True)
        except (ServiceError, OSError) as exc:
            return False, f"{name}: {exc}"
        return self._service(name, lambda: job(target))

    def _service(self, name: str, job: Callable[[], tuple[bool, str]]) -> tuple[bool, str]:
        """Run ``job`` on the worker, in order after the frames handed over so far; errors become messages."""

        def guarded() -> tuple[bool, str]:
            try:
                return job()
            except (MapFileError, ServiceError) as exc:
                return False, str(exc)
            except Exception as exc:  # a failed save/load answers the caller and keeps the map
                return False, f"{name} failed: {type(exc).__name__}: {exc}"

        ok, message = self.worker.call(guarded, f"~/{name}")
        self._collect()
        (log.info if ok else log.error)("~/%s: %s", name, message)
        return ok, message

    def resolve_path(self, path: str) -> Path:
        """``path`` with ``~`` expanded; a relative one is taken from ``output_directory`` (or the cwd)."""
        text = str(path).strip()
        if not text:
            raise ServiceError("the path is empty; give a file path")
        target = Path(os.path.expanduser(text))
        if not target.is_absolute():
            base = self.params.output_directory.strip()
            target = (Path(os.path.expanduser(base)) if base else Path.cwd()) / target
        return target

    def update_parameters(self, values: dict[str, Any]) -> tuple[bool, str]:
        """Change runtime parameters (:data:`RUNTIME_PARAMETERS`); all or nothing."""
        if not values:
            return True, "nothing to change"
        trial = NodeParameters(self.params.as_dict())
        try:
            trial.update(values)
        except ParameterError as exc:
            return False, str(exc)
        fixed = sorted(set(values) - RUNTIME_PARAMETERS)
        if fixed:
            return False, (f"cannot change {', '.join(fixed)} while the node runs (read at start-up only): "
                           "set it in the parameter file and restart")
        if trial.occupancy_min_height_m > trial.occupancy_max_height_m:
            return False, (f"occupancy_min_height_m ({trial.occupancy_min_height_m}) must not exceed "
                           f"occupancy_max_height_m ({trial.occupancy_max_height_m})")
        self.worker.configure(maximum_backlog=trial.maximum_backlog_length, policy=trial.backlog_policy)
        self.params.update(values)
        self.tf.cache_time_s = self._tf_cache_time()
        # the pipeline's component configs are the objects its parts read on every frame
        for config, group in ((self.pipeline.fragments.config, KeyframeConfig),
                              (getattr(self.pipeline.reconstructor, "config", None), DepthFusionConfig)):
            if isinstance(config, group):
                for name in values.keys() & {f.name for f in config_fields(group)}:
                    setattr(config, name, getattr(self.params, name))
        changed = ", ".join(f"{name}={getattr(self.params, name)!r}" for name in sorted(values))
        log.info("parameters changed: %s", changed)
        return True, f"set {changed}"


def _check_depth(depth: np.ndarray, width: int, height: int, what: str) -> None:
    """Depth must be (H, W) with the colour image's aspect ratio (registered; may be scaled)."""
    if depth.ndim != 2:
        raise FrameRejected("unsupported_encoding", f"{what}: the depth topic carries a colour image")
    dh, dw = depth.shape
    if abs(dw / dh - width / height) > 0.01 * width / height:
        raise FrameRejected("size_mismatch", f"{what}: depth is {dw}x{dh}, not registered to the "
                                             f"{width}x{height} image")
