"""The global-frame -> network-world convention (up axis, floor height)."""

from __future__ import annotations

import numpy as np
import pytest

from neuralrecon_ros.core.geometry import check_rigid
from neuralrecon_ros.core.network.config import NeuralReconConfig
from neuralrecon_ros.core.network.world import (
    WorldConventionError,
    global_from_network_config,
    network_from_global,
    network_from_global_config,
)


@pytest.mark.parametrize(
    ("up_axis", "up_vector"),
    [("z", [0.0, 0.0, 1.0]), ("y", [0.0, 1.0, 0.0]), ("-y", [0.0, -1.0, 0.0])],
)
def test_up_axis_maps_to_network_z_and_floor_to_zero(up_axis, up_vector):
    floor = -1.4
    T = network_from_global(up_axis, floor)
    check_rigid(T)
    up = np.asarray(up_vector)
    # a point on the floor (height `floor` along the up axis) lands at network z = 0 ...
    on_floor = np.append(floor * up + np.array([0.3, 0.3, 0.3]) * (1 - np.abs(up)), 1.0)
    assert T[:3, :3] @ up == pytest.approx([0.0, 0.0, 1.0])
    assert (T @ on_floor)[2] == pytest.approx(0.0)
    # ... and 2 m above the floor at z = 2
    assert (T @ (on_floor + np.append(2.0 * up, 0.0)))[2] == pytest.approx(2.0)


def test_config_round_trip_and_errors():
    config = NeuralReconConfig(global_frame_up_axis="y", floor_height_m=0.25)
    T = network_from_global_config(config)
    assert np.allclose(global_from_network_config(config) @ T, np.eye(4))
    with pytest.raises(WorldConventionError, match="global_frame_up_axis 'x'"):
        network_from_global("x")
    with pytest.raises(WorldConventionError, match="finite"):
        network_from_global("z", float("nan"))
