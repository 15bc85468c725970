import math

import numpy as np
import pytest

from neuralrecon_ros.core.geometry import look_at, make_transform, rotation_about_axis
from neuralrecon_ros.core.keyframes import FragmentBuilder, KeyframeConfig, KeyframeSelector
from neuralrecon_ros.core.types import CameraIntrinsics, Frame

K = CameraIntrinsics(100.0, 100.0, 32.0, 24.0, 64, 48)


def pose(x: float = 0.0, yaw_deg: float = 0.0, roll_deg: float = 0.0) -> np.ndarray:
    """Camera at (x, 0, 1.5) looking along +x, turned by yaw about world z, rolled about its optical axis."""
    T = look_at(np.array([x, 0.0, 1.5]), np.array([x + 1.0, 0.0, 1.5]))
    R = rotation_about_axis(np.array([0, 0, 1.0]), math.radians(yaw_deg)) @ T[:3, :3]
    R = R @ rotation_about_axis(np.array([0, 0, 1.0]), math.radians(roll_deg))  # roll about optical z
    return make_transform(R, T[:3, 3])


def frame(T: np.ndarray, i: int) -> Frame:
    return Frame(stamp=float(i), image=np.zeros((48, 64, 3), np.uint8), intrinsics=K, T_world_camera=T, index=i)


def test_first_frame_is_keyframe_and_thresholds_are_strict():
    sel = KeyframeSelector(KeyframeConfig())
    assert sel.offer(pose(0.0))
    assert not sel.offer(pose(0.1))  # exactly the threshold is not "more than"
    assert sel.offer(pose(0.1001))
    assert not sel.offer(pose(0.1001, yaw_deg=15.0))  # 15 deg is not more than 15 deg
    assert sel.offer(pose(0.1001, yaw_deg=15.1))


def test_distance_is_measured_from_last_keyframe_not_last_frame():
    sel = KeyframeSelector(KeyframeConfig())
    assert sel.offer(pose(0.0))
    accepted = [sel.offer(pose(0.03 * i)) for i in range(1, 10)]
    # 0.03 m steps: keyframes at 0.12 (i=4) and 0.24 (i=8), measured from the last keyframe
    assert accepted == [False, False, False, True, False, False, False, True, False]


def test_roll_about_the_optical_axis_is_ignored():
    sel = KeyframeSelector(KeyframeConfig())
    assert sel.offer(pose(0.0))
    assert not sel.offer(pose(0.0, roll_deg=90.0))


def test_thresholds_are_parameters():
    sel = KeyframeSelector(KeyframeConfig(keyframe_min_translation_m=1.0, keyframe_min_rotation_deg=5.0))
    assert sel.offer(pose(0.0))
    assert not sel.offer(pose(0.5))
    assert sel.offer(pose(0.5, yaw_deg=6.0))


@pytest.mark.parametrize("size", [9, 3])
def test_fragments_are_disjoint_and_next_frame_starts_unconditionally(size):
    builder = FragmentBuilder(KeyframeConfig(fragment_size=size))
    fragments, keyflags = [], []
    i = 0
    # every other frame moves 0.2 m (a keyframe), the ones between stand still (not keyframes)
    x = 0.0
    for i in range(4 * size + 3):
        if i % 2 == 0:
            x += 0.2
        is_kf, fragment = builder.add(frame(pose(x), i))
        keyflags.append(is_kf)
        if fragment is not None:
            fragments.append(fragment)
    assert all(len(f.keyframes) == size for f in fragments)
    assert [f.index for f in fragments] == list(range(len(fragments)))
    ids = [kf.index for f in fragments for kf in f.keyframes]
    assert len(ids) == len(set(ids))  # disjoint
    # the frame right after a fragment closes is a keyframe even though it did not move
    for f in fragments:
        after = f.keyframes[-1].index + 1
        if after < len(keyflags):
            assert keyflags[after], f"frame {after} after fragment {f.index} should start the next fragment"
    # the trailing incomplete fragment is never emitted
    assert len(builder.pending) < size


def test_drop_pending_discards_partial_fragment():
    builder = FragmentBuilder(KeyframeConfig(fragment_size=3))
    builder.add(frame(pose(0.0), 0))
    builder.add(frame(pose(0.5), 1))
    assert builder.drop_pending() == 2
    is_kf, fragment = builder.add(frame(pose(0.5), 2))
    assert is_kf and fragment is None and len(builder.pending) == 1
