"""The network world frame and how the user's ``global_frame`` maps onto it.

NeuralRecon was trained in ScanNet's convention: world z points up and the floor lies near z = 0
(facts §1.2/§1.3). Its fragment volume is always placed at heights -0.32 .. 3.48 m, so a world whose
floor sits elsewhere (an ``odom`` frame that starts at the camera, 1.4 m above the floor) or whose up
axis is not z (ARKit / OpenGL y-up worlds, a SLAM frame anchored at the first optical camera frame)
loses the scene outside that slab. ``T_network_global`` rotates the configured up axis onto +z and
shifts the floor to height 0; the map lives in the network world, and meshes go back to the global
frame with the inverse (the pipeline applies both).
"""

from __future__ import annotations

import numpy as np

from ..geometry import invert
from .config import UP_AXES, NeuralReconConfig

# Rotations R_network_global taking the named up axis of the global frame onto the network's +z.
_UP_AXIS_ROTATIONS = {
    "z": np.eye(3),
    # +90 deg about x: (x, y, z) -> (x, -z, y); upstream's ARKit conversion (facts §1.2)
    "y": np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]]),
    # -90 deg about x: (x, y, z) -> (x, z, -y); an optical frame (y down) used as world
    "-y": np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]]),
}


class WorldConventionError(ValueError):
    """The world-convention parameters do not describe a valid transform."""


def network_from_global(up_axis: str = "z", floor_height_m: float = 0.0) -> np.ndarray:
    """``T_network_global`` (4x4 float64): rotate ``up_axis`` onto +z, then lift the floor to z = 0."""
    if up_axis not in _UP_AXIS_ROTATIONS:
        raise WorldConventionError(
            f"global_frame_up_axis {up_axis!r} is not supported; expected one of {', '.join(UP_AXES)}"
        )
    if not np.isfinite(floor_height_m):
        raise WorldConventionError(f"floor_height_m must be finite, got {floor_height_m!r}")
    T = np.eye(4)
    T[:3, :3] = _UP_AXIS_ROTATIONS[up_axis]
    T[2, 3] = -float(floor_height_m)
    return T


def network_from_global_config(config: NeuralReconConfig) -> np.ndarray:
    """``T_network_global`` for a :class:`NeuralReconConfig`."""
    return network_from_global(config.global_frame_up_axis, config.floor_height_m)


def global_from_network_config(config: NeuralReconConfig) -> np.ndarray:
    """``T_global_network``: takes network-world points and meshes back into the global frame."""
    return invert(network_from_global_config(config))
