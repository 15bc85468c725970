"""The ROS-free reconstruction pipeline: frames -> keyframes -> fragments -> reconstructor -> map -> mesh.

Frames arrive with ``T_world_camera`` expressed in the user's global frame (e.g. ``odom``). The map
may live in another frame (the network world for NeuralRecon: z-up, floor at z = 0), related by
``T_map_global``; the pipeline converts poses on the way in and meshes on the way out, so callers
only ever see the global frame.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from .keyframes import FragmentBuilder, KeyframeConfig
from .mapping.meshing import IncrementalMesher
from .mapping.tsdf_map import TSDFMap
from .reconstructor import MapUpdate, Reconstructor
from .timing import StageTimer
from .types import Fragment, Frame, Mesh

#: reconstructors that need a depth image with every frame
_DEPTH_MODES = ("depth",)


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
    ) -> None:
        self.fragments = FragmentBuilder(keyframe_config)
        self.tsdf_map = tsdf_map
        self.reconstructor = reconstructor
        self.T_map_global = np.eye(4) if T_map_global is None else np.asarray(T_map_global, np.float64)
        self.T_global_map = np.linalg.inv(self.T_map_global)
        self.timer = timer or StageTimer()
        self.mesher = IncrementalMesher()
        self.counts = {"frames": 0, "keyframes": 0, "fragments": 0}
        self._dirty_blocks: list[np.ndarray] = []

    @property
    def needs_depth(self) -> bool:
        return self.reconstructor.name in _DEPTH_MODES

    def process(self, frame: Frame) -> FrameResult:
        """Feed one posed frame (pose in the global frame)."""
        frame = dataclasses.replace(frame, T_world_camera=self.T_map_global @ frame.T_world_camera)
        self.counts["frames"] += 1
        is_keyframe, fragment = self.fragments.add(frame)
        self.counts["keyframes"] += int(is_keyframe)
        with self.timer.stage("integrate"):
            update = self.reconstructor.on_frame(frame, is_keyframe)
        if update is None:
            self.timer.discard_last("integrate")
        self._remember(update)
        if fragment is not None:
            self.counts["fragments"] += 1
            with self.timer.stage("network"):
                fragment_update = self.reconstructor.on_fragment(fragment)
            if fragment_update is None:
                self.timer.discard_last("network")
            self._remember(fragment_update)
            update = fragment_update or update
        return FrameResult(is_keyframe, fragment, update)

    def _remember(self, update: MapUpdate | None) -> None:
        if update is not None and not update.is_empty:
            self._dirty_blocks.append(update.touched_blocks)

    def update_mesh(self) -> np.ndarray:
        """Re-mesh the blocks touched since the last call; returns the changed block keys."""
        if not self._dirty_blocks:
            return np.zeros((0, 3), np.int64)
        touched = np.unique(np.concatenate(self._dirty_blocks), axis=0)
        self._dirty_blocks = []
        with self.timer.stage("mesh_update"):
            return self.mesher.update(self.tsdf_map, touched)

    def mesh(self) -> Mesh:
        """The current mesh in the global frame."""
        self.update_mesh()
        mesh = self.mesher.mesh()
        if not np.allclose(self.T_global_map, np.eye(4)):
            R, t = self.T_global_map[:3, :3], self.T_global_map[:3, 3]
            mesh = dataclasses.replace(
                mesh,
                vertices=(mesh.vertices.astype(np.float64) @ R.T + t).astype(np.float32),
                vertex_normals=None if mesh.vertex_normals is None else (mesh.vertex_normals @ R.T).astype(np.float32),
            )
        return mesh

    def reset(self) -> None:
        """Forget the map, the fragment under construction and recurrent state."""
        self.fragments.reset()
        self.reconstructor.reset()
        self.tsdf_map.reset()
        self.mesher = IncrementalMesher()
        self._dirty_blocks = []
