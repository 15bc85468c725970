"""Multi-room worlds and robot tours through them: long runs that keep leaving and revisiting rooms.

A floor plan is a grid of ``rooms_x`` x ``rooms_y`` rooms inside one outer shell (a :class:`Room`): column
widths and row depths are drawn per column / row, rooms are separated by floor-to-ceiling walls
(:class:`Box` objects) with a doorway on every wall between two neighbours, centred on the line joining
the two room centres. Furniture stands in the rooms' corners, outside a free *cross* through each room
centre (the lines from the centre to its doorways), so a robot can always drive centre -> doorway ->
centre. The result is an ordinary :class:`~.scene.Scene` (exact SDF, ray casting, ground-truth mesh);
its ``walkway`` is the free square at the centre of room 0, so the single-room trajectory styles still
work there.

:func:`generate_room_tour` drives a robot base (pure yaw, camera on a :class:`CameraMount`) on a seeded
random walk over the room graph: from a room's centre it turns on the spot to face a neighbouring room
and drives straight through the doorway to that room's centre, never straight back unless it must.
Turns and drives follow a smooth (cosine) velocity profile whose peak is the speed / yaw-rate limit.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from ..config import param
from ..types import CameraIntrinsics
from .primitives import Box, Cylinder, Room
from .scene import N_ROOM_SURFACES, Scene, SceneConfig, footprint_distance
from .sequence import DEFAULT_RATE_HZ, DEFAULT_START_STAMP, SyntheticSequence, default_intrinsics
from .texture import random_material
from .trajectory import TrajectoryConfig, TrajectoryError, body_rotation

_MAX_PLACEMENT_ATTEMPTS = 500


class FloorPlanError(ValueError):
    """A floor plan cannot be generated with the given settings."""


@dataclass
class FloorPlanConfig:
    rooms_x: int = param(3, "Rooms along x.", minimum=1, maximum=20)
    rooms_y: int = param(2, "Rooms along y.", minimum=1, maximum=20)
    room_size_min_m: float = param(3.5, "Smallest room side (drawn per column and per row).", unit="m")
    room_size_max_m: float = param(5.0, "Largest room side.", unit="m")
    room_height_m: float = param(2.6, "Floor-to-ceiling height of every room.", unit="m")
    wall_thickness_m: float = param(0.12, "Thickness of the walls between rooms.", unit="m")
    door_width_m: float = param(1.0, "Width of a doorway (it spans floor to ceiling).", unit="m")
    free_band_m: float = param(
        1.6, "Width of the furniture-free band through each room centre to its doorways.", unit="m")
    boxes_per_room: int = param(2, "Box furniture pieces per room (fewer if they do not fit).", minimum=0)
    cylinders_per_room: int = param(1, "Cylinders per room (fewer if they do not fit).", minimum=0)

    def validate(self) -> None:
        if self.rooms_x < 1 or self.rooms_y < 1:
            raise FloorPlanError(f"need at least one room, got rooms_x={self.rooms_x}, rooms_y={self.rooms_y}")
        if not 0 < self.room_size_min_m <= self.room_size_max_m:
            raise FloorPlanError(f"room_size_min_m / _max_m must satisfy 0 < min <= max, got "
                                 f"{self.room_size_min_m} / {self.room_size_max_m}")
        if not self.door_width_m <= self.free_band_m < self.room_size_min_m:
            raise FloorPlanError(f"need door_width_m ({self.door_width_m}) <= free_band_m ({self.free_band_m}) "
                                 f"< room_size_min_m ({self.room_size_min_m})")
        if self.wall_thickness_m <= 0 or self.room_height_m < 1.5:
            raise FloorPlanError(f"wall_thickness_m must be > 0 and room_height_m >= 1.5, got "
                                 f"{self.wall_thickness_m} / {self.room_height_m}")


@dataclass(frozen=True, eq=False)
class FloorPlan:
    """A multi-room :class:`Scene` with its room layout; room ``i`` is column ``i % rooms_x``, row ``i // rooms_x``."""

    scene: Scene
    rooms: tuple[tuple[float, float, float, float], ...]  # interior rectangles (x0, y0, x1, y1)
    rooms_x: int
    rooms_y: int

    @property
    def n_rooms(self) -> int:
        return len(self.rooms)

    def centre(self, room: int) -> np.ndarray:
        x0, y0, x1, y1 = self.rooms[room]
        return np.array([(x0 + x1) / 2, (y0 + y1) / 2])

    def neighbours(self, room: int) -> list[int]:
        """Rooms sharing a doorway with ``room`` (the four grid neighbours that exist)."""
        ix, iy = room % self.rooms_x, room // self.rooms_x
        out = []
        for dx, dy in ((-1, 0), (1, 0), (0, -1), (0, 1)):
            jx, jy = ix + dx, iy + dy
            if 0 <= jx < self.rooms_x and 0 <= jy < self.rooms_y:
                out.append(jy * self.rooms_x + jx)
        return out

    def room_of(self, points_xy: np.ndarray) -> np.ndarray:
        """Room index of each (N, 2) floor point; -1 inside a wall or doorway."""
        points = np.asarray(points_xy, np.float64).reshape(-1, 2)
        out = np.full(len(points), -1, np.int64)
        for index, (x0, y0, x1, y1) in enumerate(self.rooms):
            inside = (points[:, 0] >= x0) & (points[:, 0] <= x1) & (points[:, 1] >= y0) & (points[:, 1] <= y1)
            out[inside] = index
        return out


def generate_floor_plan(seed: int, config: FloorPlanConfig | None = None,
                        scene_config: SceneConfig | None = None) -> FloorPlan:
    """A random multi-room world; identical for identical arguments. ``scene_config`` gives the
    materials' texture ranges, the ambient light and whether there is a ceiling (its room and furniture
    sizes are not used, except the box / cylinder size ranges)."""
    config = config or FloorPlanConfig()
    config.validate()
    scene_config = scene_config or SceneConfig()
    rng = np.random.default_rng([0xF1, seed])
    widths = rng.uniform(config.room_size_min_m, config.room_size_max_m, config.rooms_x)
    depths = rng.uniform(config.room_size_min_m, config.room_size_max_m, config.rooms_y)
    t, height = config.wall_thickness_m, config.room_height_m
    x_starts = np.concatenate([[0.0], np.cumsum(widths + t)[:-1]])
    y_starts = np.concatenate([[0.0], np.cumsum(depths + t)[:-1]])
    shell = Room((float(widths.sum() + t * (config.rooms_x - 1)), float(depths.sum() + t * (config.rooms_y - 1)),
                  height), ceiling=scene_config.ceiling)
    rooms = tuple((float(x0), float(y0), float(x0 + w), float(y0 + d))
                  for y0, d in zip(y_starts, depths) for x0, w in zip(x_starts, widths))
    walls = _walls(x_starts, widths, y_starts, depths, config, height)
    furniture: list[Box | Cylinder] = []
    for rect in rooms:
        furniture += _furnish(rng, rect, config, scene_config, height)
    objects = tuple(walls + furniture)
    materials = tuple(random_material(rng, scene_config.range("texture_scale"), scene_config.texture_noise)
                      for _ in range(N_ROOM_SURFACES + len(objects)))
    lights = np.array([[(r[0] + r[2]) / 2, (r[1] + r[3]) / 2, height - 0.3] for r in rooms])
    half = config.free_band_m / 2
    cx, cy = (rooms[0][0] + rooms[0][2]) / 2, (rooms[0][1] + rooms[0][3]) / 2
    scene_config = dataclasses.replace(scene_config, n_lights=len(rooms))
    scene = Scene(seed, scene_config, shell, objects, materials, lights, (cx - half, cy - half, cx + half, cy + half))
    return FloorPlan(scene, rooms, config.rooms_x, config.rooms_y)


def _walls(x_starts: np.ndarray, widths: np.ndarray, y_starts: np.ndarray, depths: np.ndarray,
           config: FloorPlanConfig, height: float) -> list[Box | Cylinder]:
    """Floor-to-ceiling walls between neighbouring rooms, split around a doorway at each room's centre line."""
    t, half_door = config.wall_thickness_m, config.door_width_m / 2
    walls: list[Box | Cylinder] = []
    # walls at x = x0 + w (between columns i and i + 1), one segment run along each row with its doorway
    for x0, w in zip(x_starts[:-1], widths[:-1]):
        for y0, d in zip(y_starts, depths):
            door = y0 + d / 2
            walls += [Box((x0 + w, y0 - (t if y0 > 0 else 0), 0.0), (x0 + w + t, door - half_door, height)),
                      Box((x0 + w, door + half_door, 0.0), (x0 + w + t, y0 + d, height))]
    for y0, d in zip(y_starts[:-1], depths[:-1]):
        for x0, w in zip(x_starts, widths):
            door = x0 + w / 2
            walls += [Box((x0, y0 + d, 0.0), (door - half_door, y0 + d + t, height)),
                      Box((door + half_door, y0 + d, 0.0), (x0 + w, y0 + d + t, height))]
    return walls


def _furnish(rng: np.random.Generator, rect: tuple[float, float, float, float], config: FloorPlanConfig,
             scene_config: SceneConfig, height: float) -> list[Box | Cylinder]:
    """Furniture in one room's corners: outside the free cross, ``clearance_m`` from walls and each other."""
    x0, y0, x1, y1 = rect
    cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, config.free_band_m / 2
    cross = ((x0, cy - half, x1, cy + half), (cx - half, y0, cx + half, y1))
    gap = scene_config.clearance_m
    max_height = height - 0.3
    placed: list[Box | Cylinder] = []
    for kind in ["box"] * config.boxes_per_room + ["cylinder"] * config.cylinders_per_room:
        for _ in range(_MAX_PLACEMENT_ATTEMPTS):
            if kind == "box":
                sx, sy = rng.uniform(*scene_config.range("box_size"), size=2)
                h = min(float(rng.uniform(*scene_config.range("box_height"))), max_height)
                if sx + 2 * gap >= x1 - x0 or sy + 2 * gap >= y1 - y0:
                    continue
                bx, by = rng.uniform(x0 + gap, x1 - gap - sx), rng.uniform(y0 + gap, y1 - gap - sy)
                candidate: Box | Cylinder = Box((float(bx), float(by), 0.0), (float(bx + sx), float(by + sy), h))
            else:
                r = float(rng.uniform(*scene_config.range("cylinder_radius")))
                h = min(float(rng.uniform(*scene_config.range("cylinder_height"))), max_height)
                ccx = rng.uniform(x0 + gap + r, x1 - gap - r)
                ccy = rng.uniform(y0 + gap + r, y1 - gap - r)
                candidate = Cylinder((float(ccx), float(ccy)), r, 0.0, h)
            if all(footprint_distance(band, candidate) >= gap for band in cross) and all(
                    footprint_distance(candidate, other) >= gap for other in placed):
                placed.append(candidate)
                break
    return placed


def generate_room_tour(
    plan: FloorPlan,
    n_frames: int,
    seed: int,
    rate_hz: float = DEFAULT_RATE_HZ,
    start_stamp: float = DEFAULT_START_STAMP,
    config: TrajectoryConfig | None = None,
) -> tuple[list[tuple[float, np.ndarray]], list[int]]:
    """A robot's ``n_frames`` (stamp, T_world_camera) at ``rate_hz`` on a random walk over the rooms,
    and the rooms it visits in order (starting in room 0). Deterministic for a seed.

    Speed and yaw rate stay within ``config.max_speed_mps`` and ``robot_max_rotation_deg_s``; every
    camera centre is checked to be ``min_clearance_m`` from any surface.
    """
    config = config or TrajectoryConfig()
    config.validate()
    if n_frames < 1:
        raise TrajectoryError(f"n_frames must be >= 1, got {n_frames}")
    if not (math.isfinite(rate_hz) and rate_hz > 0):
        raise TrajectoryError(f"rate_hz must be a positive number, got {rate_hz}")
    rng = np.random.default_rng([0x70, seed])
    max_yaw_rate = math.radians(config.robot_max_rotation_deg_s)
    duration = (n_frames - 1) / rate_hz
    # Segments (duration, start xy, end xy, start yaw, end yaw), each with a cosine profile.
    segments: list[tuple[float, np.ndarray, np.ndarray, float, float]] = []
    visits = [0]
    xy, yaw, total, previous = plan.centre(0), float(rng.uniform(-math.pi, math.pi)), 0.0, -1
    while total <= duration:
        options = [r for r in plan.neighbours(visits[-1]) if r != previous] or plan.neighbours(visits[-1])
        if not options:  # a single room: turn on the spot
            options = [visits[-1]]
        target = int(rng.choice(options))
        goal = plan.centre(target)
        heading = yaw if target == visits[-1] else math.atan2(goal[1] - xy[1], goal[0] - xy[0])
        turn = (heading - yaw + math.pi) % (2 * math.pi) - math.pi if target != visits[-1] else math.pi
        for seg_duration, end_xy, end_yaw in (
            (math.pi / 2 * abs(turn) / max_yaw_rate, xy, yaw + turn),
            (math.pi / 2 * float(np.linalg.norm(goal - xy)) / config.max_speed_mps, goal, yaw + turn),
        ):
            if seg_duration > 0:
                segments.append((seg_duration, xy, end_xy, yaw, end_yaw))
                total += seg_duration
            xy, yaw = end_xy, end_yaw
        previous = visits[-1]
        visits.append(target)
    times = np.arange(n_frames) / rate_hz
    poses = _tour_poses(segments, times, config)
    clearance = plan.scene.sdf(poses[:, :3, 3])
    worst = int(np.argmin(clearance))
    if clearance[worst] < config.min_clearance_m:
        raise TrajectoryError(f"frame {worst}: camera at {poses[worst, :3, 3].round(3).tolist()} is only "
                              f"{clearance[worst]:.3f} m from a surface (min_clearance_m = {config.min_clearance_m})")
    # the rooms actually reached within the frames
    reached = plan.room_of(poses[:, :2, 3])
    entered = [int(r) for r in reached[np.r_[True, reached[1:] != reached[:-1]]] if r >= 0]
    rooms = [r for i, r in enumerate(entered) if i == 0 or r != entered[i - 1]]
    return [(start_stamp + float(t), pose) for t, pose in zip(times, poses)], rooms


def _tour_poses(segments: list[tuple[float, np.ndarray, np.ndarray, float, float]], times: np.ndarray,
                config: TrajectoryConfig) -> np.ndarray:
    ends = np.cumsum([s[0] for s in segments])
    starts = ends - np.array([s[0] for s in segments])
    index = np.minimum(np.searchsorted(ends, times, side="right"), len(segments) - 1)
    xy = np.empty((len(times), 2))
    yaw = np.empty(len(times))
    for k in np.unique(index):
        rows = index == k
        seg_duration, a, b, yaw_a, yaw_b = segments[k]
        tau = np.clip((times[rows] - starts[k]) / seg_duration, 0.0, 1.0)
        s = (1 - np.cos(math.pi * tau)) / 2  # cosine profile: peak rate pi/2 x the mean
        xy[rows] = a + s[:, None] * (b - a)
        yaw[rows] = yaw_a + s * (yaw_b - yaw_a)
    T_world_base = np.zeros((len(times), 4, 4))
    T_world_base[:, :3, :3] = body_rotation(yaw, 0.0, 0.0)
    T_world_base[:, :2, 3] = xy
    T_world_base[:, 3, 3] = 1.0
    return T_world_base @ config.mount().T_base_optical()


def make_tour_sequence(
    seed: int,
    n_frames: int,
    width: int = 160,
    height: int = 120,
    rate_hz: float = DEFAULT_RATE_HZ,
    plan_config: FloorPlanConfig | None = None,
    trajectory_config: TrajectoryConfig | None = None,
    intrinsics: CameraIntrinsics | None = None,
) -> tuple[SyntheticSequence, FloorPlan, list[int]]:
    """A robot touring a seeded floor plan: the sequence (rendered lazily), the plan, the rooms visited."""
    trajectory_config = trajectory_config or TrajectoryConfig()
    plan = generate_floor_plan(seed, plan_config)
    tour, rooms = generate_room_tour(plan, n_frames, seed, rate_hz, DEFAULT_START_STAMP, trajectory_config)
    sequence = SyntheticSequence(
        scene=plan.scene, intrinsics=intrinsics or default_intrinsics(width, height),
        stamps=tuple(stamp for stamp, _ in tour), poses=tuple(pose for _, pose in tour),
        style="robot", mount=trajectory_config.mount(),
    )
    return sequence, plan, rooms


__all__ = ["FloorPlan", "FloorPlanConfig", "FloorPlanError", "generate_floor_plan", "generate_room_tour",
           "make_tour_sequence"]
