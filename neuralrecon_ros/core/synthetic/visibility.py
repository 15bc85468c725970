"""The part of a ground-truth mesh that a camera sequence actually observed.

Real benchmarks (ScanNet) have ground truth made from the scan itself, so it only holds surfaces the
cameras saw. The exact synthetic mesh also holds the floor under furniture, the backs of objects and
walls the path never faced; scoring completeness against it measures the trajectory, not the
reconstruction. :func:`observed_mesh` keeps the faces seen by at least one (sub-sampled) frame.
"""

from __future__ import annotations

import numpy as np

from ..types import CameraIntrinsics, Mesh
from .raycast import cast_rays
from .sequence import SyntheticSequence


def observed_vertices(
    mesh: Mesh,
    sequence: SyntheticSequence,
    max_depth_m: float = 5.0,
    frame_step: int = 5,
    render_width: int = 160,
    tolerance_m: float = 0.03,
) -> np.ndarray:
    """Boolean (V,): vertex lies within ``max_depth_m`` of some frame and is not occluded there.

    Depth is ray cast at ``render_width`` (cheap); a vertex counts as seen when nothing at its pixel
    is nearer than the vertex by more than ``tolerance_m`` plus 2 % of its depth (the slack covers
    the depth a coarse pixel spans on a slanted surface; occluders are farther in front than that).
    """
    scale = render_width / sequence.intrinsics.width
    small = CameraIntrinsics(
        sequence.intrinsics.fx * scale, sequence.intrinsics.fy * scale,
        (sequence.intrinsics.cx + 0.5) * scale - 0.5, (sequence.intrinsics.cy + 0.5) * scale - 0.5,
        render_width, max(1, round(sequence.intrinsics.height * scale)),
    )
    points = mesh.vertices.astype(np.float64)
    seen = np.zeros(len(points), bool)
    for T_world_camera in sequence.poses[::frame_step]:
        depth, _ = cast_rays(sequence.scene, T_world_camera, small)
        T_camera_world = np.linalg.inv(T_world_camera)
        p = points @ T_camera_world[:3, :3].T + T_camera_world[:3, 3]
        z = p[:, 2]
        in_range = (z > 1e-6) & (z <= max_depth_m)
        u = np.full(len(p), -1, np.int64)
        v = np.full(len(p), -1, np.int64)
        u[in_range] = np.rint(small.fx * p[in_range, 0] / z[in_range] + small.cx).astype(np.int64)
        v[in_range] = np.rint(small.fy * p[in_range, 1] / z[in_range] + small.cy).astype(np.int64)
        inside = in_range & (u >= 0) & (u < small.width) & (v >= 0) & (v < small.height)
        index = np.flatnonzero(inside)
        surface_depth = depth[v[index], u[index]]
        visible = (surface_depth > 0) & (surface_depth > z[index] - tolerance_m - 0.02 * z[index])
        seen[index[visible]] = True
    return seen


def observed_mesh(mesh: Mesh, sequence: SyntheticSequence, **kwargs: float) -> Mesh:
    """The faces of ``mesh`` whose three vertices were observed (see :func:`observed_vertices`)."""
    seen = observed_vertices(mesh, sequence, **kwargs)
    faces = mesh.faces[seen[mesh.faces].all(axis=1)]
    used = np.unique(faces)
    remap = np.full(len(mesh.vertices), -1, np.int64)
    remap[used] = np.arange(len(used))
    return Mesh(
        vertices=mesh.vertices[used],
        faces=remap[faces],
        vertex_colors=None if mesh.vertex_colors is None else mesh.vertex_colors[used],
        vertex_normals=None if mesh.vertex_normals is None else mesh.vertex_normals[used],
    )
