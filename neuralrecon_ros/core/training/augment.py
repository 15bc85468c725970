"""Upstream's spatial augmentation (facts §2.7): a random rotation of the world about z and a random shift.

The whole fragment (every keyframe pose) moves rigidly with ``T_aug = T_augmented_scene``; its targets
are then looked up in the scene TSDF at ``inv(T_aug)`` of each voxel (:func:`.targets.fragment_targets`).
The shift is horizontal plus a small vertical jitter: the network's fragment volume sits at a fixed
height (-0.32 .. 3.48 m), so the floor has to stay near z = 0 (upstream pads z by only 0.025 m).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..config import param
from ..types import Frame


@dataclass
class AugmentConfig:
    random_rotation: bool = param(
        True, "Rotate each scene (per epoch) by a random angle about the world z axis."
    )
    random_translation: bool = param(True, "Shift each scene (per epoch) by a random horizontal offset.")
    max_translation_xy_m: float = param(
        1.0,
        "Largest horizontal shift per axis (moves the scene against the 0.32 m volume placement grid).",
        minimum=0.0,
        unit="m",
    )
    max_translation_z_m: float = param(
        0.025, "Largest vertical shift (upstream PAD_Z_3D).", minimum=0.0, unit="m"
    )


def random_transform(rng: np.random.Generator, config: AugmentConfig) -> np.ndarray:
    """A random ``T_augmented_scene`` (4x4 float64): rotation about z, then translation."""
    T = np.eye(4)
    if config.random_rotation:
        angle = rng.uniform(0.0, 2.0 * math.pi)
        c, s = math.cos(angle), math.sin(angle)
        T[:2, :2] = [[c, -s], [s, c]]
    if config.random_translation:
        T[0, 3], T[1, 3] = rng.uniform(-config.max_translation_xy_m, config.max_translation_xy_m, size=2)
        T[2, 3] = rng.uniform(-config.max_translation_z_m, config.max_translation_z_m)
    return T


def transform_frames(frames: Sequence[Frame], T_new_old: np.ndarray) -> list[Frame]:
    """The frames with poses ``T_new_old @ T_old_camera`` (images and depth shared, not copied)."""
    return [dataclasses.replace(f, T_world_camera=T_new_old @ f.T_world_camera) for f in frames]
