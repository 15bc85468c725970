"""Analytic solids of the synthetic scenes: ray intersection, normals, exact SDF and tessellation.

Every primitive answers the same four questions so the renderer, the ground-truth mesh and the
signed-distance function all describe the same geometry:

- ``intersect(origin, directions)``: ray parameter ``t`` of the first entry point (``inf`` = miss).
  Rays are ``origin + t * direction`` with unnormalised directions, so when a direction's optical-z
  component is 1, ``t`` *is* the z-depth. Origins are assumed outside the solid.
- ``normal(points)``: outward unit normals of surface points.
- ``sdf(points)``: exact Euclidean signed distance, positive outside the solid.
- ``tessellate(max_edge_m)``: a triangle mesh of the faces a camera can see (CCW seen from outside),
  every edge no longer than ``max_edge_m``, every vertex exactly on the surface.

Coordinates are world metres, z up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Tessellation returns (vertices float64 (V,3), faces int64 (F,3), normals float64 (V,3)).
MeshParts = tuple[np.ndarray, np.ndarray, np.ndarray]

_TINY = np.float32(1e-30)


def safe_directions(directions: np.ndarray) -> np.ndarray:
    """Directions with exact zeros nudged to +tiny so slab divisions give signed infinities, not NaN."""
    return np.where(directions == 0, _TINY, directions).astype(directions.dtype, copy=False)


def grid_rectangle(
    corner: np.ndarray, edge_u: np.ndarray, edge_v: np.ndarray, max_edge_m: float
) -> MeshParts:
    """Tessellate the parallelogram ``corner + a*edge_u + b*edge_v`` (a, b in [0, 1]) as a shared grid.

    Faces are CCW around ``edge_u x edge_v`` (the normal). Cell sides are at most ``max_edge_m/sqrt(2)``
    so the cell diagonals, the longest edges, stay within ``max_edge_m``.
    """
    corner, edge_u, edge_v = (np.asarray(a, np.float64) for a in (corner, edge_u, edge_v))
    step = max_edge_m / math.sqrt(2.0)
    nu = max(1, math.ceil(np.linalg.norm(edge_u) / step - 1e-9))
    nv = max(1, math.ceil(np.linalg.norm(edge_v) / step - 1e-9))
    a = np.linspace(0.0, 1.0, nu + 1)
    b = np.linspace(0.0, 1.0, nv + 1)
    A, B = np.meshgrid(a, b, indexing="ij")  # (nu+1, nv+1)
    vertices = corner + A.reshape(-1, 1) * edge_u + B.reshape(-1, 1) * edge_v
    faces = _grid_faces(nu, nv, wrap_u=False)
    normal = np.cross(edge_u, edge_v)
    normal /= np.linalg.norm(normal)
    return vertices, faces, np.broadcast_to(normal, vertices.shape).copy()


def _grid_faces(nu: int, nv: int, wrap_u: bool) -> np.ndarray:
    """Two CCW triangles per cell of a (nu [+1 unless wrapped]) x (nv+1) vertex grid, index = i*(nv+1)+j."""
    rows = nu if wrap_u else nu + 1
    i, j = np.meshgrid(np.arange(nu), np.arange(nv), indexing="ij")
    i, j = i.ravel(), j.ravel()
    i1 = (i + 1) % rows
    v00 = i * (nv + 1) + j
    v10 = i1 * (nv + 1) + j
    v01 = i * (nv + 1) + j + 1
    v11 = i1 * (nv + 1) + j + 1
    return np.concatenate([np.stack([v00, v10, v11], 1), np.stack([v00, v11, v01], 1)]).astype(np.int64)


def axis_uv(points: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """Surface coordinates of points on axis-aligned faces: the two world coordinates in the face plane."""
    axis = np.argmax(np.abs(normals), axis=-1)
    u = np.where(axis == 0, points[:, 1], points[:, 0])
    v = np.where(axis == 2, points[:, 1], points[:, 2])
    return np.stack([u, v], axis=-1)


# Room faces, indexed 2 * axis + (1 for the upper side): the renderer's surface ids 0..5.
ROOM_FACE_NAMES = ("wall_x0", "wall_x1", "wall_y0", "wall_y1", "floor", "ceiling")
FLOOR, CEILING = 4, 5


@dataclass(frozen=True)
class Room:
    """The free interior of the axis-aligned box ``[0, size]``: floor at z = 0, four walls, optional ceiling.

    Without a ceiling the walls still end at ``size[2]`` for rendering (rays leaving through the top
    miss), while :meth:`sdf` treats the walls as extending upward.
    """

    size: tuple[float, float, float]
    ceiling: bool = True

    def exit(self, origin: np.ndarray, directions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(t, face index) where rays from ``origin`` (inside) leave the room; t = inf through no ceiling.

        ``directions`` must contain no exact zeros (see :func:`safe_directions`).
        """
        t = np.full(directions.shape[:-1], np.inf, dtype=directions.dtype)
        face = np.zeros(directions.shape[:-1], dtype=np.int16)
        for k in range(3):
            d = directions[..., k]
            upper = d > 0
            t_k = (np.where(upper, self.size[k], 0.0).astype(d.dtype) - float(origin[k])) / d
            closer = t_k < t
            t = np.where(closer, t_k, t)
            face = np.where(closer, (2 * k + upper).astype(np.int16), face)
        if not self.ceiling:
            t = np.where(face == CEILING, np.inf, t)
        return t, face

    @staticmethod
    def face_normal(face: int) -> np.ndarray:
        """Unit normal of a room face pointing into the room."""
        normal = np.zeros(3)
        normal[face // 2] = -1.0 if face % 2 else 1.0
        return normal

    def sdf(self, points: np.ndarray) -> np.ndarray:
        """Signed distance to the room's boundary, positive inside (free space)."""
        size = np.asarray(self.size, dtype=np.float64)
        q = np.maximum(-points, points - size)  # per-axis distance outside the slab, negative inside
        if not self.ceiling:
            q[:, 2] = -points[:, 2]
        outside = np.linalg.norm(np.maximum(q, 0.0), axis=-1)
        inside = np.minimum(q.max(axis=-1), 0.0)
        return -(outside + inside)

    def faces(self) -> tuple[int, ...]:
        """Indices of the faces that exist (all but the ceiling when it is disabled)."""
        return tuple(f for f in range(6) if self.ceiling or f != CEILING)

    def tessellate_face(self, face: int, max_edge_m: float) -> MeshParts:
        """One face as a grid, CCW seen from inside the room."""
        lx, ly, lz = self.size
        ex, ey, ez = np.array([lx, 0, 0]), np.array([0, ly, 0]), np.array([0, 0, lz])
        o = np.zeros(3)
        layout = {
            0: (o, ey, ez), 1: (ex, ez, ey),
            2: (o, ez, ex), 3: (ey, ex, ez),
            4: (o, ex, ey), 5: (ez, ey, ex),
        }
        corner, edge_u, edge_v = layout[face]
        return grid_rectangle(corner, edge_u, edge_v, max_edge_m)


@dataclass(frozen=True)
class Box:
    """A solid axis-aligned box ``[lo, hi]`` (furniture: tables, cabinets) standing on the floor."""

    lo: tuple[float, float, float]
    hi: tuple[float, float, float]

    @property
    def footprint(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) of the box on the floor plane."""
        return self.lo[0], self.lo[1], self.hi[0], self.hi[1]

    @property
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return np.array(self.lo), np.array(self.hi)

    def intersect(self, origin: np.ndarray, directions: np.ndarray) -> np.ndarray:
        """Slab test; ``directions`` (..., 3) float32 with no exact zeros (see :func:`safe_directions`)."""
        inv = 1.0 / directions
        t_near = np.full(directions.shape[:-1], -np.inf, dtype=directions.dtype)
        t_far = np.full(directions.shape[:-1], np.inf, dtype=directions.dtype)
        for k in range(3):
            t0 = (self.lo[k] - float(origin[k])) * inv[..., k]
            t1 = (self.hi[k] - float(origin[k])) * inv[..., k]
            np.maximum(t_near, np.minimum(t0, t1), out=t_near)
            np.minimum(t_far, np.maximum(t0, t1), out=t_far)
        hit = (t_near <= t_far) & (t_near > 0)
        return np.where(hit, t_near, np.inf)

    def normal(self, points: np.ndarray) -> np.ndarray:
        """Outward normal of the face each surface point is on (nearest face; edges pick one)."""
        lo, hi = self.bounds
        gaps = np.concatenate([np.abs(points - lo), np.abs(points - hi)], axis=-1)  # (N, 6)
        face = np.argmin(gaps, axis=-1)
        normals = np.zeros(points.shape, dtype=points.dtype)
        normals[np.arange(len(points)), face % 3] = np.where(face >= 3, 1.0, -1.0)
        return normals

    def uv(self, points: np.ndarray, normals: np.ndarray) -> np.ndarray:
        return axis_uv(points, normals)

    def sdf(self, points: np.ndarray) -> np.ndarray:
        lo, hi = self.bounds
        centre, half = (lo + hi) / 2, (hi - lo) / 2
        q = np.abs(points - centre) - half
        outside = np.linalg.norm(np.maximum(q, 0.0), axis=-1)
        inside = np.minimum(q.max(axis=-1), 0.0)
        return outside + inside

    def tessellate(self, max_edge_m: float) -> MeshParts:
        """Top and four sides; the bottom rests on the floor and is never seen."""
        lo, hi = self.bounds
        dx, dy, dz = hi - lo
        ex, ey, ez = np.array([dx, 0, 0]), np.array([0, dy, 0]), np.array([0, 0, dz])
        faces = [
            grid_rectangle(np.array([lo[0], lo[1], hi[2]]), ex, ey, max_edge_m),  # top (+z)
            grid_rectangle(lo, ex, ez, max_edge_m),  # -y side
            grid_rectangle(np.array([lo[0], hi[1], lo[2]]), ez, ex, max_edge_m),  # +y side
            grid_rectangle(lo, ez, ey, max_edge_m),  # -x side
            grid_rectangle(np.array([hi[0], lo[1], lo[2]]), ey, ez, max_edge_m),  # +x side
        ]
        return concatenate_parts(faces)


@dataclass(frozen=True)
class Cylinder:
    """A solid vertical cylinder with flat caps (pillars, round tables, bins)."""

    centre: tuple[float, float]
    radius: float
    z0: float
    z1: float

    @property
    def footprint(self) -> tuple[float, float, float, float]:
        (x, y), r = self.centre, self.radius
        return x - r, y - r, x + r, y + r

    @property
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        x0, y0, x1, y1 = self.footprint
        return np.array([x0, y0, self.z0]), np.array([x1, y1, self.z1])

    def intersect(self, origin: np.ndarray, directions: np.ndarray) -> np.ndarray:
        """Side or caps; computed in float64 because grazing quadratic roots lose float32 precision."""
        out_dtype = directions.dtype
        directions = directions.astype(np.float64)
        ex = float(origin[0]) - self.centre[0]
        ey = float(origin[1]) - self.centre[1]
        oz = float(origin[2])
        dx, dy, dz = directions[..., 0], directions[..., 1], directions[..., 2]
        t = np.full(directions.shape[:-1], np.inf, dtype=directions.dtype)
        # Side: |e + t d_xy|^2 = r^2 with half-b form; the near root as c / (-b + sqrt(disc)) is stable.
        a = dx * dx + dy * dy
        half_b = dx * ex + dy * ey
        c = ex * ex + ey * ey - self.radius**2
        if c > 0:  # origin outside the infinite cylinder, otherwise only the caps can be entered
            disc = half_b * half_b - a * c
            ok = (disc >= 0) & (half_b < 0)
            root = np.sqrt(np.where(ok, disc, 0.0))
            with np.errstate(divide="ignore", invalid="ignore"):
                t_side = c / (root - half_b)
            z = oz + t_side * dz
            ok &= (z >= self.z0) & (z <= self.z1) & (t_side > 0)
            t = np.where(ok, t_side, t)
        for z_cap, outside_cap in ((self.z1, oz > self.z1), (self.z0, oz < self.z0)):
            if not outside_cap:
                continue  # a cap can only be entered from the outer side of its plane
            t_cap = (z_cap - oz) / dz
            px = ex + t_cap * dx
            py = ey + t_cap * dy
            ok = (t_cap > 0) & (px * px + py * py <= self.radius**2) & (t_cap < t)
            t = np.where(ok, t_cap, t)
        return t.astype(out_dtype)

    def normal(self, points: np.ndarray) -> np.ndarray:
        radial = points[:, :2] - np.asarray(self.centre)
        rho = np.linalg.norm(radial, axis=-1)
        side_gap = np.abs(rho - self.radius)
        top_gap = np.abs(points[:, 2] - self.z1)
        bottom_gap = np.abs(points[:, 2] - self.z0)
        normals = np.zeros(points.shape, dtype=points.dtype)
        side = (side_gap <= top_gap) & (side_gap <= bottom_gap)
        normals[side, :2] = radial[side] / np.maximum(rho[side], 1e-12)[:, None]
        normals[~side & (top_gap <= bottom_gap), 2] = 1.0
        normals[~side & (top_gap > bottom_gap), 2] = -1.0
        return normals

    def uv(self, points: np.ndarray, normals: np.ndarray) -> np.ndarray:
        """Caps: world (x, y); side: (arc length around the axis, z)."""
        angle = np.arctan2(points[:, 1] - self.centre[1], points[:, 0] - self.centre[0])
        side = np.abs(normals[:, 2]) < 0.5
        u = np.where(side, angle * self.radius, points[:, 0])
        v = np.where(side, points[:, 2], points[:, 1])
        return np.stack([u, v], axis=-1)

    def sdf(self, points: np.ndarray) -> np.ndarray:
        rho = np.linalg.norm(points[:, :2] - np.asarray(self.centre), axis=-1)
        half = (self.z1 - self.z0) / 2
        q = np.stack([rho - self.radius, np.abs(points[:, 2] - (self.z0 + self.z1) / 2) - half], axis=-1)
        outside = np.linalg.norm(np.maximum(q, 0.0), axis=-1)
        inside = np.minimum(q.max(axis=-1), 0.0)
        return outside + inside

    def tessellate(self, max_edge_m: float) -> MeshParts:
        """Side wall and top cap (the bottom cap rests on the floor)."""
        return concatenate_parts([self._side(max_edge_m), self._top_cap(max_edge_m)])

    def _side(self, max_edge_m: float) -> MeshParts:
        step = max_edge_m / math.sqrt(2.0)
        n_theta = max(8, math.ceil(2 * math.pi * self.radius / step))
        n_z = max(1, math.ceil((self.z1 - self.z0) / step))
        theta = np.linspace(0.0, 2 * math.pi, n_theta, endpoint=False)
        z = np.linspace(self.z0, self.z1, n_z + 1)
        T, Z = np.meshgrid(theta, z, indexing="ij")
        normals = np.stack([np.cos(T), np.sin(T), np.zeros_like(T)], -1).reshape(-1, 3)
        vertices = np.column_stack([
            self.centre[0] + self.radius * normals[:, 0],
            self.centre[1] + self.radius * normals[:, 1],
            Z.ravel(),
        ])
        return vertices, _grid_faces(n_theta, n_z, wrap_u=True), normals  # theta x z is CCW from outside

    def _top_cap(self, max_edge_m: float) -> MeshParts:
        """Polar grid: equal angular count on every ring, rings no further apart than the arc step."""
        step = max_edge_m / math.sqrt(2.0)
        n_theta = max(8, math.ceil(2 * math.pi * self.radius / step))
        n_r = max(1, math.ceil(self.radius / step))
        theta = np.linspace(0.0, 2 * math.pi, n_theta, endpoint=False)
        radii = np.linspace(0.0, self.radius, n_r + 1)[1:]
        R, T = np.meshgrid(radii, theta, indexing="ij")  # ring-major: index = ring * n_theta + k
        ring_xy = np.stack([R * np.cos(T), R * np.sin(T)], -1).reshape(-1, 2) + np.asarray(self.centre)
        ring_vertices = np.column_stack([ring_xy, np.full(len(ring_xy), self.z1)])
        vertices = np.vstack([[*self.centre, self.z1], ring_vertices])
        k = np.arange(n_theta)
        k1 = (k + 1) % n_theta
        fan = np.stack([np.zeros(n_theta, np.int64), 1 + k, 1 + k1], 1)
        ring, kk = np.meshgrid(np.arange(n_r - 1), k, indexing="ij")
        ring, kk = ring.ravel(), kk.ravel()
        kk1 = (kk + 1) % n_theta
        a = 1 + ring * n_theta + kk
        b = 1 + ring * n_theta + kk1
        c = 1 + (ring + 1) * n_theta + kk
        d = 1 + (ring + 1) * n_theta + kk1
        faces = np.concatenate([fan, np.stack([a, c, d], 1), np.stack([a, d, b], 1)]).astype(np.int64)
        normals = np.zeros_like(vertices)
        normals[:, 2] = 1.0
        return vertices, faces, normals


def concatenate_parts(parts: list[MeshParts]) -> MeshParts:
    """Join meshes, offsetting face indices (vertices are not merged across parts)."""
    offsets = np.cumsum([0] + [len(v) for v, _, _ in parts[:-1]])
    vertices = np.concatenate([v for v, _, _ in parts])
    faces = np.concatenate([f + o for (_, f, _), o in zip(parts, offsets)])
    normals = np.concatenate([n for _, _, n in parts])
    return vertices, faces, normals
