"""The output table, rate limiting, the fragment-volume box and failure isolation of the map publisher."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from rosbags.typesys import Stores, get_typestore

from neuralrecon_ros.core.geometry import make_transform, rotation_about_axis
from neuralrecon_ros.core.synthetic import make_sequence
from neuralrecon_ros.core.types import CameraIntrinsics, Frame
from neuralrecon_ros.io import messages as m
from neuralrecon_ros.io.interfaces import register_custom_types
from neuralrecon_ros.node.outputs import (
    MAP_OUTPUT_KEYS,
    OUTPUTS,
    MapOutputs,
    RateLimiter,
    box_corners,
    fragment_volume_corners,
    output_topic_name,
)
from neuralrecon_ros.node.parameters import NodeParameters, parameter_infos
from neuralrecon_ros.node.pipeline_factory import build_pipeline

TYPES = m.rosbags_types(get_typestore(Stores.ROS2_HUMBLE))
register_custom_types(TYPES.typestore)  # the package's own messages (~/tsdf_layer)


class Recorder:
    types = TYPES

    def __init__(self) -> None:
        self.published: list[tuple[str, object]] = []

    def publish(self, key: str, msg: object) -> None:
        self.published.append((key, msg))


def test_output_table():
    keys = [out.key for out in OUTPUTS]
    assert len(keys) == len(set(keys)) and set(MAP_OUTPUT_KEYS) <= set(keys)
    infos = parameter_infos()
    for out in OUTPUTS:
        assert out.rate_parameter in infos and infos[out.rate_parameter].spec.minimum == 0.0
        assert TYPES(out.msgtype) is not None
    latched = {out.key for out in OUTPUTS if out.latched}
    assert latched == {"mesh", "tsdf_voxels", "occupancy_grid", "esdf_slice"}
    assert output_topic_name("mesh", "robot1/neuralrecon") == "/robot1/neuralrecon/mesh"
    names = [out.ros_name for out in OUTPUTS if out.key in ("mesh", "diagnostics")]
    assert names == ["~/mesh", "/diagnostics"]


def test_rate_limiter_on_a_clock_that_may_jump_back():
    limiter = RateLimiter()
    assert not limiter.due(0.0, 0.0)  # rate 0: disabled
    assert limiter.due(10.0, 2.0)
    limiter.mark(10.0)
    assert not limiter.due(10.49, 2.0) and limiter.due(10.5, 2.0)
    assert limiter.due(3.0, 2.0)  # time went back (a looped bag): due at once, not in 7 s


def test_box_corners():
    corners = box_corners(np.array([0.0, 1.0, 2.0]), np.array([3.0, 4.0, 5.0]))
    assert corners.shape == (8, 3) and len({tuple(c) for c in corners}) == 8
    np.testing.assert_array_equal(corners[0], [0, 1, 2])
    np.testing.assert_array_equal(corners[7], [3, 4, 5])
    np.testing.assert_array_equal(corners[1], [3, 1, 2])  # bit 0 = x


INTRINSICS = CameraIntrinsics(100.0, 100.0, 80.0, 60.0, 160, 120)


class _Fragments:
    def __init__(self, pending: list[Frame]) -> None:
        self.pending = pending


class _Reconstructor:
    def __init__(self, name: str, last_result: object = None) -> None:
        self.name = name
        self.last_result = last_result


class _Pipeline:
    def __init__(self, name: str, pending: list[Frame], T_global_map: np.ndarray | None = None,
                 last_result: object = None) -> None:
        self.fragments = _Fragments(pending)
        self.reconstructor = _Reconstructor(name, last_result)
        self.T_global_map = np.eye(4) if T_global_map is None else T_global_map


def _frame(position: list[float]) -> Frame:
    # looking along +x of the world (optical z = world x, optical x = -world y, optical y = -world z)
    R = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    return Frame(0.0, np.zeros((120, 160, 3), np.uint8), INTRINSICS, make_transform(R, position))


def test_fragment_volume_in_depth_mode_boxes_the_pending_frusta():
    assert fragment_volume_corners(_Pipeline("depth", []), 2.0) is None
    frames = [_frame([0.0, 0.0, 1.0]), _frame([0.5, 0.0, 1.0])]
    corners = fragment_volume_corners(_Pipeline("depth", frames), 2.0)
    # frusta to 2 m: x from the first camera to the second one's far plane; y, z: the far image corners
    half_w, half_h = 2.0 * 80.0 / 100.0, 2.0 * 60.0 / 100.0
    np.testing.assert_allclose(corners.min(axis=0), [0.0, -half_w, 1.0 - half_h], atol=1e-12)
    np.testing.assert_allclose(corners.max(axis=0), [2.5, half_w, 1.0 + half_h], atol=1e-12)
    # a map frame placed differently in the global frame moves the box with it
    T = make_transform(rotation_about_axis([0, 0, 1], np.pi / 2), [1.0, 2.0, 0.0])
    moved = fragment_volume_corners(_Pipeline("depth", frames, T), 2.0)
    np.testing.assert_allclose(moved, corners @ T[:3, :3].T + T[:3, 3], atol=1e-12)


def test_fragment_volume_in_neuralrecon_mode_is_the_network_volume():
    class Result:
        vol_origin_voxels = __import__("torch").tensor([-48, 8, -8])

    assert fragment_volume_corners(_Pipeline("neuralrecon", []), 2.0) is None
    last = fragment_volume_corners(_Pipeline("neuralrecon", [], last_result=Result()), 2.0)
    np.testing.assert_allclose(last.min(axis=0), [-1.92, 0.32, -0.32], atol=1e-9)
    np.testing.assert_allclose(last.max(axis=0), [1.92, 4.16, 3.52], atol=1e-9)  # 96 voxels of 4 cm
    pending = fragment_volume_corners(_Pipeline("neuralrecon", [_frame([0.0, 0.0, 1.2])] * 3), 2.0)
    low, high = pending.min(axis=0), pending.max(axis=0)
    np.testing.assert_allclose(high - low, [3.84] * 3, atol=1e-9)
    np.testing.assert_allclose(low[2], -0.32, atol=1e-9)  # upstream: the volume starts 0.32 m below the floor
    np.testing.assert_allclose(np.round(low / 0.32) * 0.32, low, atol=1e-9)  # origins on 8-voxel steps
    assert low[0] < 1.5 < high[0]  # centred on the views' frustum hull in x (0 .. 3 m ahead)


@pytest.fixture(scope="module")
def pipeline_with_a_map():
    sequence = make_sequence(seed=3, n_frames=3, width=64, height=48)
    pipeline = build_pipeline(NodeParameters({"mode": "depth"}))
    frames = list(sequence)
    results = [pipeline.process(frame) for frame in frames]
    return pipeline, frames, results


def test_a_failing_output_is_logged_once_counted_and_the_others_go_on(pipeline_with_a_map, caplog):
    pipeline, frames, results = pipeline_with_a_map
    rates = ("occupancy_publish_rate_hz", "esdf_publish_rate_hz", "tsdf_cloud_publish_rate_hz",
             "full_mesh_publish_rate_hz")
    params = NodeParameters({"mode": "depth", **dict.fromkeys(rates, 100.0)})
    recorder = Recorder()
    outputs = MapOutputs(params, pipeline, recorder)
    outputs.publish_due(0.0)
    assert recorder.published == []  # nothing changed yet: nothing to publish
    tilted = make_transform(rotation_about_axis([1, 0, 0], 0.5), [0, 0, 0])
    pipeline.T_global_map = tilted  # a map tilted against the global frame has no 2D grid
    try:
        caplog.set_level(logging.ERROR, "neuralrecon_ros")
        for step, (frame, result) in enumerate(zip(frames, results)):
            outputs.note_frame(frame, result)
            outputs.publish_due(float(step))
    finally:
        pipeline.T_global_map = np.eye(4)
    keys = [key for key, _ in recorder.published]
    assert keys.count("tsdf_voxels") == 3 and keys.count("mesh") == 3 and "occupancy_grid" not in keys
    assert outputs.errors == 6 and caplog.text.count("cannot publish") == 2  # grid and ESDF, once each
    assert "tilts the map's z axis" in caplog.text
    # the chunks were all sent at once (the map was built before); the box follows the keyframes
    keyframes = sum(result.is_keyframe for result in results)
    published = {key: count for key, count in outputs.published.items() if count}
    assert published == {"tsdf_voxels": 3, "mesh": 3, "mesh_markers": 1, "fragment_volume": keyframes}
