"""TransformBuffer: interpolation against analytic poses, chains, inverses, errors, stale stamps."""

from __future__ import annotations

import math

import numpy as np
import pytest

from neuralrecon_ros.core.geometry import PoseError, invert, make_transform, rotation_about_axis
from neuralrecon_ros.core.tf_buffer import (
    ConnectivityError,
    ExtrapolationError,
    StaleTransformError,
    TransformBuffer,
    TransformLookupError,
    TransformTreeError,
)

OMEGA = 0.4  # rad/s about a tilted axis
AXIS = np.array([0.2, -0.3, 1.0])
VELOCITY = np.array([0.5, -0.25, 0.1])  # m/s


def T_odom_base(t: float) -> np.ndarray:
    """Constant-rate screw motion: slerp + linear interpolation reproduce it exactly."""
    return make_transform(rotation_about_axis(AXIS, OMEGA * t), np.array([1.0, 2.0, 0.0]) + VELOCITY * t)


T_BASE_CAMERA = make_transform(rotation_about_axis([1, 1, 0], 1.9), [0.1, 0.0, 0.3])
T_MAP_ODOM = make_transform(rotation_about_axis([0, 0, 1], -0.7), [5.0, -1.0, 0.0])


def robot_buffer(stamps=(0.0, 1.0, 2.0, 3.0)) -> TransformBuffer:
    tf = TransformBuffer(cache_time_s=10.0)
    tf.set_transform("map", "odom", T_MAP_ODOM, 0.0, static=True)
    tf.set_transform("base_link", "camera", T_BASE_CAMERA, 0.0, static=True)
    for t in stamps:
        tf.set_transform("odom", "base_link", T_odom_base(t), t)
    return tf


@pytest.mark.parametrize("t", [0.0, 0.25, 1.0, 1.5, 2.9, 3.0])
def test_interpolation_matches_analytic_motion(t):
    tf = robot_buffer()
    np.testing.assert_allclose(tf.lookup("odom", "base_link", t), T_odom_base(t), atol=1e-12)


def test_chain_through_static_frames_and_inverse():
    tf = robot_buffer()
    t = 1.25
    T_map_camera = T_MAP_ODOM @ T_odom_base(t) @ T_BASE_CAMERA
    np.testing.assert_allclose(tf.lookup("map", "camera", t), T_map_camera, atol=1e-12)
    np.testing.assert_allclose(tf.lookup("camera", "map", t), invert(T_map_camera), atol=1e-12)
    np.testing.assert_allclose(tf.lookup("camera", "camera", t), np.eye(4))


def test_lookup_between_branches_uses_common_ancestor():
    tf = robot_buffer()
    T_odom_dock = make_transform(rotation_about_axis([0, 0, 1], 2.0), [3.0, 3.0, 0.0])
    tf.set_transform("odom", "dock", T_odom_dock, 0.0, static=True)
    t = 2.5
    expected = invert(T_odom_dock) @ T_odom_base(t) @ T_BASE_CAMERA
    np.testing.assert_allclose(tf.lookup("dock", "camera", t), expected, atol=1e-12)


def test_static_transforms_are_valid_at_all_times():
    tf = TransformBuffer()
    tf.set_transform("base_link", "camera", T_BASE_CAMERA, 5.0, static=True)
    for t in (-100.0, 0.0, 1e9):
        np.testing.assert_allclose(tf.lookup("base_link", "camera", t), T_BASE_CAMERA)


def test_extrapolation_errors_say_which_side_and_by_how_much():
    tf = robot_buffer()
    with pytest.raises(ExtrapolationError, match=r"0\.500000 s after its newest sample") as after:
        tf.lookup("map", "camera", 3.5)
    assert after.value.future and after.value.seconds == pytest.approx(0.5)
    assert "'odom' <- 'base_link'" in str(after.value)
    with pytest.raises(ExtrapolationError, match=r"0\.250000 s before its oldest sample") as before:
        tf.lookup("camera", "map", -0.25)
    assert not before.value.future
    assert isinstance(before.value, LookupError) and isinstance(before.value, TransformLookupError)


def test_tolerance_accepts_stamps_just_outside_the_samples():
    tf = robot_buffer()
    np.testing.assert_allclose(tf.lookup("odom", "base_link", 3.0 + 5e-7), T_odom_base(3.0), atol=1e-12)
    strict = TransformBuffer(tolerance_s=0.0)
    strict.set_transform("odom", "base_link", T_odom_base(1.0), 1.0)
    np.testing.assert_allclose(strict.lookup("odom", "base_link", 1.0), T_odom_base(1.0))
    with pytest.raises(ExtrapolationError):
        strict.lookup("odom", "base_link", 1.0 + 1e-9)


def test_connectivity_errors_list_known_frames():
    tf = robot_buffer()
    tf.set_transform("world", "other", np.eye(4), 0.0, static=True)
    with pytest.raises(ConnectivityError, match="not connected") as err:
        tf.lookup("other", "camera", 1.0)
    message = str(err.value)
    assert "root 'world'" in message and "root 'map'" in message
    assert "known frames: base_link, camera, map, odom, other, world" in message
    with pytest.raises(ConnectivityError, match=r"'nowhere' unknown; known frames: base_link"):
        tf.lookup("map", "nowhere", 1.0)
    assert not tf.can_transform("map", "nowhere", 1.0)
    assert tf.can_transform("map", "camera", 1.0)


def test_latest_common_time():
    tf = robot_buffer(stamps=(0.0, 1.0, 2.0))
    tf.set_transform("camera", "lens", np.eye(4), 1.5)  # a second dynamic edge, newest at 1.5
    expected = T_MAP_ODOM @ T_odom_base(1.5) @ T_BASE_CAMERA
    np.testing.assert_allclose(tf.lookup("map", "lens", None), expected, atol=1e-12)


def test_out_of_order_samples_and_cache_pruning():
    tf = TransformBuffer(cache_time_s=2.0)
    for t in (0.0, 2.0, 1.0, 3.0):  # 1.0 arrives late but within the cache
        tf.set_transform("odom", "base_link", T_odom_base(t), t)
    np.testing.assert_allclose(tf.lookup("odom", "base_link", 1.5), T_odom_base(1.5), atol=1e-12)
    with pytest.raises(ExtrapolationError, match="before its oldest sample"):
        tf.lookup("odom", "base_link", 0.5)  # t=0 fell out of the 2 s cache when t=3 arrived


def test_repeated_stamp_replaces_sample():
    tf = TransformBuffer()
    tf.set_transform("odom", "base_link", T_odom_base(0.0), 1.0)
    tf.set_transform("odom", "base_link", T_odom_base(2.0), 1.0)
    np.testing.assert_allclose(tf.lookup("odom", "base_link", 1.0), T_odom_base(2.0))


def test_stale_stamp_is_refused_and_the_history_kept():
    tf = robot_buffer(stamps=(100.0, 101.0))
    tf.set_transform("odom", "base_link", T_odom_base(100.5), 100.5)  # out of order, within the history
    np.testing.assert_allclose(tf.lookup("odom", "base_link", 100.5), T_odom_base(100.5), atol=1e-12)
    with pytest.raises(StaleTransformError, match="96.000 s older than the newest"):
        tf.set_transform("odom", "base_link", T_odom_base(5.0), 5.0)  # a stale re-delivery, not a jump
    assert tf.newest_stamp == 101.0
    np.testing.assert_allclose(tf.lookup("odom", "base_link", 100.75), T_odom_base(100.75), atol=1e-12)
    with pytest.raises(ExtrapolationError):
        tf.lookup("odom", "base_link", 5.0)


def test_clear_on_a_real_time_jump_keeps_static_edges():
    tf = robot_buffer(stamps=(100.0, 101.0))
    tf.clear(static=False)  # what the node logic does when its clock goes back
    assert tf.newest_stamp is None
    tf.set_transform("odom", "base_link", T_odom_base(5.0), 5.0)
    expected = T_MAP_ODOM @ T_odom_base(5.0) @ T_BASE_CAMERA
    np.testing.assert_allclose(tf.lookup("map", "camera", 5.0), expected, atol=1e-12)
    with pytest.raises(ExtrapolationError):
        tf.lookup("odom", "base_link", 100.5)


@pytest.mark.parametrize("stamp", [math.nan, math.inf, -math.inf])
def test_non_finite_stamp_is_refused(stamp):
    tf = robot_buffer(stamps=(1.0, 2.0))
    with pytest.raises(StaleTransformError, match="no finite stamp"):
        tf.set_transform("odom", "base_link", T_odom_base(1.5), stamp)
    assert tf.newest_stamp == 2.0


def test_bad_transforms_are_rejected_and_leave_the_buffer_unchanged():
    tf = robot_buffer()
    bad = T_odom_base(4.0)
    bad[0, 3] = math.nan
    with pytest.raises(PoseError, match="NaN"):
        tf.set_transform("odom", "base_link", bad, 4.0)
    with pytest.raises(ExtrapolationError):
        tf.lookup("odom", "base_link", 4.0)
    with pytest.raises(TransformTreeError, match="loop"):
        tf.set_transform("camera", "map", np.eye(4), 1.0)
    with pytest.raises(TransformTreeError, match="two different"):
        tf.set_transform("odom", "odom", np.eye(4), 1.0)
    np.testing.assert_allclose(tf.lookup("map", "camera", 1.0), T_MAP_ODOM @ T_odom_base(1.0) @ T_BASE_CAMERA)


def test_leading_slash_clear_and_describe():
    tf = TransformBuffer()
    tf.set_transform("/odom", "/base_link", T_odom_base(0.0), 0.0)
    tf.set_transform("odom", "base_link", T_odom_base(1.0), 1.0)
    np.testing.assert_allclose(tf.lookup("odom", "/base_link", 0.5), T_odom_base(0.5), atol=1e-12)
    assert "odom <- base_link (2 samples" in tf.describe()
    tf.clear()
    assert tf.frames == [] and tf.newest_stamp is None
