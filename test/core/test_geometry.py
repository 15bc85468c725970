import numpy as np
import pytest

from neuralrecon_ros.core.geometry import (
    PoseError,
    check_rigid,
    interpolate_transform,
    invert,
    look_at,
    make_transform,
    matrix_to_quaternion,
    quaternion_to_matrix,
    rotation_about_axis,
)


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.normal(size=4)
    return quaternion_to_matrix(*q)


def test_quaternion_round_trip():
    rng = np.random.default_rng(0)
    for _ in range(200):
        R = random_rotation(rng)
        assert np.allclose(quaternion_to_matrix(*matrix_to_quaternion(R)), R, atol=1e-12)
    # 180 degree rotations (trace = -1) take the other branch
    for axis in np.eye(3):
        R = rotation_about_axis(axis, np.pi)
        assert np.allclose(quaternion_to_matrix(*matrix_to_quaternion(R)), R, atol=1e-12)


def test_invert_and_interpolate():
    rng = np.random.default_rng(1)
    T = make_transform(random_rotation(rng), rng.normal(size=3))
    assert np.allclose(invert(T) @ T, np.eye(4), atol=1e-12)
    axis = np.array([0.0, 0.0, 1.0])
    T0 = make_transform(np.eye(3), [0, 0, 0])
    T1 = make_transform(rotation_about_axis(axis, 1.0), [2, 0, 0])
    mid = interpolate_transform(T0, T1, 0.25)
    assert np.allclose(mid[:3, :3], rotation_about_axis(axis, 0.25), atol=1e-12)
    assert np.allclose(mid[:3, 3], [0.5, 0, 0])


def test_look_at_is_an_optical_frame():
    T = look_at(np.array([1.0, 2.0, 1.5]), np.array([4.0, 2.0, 1.5]))
    assert np.allclose(T[:3, 2], [1, 0, 0])  # z forward
    assert np.allclose(T[:3, 1], [0, 0, -1])  # y down (world z up)
    assert np.allclose(T[:3, 0], [0, -1, 0])  # x right
    check_rigid(T)


@pytest.mark.parametrize(
    "T, message",
    [
        (np.full((4, 4), np.nan), "NaN"),
        (np.eye(3), "4x4"),
        (np.diag([2.0, 1, 1, 1]), "orthonormal"),
        (np.diag([1.0, 1, -1, 1]), "orthonormal"),
        (np.array([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]]), "bottom row"),
    ],
)
def test_check_rigid_names_the_problem(T, message):
    with pytest.raises(PoseError, match=message):
        check_rigid(T, "camera pose")
