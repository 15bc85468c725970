"""A rendered synthetic camera sequence: scene + trajectory + intrinsics, frames rendered lazily."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ..types import CameraIntrinsics, Frame
from .raycast import render
from .scene import Scene, SceneConfig, generate_scene
from .trajectory import CameraMount, TrajectoryConfig, generate_trajectory

OPTICAL_FRAME_ID = "camera_color_optical_frame"
DEFAULT_RATE_HZ = 30.0
DEFAULT_START_STAMP = 1.7e9


def default_intrinsics(width: int = 640, height: int = 480) -> CameraIntrinsics:
    """fx = fy = 520 at 640 px wide (scaled with the width), principal point at the image centre."""
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width} x {height}")
    focal = 520.0 * width / 640.0
    return CameraIntrinsics(focal, focal, (width - 1) / 2.0, (height - 1) / 2.0, width, height)


@dataclass(frozen=True, eq=False)  # identity equality: fields hold numpy arrays
class SyntheticSequence:
    """Posed RGB-D frames of a synthetic scene. Iterating renders each :class:`Frame` on demand."""

    scene: Scene
    intrinsics: CameraIntrinsics
    stamps: tuple[float, ...]
    poses: tuple[np.ndarray, ...]  # T_world_camera (optical frame), float64 4x4
    style: str
    mount: CameraMount  # camera on its base (exact for "robot"; places a floating base for "handheld")
    frame_id: str = OPTICAL_FRAME_ID

    def __len__(self) -> int:
        return len(self.poses)

    def __getitem__(self, index: int) -> Frame:
        if not -len(self) <= index < len(self):
            raise IndexError(f"frame {index} out of range for a sequence of {len(self)} frames")
        index %= len(self)
        rgb, depth = render(self.scene, self.poses[index], self.intrinsics)
        return Frame(
            stamp=self.stamps[index],
            image=rgb,
            intrinsics=self.intrinsics,
            T_world_camera=self.poses[index].copy(),
            depth=depth,
            frame_id=self.frame_id,
            index=index,
        )

    def __iter__(self) -> Iterator[Frame]:
        for index in range(len(self)):
            yield self[index]


def make_sequence(
    seed: int,
    n_frames: int = 300,
    width: int = 640,
    height: int = 480,
    style: str = "handheld",
    rate_hz: float = DEFAULT_RATE_HZ,
    start_stamp: float = DEFAULT_START_STAMP,
    scene_config: SceneConfig | None = None,
    trajectory_config: TrajectoryConfig | None = None,
) -> SyntheticSequence:
    """Scene and trajectory from ``seed``; frames are rendered only when accessed."""
    trajectory_config = trajectory_config or TrajectoryConfig()
    scene = generate_scene(seed, scene_config)
    trajectory = generate_trajectory(scene, n_frames, seed, style, rate_hz, start_stamp, trajectory_config)
    return SyntheticSequence(
        scene=scene,
        intrinsics=default_intrinsics(width, height),
        stamps=tuple(stamp for stamp, _ in trajectory),
        poses=tuple(pose for _, pose in trajectory),
        style=style,
        mount=trajectory_config.mount(),
    )
