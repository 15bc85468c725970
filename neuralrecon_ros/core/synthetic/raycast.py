"""Exact ray casting of synthetic scenes: RGB with Lambertian shading, z-depth, surface ids.

One ray per pixel through the pixel centre (pixel (u, v) sees direction ``K^-1 [u, v, 1]``, the
convention of ``CameraIntrinsics``). Ray directions keep optical z = 1, so the ray parameter of the
nearest hit is the z-depth directly. Each primitive is intersected vectorised over the pixels inside
its projected bounding box; the nearest hit wins. No shadows, no anti-aliasing.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from ..geometry import PoseError, check_rigid
from ..types import CameraIntrinsics
from .primitives import safe_directions
from .scene import N_ROOM_SURFACES, Scene

MISS = -1  # surface id of pixels that see nothing (only possible without a ceiling)
BACKGROUND_RGB = (12, 12, 16)
_LIGHT_FALLOFF_M = 4.0  # distance at which a point light's contribution halves
_DIFFUSE_GAIN = 1.4


class RenderError(ValueError):
    """A frame cannot be rendered (bad pose or intrinsics, camera outside the free space)."""


def render(
    scene: Scene, T_world_camera: np.ndarray, intrinsics: CameraIntrinsics
) -> tuple[np.ndarray, np.ndarray]:
    """Render one view: (RGB uint8 (H, W, 3), z-depth float32 (H, W) metres, 0 where nothing is hit)."""
    depth, surface, directions = _cast(scene, T_world_camera, intrinsics)
    rgb = _shade(scene, np.asarray(T_world_camera, np.float64)[:3, 3], directions, depth, surface)
    return rgb, depth


def cast_rays(
    scene: Scene, T_world_camera: np.ndarray, intrinsics: CameraIntrinsics
) -> tuple[np.ndarray, np.ndarray]:
    """Geometry only: (z-depth float32 (H, W), surface id int16 (H, W), :data:`MISS` = -1 where no hit)."""
    depth, surface, _ = _cast(scene, T_world_camera, intrinsics)
    return depth, surface


def _cast(
    scene: Scene, T_world_camera: np.ndarray, intrinsics: CameraIntrinsics
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    try:
        T = check_rigid(T_world_camera, "T_world_camera", tolerance=1e-6)
    except PoseError as error:
        raise RenderError(str(error)) from error
    _check_intrinsics(intrinsics)
    origin = T[:3, 3]
    clearance = float(scene.sdf(origin[None])[0])
    if clearance <= 0:
        raise RenderError(
            f"camera at {origin.round(3).tolist()} is not in the scene's free space (signed distance "
            f"{clearance:.3f} m): outside the room or inside furniture"
        )
    directions = safe_directions(_camera_rays(intrinsics) @ T[:3, :3].T.astype(np.float32))
    t, face = scene.room.exit(origin, directions)
    surface = np.where(np.isinf(t), np.int16(MISS), face).astype(np.int16)
    T_camera_world = np.linalg.inv(T)
    for index, obj in enumerate(scene.objects):
        window = _pixel_window(*obj.bounds, T_camera_world, intrinsics)
        if window is None:
            continue
        t_window, surface_window = t[window], surface[window]  # views: updates land in t / surface
        t_obj = obj.intersect(origin, directions[window])
        closer = t_obj < t_window
        t_window[closer] = t_obj[closer]
        surface_window[closer] = N_ROOM_SURFACES + index
    depth = np.where(surface == MISS, np.float32(0.0), t).astype(np.float32)
    return depth, surface, directions


def _check_intrinsics(intrinsics: CameraIntrinsics) -> None:
    values = (intrinsics.fx, intrinsics.fy, intrinsics.cx, intrinsics.cy)
    if not all(math.isfinite(v) for v in values) or intrinsics.fx <= 0 or intrinsics.fy <= 0:
        raise RenderError(f"intrinsics need finite fx, fy > 0 and finite cx, cy, got {intrinsics}")
    if intrinsics.width < 1 or intrinsics.height < 1:
        raise RenderError(f"image size must be positive, got {intrinsics.width} x {intrinsics.height}")


@lru_cache(maxsize=8)
def _camera_rays(intrinsics: CameraIntrinsics) -> np.ndarray:
    """Optical-frame ray directions (H, W, 3) float32 with z = 1, through every pixel centre."""
    u = (np.arange(intrinsics.width, dtype=np.float64) - intrinsics.cx) / intrinsics.fx
    v = (np.arange(intrinsics.height, dtype=np.float64) - intrinsics.cy) / intrinsics.fy
    rays = np.empty((intrinsics.height, intrinsics.width, 3), np.float32)
    rays[..., 0] = u[None, :]
    rays[..., 1] = v[:, None]
    rays[..., 2] = 1.0
    rays.setflags(write=False)
    return rays


def _pixel_window(
    lo: np.ndarray, hi: np.ndarray, T_camera_world: np.ndarray, intrinsics: CameraIntrinsics
) -> tuple[slice, slice] | None:
    """Pixel rows/cols that can see the box [lo, hi]; None if none can, the whole image if unsure."""
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    cam = corners @ T_camera_world[:3, :3].T + T_camera_world[:3, 3]
    z = cam[:, 2]
    if np.all(z <= 0):
        return None  # every hit has optical z = t > 0
    full = (slice(0, intrinsics.height), slice(0, intrinsics.width))
    if np.any(z < 1e-6):
        return full  # straddles the camera plane: the projection is unbounded
    u = intrinsics.fx * cam[:, 0] / z + intrinsics.cx
    v = intrinsics.fy * cam[:, 1] / z + intrinsics.cy
    c0 = max(0, math.floor(u.min()) - 1)
    c1 = min(intrinsics.width, math.ceil(u.max()) + 2)
    r0 = max(0, math.floor(v.min()) - 1)
    r1 = min(intrinsics.height, math.ceil(v.max()) + 2)
    if c0 >= c1 or r0 >= r1:
        return None
    return slice(r0, r1), slice(c0, c1)


def _shade(
    scene: Scene, origin: np.ndarray, directions: np.ndarray, depth: np.ndarray, surface: np.ndarray
) -> np.ndarray:
    """Albedo times (ambient + Lambertian point lights); background colour where nothing is hit."""
    rgb = np.empty((*depth.shape, 3), np.uint8)
    rgb[...] = BACKGROUND_RGB
    # Visit hit pixels grouped by surface (one sort) so each surface is shaded on a contiguous slice.
    flat_surface = surface.ravel()
    hit_index = np.flatnonzero(flat_surface != MISS)
    order = np.argsort(flat_surface[hit_index], kind="stable")
    hit_index = hit_index[order]
    counts = np.bincount(flat_surface[hit_index], minlength=scene.n_surfaces)
    t = depth.ravel()[hit_index]
    points = origin.astype(np.float32) + t[:, None] * directions.reshape(-1, 3)[hit_index]
    normals = np.empty_like(points)
    colour = np.empty_like(points)
    stop = 0
    for sid, count in enumerate(counts):
        if count == 0:
            continue
        start, stop = stop, stop + int(count)
        part = slice(start, stop)
        normals[part] = scene.surface_normals(sid, points[part])
        colour[part] = scene.surface_albedo(sid, points[part], normals[part])
    diffuse = np.zeros(len(points), np.float32)
    falloff = np.float32(1.0 / _LIGHT_FALLOFF_M**2)
    for light in scene.lights.astype(np.float32):
        to_light = light - points
        squared = np.einsum("ij,ij->i", to_light, to_light)  # row dot products: far faster than norm()
        cosine = np.maximum(np.einsum("ij,ij->i", normals, to_light), 0.0)  # times the distance
        diffuse += cosine / (np.sqrt(np.maximum(squared, 1e-12)) * (1.0 + squared * falloff))
    if len(scene.lights):
        diffuse *= np.float32(_DIFFUSE_GAIN / len(scene.lights))
    ambient = np.float32(scene.config.ambient)
    light_level = ambient + (1 - ambient) * diffuse
    shaded = np.clip(colour * light_level[:, None] * 255.0 + 0.5, 0, 255)
    rgb.reshape(-1, 3)[hit_index] = shaded.astype(np.uint8)
    return rgb
