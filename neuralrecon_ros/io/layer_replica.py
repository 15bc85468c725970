"""A replica of neuralrecon_node's map, kept from its ``~/tsdf_layer`` stream (no ROS needed).

Feed :meth:`LayerReplica.apply` every TsdfLayer message in arrival order; it holds the map the node holds
(same blocks, colours and weights; TSDF within :data:`~.tsdf_layer.TSDF_MAX_ERROR`, see :mod:`.tsdf_layer`).

Sequence rules (``sequence`` counts the node's messages, +1 each):

- a *full* message (the node's first, after a reset or map load, or a resend on request) replaces
  everything and puts the replica in sync, unless it is older than what the replica applied (a stale
  copy); a full message numbered 0 is always taken (the node restarted);
- a delta is applied only when it is numbered exactly one more than the last applied message. A higher
  number means messages were lost (or arrive out of order): the replica stops applying deltas and
  waits for a full message, calling ``on_resync_needed`` once (a ROS user calls the node's
  ``~/resend_tsdf_layer`` service there); a lower one was already applied or is older than the full
  message the replica holds, and is ignored.

So the replica never holds a mixture: it is either the node's map as of :attr:`LayerReplica.sequence`, or
it says it is out of sync (:attr:`LayerReplica.in_sync` False) and keeps the last good state.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.mapping.config import MapConfig, MeshingConfig
from ..core.mapping.mesh_chunks import transform_mesh
from ..core.mapping.tsdf_map import TSDFMap
from ..core.types import Mesh
from .bags import BagReader, BagTopicError
from .tsdf_layer import TSDF_LAYER_TYPE, DecodedLayer, TsdfLayerError, decode_tsdf_layer

log = logging.getLogger("neuralrecon_ros")

#: the node's layer topic (``~/tsdf_layer`` of neuralrecon_node)
DEFAULT_LAYER_TOPIC = "/neuralrecon_node/tsdf_layer"

#: outcomes of :meth:`LayerReplica.apply`
APPLIED, RESYNCED, WAITING, STALE, REJECTED = "applied", "resynced", "waiting", "stale", "rejected"


@dataclass
class ReplicaCounts:
    applied: int = 0  # deltas applied
    full: int = 0  # full messages applied
    waiting: int = 0  # deltas ignored while out of sync
    stale: int = 0  # messages older than the state held, ignored
    rejected: int = 0  # malformed messages or geometry changes outside a full message
    gaps: int = 0  # times messages were found missing (or out of order)
    problems: list[str] = field(default_factory=list)  # the first few, for the user


class LayerReplica:
    """The map described by a TsdfLayer stream (see the module docstring)."""

    MAX_PROBLEMS = 20

    def __init__(self, device: str | torch.device = "cpu",
                 on_resync_needed: Callable[[str], None] | None = None) -> None:
        self.device = torch.device(device)
        self.on_resync_needed = on_resync_needed
        self.tsdf_map: TSDFMap | None = None
        self.T_frame_grid = np.eye(4)
        self.frame_id = ""
        self.sequence: int | None = None  # last applied message
        self.stamp_ns = 0  # its header stamp
        self.in_sync = False
        self._resync_requested = False
        self.counts = ReplicaCounts()

    # --- feeding ------------------------------------------------------------------------------

    def apply(self, msg: Any) -> str:
        """Apply one TsdfLayer message (rosbags or rclpy); returns what happened (``APPLIED`` ...)."""
        try:
            layer = decode_tsdf_layer(msg)
        except TsdfLayerError as exc:
            return self._reject(str(exc))
        if layer.full:
            if self.sequence is not None and 0 < layer.sequence <= self.sequence:
                self.counts.stale += 1
                return STALE
            try:
                self._replace(layer)
            except ValueError as exc:  # MapInputError: the blocks do not fit the geometry
                return self._reject(f"full message {layer.sequence}: {exc}")
            self.counts.full += 1
            return RESYNCED
        if not self.in_sync:
            self.counts.waiting += 1
            self._request_resync("no full message yet" if self.sequence is None else "out of sync")
            return WAITING
        assert self.sequence is not None and self.tsdf_map is not None
        if layer.sequence <= self.sequence:
            self.counts.stale += 1
            return STALE
        if layer.sequence != self.sequence + 1:
            self.counts.gaps += 1
            self._lose_sync(f"message {layer.sequence} follows {self.sequence}: "
                            f"{layer.sequence - self.sequence - 1} message(s) lost or out of order")
            self.counts.waiting += 1
            return WAITING
        if not self._same_geometry(layer):
            return self._reject(f"message {layer.sequence} changes the geometry or frame without being full")
        try:
            self.tsdf_map.remove_blocks(layer.removed)
            self.tsdf_map.set_blocks(layer.coords, layer.tsdf, layer.weight, layer.color)
        except ValueError as exc:
            return self._reject(f"message {layer.sequence}: {exc}")
        self._applied(layer)
        self.counts.applied += 1
        return APPLIED

    def _replace(self, layer: DecodedLayer) -> None:
        if self.tsdf_map is None or self._map_geometry() != layer.geometry:
            config = MapConfig(voxel_size=layer.voxel_size, block_size=layer.block_size,
                               truncation_distance_vox=layer.truncation_distance_vox)
            new_map = TSDFMap(config, device=self.device)
        else:
            new_map = self.tsdf_map
            new_map.reset()
        new_map.set_blocks(layer.coords, layer.tsdf, layer.weight, layer.color)
        self.tsdf_map = new_map
        self.T_frame_grid = layer.T_frame_grid
        self.frame_id = layer.frame_id
        self.in_sync = True
        self._resync_requested = False
        self._applied(layer)

    def _applied(self, layer: DecodedLayer) -> None:
        self.sequence = layer.sequence
        self.stamp_ns = layer.stamp_ns

    def _map_geometry(self) -> tuple[float, int, float] | None:
        if self.tsdf_map is None:
            return None
        return (self.tsdf_map.voxel_size, self.tsdf_map.block_size,
                float(self.tsdf_map.config.truncation_distance_vox))

    def _same_geometry(self, layer: DecodedLayer) -> bool:
        held = self._map_geometry()
        return (held is not None and held[1] == layer.block_size
                and math.isclose(held[0], layer.voxel_size, rel_tol=1e-12)
                and math.isclose(held[2], layer.truncation_distance_vox, rel_tol=1e-12)
                and layer.frame_id == self.frame_id
                and np.allclose(layer.T_frame_grid, self.T_frame_grid, rtol=0.0, atol=1e-9))

    def _reject(self, problem: str) -> str:
        self.counts.rejected += 1
        self._lose_sync(f"rejected: {problem}")
        return REJECTED

    def _lose_sync(self, problem: str) -> None:
        if len(self.counts.problems) < self.MAX_PROBLEMS:
            self.counts.problems.append(problem)
        if self.in_sync:
            log.warning("tsdf layer replica: %s; keeping the map as of message %s and waiting for a full "
                        "message", problem, self.sequence)
        self.in_sync = False
        self._request_resync(problem)

    def _request_resync(self, reason: str) -> None:
        if self._resync_requested:
            return
        self._resync_requested = True
        if self.on_resync_needed is not None:
            self.on_resync_needed(reason)

    # --- using --------------------------------------------------------------------------------

    def require_map(self) -> TSDFMap:
        if self.tsdf_map is None:
            raise TsdfLayerError("the replica holds no map: no full TsdfLayer message was received")
        return self.tsdf_map

    def mesh(self, config: MeshingConfig | None = None) -> Mesh:
        """The replica's mesh in :attr:`frame_id` (the node's global frame)."""
        from ..core.mapping.meshing import extract_mesh  # loads scikit-image

        return transform_mesh(extract_mesh(self.require_map(), config), self.T_frame_grid)

    def save_map(self, path: str | os.PathLike, metadata: dict[str, Any] | None = None) -> Path:
        """Write the replica as a map file (``io.map_file``; loadable by the node's ``~/load_map``)."""
        from .map_file import save_map

        info = {"source": "tsdf_layer stream", "sequence": self.sequence, "stamp_ns": self.stamp_ns,
                "in_sync": self.in_sync, **(metadata or {})}
        return save_map(path, self.require_map(), frame_id=self.frame_id, T_global_map=self.T_frame_grid,
                        metadata=info)


def layer_messages(bag: str | os.PathLike, topic: str = DEFAULT_LAYER_TOPIC) -> Iterator[Any]:
    """The TsdfLayer messages of ``topic`` in a bag, in log-time order."""
    with BagReader(bag) as reader:
        reader.require(topic, TSDF_LAYER_TYPE, "the layer stream")
        for message in reader.messages([topic]):
            yield message.msg


def replicate_bag(bag: str | os.PathLike, topic: str = DEFAULT_LAYER_TOPIC,
                  device: str | torch.device = "cpu") -> LayerReplica:
    """A replica fed with every layer message of ``topic`` in ``bag`` (BagError when it has none)."""
    replica = LayerReplica(device=device)
    for msg in layer_messages(bag, topic):
        replica.apply(msg)
    if replica.tsdf_map is None:
        raise BagTopicError(f"{bag}: topic '{topic}' holds no full TsdfLayer message, so no map can be built "
                            "(was tsdf_layer_publish_rate_hz 0, or did the recording start late?)")
    return replica
