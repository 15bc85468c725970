"""Synthetic indoor scenes with exact ground truth: procedural rooms, camera paths, ray-cast RGB-D.

Typical use::

    seq = make_sequence(seed=0, n_frames=300)        # scene + trajectory, frames rendered lazily
    for frame in seq: ...                            # core.types.Frame with image, depth, pose
    mesh = seq.scene.gt_mesh(max_edge_m=0.02)        # exact ground-truth mesh
    seq, plan, rooms = make_tour_sequence(seed=0, n_frames=10_000)  # a robot touring a multi-room world
    distance = seq.scene.sdf(points)                 # exact signed distance, positive in free space
"""

from .floor_plan import (
    FloorPlan,
    FloorPlanConfig,
    FloorPlanError,
    generate_floor_plan,
    generate_room_tour,
    make_tour_sequence,
)
from .primitives import Box, Cylinder, Room
from .raycast import MISS, RenderError, cast_rays, render
from .scene import Scene, SceneConfig, SceneError, generate_scene
from .sequence import OPTICAL_FRAME_ID, SyntheticSequence, default_intrinsics, make_sequence
from .texture import Material
from .trajectory import (
    T_BODY_OPTICAL,
    CameraMount,
    TrajectoryConfig,
    TrajectoryError,
    body_rotation,
    generate_trajectory,
)
from .visibility import observed_mesh, observed_vertices

__all__ = [
    "MISS",
    "OPTICAL_FRAME_ID",
    "T_BODY_OPTICAL",
    "Box",
    "CameraMount",
    "Cylinder",
    "FloorPlan",
    "FloorPlanConfig",
    "FloorPlanError",
    "Material",
    "RenderError",
    "Room",
    "Scene",
    "SceneConfig",
    "SceneError",
    "SyntheticSequence",
    "TrajectoryConfig",
    "TrajectoryError",
    "body_rotation",
    "cast_rays",
    "default_intrinsics",
    "generate_floor_plan",
    "generate_room_tour",
    "generate_scene",
    "generate_trajectory",
    "make_sequence",
    "make_tour_sequence",
    "observed_mesh",
    "observed_vertices",
    "render",
]
