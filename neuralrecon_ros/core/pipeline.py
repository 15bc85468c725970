"""The ROS-free reconstruction pipeline: frames -> keyframes -> fragments -> reconstructor -> map -> mesh.

Frames arrive with ``T_world_camera`` expressed in the user's global frame (e.g. ``odom``). The map
may live in another frame (the network world for NeuralRecon: z-up, floor at z = 0), related by
``T_map_global``; the pipeline converts poses on the way in and meshes on the way out, so callers
only ever see the global frame.

After every reconstructor update the map's memory bounds are applied (:mod:`.mapping.memory`: clearing
radius around the camera or a frame the node reports with :meth:`ReconstructionPipeline.set_clearing_origin`,
block cap), and mesh changes are grouped into chunks for incremental display (:mod:`.mapping.mesh_chunks`).
Every map update's blocks also go to a :class:`~.mapping.layer_changes.LayerChangeTracker`, so a layer stream
can send exactly the blocks that changed or left the map (:meth:`ReconstructionPipeline.layer_changes`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from .geometry import PoseError
from .keyframes import FragmentBuilder, KeyframeConfig
from .mapping.config import MeshingConfig
from .mapping.keys import MAX_BLOCK_COORD
from .mapping.layer_changes import LayerChanges, LayerChangeTracker
from .mapping.memory import MapMemoryManager, MemoryBoundsConfig
from .mapping.mesh_chunks import ChunkUpdate, MeshChunkConfig, MeshChunker, transform_mesh
from .mapping.meshing import IncrementalMesher
from .mapping.tsdf_map import TSDFMap
from .reconstructor import MapUpdate, Reconstructor
from .timing import StageTimer
from .types import Fragment, Frame, Mesh

#: reconstructors that need a depth image with every frame
_DEPTH_MODES = ("depth",)
#: map updates remembered for the next re-mesh before they are merged into one set of blocks
_MAX_PENDING_UPDATES = 256


@dataclass
class FrameResult:
    """What happened to one frame inside the pipeline."""

    is_keyframe: bool
    fragment: Fragment | None = None
    update: MapUpdate | None = None


class ReconstructionPipeline:
    """Keyframe selection, fragment assembly, reconstruction into a TSDF map and lazy meshing."""

    def __init__(
        self,
        keyframe_config: KeyframeConfig,
        tsdf_map: TSDFMap,
        reconstructor: Reconstructor,
        T_map_global: np.ndarray | None = None,
        timer: StageTimer | None = None,
        meshing_config: MeshingConfig | None = None,
        memory_config: MemoryBoundsConfig | None = None,
        chunk_config: MeshChunkConfig | None = None,
    ) -> None:
        self.fragments = FragmentBuilder(keyframe_config)
        self.tsdf_map = tsdf_map
        self.reconstructor = reconstructor
        self.T_map_global = np.eye(4) if T_map_global is None else np.asarray(T_map_global, np.float64)
        self.T_global_map = np.linalg.inv(self.T_map_global)
        self.timer = timer or StageTimer()
        self.meshing_config = meshing_config
        self.mesher = IncrementalMesher(meshing_config)
        self.counts = {"frames": 0, "keyframes": 0, "fragments": 0}
        self._dirty_blocks: list[np.ndarray] = []
        self.memory = MapMemoryManager(memory_config)
        self.chunker = MeshChunker(chunk_config)
        self.layer_tracker = LayerChangeTracker()
        self._clearing_origin_map: np.ndarray | None = None
        #: 'integrate' timer samples and the frames they integrated (for frames_per_integrate_call)
        self._integrate_calls = 0
        self._frames_integrated = 0

    @property
    def needs_depth(self) -> bool:
        return self.reconstructor.name in _DEPTH_MODES

    def process(self, frame: Frame) -> FrameResult:
        """Feed one posed frame (pose in the global frame).

        Raises PoseError, before anything changes, for a camera so far from the map's origin that the map
        cannot hold what it sees (block keys cover ±2**20 blocks per axis; 90% of that is accepted).
        """
        frame = dataclasses.replace(frame, T_world_camera=self.T_map_global @ frame.T_world_camera)
        position = frame.T_world_camera[:3, 3]
        reach_m = 0.9 * MAX_BLOCK_COORD * self.tsdf_map.voxel_size * self.tsdf_map.block_size
        if not np.all(np.abs(position) <= reach_m):
            raise PoseError(f"frame {frame.index}: the camera is at {np.round(position, 1).tolist()} m in the map "
                            f"frame, beyond the ±{reach_m:.0f} m the map can hold (an absurd pose?)")
        self.counts["frames"] += 1
        is_keyframe, fragment = self.fragments.add(frame)
        self.counts["keyframes"] += int(is_keyframe)
        with self.timer.stage("integrate"):
            update = self.reconstructor.on_frame(frame, is_keyframe)
        if update is None:
            self.timer.discard_last("integrate")
        else:
            self._count_integration(update, 1)
        self._remember(update)
        if fragment is not None:
            self.counts["fragments"] += 1
            with self.timer.stage("network"):
                fragment_update = self.reconstructor.on_fragment(fragment)
            if fragment_update is None:
                self.timer.discard_last("network")
            else:
                self._time_fragment_integration(fragment_update, len(fragment.keyframes))
            self._remember(fragment_update)
            update = fragment_update or update
        self._bound_memory(frame.T_world_camera[:3, 3])
        return FrameResult(is_keyframe, fragment, update)

    def _count_integration(self, update: MapUpdate, frames: int) -> None:
        self._integrate_calls += 1
        self._frames_integrated += max(update.frames_integrated, frames)

    def _time_fragment_integration(self, update: MapUpdate, frames: int) -> None:
        """A reconstructor that writes a whole fragment into the map at once (NeuralRecon) times that write
        as its timer's 'map_write' stage; it is reported as one 'integrate' call of the fragment's frames."""
        timer = getattr(self.reconstructor, "timer", None)
        write_ms = timer.last("map_write") if isinstance(timer, StageTimer) else None
        if write_ms is not None:
            self.timer.add("integrate", write_ms)
            self._count_integration(update, frames)

    @property
    def frames_per_integrate_call(self) -> float | None:
        """Mean frames integrated per 'integrate' timer sample (1 for per-frame depth fusion, the fragment
        size for NeuralRecon); None before the first one."""
        return self._frames_integrated / self._integrate_calls if self._integrate_calls else None

    def set_clearing_origin(self, position_global: np.ndarray | None) -> None:
        """Position (global frame, metres) of ``map_clearing_frame`` for the next memory-bound checks;
        None: use the camera (the default when ``map_clearing_frame`` is '')."""
        if position_global is None:
            self._clearing_origin_map = None
            return
        p = np.asarray(position_global, dtype=np.float64).reshape(3)
        self._clearing_origin_map = self.T_map_global[:3, :3] @ p + self.T_map_global[:3, 3]

    def _bound_memory(self, camera_position_map: np.ndarray) -> None:
        if not self.memory.active:
            return
        origin = camera_position_map if self._clearing_origin_map is None else self._clearing_origin_map
        with self.timer.stage("memory_bounds"):
            self._remember(self.memory.enforce(self.tsdf_map, origin))

    def _remember(self, update: MapUpdate | None) -> None:
        if update is not None and not update.is_empty:
            self._dirty_blocks.append(update.touched_blocks)
            if len(self._dirty_blocks) > _MAX_PENDING_UPDATES:
                # nobody meshes (e.g. a node publishing only planner products): keep each block once
                self._dirty_blocks = [np.unique(np.concatenate(self._dirty_blocks), axis=0)]
            self.layer_tracker.mark(update.touched_blocks)

    def update_mesh(self) -> np.ndarray:
        """Re-mesh the blocks touched since the last call; returns the changed block keys."""
        if not self._dirty_blocks:
            return np.zeros((0, 3), np.int64)
        touched = np.unique(np.concatenate(self._dirty_blocks), axis=0)
        self._dirty_blocks = []
        with self.timer.stage("mesh_update"):
            changed = self.mesher.update(self.tsdf_map, touched)
        self.chunker.mark_changed(self.mesher, changed)
        return changed

    def mesh_chunks(self, full: bool = False) -> ChunkUpdate:
        """Mesh chunks (map frame) changed since the last call; every chunk with ``full`` (a resend on
        request) or after a reset or map load. Encode with ``io.mesh_markers.encode_mesh_chunk_markers``
        and ``T_frame_map=pipeline.T_global_map``."""
        self.update_mesh()
        return self.chunker.all_chunks(self.mesher) if full else self.chunker.take_changes(self.mesher)

    def layer_changes(self, full: bool = False) -> LayerChanges:
        """Map blocks changed and removed since the last call (map frame); every block with ``full`` (a
        resend on request), at the first call and after a reset or map load. Encode with
        ``io.tsdf_layer.encode_tsdf_layer``."""
        return self.layer_tracker.take(self.tsdf_map, full=full)

    def mesh(self) -> Mesh:
        """The current mesh in the global frame."""
        self.update_mesh()
        return transform_mesh(self.mesher.mesh(), self.T_global_map)

    def reset(self) -> None:
        """Forget the map, the fragment under construction and recurrent state."""
        self.fragments.reset()
        self.reconstructor.reset()
        self.tsdf_map.reset()
        self.mesher = IncrementalMesher(self.meshing_config)
        self._dirty_blocks = []
        self.memory.reset()
        self.chunker.reset()
        self.layer_tracker.reset()

    def load_map_state(
        self, map_state: dict[str, Any], reconstructor_state: dict[str, Any] | None = None
    ) -> None:
        """Replace the map with ``map_state`` (``TSDFMap.state_dict()`` form; its geometry must match this
        map's) and, when given, the reconstructor's recurrent state (``reconstructor.load_state_dict``).

        All or nothing: if either is rejected (``MapInputError`` from the map, whatever the reconstructor
        raises) both are left as they were. Offloaded blocks and the fragment under construction are
        dropped; the mesh is rebuilt on the next update and the next :meth:`mesh_chunks` is a full resend.
        """
        previous = None
        if reconstructor_state is not None:
            previous = self.reconstructor.state_dict()  # type: ignore[attr-defined]
            self.reconstructor.load_state_dict(reconstructor_state)  # type: ignore[attr-defined]
        try:
            self.tsdf_map.load_state_dict(map_state)  # validates before it replaces anything
        except Exception:
            if previous is not None:
                self.reconstructor.load_state_dict(previous)  # type: ignore[attr-defined]
            raise
        self.fragments.reset()
        self.memory.reset()
        self.mesher = IncrementalMesher(self.meshing_config)
        self.chunker.reset()
        self.layer_tracker.reset()
        self._dirty_blocks = [self.tsdf_map.block_coords()]
