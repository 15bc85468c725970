"""Plain data types shared by every layer: camera model, posed frames, fragments, meshes.

Conventions (see README "Conventions"):
- ``T_a_b`` is a 4x4 float64 rigid transform mapping points from frame ``b`` into frame ``a``.
- Cameras are optical frames (REP-103): x right, y down, z forward.
- Images are RGB uint8 (H, W, 3); depth is float32 metres (H, W), 0 or NaN = invalid.
- Stamps are float seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class CameraIntrinsics:
    """Pinhole intrinsics of an image of ``width`` x ``height`` pixels (no distortion)."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    @property
    def matrix(self) -> np.ndarray:
        """The 3x3 camera matrix K (float64)."""
        return np.array(
            [[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]], dtype=np.float64
        )

    @classmethod
    def from_matrix(cls, K: np.ndarray, width: int, height: int) -> CameraIntrinsics:
        K = np.asarray(K, dtype=np.float64)
        return cls(float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]), int(width), int(height))

    def scaled(self, width: int, height: int) -> CameraIntrinsics:
        """Intrinsics of the same camera resampled to ``width`` x ``height`` pixels."""
        sx, sy = width / self.width, height / self.height
        return CameraIntrinsics(self.fx * sx, self.fy * sy, self.cx * sx, self.cy * sy, width, height)


@dataclass
class Frame:
    """One posed camera frame, the unit that flows into the pipeline."""

    stamp: float
    image: np.ndarray
    intrinsics: CameraIntrinsics
    T_world_camera: np.ndarray
    depth: np.ndarray | None = None
    frame_id: str = "camera"
    index: int = -1  # position in the input stream, for bookkeeping and messages


@dataclass
class Fragment:
    """A closed window of keyframes (upstream NeuralRecon: 9), the unit of network inference."""

    index: int
    keyframes: list[Frame]

    @property
    def stamp(self) -> float:
        return self.keyframes[-1].stamp


@dataclass
class Mesh:
    """A triangle mesh. ``vertices`` float32 (V, 3) metres, ``faces`` int64 (F, 3), optional colours."""

    vertices: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.float32))
    faces: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.int64))
    vertex_colors: np.ndarray | None = None  # uint8 (V, 3) RGB
    vertex_normals: np.ndarray | None = None  # float32 (V, 3)

    @property
    def is_empty(self) -> bool:
        return len(self.faces) == 0
