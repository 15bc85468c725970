"""Procedural indoor rooms with exact geometry: configuration, generation, SDF and ground-truth mesh.

A scene is a room interior ``[0, Lx] x [0, Ly] x [0, H]`` (floor at z = 0, world z up, corner at the
origin like ScanNet scenes) holding furniture: axis-aligned boxes and vertical cylinders standing on
the floor, placed with clearance from each other and the walls and kept out of a central *walkway*
rectangle where camera trajectories run. Every surface has a procedural :class:`Material`.

Surface ids (used by the renderer and for materials): 0..5 are the room faces
(:data:`~.primitives.ROOM_FACE_NAMES`), ``6 + i`` is ``scene.objects[i]``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from ..config import param
from ..types import Mesh
from .primitives import FLOOR, Box, Cylinder, MeshParts, Room, concatenate_parts
from .texture import Material, albedo, random_material

N_ROOM_SURFACES = 6
_BELOW_FLOOR_M = 1.0e3  # objects are extended this far down for the SDF (see Scene.sdf)
_MAX_PLACEMENT_ATTEMPTS = 2000
_CEILING_GAP_M = 0.3  # furniture stays at least this far below the ceiling


class SceneError(ValueError):
    """A scene could not be generated or queried (bad configuration, impossible placement, bad input)."""


@dataclass
class SceneConfig:
    """Scene generator settings; every ``*_min_*`` / ``*_max_*`` pair is a range sampled uniformly."""

    seed: int = param(0, "Seed of the scene generator (generate_scene's seed argument overrides it).")
    room_size_min_m: float = param(3.0, "Smallest room side (each side drawn independently).", unit="m")
    room_size_max_m: float = param(6.0, "Largest room side.", unit="m")
    room_height_min_m: float = param(2.4, "Lowest room height.", unit="m")
    room_height_max_m: float = param(3.0, "Highest room height.", unit="m")
    ceiling: bool = param(True, "Close the room with a ceiling (more complete depth).")
    n_boxes: int = param(5, "Number of box furniture pieces (tables, cabinets).", minimum=0, maximum=50)
    n_cylinders: int = param(2, "Number of vertical cylinders (pillars, bins).", minimum=0, maximum=50)
    box_size_min_m: float = param(0.3, "Smallest horizontal side of a box.", unit="m")
    box_size_max_m: float = param(1.2, "Largest horizontal side of a box.", unit="m")
    box_height_min_m: float = param(0.4, "Lowest box.", unit="m")
    box_height_max_m: float = param(2.0, "Highest box (capped 0.3 m below the ceiling).", unit="m")
    cylinder_radius_min_m: float = param(0.1, "Smallest cylinder radius.", unit="m")
    cylinder_radius_max_m: float = param(0.35, "Largest cylinder radius.", unit="m")
    cylinder_height_min_m: float = param(0.5, "Lowest cylinder.", unit="m")
    cylinder_height_max_m: float = param(2.2, "Highest cylinder (capped 0.3 m below the ceiling).", unit="m")
    clearance_m: float = param(
        0.1, "Minimum horizontal gap between furniture pieces and between furniture and walls.",
        minimum=0.0, unit="m",
    )
    walkway_fraction: float = param(
        0.55, "Half-size of the furniture-free central walkway, as a fraction of the room's half-size.",
        minimum=0.1, maximum=0.9,
    )
    texture_scale_min_m: float = param(0.08, "Smallest texture pattern size (checker square).", unit="m")
    texture_scale_max_m: float = param(0.5, "Largest texture pattern size.", unit="m")
    texture_noise: float = param(
        0.3, "Average blend of fractal noise into the patterns.", minimum=0.0, maximum=1.0
    )
    n_lights: int = param(2, "Number of point lights below the ceiling.", minimum=0, maximum=8)
    ambient: float = param(0.35, "Ambient light level (fraction of albedo).", minimum=0.0, maximum=1.0)

    def range(self, name: str) -> tuple[float, float]:
        """The (min, max) pair of the fields ``<name>_min_m`` and ``<name>_max_m``."""
        return getattr(self, f"{name}_min_m"), getattr(self, f"{name}_max_m")

    def validate(self) -> None:
        """Raise :class:`SceneError` naming the first bad field."""
        for name in _RANGES:
            low, high = self.range(name)
            if not (math.isfinite(low) and math.isfinite(high) and 0 < low <= high):
                raise SceneError(
                    f"SceneConfig.{name}_min_m / {name}_max_m must satisfy 0 < min <= max, got {low} / {high}"
                )
        if self.room_size_min_m < 1.5 or self.room_height_min_m < _CEILING_GAP_M + 1.0:
            raise SceneError(
                f"SceneConfig room too small: room_size_min_m = {self.room_size_min_m} (>= 1.5 needed), "
                f"room_height_min_m = {self.room_height_min_m} (>= {_CEILING_GAP_M + 1.0} needed)"
            )
        if not 0.0 < self.walkway_fraction < 1.0:
            raise SceneError(f"SceneConfig.walkway_fraction must be in (0, 1), got {self.walkway_fraction}")
        for name in ("n_boxes", "n_cylinders", "n_lights"):
            if getattr(self, name) < 0:
                raise SceneError(f"SceneConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.clearance_m < 0:
            raise SceneError(f"SceneConfig.clearance_m must be >= 0, got {self.clearance_m}")


_RANGES = ("room_size", "room_height", "box_size", "box_height", "cylinder_radius", "cylinder_height",
           "texture_scale")


@dataclass(frozen=True, eq=False)  # identity equality: fields hold numpy arrays
class Scene:
    """A generated room: geometry, materials and lights. Build with :func:`generate_scene`."""

    seed: int
    config: SceneConfig
    room: Room
    objects: tuple[Box | Cylinder, ...]
    materials: tuple[Material, ...]  # indexed by surface id
    lights: np.ndarray  # (n_lights, 3) point-light positions
    walkway: tuple[float, float, float, float]  # furniture-free rectangle (x0, y0, x1, y1)

    @property
    def size(self) -> np.ndarray:
        return np.asarray(self.room.size, dtype=np.float64)

    @property
    def n_surfaces(self) -> int:
        return N_ROOM_SURFACES + len(self.objects)

    def sdf(self, points: np.ndarray) -> np.ndarray:
        """Exact signed distance to the scene's surfaces, positive in free space; ``points`` (..., 3).

        Exact everywhere inside the room box, including inside furniture (objects are treated as
        continuing below the floor, so the floor under them is not a surface). Outside the room box the
        value is minus the distance to the room box. Without a ceiling the walls extend upward.
        """
        points = np.asarray(points, dtype=np.float64)
        if points.shape[-1] != 3:
            raise SceneError(f"sdf expects points of shape (..., 3), got {points.shape}")
        flat = points.reshape(-1, 3)
        distance = self.room.sdf(flat)
        for obj in self.objects:
            np.minimum(distance, _extended_below_floor(obj).sdf(flat), out=distance)
        return distance.reshape(points.shape[:-1])

    def surface_normals(self, surface: int, points: np.ndarray) -> np.ndarray:
        """Unit normals (pointing into free space) of points on surface ``surface``."""
        if surface < N_ROOM_SURFACES:
            return np.broadcast_to(Room.face_normal(surface).astype(points.dtype), points.shape).copy()
        return self.objects[surface - N_ROOM_SURFACES].normal(points)

    def surface_albedo(self, surface: int, points: np.ndarray, normals: np.ndarray) -> np.ndarray:
        """Albedo (N, 3) float32 in [0, 1] of points on surface ``surface``."""
        if surface < N_ROOM_SURFACES:  # the face's normal axis is known: keep the two in-plane coordinates
            axis = surface // 2
            uv = points[:, [k for k in range(3) if k != axis]]
        else:
            uv = self.objects[surface - N_ROOM_SURFACES].uv(points, normals)
        return albedo(self.materials[surface], uv)

    def gt_mesh(self, max_edge_m: float = 0.02) -> Mesh:
        """Exact ground-truth mesh of every surface a camera in the room can see.

        Floor, walls, ceiling (if enabled), box tops and sides, cylinder sides and top caps; all vertices
        lie exactly on the surfaces and no triangle edge is longer than ``max_edge_m``. Floor triangles
        entirely under furniture are dropped. Vertex colours are the (unshaded) albedo, normals point
        into free space. A 5 x 5 x 2.7 m room at 2 cm is about 1.1 M faces.
        """
        if not (math.isfinite(max_edge_m) and max_edge_m >= 0.005):
            raise SceneError(f"gt_mesh max_edge_m must be a finite length >= 0.005 m, got {max_edge_m}")
        parts: list[tuple[int, MeshParts]] = []
        for face in self.room.faces():
            part = self.room.tessellate_face(face, max_edge_m)
            if face == FLOOR:
                part = self._drop_covered_floor(part)
            parts.append((face, part))
        for i, obj in enumerate(self.objects):
            parts.append((N_ROOM_SURFACES + i, obj.tessellate(max_edge_m)))
        vertices, faces, normals = concatenate_parts([p for _, p in parts])
        colors = np.concatenate([
            self.surface_albedo(surface, v.astype(np.float32), n.astype(np.float32))
            for surface, (v, _, n) in parts
        ])
        return Mesh(
            vertices=vertices.astype(np.float32),
            faces=faces.astype(np.int64),
            vertex_colors=np.round(colors * 255).astype(np.uint8),
            vertex_normals=normals.astype(np.float32),
        )

    def _drop_covered_floor(self, part: MeshParts) -> MeshParts:
        """Remove floor triangles whose three vertices all lie under (or on the rim of) one object."""
        vertices, faces, normals = part
        drop = np.zeros(len(faces), dtype=bool)
        for obj in self.objects:
            under = _under_footprint(obj, vertices)
            drop |= under[faces].all(axis=1)
        faces = faces[~drop]
        used = np.zeros(len(vertices), dtype=bool)
        used[faces] = True
        new_index = np.cumsum(used) - 1
        return vertices[used], new_index[faces], normals[used]


def _under_footprint(obj: Box | Cylinder, points: np.ndarray) -> np.ndarray:
    eps = 1e-9
    if isinstance(obj, Box):
        x0, y0, x1, y1 = obj.footprint
        x, y = points[:, 0], points[:, 1]
        return (x >= x0 - eps) & (x <= x1 + eps) & (y >= y0 - eps) & (y <= y1 + eps)
    rho = np.linalg.norm(points[:, :2] - np.asarray(obj.centre), axis=-1)
    return rho <= obj.radius + eps


def _extended_below_floor(obj: Box | Cylinder) -> Box | Cylinder:
    if isinstance(obj, Box):
        return dataclasses.replace(obj, lo=(obj.lo[0], obj.lo[1], obj.lo[2] - _BELOW_FLOOR_M))
    return dataclasses.replace(obj, z0=obj.z0 - _BELOW_FLOOR_M)


def generate_scene(seed: int | None = None, config: SceneConfig | None = None) -> Scene:
    """A random room; identical for identical ``seed`` and ``config`` (``seed`` None: ``config.seed``)."""
    config = config or SceneConfig()
    config.validate()
    seed = config.seed if seed is None else int(seed)
    rng = np.random.default_rng(seed)
    lx, ly = (float(rng.uniform(*config.range("room_size"))) for _ in range(2))
    height = float(rng.uniform(*config.range("room_height")))
    room = Room((lx, ly, height), ceiling=config.ceiling)
    hx, hy = lx / 2 * config.walkway_fraction, ly / 2 * config.walkway_fraction
    walkway = (lx / 2 - hx, ly / 2 - hy, lx / 2 + hx, ly / 2 + hy)
    objects = _place_furniture(rng, config, room, walkway)
    materials = tuple(
        random_material(rng, config.range("texture_scale"), config.texture_noise)
        for _ in range(N_ROOM_SURFACES + len(objects))
    )
    lights = np.column_stack([
        rng.uniform(0.2, 0.8, config.n_lights) * lx,
        rng.uniform(0.2, 0.8, config.n_lights) * ly,
        np.full(config.n_lights, height - 0.3),
    ])
    return Scene(seed, config, room, tuple(objects), materials, lights, walkway)


def _place_furniture(
    rng: np.random.Generator, config: SceneConfig, room: Room, walkway: tuple[float, float, float, float]
) -> list[Box | Cylinder]:
    """Rejection-sample boxes, then cylinders, outside the walkway and ``clearance_m`` apart (walls too)."""
    lx, ly, height = room.size
    max_height = height - _CEILING_GAP_M
    gap = config.clearance_m
    placed: list[Box | Cylinder] = []
    kinds = ["box"] * config.n_boxes + ["cylinder"] * config.n_cylinders
    for index, kind in enumerate(kinds):
        for _ in range(_MAX_PLACEMENT_ATTEMPTS):
            if kind == "box":
                sx, sy = rng.uniform(*config.range("box_size"), size=2)
                h = min(float(rng.uniform(*config.range("box_height"))), max_height)
                if sx + 2 * gap >= lx or sy + 2 * gap >= ly:
                    continue
                x0, y0 = rng.uniform(gap, lx - gap - sx), rng.uniform(gap, ly - gap - sy)
                lo, hi = (float(x0), float(y0), 0.0), (float(x0 + sx), float(y0 + sy), h)
                candidate: Box | Cylinder = Box(lo, hi)
            else:
                r = float(rng.uniform(*config.range("cylinder_radius")))
                h = min(float(rng.uniform(*config.range("cylinder_height"))), max_height)
                if 2 * (r + gap) >= min(lx, ly):
                    continue
                cx, cy = rng.uniform(gap + r, lx - gap - r), rng.uniform(gap + r, ly - gap - r)
                candidate = Cylinder((float(cx), float(cy)), r, 0.0, h)
            if footprint_distance(walkway, candidate) > 0 and all(
                footprint_distance(candidate, other) >= gap for other in placed
            ):
                placed.append(candidate)
                break
        else:
            raise SceneError(
                f"could not place {kind} {index + 1} of {len(kinds)} in a {lx:.2f} x {ly:.2f} m room after "
                f"{_MAX_PLACEMENT_ATTEMPTS} attempts; reduce n_boxes/n_cylinders, object sizes, clearance_m "
                "or walkway_fraction"
            )
    return placed


def footprint_distance(a: Box | Cylinder | tuple[float, float, float, float], b: Box | Cylinder) -> float:
    """Horizontal Euclidean distance between two footprints (0 when they overlap).

    ``a`` may also be a bare rectangle (x0, y0, x1, y1).
    """
    if isinstance(a, Cylinder) and isinstance(b, Cylinder):
        gap = math.dist(a.centre, b.centre) - a.radius - b.radius
        return max(0.0, gap)
    if isinstance(a, Cylinder) or isinstance(b, Cylinder):
        circle, other = (a, b) if isinstance(a, Cylinder) else (b, a)
        rect = other.footprint if isinstance(other, Box) else other
        return max(0.0, _point_rect_distance(circle.centre, rect) - circle.radius)
    ra = a.footprint if isinstance(a, Box) else a
    rb = b.footprint
    dx = max(0.0, rb[0] - ra[2], ra[0] - rb[2])
    dy = max(0.0, rb[1] - ra[3], ra[1] - rb[3])
    return math.hypot(dx, dy)


def _point_rect_distance(point: tuple[float, float], rect: tuple[float, float, float, float]) -> float:
    dx = max(0.0, rect[0] - point[0], point[0] - rect[2])
    dy = max(0.0, rect[1] - point[1], point[1] - rect[3])
    return math.hypot(dx, dy)

