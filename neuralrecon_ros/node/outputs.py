"""What the node publishes, and when: the output table and the rate-limited map publisher.

:data:`OUTPUTS` lists every topic (the transports create their publishers from it). Map outputs are
computed from the pipeline by :class:`MapOutputs`, which runs on the reconstruction worker's thread
(:mod:`.worker`), next to the pipeline it reads:

- every output has a rate parameter (0 disables it) and is published at most that often, measured on
  *message time* (the node logic passes the newest input stamp), and only when what it shows changed;
- map outputs are stamped with the stamp of the newest frame that changed the map (the message that
  triggered them; exact to the nanosecond), the fragment volume with that of the newest keyframe; all
  are in ``global_frame``;
- after a reset or a map load every output is due again at once, the chunked mesh starts with DELETEALL;
- ``~/tsdf_layer`` sends the map blocks changed or removed since its last message, numbered; after a
  reset or a map load, at its first message and on request (:meth:`MapOutputs.resend_tsdf_layer`, the
  ``~/resend_tsdf_layer`` service) it sends every block (``full``), so a receiver can always resync.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ..core.mapping.products import esdf_slice, occupancy_grid, tsdf_voxel_cloud
from ..core.pipeline import FrameResult, ReconstructionPipeline
from ..core.types import Frame, Mesh
from ..io.mesh_markers import encode_mesh_chunk_markers
from ..io.messages import (
    MARKER_ADD,
    MARKER_DELETE,
    NS_PER_S,
    MessageTypes,
    encode_mesh_marker,
    sec_to_ns,
)
from ..io.planner_messages import encode_esdf_slice, encode_occupancy_grid, encode_tsdf_cloud
from ..io.tsdf_layer import TSDF_LAYER_TYPE, encode_tsdf_layer
from .parameters import NODE_NAME, NodeParameters

log = logging.getLogger("neuralrecon_ros")

#: visualization_msgs/Marker.LINE_LIST
MARKER_LINE_LIST = 5
FRAGMENT_VOLUME_NS = "fragment_volume"
FRAGMENT_VOLUME_COLOR = (1.0, 0.6, 0.0, 1.0)
FRAGMENT_VOLUME_LINE_WIDTH_M = 0.02
#: the 12 edges of a box as pairs of corner indices (corner i has bit 0 = x, bit 1 = y, bit 2 = z high)
BOX_EDGES = ((0, 1), (2, 3), (4, 5), (6, 7), (0, 2), (1, 3), (4, 6), (5, 7), (0, 4), (1, 5), (2, 6), (3, 7))
#: depth of the keyframe frusta boxed by ~/fragment_volume outside neuralrecon mode, if no depth limit is set
DEFAULT_FRUSTUM_DEPTH_M = 3.0


class Publisher(Protocol):
    """What a transport offers the logic: message classes and publishing by output key."""

    types: MessageTypes

    def publish(self, topic_key: str, msg: Any) -> None: ...


@dataclass(frozen=True)
class OutputTopic:
    key: str
    msgtype: str
    latched: bool  # transient_local depth 1, so a late subscriber (RViz, Nav2) gets the last message
    description: str
    rate_parameter: str
    topic: str = ""  # an absolute topic name; '' = the node's private ~/<key>

    @property
    def ros_name(self) -> str:
        """The name a transport creates the publisher with (``~/key`` or the absolute topic)."""
        return self.topic or f"~/{self.key}"


#: everything the node publishes; a transport creates these publishers up front
OUTPUTS: tuple[OutputTopic, ...] = (
    OutputTopic("mesh", "visualization_msgs/msg/Marker", True,
                "the whole mesh in global_frame (TRIANGLE_LIST; DELETE when the map is empty)",
                "full_mesh_publish_rate_hz"),
    OutputTopic("mesh_markers", "visualization_msgs/msg/MarkerArray", False,
                "the mesh in chunks (ns 'mesh_chunks', one TRIANGLE_LIST per chunk, stable ids): only "
                "changed chunks, DELETE for emptied ones, DELETEALL first after a reset or map load",
                "mesh_publish_rate_hz"),
    OutputTopic("tsdf_voxels", "sensor_msgs/msg/PointCloud2", True,
                "near-surface TSDF voxels in global_frame (x, y, z, tsdf, weight)",
                "tsdf_cloud_publish_rate_hz"),
    OutputTopic("occupancy_grid", "nav_msgs/msg/OccupancyGrid", True,
                "2D occupancy of the height band in global_frame, for Nav2", "occupancy_publish_rate_hz"),
    OutputTopic("esdf_slice", "sensor_msgs/msg/PointCloud2", True,
                "2D ESDF slice in global_frame (x, y, z, distance) at esdf_slice_height_m",
                "esdf_publish_rate_hz"),
    OutputTopic("tsdf_layer", TSDF_LAYER_TYPE, False,
                "the TSDF map's changed and removed blocks since the last message (numbered; every block "
                "after a reset or map load, at the first message and on ~/resend_tsdf_layer), for a "
                "replica of the map on another machine", "tsdf_layer_publish_rate_hz"),
    OutputTopic("fragment_volume", "visualization_msgs/msg/Marker", False,
                "debug: LINE_LIST box of the fragment being built (the network's volume in neuralrecon "
                "mode, else the box around the pending keyframes' frusta)",
                "fragment_volume_publish_rate_hz"),
    OutputTopic("diagnostics", "diagnostic_msgs/msg/DiagnosticArray", False,
                "node health: rates, drops, latencies, map size, GPU memory", "diagnostics_rate_hz",
                topic="/diagnostics"),
)
OUTPUTS_BY_KEY = {out.key: out for out in OUTPUTS}
#: outputs computed from the map, in publishing order
MAP_OUTPUT_KEYS = ("mesh_markers", "mesh", "tsdf_voxels", "tsdf_layer", "occupancy_grid", "esdf_slice")


def output_topic_name(key: str, node_name: str = NODE_NAME) -> str:
    """Absolute name of output ``key``: its own absolute topic, else the node's private ``~/key``."""
    output = OUTPUTS_BY_KEY[key]
    return output.topic or f"/{node_name}/{key}"


class RateLimiter:
    """At most one event per ``1 / rate_hz`` seconds of a clock that may jump back (then it is due)."""

    def __init__(self) -> None:
        self.last: float | None = None

    def due(self, now: float, rate_hz: float) -> bool:
        if rate_hz <= 0:
            return False
        return self.last is None or now < self.last or now - self.last >= 1.0 / rate_hz - 1e-9

    def mark(self, now: float) -> None:
        self.last = now


class MapOutputs:
    """Publishes the map outputs of ``pipeline`` when due (call everything from the worker's thread)."""

    def __init__(
        self, params: NodeParameters, pipeline: ReconstructionPipeline, publisher: Publisher
    ) -> None:
        self.params = params
        self.pipeline = pipeline
        self.publisher = publisher
        self._limiters = {key: RateLimiter() for key in (*MAP_OUTPUT_KEYS, "fragment_volume")}
        #: messages published per output key; every key is there from the start, so other threads can
        #: copy the dict while the worker counts (its size never changes)
        self.published: dict[str, int] = dict.fromkeys(self._limiters, 0)
        self.errors = 0
        self._map_version = 0  # bumped by every map change
        self._shown_version = dict.fromkeys(self._limiters, 0)  # what each output last showed (0: nothing)
        self._fragment_version = 0
        self.map_stamp_ns = 0  # stamp of the newest frame that changed the map
        self.fragment_stamp_ns = 0  # stamp of the newest keyframe
        self._failed_once: set[str] = set()
        self.layer_sequence = 0  # number of the next ~/tsdf_layer message
        self._layer_full_next = False  # the next ~/tsdf_layer message sends every block
        self._layer_resends = 0  # resend requests: a layer message is due even if the map did not change

    # --- what changed ---------------------------------------------------------------------------

    def note_frame(self, frame: Frame, result: FrameResult, stamp_ns: int | None = None) -> None:
        """Record what processing ``frame`` changed (``stamp_ns``: its exact stamp, if known)."""
        stamp_ns = sec_to_ns(frame.stamp) if stamp_ns is None else int(stamp_ns)
        if result.fragment is not None or (result.update is not None and not result.update.is_empty):
            self._map_version += 1
            self.map_stamp_ns = stamp_ns
        if result.is_keyframe or result.fragment is not None:
            self._fragment_version += 1
            self.fragment_stamp_ns = stamp_ns

    def map_replaced(self, stamp: float | None = None) -> None:
        """The whole map changed (reset, load) at message time ``stamp``: every output is due now."""
        self._map_version += 1
        self._fragment_version += 1
        if stamp is not None:
            self.map_stamp_ns = self.fragment_stamp_ns = sec_to_ns(stamp)
        for limiter in self._limiters.values():
            limiter.last = None

    # --- publishing -----------------------------------------------------------------------------

    def publish_due(self, now: float, final: bool = False) -> None:
        """Publish every enabled output that changed and whose period has passed (``final``: every one
        that changed, whatever its period)."""
        grid_cache: dict[str, Any] = {}
        for key in MAP_OUTPUT_KEYS:
            build = functools.partial(self._map_message, key, grid_cache)
            self._publish_if_due(key, now, final, self._version(key), build)
        self._publish_if_due("fragment_volume", now, final, self._fragment_version,
                             self._fragment_volume_message)

    def _publish_if_due(self, key: str, now: float, final: bool, version: int,
                        build: Callable[[], Any | None]) -> None:
        rate = float(getattr(self.params, OUTPUTS_BY_KEY[key].rate_parameter))
        limiter = self._limiters[key]
        if rate <= 0 or self._shown_version[key] == version:
            return
        if not final and not limiter.due(now, rate):
            return
        limiter.mark(now)
        self._shown_version[key] = version
        try:
            with self.pipeline.timer.stage(f"publish_{key}"):
                msg = build()
                if msg is not None:
                    _restamp(self.publisher.types, msg, self.fragment_stamp_ns if key == "fragment_volume"
                             else self.map_stamp_ns)
                    self.publisher.publish(key, msg)
                    self.published[key] += 1
        except Exception as exc:  # a bad product (e.g. a tilted map for the 2D grid) must not stop the others
            self.errors += 1
            if key == "tsdf_layer":  # changes taken but not sent: a full message, due at the next period
                self._layer_full_next = True
                self._layer_resends += 1
            if key not in self._failed_once:
                self._failed_once.add(key)
                log.error("cannot publish %s: %s: %s [logged once; counted in /diagnostics]",
                          output_topic_name(key), type(exc).__name__, exc)

    def _version(self, key: str) -> int:
        return self._map_version + self._layer_resends if key == "tsdf_layer" else self._map_version

    def resend_tsdf_layer(self, now: float | None) -> tuple[bool, str]:
        """Publish every map block on ~/tsdf_layer now (``now``: message time), whatever its period."""
        if float(self.params.tsdf_layer_publish_rate_hz) <= 0:
            return False, "~/tsdf_layer is off (tsdf_layer_publish_rate_hz is 0): nothing to resend"
        self._layer_full_next = True
        self._layer_resends += 1
        published = self.published["tsdf_layer"]
        build = functools.partial(self._map_message, "tsdf_layer", {})
        self._publish_if_due("tsdf_layer", 0.0 if now is None else now, True, self._version("tsdf_layer"), build)
        if self.published["tsdf_layer"] == published:
            return False, "the full ~/tsdf_layer message could not be published (see the log)"
        return True, (f"sent every map block ({self.pipeline.tsdf_map.num_blocks}) on ~/tsdf_layer as message "
                      f"{self.layer_sequence - 1}")

    def _map_message(self, key: str, grid_cache: dict[str, Any]) -> Any | None:
        p, pipeline, types = self.params, self.pipeline, self.publisher.types
        frame, stamp = p.global_frame, self.map_stamp_ns / NS_PER_S
        if key == "tsdf_layer":
            changes = pipeline.layer_changes(full=self._layer_full_next)
            self._layer_full_next = False
            if changes.is_empty:
                return None
            self._layer_full_next = True  # until it is built: a failure below must not leave a silent gap
            msg = encode_tsdf_layer(types, changes, pipeline.tsdf_map, self.layer_sequence, stamp, frame,
                                    T_frame_map=pipeline.T_global_map)
            self._layer_full_next = False
            self.layer_sequence += 1
            return msg
        if key == "mesh_markers":
            changes = pipeline.mesh_chunks()
            if changes.is_empty:
                return None
            return encode_mesh_chunk_markers(types, changes, stamp, frame, T_frame_map=pipeline.T_global_map)
        if key == "mesh":
            mesh = pipeline.mesh()
            if mesh.is_empty:  # an empty TRIANGLE_LIST is not drawable: remove the marker instead
                return encode_mesh_marker(types, Mesh(), stamp, frame, action=MARKER_DELETE)
            return encode_mesh_marker(types, mesh, stamp, frame)
        if key == "tsdf_voxels":
            cloud = tsdf_voxel_cloud(pipeline.tsdf_map, p.tsdf_cloud_max_abs_tsdf, p.tsdf_cloud_min_weight,
                                     T_frame_map=pipeline.T_global_map)
            return encode_tsdf_cloud(types, cloud, stamp, frame)
        grid = grid_cache.get("grid")
        if grid is None:
            grid = grid_cache["grid"] = occupancy_grid(
                pipeline.tsdf_map, p.occupancy_min_height_m, p.occupancy_max_height_m,
                T_global_map=pipeline.T_global_map, min_weight=p.occupancy_min_weight)
        if grid.is_empty:  # no observed voxel (e.g. just reset): a 0 x 0 grid would only confuse a costmap
            return None
        if key == "occupancy_grid":
            return encode_occupancy_grid(types, grid, stamp, frame)
        esdf = esdf_slice(grid, p.esdf_max_distance_m, p.esdf_slice_height_m, signed=p.esdf_signed)
        return encode_esdf_slice(types, esdf, stamp, frame)

    # --- fragment volume ------------------------------------------------------------------------

    def _fragment_volume_message(self) -> Any:
        types, frame = self.publisher.types, self.params.global_frame
        stamp = self.fragment_stamp_ns / NS_PER_S
        corners = fragment_volume_corners(self.pipeline, self._frustum_depth())
        if corners is None:
            return encode_mesh_marker(types, Mesh(), stamp, frame, ns=FRAGMENT_VOLUME_NS,
                                      action=MARKER_DELETE)
        marker = encode_mesh_marker(types, Mesh(), stamp, frame, ns=FRAGMENT_VOLUME_NS,
                                    action=MARKER_ADD, color=FRAGMENT_VOLUME_COLOR)
        Point = types("geometry_msgs/msg/Point")
        marker.type = MARKER_LINE_LIST
        marker.scale.x = FRAGMENT_VOLUME_LINE_WIDTH_M
        marker.points = [Point(x=float(x), y=float(y), z=float(z))
                         for edge in BOX_EDGES for x, y, z in corners[list(edge)]]
        return marker

    def _frustum_depth(self) -> float:
        depth = getattr(self.params, "max_integration_distance_m", None)
        return float(depth) if depth else DEFAULT_FRUSTUM_DEPTH_M


def _restamp(types: MessageTypes, msg: Any, stamp_ns: int) -> None:
    """Set the exact stamp on ``msg`` (its header, a MarkerArray's markers, a map's load time): the
    encoders take float seconds, which cannot hold every nanosecond of a present-day stamp."""
    Time = types("builtin_interfaces/msg/Time")
    sec, nanosec = divmod(int(stamp_ns), NS_PER_S)
    for item in getattr(msg, "markers", [msg]):
        item.header.stamp = Time(sec=sec, nanosec=nanosec)
    info = getattr(msg, "info", None)
    if info is not None and hasattr(info, "map_load_time"):
        info.map_load_time = Time(sec=sec, nanosec=nanosec)


def box_corners(low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """(8, 3) corners of the axis-aligned box [low, high]; corner i takes high where bit k of i is set."""
    bits = (np.arange(8)[:, None] >> np.arange(3)[None, :]) & 1
    return np.where(bits == 1, np.asarray(high, np.float64), np.asarray(low, np.float64))


def fragment_volume_corners(pipeline: ReconstructionPipeline, frustum_depth_m: float) -> np.ndarray | None:
    """(8, 3) corners, in the global frame, of the box the fragment being built covers; None if none.

    NeuralRecon mode: the network's fragment volume (96^3 voxels of 4 cm) as it would be placed for the
    pending keyframes, or, between fragments, the volume of the last fragment the network ran. Otherwise:
    the map-frame bounding box of the pending keyframes' view frusta cut at ``frustum_depth_m``.
    """
    keyframes = pipeline.fragments.pending  # poses in the map frame
    if pipeline.reconstructor.name == "neuralrecon":
        low_high = _network_volume(pipeline, keyframes)
    elif keyframes:
        points = np.concatenate([_frustum_points(f, frustum_depth_m) for f in keyframes])
        low_high = (points.min(axis=0), points.max(axis=0))
    else:
        low_high = None
    if low_high is None:
        return None
    corners = box_corners(*low_high)
    T = pipeline.T_global_map
    return corners @ T[:3, :3].T + T[:3, 3]


def _network_volume(
    pipeline: ReconstructionPipeline, keyframes: list[Frame]
) -> tuple[np.ndarray, np.ndarray] | None:
    from ..core.network.projection import IMAGE_SIZE_WH, N_VOX, VOXEL_SIZE, derive_fragment_geometry

    if keyframes:
        K = np.stack([f.intrinsics.scaled(*IMAGE_SIZE_WH).matrix for f in keyframes])
        poses = np.stack([f.T_world_camera for f in keyframes])
        origin = derive_fragment_geometry(K, poses).vol_origin_voxels
    else:
        last = getattr(pipeline.reconstructor, "last_result", None)
        if last is None:
            return None
        origin = last.vol_origin_voxels
    low = np.asarray(origin.cpu().numpy(), np.float64) * VOXEL_SIZE
    return low, low + np.asarray(N_VOX, np.float64) * VOXEL_SIZE


def _frustum_points(frame: Frame, depth_m: float) -> np.ndarray:
    """(5, 3) camera centre and the image corners at ``depth_m``, in the frame's world."""
    k = frame.intrinsics
    u = np.array([0.0, k.width, 0.0, k.width])
    v = np.array([0.0, 0.0, k.height, k.height])
    rays = np.stack([(u - k.cx) / k.fx, (v - k.cy) / k.fy, np.ones(4)], axis=1) * depth_m
    points = np.vstack([np.zeros(3), rays])
    T = frame.T_world_camera
    return points @ T[:3, :3].T + T[:3, 3]
