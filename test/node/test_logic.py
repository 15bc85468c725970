"""NodeLogic on hand-built message streams with a fake pipeline: pairing, TF timing, drops, publishing,
time jumps, services and runtime parameters (inline worker: deterministic)."""

from __future__ import annotations

import itertools
import logging
import random
import threading
from pathlib import Path

import numpy as np
import pytest
from rosbags.typesys import Stores, get_typestore

from neuralrecon_ros.core.geometry import make_transform, rotation_about_axis
from neuralrecon_ros.core.keyframes import KeyframeConfig
from neuralrecon_ros.core.mapping.mesh_chunks import ChunkUpdate
from neuralrecon_ros.core.pipeline import FrameResult
from neuralrecon_ros.core.reconstructor import MapUpdate
from neuralrecon_ros.core.timing import StageTimer
from neuralrecon_ros.core.types import CameraIntrinsics, Fragment, Frame, Mesh
from neuralrecon_ros.io import messages as m
from neuralrecon_ros.io.ply import read_ply
from neuralrecon_ros.node.diagnostics import diagnostic_values
from neuralrecon_ros.node.logic import DROP_REASONS, RUNTIME_PARAMETERS, NodeLogic
from neuralrecon_ros.node.parameters import NodeParameters, parameter_infos

TYPES = m.rosbags_types(get_typestore(Stores.ROS2_HUMBLE))
INTRINSICS = CameraIntrinsics(20.0, 20.0, 7.5, 5.5, 16, 12)
CAMERA = "camera_optical"
T_BASE_CAMERA = make_transform(rotation_about_axis([1, -1, 1], 2.1), [0.1, 0.0, 0.2])
T0 = 1000.0  # stream start (s)
IMAGE_DROPS = set(DROP_REASONS) - {"bad_camera_info", "invalid_transform"}


def T_odom_base(t: float) -> np.ndarray:
    """Constant screw motion: TF interpolation reproduces it exactly."""
    dt = t - T0
    return make_transform(rotation_about_axis([0, 0, 1], 0.3 * dt), [0.5 * dt, 0.2 * dt, 0.0])


def expected_pose(t: float) -> np.ndarray:
    return T_odom_base(t) @ T_BASE_CAMERA


def rgb(index: int) -> np.ndarray:
    return np.full((INTRINSICS.height, INTRINSICS.width, 3), index % 256, np.uint8)


class FakeFragments:
    def __init__(self) -> None:
        self.dropped = 0
        self.config = KeyframeConfig()
        self.pending: list[Frame] = []

    def drop_pending(self) -> int:
        self.dropped += 1
        return 0


class FakeMap:
    num_blocks = 0
    device = None

    def memory_bytes(self) -> int:
        return 0


class FakeReconstructor:
    name = "fake"
    config = None


class FakeMesher:
    num_faces = 0


class FakePipeline:
    """Records frames; every ``fragment_every``-th frame closes a fragment. ``reset`` forgets them."""

    def __init__(self, needs_depth: bool = False, fragment_every: int = 3) -> None:
        self.needs_depth = needs_depth
        self.fragment_every = fragment_every
        self.frames: list[Frame] = []
        self.all_frames: list[Frame] = []  # across resets
        self.timer = StageTimer()
        self.fragments = FakeFragments()
        self.tsdf_map = FakeMap()
        self.reconstructor = FakeReconstructor()
        self.mesher = FakeMesher()
        self.T_global_map = np.eye(4)
        self.counts = {"frames": 0, "keyframes": 0, "fragments": 0}
        self.mesh_calls = 0
        self.resets = 0
        self.clearing_origins: list[np.ndarray | None] = []
        self.fail_on: set[int] = set()  # frame indices whose processing raises

    def process(self, frame: Frame) -> FrameResult:
        if frame.index in self.fail_on:
            raise RuntimeError(f"boom at frame {frame.index}")
        self.frames.append(frame)
        self.all_frames.append(frame)
        self.counts["frames"] += 1
        if len(self.frames) % self.fragment_every == 0:
            n = self.fragment_every
            fragment = Fragment(len(self.frames) // n - 1, self.frames[-n:])
            self.counts["fragments"] += 1
            return FrameResult(True, fragment, MapUpdate(np.zeros((1, 3), np.int64), 1))
        return FrameResult(False, None, None)

    def set_clearing_origin(self, position) -> None:
        self.clearing_origins.append(position)

    def mesh(self) -> Mesh:
        self.mesh_calls += 1
        n = len(self.frames)
        if n == 0:
            return Mesh()
        vertices = np.array([[0, 0, 0], [1, 0, 0], [0, 1, n]], np.float32)
        return Mesh(vertices, np.array([[0, 1, 2]]))

    def mesh_chunks(self, full: bool = False) -> ChunkUpdate:
        return ChunkUpdate()

    def reset(self) -> None:
        self.resets += 1
        self.frames = []


class RecordingPublisher:
    types = TYPES

    def __init__(self) -> None:
        self.published: list[tuple[str, object]] = []

    def publish(self, topic_key: str, msg: object) -> None:
        self.published.append((topic_key, msg))


#: only the whole mesh and diagnostics (the fake pipeline has no map for the planner products)
QUIET = {"mesh_publish_rate_hz": 0.0, "tsdf_cloud_publish_rate_hz": 0.0, "occupancy_publish_rate_hz": 0.0,
         "esdf_publish_rate_hz": 0.0, "fragment_volume_publish_rate_hz": 0.0, "diagnostics_rate_hz": 0.0}


def make_logic(needs_depth: bool = False, **params) -> tuple[NodeLogic, FakePipeline, RecordingPublisher]:
    values = {"global_frame": "odom", "max_wait_for_pose_s": 0.5, "maximum_input_queue_length": 30,
              "full_mesh_publish_rate_hz": 100.0, **QUIET}
    values.update(params)
    pipeline = FakePipeline(needs_depth)
    publisher = RecordingPublisher()
    return NodeLogic(NodeParameters(values), pipeline, publisher), pipeline, publisher


# ---------------------------------------------------------------------------------------- messages


def image_msg(t: float, index: int = 0, encoding: str = "rgb8", frame: str = CAMERA, size=None):
    height, width = size or (INTRINSICS.height, INTRINSICS.width)
    if encoding in ("rgb8", "bgr8"):
        array = np.full((height, width, 3), index % 256, np.uint8)
        return m.encode_image(TYPES, array, encoding, t, frame)
    msg = m.encode_image(TYPES, np.zeros((height, width, 3), np.uint8), "rgb8", t, frame)
    msg.encoding = encoding
    return msg


def info_msg(t: float, intrinsics: CameraIntrinsics = INTRINSICS):
    return m.encode_camera_info(TYPES, intrinsics, t, CAMERA)


def depth_msg(t: float, size=None, value: float = 2.0):
    height, width = size or (INTRINSICS.height, INTRINSICS.width)
    return m.encode_image(TYPES, np.full((height, width), value, np.float32), "32FC1", t, CAMERA)


def tf_of(T: np.ndarray, t: float, parent: str = "odom", child: str = "base_link"):
    return m.encode_tf_message(TYPES, [m.encode_transform_stamped(TYPES, T, t, parent, child)])


def odom_tf(t: float):
    return tf_of(T_odom_base(t), t)


def static_tf():
    return tf_of(T_BASE_CAMERA, 0.0, "base_link", CAMERA)


def feed(logic: NodeLogic, events: list[tuple[str, float, object]]) -> None:
    """Deliver (kind, time, msg) events in list order, ticking after each like the bag transport."""
    handlers = {
        "image": logic.on_image,
        "info": logic.on_camera_info,
        "depth": logic.on_depth,
        "tf": lambda msg: logic.on_tf(msg, static=False),
        "tf_static": lambda msg: logic.on_tf(msg, static=True),
        "odom": logic.on_odometry,
    }
    for kind, now, msg in events:
        logic.observe_clock(now)
        handlers[kind](msg)
        logic.spin_once(now)


def camera_stream(stamps, tf_lead: float = 0.05, with_info: bool = True, info_first: bool = False):
    """Per image stamp: TF slightly ahead of the image, then image and camera_info."""
    events = [("tf_static", stamps[0], static_tf())]
    for i, t in enumerate(stamps):
        events.append(("tf", t, odom_tf(t)))
        events.append(("tf", t + tf_lead, odom_tf(t + tf_lead)))
        pair = [("image", t, image_msg(t, i))] + ([("info", t, info_msg(t))] if with_info else [])
        events.extend(reversed(pair) if info_first else pair)
    return events


def stamps(n: int, start: float = T0, step: float = 0.1) -> list[float]:
    return [start + step * i for i in range(n)]


def assert_every_image_accounted_for(logic: NodeLogic) -> None:
    image_drops = sum(count for reason, count in logic.dropped.items() if reason in IMAGE_DROPS)
    assert logic.frames_processed + image_drops + logic.queue_length == logic.received["image"]


# ---------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("info_first", [False, True])
def test_paired_frames_reach_the_pipeline_with_exact_poses(info_first):
    logic, pipeline, _ = make_logic()
    ts = stamps(6)
    feed(logic, camera_stream(ts, info_first=info_first))
    logic.finish()
    assert [f.stamp for f in pipeline.frames] == pytest.approx(ts)
    assert not logic.dropped
    for i, frame in enumerate(pipeline.frames):
        assert frame.index == i and frame.frame_id == CAMERA and frame.intrinsics == INTRINSICS
        np.testing.assert_array_equal(frame.image, rgb(i))
        np.testing.assert_allclose(frame.T_world_camera, expected_pose(ts[i]), atol=1e-9)
        assert frame.depth is None


def test_tf_arriving_late_is_waited_for():
    logic, pipeline, _ = make_logic()
    ts = stamps(4)
    events = [("tf_static", T0, static_tf()), ("tf", T0 - 0.05, odom_tf(T0 - 0.05))]
    for i, t in enumerate(ts):  # images and infos first ...
        events += [("image", t, image_msg(t, i)), ("info", t, info_msg(t))]
    feed(logic, events)
    assert logic.queue_length == 4 and not pipeline.frames  # waiting, nothing dropped yet
    feed(logic, [("tf", t, odom_tf(t)) for t in stamps(10, T0 + 0.05, 0.05)])  # ... then TF catches up
    assert [f.stamp for f in pipeline.frames] == pytest.approx(ts)
    assert not logic.dropped
    for frame, t in zip(pipeline.frames, ts):
        np.testing.assert_allclose(frame.T_world_camera, expected_pose(t), atol=1e-9)


def test_missing_tf_drops_after_the_wait_and_is_counted(caplog):
    logic, pipeline, _ = make_logic()
    ts = stamps(12)
    caplog.set_level(logging.WARNING, "neuralrecon_ros")
    events = [("tf_static", T0, static_tf())]  # base_link <- camera only: never connected to odom
    for i, t in enumerate(ts):
        events += [("image", t, image_msg(t, i)), ("info", t, info_msg(t))]
    feed(logic, events)
    # t <= 1001.1 - 0.5 have waited longer than max_wait_for_pose_s
    assert logic.dropped["tf_missing"] == 6 and logic.queue_length == 6
    logic.finish()
    assert logic.dropped == {"tf_missing": 12} and not pipeline.frames
    assert caplog.text.count("dropped (tf_missing)") == 1  # logged once per reason
    assert "'odom'" in caplog.text and "known frames: base_link, camera_optical" in caplog.text
    assert_every_image_accounted_for(logic)


def test_tf_that_stopped_gives_extrapolation_drops():
    logic, pipeline, _ = make_logic()
    events = camera_stream(stamps(3))
    for i, t in enumerate(stamps(8, T0 + 0.3), start=3):  # TF stops after T0 + 0.25
        events += [("image", t, image_msg(t, i)), ("info", t, info_msg(t))]
    feed(logic, events)
    logic.finish()
    assert len(pipeline.frames) == 3
    assert logic.dropped == {"tf_extrapolation": 8}
    assert_every_image_accounted_for(logic)


def test_images_older_than_the_tf_history_are_dropped_at_once():
    logic, pipeline, _ = make_logic()
    feed(logic, [("tf_static", T0, static_tf()), ("tf", T0, odom_tf(T0)), ("tf", T0 + 0.1, odom_tf(T0 + 0.1)),
                 ("image", T0 - 0.2, image_msg(T0 - 0.2)), ("info", T0 - 0.2, info_msg(T0 - 0.2))])
    assert logic.dropped == {"tf_extrapolation": 1} and logic.queue_length == 0 and not pipeline.frames


def test_size_mismatch_and_bad_encodings_are_counted():
    logic, pipeline, _ = make_logic()
    events = camera_stream(stamps(2))
    t = T0 + 0.2
    events += [("tf", t + 0.05, odom_tf(t + 0.05)), ("image", t, image_msg(t, size=(24, 32))),
               ("info", t, info_msg(t))]
    t = T0 + 0.3
    events += [("tf", t + 0.05, odom_tf(t + 0.05)), ("image", t, image_msg(t, encoding="yuv422")),
               ("info", t, info_msg(t))]
    t = T0 + 0.4
    events += [("tf", t + 0.05, odom_tf(t + 0.05)), ("image", t, image_msg(t, encoding="32FC1")),
               ("info", t, info_msg(t))]
    t = T0 + 0.5
    broken = image_msg(t, 5)
    broken.step += 1  # says rows are padded, but the data is not: a malformed message
    events += [("tf", t + 0.05, odom_tf(t + 0.05)), ("image", t, broken), ("info", t, info_msg(t))]
    t = T0 + 0.6
    events += [("tf", t + 0.05, odom_tf(t + 0.05)), ("image", t, image_msg(t, 6)), ("info", t, info_msg(t))]
    feed(logic, events)
    logic.finish()
    assert logic.dropped == {"size_mismatch": 1, "unsupported_encoding": 2, "bad_image": 1}
    assert [f.index for f in pipeline.frames] == [0, 1, 6]
    assert_every_image_accounted_for(logic)


def test_nan_transform_is_rejected_and_the_frame_posed_from_its_neighbours():
    logic, pipeline, _ = make_logic()
    t = T0 + 0.1
    nan = T_odom_base(t)
    nan[0, 3] = np.nan
    bad = m.encode_tf_message(TYPES, [m.encode_transform_stamped(TYPES, nan, t, "odom", "base_link")])
    zero_q = tf_of(np.eye(4), t)
    zero_q.transforms[0].transform.rotation.w = 0.0
    events = [("tf_static", T0, static_tf()), ("tf", T0, odom_tf(T0)), ("tf", t, bad), ("tf", t, zero_q),
              ("tf", T0 + 0.2, odom_tf(T0 + 0.2)), ("image", t, image_msg(t)), ("info", t, info_msg(t))]
    feed(logic, events)
    assert logic.dropped == {"invalid_transform": 2}
    (frame,) = pipeline.frames
    np.testing.assert_allclose(frame.T_world_camera, expected_pose(t), atol=1e-9)  # screw motion: exact


def test_invalid_looked_up_pose_is_dropped(monkeypatch):
    logic, pipeline, _ = make_logic()
    bad = np.eye(4)
    bad[:3, :3] *= 2.0  # not a rotation
    monkeypatch.setattr(logic.tf, "lookup", lambda *args: bad)
    feed(logic, [("image", T0, image_msg(T0)), ("info", T0, info_msg(T0))])
    assert logic.dropped == {"invalid_pose": 1} and not pipeline.frames


def test_missing_or_bad_camera_info():
    logic, pipeline, _ = make_logic()
    uncalibrated = info_msg(T0 + 0.1)
    uncalibrated.k = np.zeros(9)
    t = T0 + 0.1
    events = [*camera_stream(stamps(1)), ("tf", t, odom_tf(t)), ("image", t, image_msg(t))]
    events.append(("info", t, uncalibrated))
    events += [("tf", t, odom_tf(t)) for t in stamps(10, T0 + 0.15, 0.1)]
    feed(logic, events)
    assert logic.dropped == {"bad_camera_info": 1, "no_camera_info": 1}
    assert len(pipeline.frames) == 1


def test_zero_stamped_camera_info_is_no_time_jump_and_explained(caplog):
    logic, pipeline, _ = make_logic()
    events = [("tf_static", T0, static_tf())]
    for i, t in enumerate(stamps(8)):
        events += [("tf", t, odom_tf(t)), ("image", t, image_msg(t, i)), ("info", t, info_msg(0.0))]
    feed(logic, events)
    logic.finish()
    assert logic.time_jumps == 0 and logic.dropped == {"no_camera_info": 8} and not pipeline.frames
    assert "the last camera_info was stamped -1000.0" in caplog.text
    assert "approximate_sync_tolerance_s" in caplog.text


@pytest.mark.parametrize("tolerance, paired", [(0.0, False), (0.005, True)])
def test_approximate_sync_tolerance(tolerance, paired):
    logic, pipeline, _ = make_logic(approximate_sync_tolerance_s=tolerance)
    events = [("tf_static", T0, static_tf())]
    for i, t in enumerate(stamps(5)):
        events += [("tf", t, odom_tf(t)), ("tf", t + 0.05, odom_tf(t + 0.05)),
                   ("image", t, image_msg(t, i)), ("info", t + 0.002, info_msg(t + 0.002))]
    feed(logic, events)
    logic.finish()
    if paired:
        assert len(pipeline.frames) == 5 and not logic.dropped
    else:
        assert not pipeline.frames and logic.dropped == {"no_camera_info": 5}


def test_depth_mode_pairs_depth_and_checks_it():
    logic, pipeline, _ = make_logic(needs_depth=True)
    events = [("tf_static", T0, static_tf())]
    depths = {
        0: depth_msg(T0, value=1.5),
        1: None,  # never arrives
        2: depth_msg(T0 + 0.2, size=(6, 8), value=2.5),  # half resolution, registered: accepted
        3: depth_msg(T0 + 0.3, size=(12, 12)),  # wrong aspect ratio
        4: m.encode_image(TYPES, rgb(4), "rgb8", T0 + 0.4, CAMERA),  # colour on the depth topic
    }
    for i, t in enumerate(stamps(5)):
        events += [("tf", t, odom_tf(t)), ("tf", t + 0.05, odom_tf(t + 0.05)), ("image", t, image_msg(t, i)),
                   ("info", t, info_msg(t))]
        if depths[i] is not None:
            events.append(("depth", t, depths[i]))
    events += [("tf", t, odom_tf(t)) for t in stamps(8, T0 + 0.5, 0.1)]
    feed(logic, events)
    logic.finish()
    assert [f.index for f in pipeline.frames] == [0, 2]
    assert pipeline.frames[0].depth.shape == (12, 16) and np.all(pipeline.frames[0].depth == 1.5)
    assert pipeline.frames[1].depth.shape == (6, 8)
    assert logic.dropped == {"no_depth": 2, "size_mismatch": 1, "unsupported_encoding": 1}


def test_queue_is_bounded():
    logic, pipeline, _ = make_logic(maximum_input_queue_length=3, max_wait_for_pose_s=10.0)
    events = []
    for i, t in enumerate(stamps(7)):
        events += [("image", t, image_msg(t, i)), ("info", t, info_msg(t))]
    feed(logic, events)
    assert logic.queue_length == 3 and logic.dropped == {"queue_full": 4}
    feed(logic, [("tf_static", T0, static_tf())] + [("tf", t, odom_tf(t)) for t in stamps(16, T0, 0.05)])
    assert [f.index for f in pipeline.frames] == [4, 5, 6]  # the newest three survived


@pytest.mark.parametrize("on_time_jump", ["keep_map", "clear_map"])
def test_clock_jump_back_drops_what_waits_and_keeps_or_clears_the_map(on_time_jump, caplog):
    logic, pipeline, publisher = make_logic(on_time_jump=on_time_jump)
    feed(logic, camera_stream(stamps(4)))
    feed(logic, [("image", T0 + 0.5, image_msg(T0 + 0.5)), ("info", T0 + 0.5, info_msg(T0 + 0.5))])
    assert logic.queue_length == 1
    restart = stamps(4, T0 - 50.0)  # the bag looped
    feed(logic, camera_stream(restart))
    logic.finish()
    assert logic.time_jumps == 1 and logic.dropped == {"clock_jump": 1}  # the frame waiting at T0 + 0.5
    assert [f.stamp for f in pipeline.all_frames] == pytest.approx(stamps(4) + restart)
    np.testing.assert_allclose(pipeline.all_frames[-1].T_world_camera, expected_pose(restart[-1]), atol=1e-9)
    assert "clock jumped back" in caplog.text
    stamps_out = [m.header_stamp_ns(msg) for key, msg in publisher.published if key == "mesh"]
    if on_time_jump == "keep_map":  # the map and what was integrated before the jump are kept
        assert pipeline.resets == 0 and pipeline.fragments.dropped == 1 and len(pipeline.frames) == 8
        assert "the map is kept" in caplog.text
        assert stamps_out[-1] == m.sec_to_ns(restart[1])  # the 6th frame in all closed the 2nd fragment
    else:  # cleared: the map holds only what came after the jump
        assert pipeline.resets == 1 and pipeline.fragments.dropped == 0
        assert [f.stamp for f in pipeline.frames] == pytest.approx(restart)
        assert "clearing the map" in caplog.text
        # the first mesh after the jump is stamped with the new time (the empty map: a DELETE)
        after = [msg for key, msg in publisher.published if key == "mesh"][-2]
        assert after.action == m.MARKER_DELETE and m.header_stamp(after) == pytest.approx(T0 - 50.0, abs=1e-6)
        assert stamps_out[-1] == m.sec_to_ns(restart[2])  # the 3rd frame after the reset closed a fragment
    assert logic.status()["time_jumps"] == 1


def test_stale_burst_while_the_clock_moves_on_is_dropped_and_changes_nothing(caplog):
    logic, pipeline, _ = make_logic(on_time_jump="clear_map")
    feed(logic, camera_stream(stamps(6)))
    now = T0 + 0.6
    # the driver re-delivers frames 0..2 (image and camera_info, their TF too) and a 30 s old TF sample
    burst = [(kind, now + 0.001 * i, msg) for i, (kind, _, msg) in enumerate(camera_stream(stamps(3)))]
    burst.append(("tf", now + 0.01, odom_tf(T0 - 30.0)))
    feed(logic, burst)
    feed(logic, [(kind, t + 0.02, msg) for kind, t, msg in camera_stream(stamps(3, T0 + 0.6))])
    logic.finish()
    # 3 images + 3 camera_infos behind the last processed frame, and the TF sample beyond the history
    assert logic.dropped == {"stale_stamp": 7} and logic.time_jumps == 0
    assert pipeline.resets == 0 and pipeline.fragments.dropped == 0
    assert [f.stamp for f in pipeline.frames] == pytest.approx(stamps(9))
    for frame in pipeline.frames:  # the re-delivered TF did not disturb the poses
        np.testing.assert_allclose(frame.T_world_camera, expected_pose(frame.stamp), atol=1e-9)
    assert "clock jumped back" not in caplog.text and "stale_stamp" in caplog.text
    assert caplog.text.count("dropped (stale_stamp)") == 1  # logged once, then counted


def test_new_timeline_arriving_before_the_clock_jump_is_kept():
    """Live, a looping player's first camera_info (and image) can arrive before its /clock goes back: they are
    held as possibly stale, and handed over again once the clock jumps back."""
    logic, pipeline, _ = make_logic()
    feed(logic, camera_stream(stamps(6)))
    restart = stamps(3, T0 - 50.0)
    clock_before_jump = T0 + 0.56
    early = [("info", clock_before_jump, info_msg(restart[0])), ("image", clock_before_jump, image_msg(restart[0]))]
    feed(logic, early)
    assert logic.dropped == {} and len(pipeline.frames) == 6  # held, not dropped yet
    feed(logic, camera_stream(restart)[1:])  # the rest of the new timeline, with the clock gone back
    logic.finish()
    assert logic.time_jumps == 1 and logic.dropped == {"stale_stamp": 2}  # frame 0 sent again: image and info
    assert [f.stamp for f in pipeline.frames] == pytest.approx(stamps(6) + restart)
    assert logic.received["image"] == 10 and logic.received["camera_info"] == 10


def test_new_timeline_pose_arriving_before_the_clock_jump_is_kept():
    """The looping player's first TF samples can come before its /clock goes back too: held with the camera
    messages, they go into the new TF history, so the first frame after the restart is posed (it was dropped
    as tf_extrapolation: its pose had gone with the TF history cleared at the jump)."""
    logic, pipeline, _ = make_logic()
    feed(logic, camera_stream(stamps(6)))
    restart = stamps(3, T0 - 50.0)
    new_pass = camera_stream(restart)[1:]  # TF at t0 and t0 + 0.05, image, camera_info; then the next frames
    clock_before_jump = T0 + 0.56
    feed(logic, [(kind, clock_before_jump, msg) for kind, _, msg in new_pass[:4]])
    assert logic.dropped == {} and logic.time_jumps == 0 and len(pipeline.frames) == 6
    feed(logic, new_pass[4:])  # the clock goes back with the rest of the new timeline
    logic.finish()
    assert logic.time_jumps == 1 and logic.dropped == {}
    assert [f.stamp for f in pipeline.frames] == pytest.approx(stamps(6) + restart)
    for frame in pipeline.frames[6:]:
        np.testing.assert_allclose(frame.T_world_camera, expected_pose(frame.stamp), atol=1e-9)


def test_held_tf_is_taken_in_once_the_clock_moves_on():
    """No jump comes: a held old TF sample goes into the TF history as it would have at once (here: older than
    the kept history, so stale), and the camera stream is not disturbed."""
    logic, pipeline, _ = make_logic()
    feed(logic, camera_stream(stamps(6)))
    feed(logic, [("tf", T0 + 0.56, odom_tf(T0 - 30.0))])
    assert logic.dropped == {}
    feed(logic, [(kind, t + 0.02, msg) for kind, t, msg in camera_stream(stamps(15, T0 + 0.6))])
    assert logic.dropped == {"stale_stamp": 1} and logic.time_jumps == 0 and len(pipeline.frames) == 21


def test_held_stale_messages_are_dropped_once_the_clock_moves_on():
    logic, pipeline, _ = make_logic()
    feed(logic, camera_stream(stamps(6)))
    old = T0 - 5.0
    feed(logic, [("info", T0 + 0.56, info_msg(old)), ("image", T0 + 0.57, image_msg(old))])
    assert logic.dropped == {}
    feed(logic, [(kind, t + 0.02, msg) for kind, t, msg in camera_stream(stamps(15, T0 + 0.6))])
    assert logic.dropped == {"stale_stamp": 2} and logic.time_jumps == 0  # 1.5 s of clock later
    assert len(pipeline.frames) == 21


def test_one_far_future_stamp_is_refused_and_a_stepped_source_clock_is_followed(caplog):
    logic, pipeline, _ = make_logic()
    feed(logic, camera_stream(stamps(6)))
    feed(logic, [("image", T0 + 0.55, image_msg(T0 + 1000.0)), ("tf", T0 + 0.56, odom_tf(T0 + 5000.0))])
    assert logic.dropped == {"future_stamp": 2}  # one bad image and one bad TF sample: nothing else changes
    # then every source's clock steps 100 s forward for good, while the node's clock goes on as before
    later = [(kind, now - 100.0, msg) for kind, now, msg in camera_stream(stamps(30, T0 + 100.6))[1:]]
    feed(logic, later)
    logic.finish()
    # followed once they have stayed ahead for 2 s of clock: the 19 frames before (image and both TF samples
    # refused: 57) are lost, and the 20th, whose first TF sample was still refused (1), cannot be posed
    assert logic.dropped == {"future_stamp": 2 + 57 + 1, "tf_extrapolation": 1} and logic.time_jumps == 0
    assert [f.stamp for f in pipeline.frames] == pytest.approx(stamps(6) + stamps(10, T0 + 102.6))
    assert "following them" in caplog.text


def test_duplicate_image_waiting_in_the_queue_is_stale():
    logic, pipeline, _ = make_logic()
    t = T0 + 0.2
    feed(logic, [("image", t, image_msg(t)), ("info", t, info_msg(t)),
                 ("image", t + 0.01, image_msg(t)), ("info", t + 0.01, info_msg(t))])
    assert logic.queue_length == 1 and logic.dropped == {"stale_stamp": 2}
    feed(logic, [("tf_static", t, static_tf()), ("tf", t + 0.05, odom_tf(t)), ("tf", t + 0.06, odom_tf(t + 0.05))])
    assert len(pipeline.frames) == 1


def test_out_of_order_image_after_processing_is_dropped():
    logic, pipeline, _ = make_logic()
    feed(logic, camera_stream(stamps(3)))
    late = T0 + 0.05
    feed(logic, [("image", late, image_msg(late)), ("info", late, info_msg(late))])
    assert logic.dropped == {"stale_stamp": 2} and len(pipeline.frames) == 3  # the image and its camera_info


def test_mesh_after_each_fragment_and_at_finish():
    logic, _, publisher = make_logic()
    feed(logic, camera_stream(stamps(7)))
    assert [key for key, _ in publisher.published] == ["mesh", "mesh"]  # fragments at 3 and 6
    marker = publisher.published[1][1]
    # stamped with the frame that changed the map, to the nanosecond
    assert marker.header.frame_id == "odom" and m.header_stamp_ns(marker) == m.sec_to_ns(T0 + 0.5)
    assert marker.type == m.MARKER_TRIANGLE_LIST
    np.testing.assert_array_equal(m.decode_marker_triangles(marker)[0], [[0, 0, 0], [1, 0, 0], [0, 1, 6]])
    logic.finish()  # frame 7 closed no fragment and changed nothing: no extra publication
    assert len(publisher.published) == 2


def test_rate_limited_mesh_publication_on_message_time():
    logic, pipeline, publisher = make_logic(full_mesh_publish_rate_hz=4.0)
    pipeline.fragment_every = 1  # every frame changes the map
    published_at = []  # message time (newest input stamp) of each publication
    for event in camera_stream(stamps(10)):
        before = len(publisher.published)
        feed(logic, [event])
        published_at += [logic.status()["message_time"]] * (len(publisher.published) - before)
    assert len(published_at) == 4  # message time 1000.05 .. 1000.95, at most every 0.25 s
    assert all(b - a >= 0.25 - 1e-9 for a, b in itertools.pairwise(published_at))
    header_stamps = [m.header_stamp(msg) for _, msg in publisher.published]
    assert header_stamps == sorted(header_stamps)
    assert all(min(abs(t - s) for s in stamps(10)) < 1e-6 for t in header_stamps)  # a frame's stamp each
    logic.finish()
    assert len(publisher.published) == 5  # the final state is always published
    assert m.header_stamp_ns(publisher.published[-1][1]) == m.sec_to_ns(T0 + 0.9)
    # the rate is a runtime parameter: 0 stops the output
    logic.update_parameters({"full_mesh_publish_rate_hz": 0.0})
    feed(logic, camera_stream(stamps(5, T0 + 1.0))[1:])
    assert len(publisher.published) == 5 and len(pipeline.frames) == 15


def test_odometry_pose_source():
    logic, pipeline, _ = make_logic(pose_source="odometry")
    events = [("tf_static", T0, static_tf())]
    for i, t in enumerate(stamps(4)):
        t2 = t + 0.05
        events += [("tf", t, tf_of(np.eye(4), t)),  # ignored: odometry owns odom <- base_link
                   ("odom", t, m.encode_odometry(TYPES, T_odom_base(t), t, "odom", "base_link")),
                   ("odom", t2, m.encode_odometry(TYPES, T_odom_base(t2), t2, "odom", "base_link")),
                   ("image", t, image_msg(t, i)), ("info", t, info_msg(t))]
    feed(logic, events)
    assert len(pipeline.frames) == 4 and not logic.dropped
    for frame, t in zip(pipeline.frames, stamps(4)):
        np.testing.assert_allclose(frame.T_world_camera, expected_pose(t), atol=1e-9)


def test_compressed_images_are_accepted():
    logic, pipeline, _ = make_logic()
    events = [("tf_static", T0, static_tf()), ("tf", T0, odom_tf(T0)), ("tf", T0 + 0.05, odom_tf(T0 + 0.05)),
              ("image", T0, m.encode_compressed_image(TYPES, rgb(9), "png", T0, CAMERA)),
              ("info", T0, info_msg(T0))]
    feed(logic, events)
    (frame,) = pipeline.frames
    np.testing.assert_array_equal(frame.image, rgb(9))


def test_garbage_and_reordering_never_crash_and_every_image_is_accounted_for():
    rng = random.Random(3)
    logic, pipeline, _ = make_logic(maximum_input_queue_length=5)
    events = camera_stream(stamps(30))
    for k in range(20):
        position = rng.randrange(1, len(events))
        t = events[position][1] + rng.uniform(-0.3, 0.3)
        kind = k % 5
        if kind == 0:
            garbage = ("image", t, image_msg(t, encoding=rng.choice(["yuv422", "mono16"])))
        elif kind == 1:
            garbage = ("info", t, info_msg(t))
            garbage[2].width = 0
        elif kind == 2:
            garbage = ("image", t, image_msg(t, size=(3, 5)))
        elif kind == 3:
            garbage = ("tf", t, tf_of(np.eye(4), t, "a", "b"))
            garbage[2].transforms[0].transform.translation.x = float("nan")
        else:
            garbage = ("image", t, image_msg(t, frame="unknown_frame"))
        events.insert(position, garbage)
    for _ in range(30):  # local reordering, as from several publishers
        i = rng.randrange(len(events) - 1)
        events[i], events[i + 1] = events[i + 1], events[i]
    feed(logic, events)
    logic.finish()
    assert logic.queue_length == 0 and logic.time_jumps == 0
    assert_every_image_accounted_for(logic)
    assert logic.frames_processed == len(pipeline.frames) >= 20
    stamps_in = [f.stamp for f in pipeline.frames]
    assert stamps_in == sorted(stamps_in) and len(set(stamps_in)) == len(stamps_in)
    assert {"invalid_transform", "bad_camera_info", "unsupported_encoding"} <= set(logic.dropped)


# ------------------------------------------------------------------------------ worker and backlog


class GatedPipeline(FakePipeline):
    """A slow pipeline the test controls: each frame waits until the test releases it."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Semaphore(0)
        self.started = threading.Semaphore(0)

    def process(self, frame: Frame) -> FrameResult:
        self.started.release()
        assert self.gate.acquire(timeout=30.0), "the test never released the frame"
        return super().process(frame)


@pytest.mark.parametrize("policy, reason", [("drop_oldest_keyframe", "backlog_full"),
                                            ("skip_fragment", "backlog_skip")])
def test_backlog_policy_when_the_worker_falls_behind(policy, reason):
    pipeline = GatedPipeline()
    publisher = RecordingPublisher()
    values = {**QUIET, "backlog_policy": policy, "maximum_backlog_length": 3, "diagnostics_rate_hz": 1.0}
    logic = NodeLogic(NodeParameters(values), pipeline, publisher, threaded=True)
    try:
        feed(logic, camera_stream(stamps(1)))
        assert pipeline.started.acquire(timeout=30.0)  # frame 0 is in the pipeline: the worker is busy
        feed(logic, camera_stream(stamps(6, T0 + 0.1))[1:])  # frames 1..6 are posed meanwhile
        # drop_oldest_keyframe: 4, 5 and 6 each push out the oldest waiting frame (1, 2, 3);
        # skip_fragment: 4 finds 1, 2, 3 waiting and drops them with the fragment under construction
        assert logic.dropped == {reason: 3} and logic.status()["backlog"] == 3
        assert logic.status()["fragments_skipped"] == (1 if policy == "skip_fragment" else 0)
        pipeline.gate.release(100)
        logic.finish()
    finally:
        logic.close()
    assert [f.index for f in pipeline.frames] == [0, 4, 5, 6]
    assert pipeline.fragments.dropped == (1 if policy == "skip_fragment" else 0)
    assert_every_image_accounted_for(logic)
    diagnostics = [msg for key, msg in publisher.published if key == "diagnostics"]
    reconstruction = diagnostics[-1].status[1]
    values = diagnostic_values(reconstruction)
    assert values[f"dropped_{reason}"] == "3" and values["frames"] == "4" and values["backlog_length"] == "0"
    assert values["fragments_skipped"] == ("1" if policy == "skip_fragment" else "0")
    assert any(msg.status[1].level == 1 and reason in msg.status[1].message for msg in diagnostics)  # WARN


def test_a_frame_failing_in_the_pipeline_is_counted_and_the_rest_goes_on(caplog):
    logic, pipeline, publisher = make_logic(diagnostics_rate_hz=1.0)
    pipeline.fail_on = {2}
    feed(logic, camera_stream(stamps(5)))
    logic.finish()
    assert logic.dropped == {"pipeline_error": 1} and [f.index for f in pipeline.frames] == [0, 1, 3, 4]
    assert "frame 2 (t=1000.200000) failed in the pipeline" in caplog.text
    assert "boom at frame 2" in caplog.text
    reconstruction = [msg for key, msg in publisher.published if key == "diagnostics"][-1].status[1]
    assert reconstruction.level == 2 and "1 frame(s) failed" in reconstruction.message  # ERROR


def test_diagnostics_report_drops_rates_and_silence():
    logic, _, publisher = make_logic(diagnostics_rate_hz=2.0)
    feed(logic, camera_stream(stamps(10)))  # 1000.0 .. 1000.95 at 10 Hz
    t = T0 + 1.0
    feed(logic, [("image", t, image_msg(t, encoding="yuv422"))])
    feed(logic, [("tf", T0 + 2.0, odom_tf(T0 + 2.0))])  # a second without images
    logic.finish()
    reports = [msg for key, msg in publisher.published if key == "diagnostics"]
    stamps_out = [m.header_stamp(msg) for msg in reports]
    assert stamps_out == pytest.approx([T0, T0 + 0.5, T0 + 1.0, T0 + 2.0, T0 + 2.0], abs=1e-6)  # every 0.5 s
    inputs = [diagnostic_values(msg.status[0]) for msg in reports]
    assert [float(v["image_rate_hz"]) for v in inputs[1:3]] == pytest.approx([10.0, 12.0])  # 5, then 6 images
    assert [msg.status[0].level for msg in reports] == [1, 0, 1, 1, 1]  # no image yet at the first
    assert reports[2].status[0].message == "dropped since the last report: unsupported_encoding=1"
    silence = "no image received on /camera/color/image_raw since the last report"
    assert reports[3].status[0].message == silence
    assert inputs[-1]["dropped_unsupported_encoding"] == "1" and inputs[-1]["image_received"] == "11"
    assert inputs[-1]["queue_length"] == "0" and inputs[-1]["tf_received"] == "21"


# ---------------------------------------------------------------------------------------- services


def test_file_services_resolve_paths_and_answer_errors(tmp_path):
    logic, pipeline, _ = make_logic(output_directory=str(tmp_path / "out"))
    target = tmp_path / "out" / "mesh.ply"
    assert logic.save_ply("mesh.ply") == (
        False, f"nothing written to {target}: the mesh is empty (no map yet, or it was reset)")
    feed(logic, camera_stream(stamps(3)))
    ok, message = logic.save_ply("sub/mesh.ply")  # relative to output_directory; folders are made
    assert ok and message == f"wrote 1 triangles, 3 vertices to {tmp_path / 'out' / 'sub' / 'mesh.ply'}"
    np.testing.assert_array_equal(read_ply(tmp_path / "out" / "sub" / "mesh.ply").vertices[2], [0, 1, 3])
    assert logic.save_ply("") == (False, "save_ply: the path is empty; give a file path")
    assert logic.save_ply(str(tmp_path)) == (False, f"save_ply: {tmp_path} is a directory; give a file path")
    assert logic.resolve_path("~/x.ply") == Path.home() / "x.ply"
    ok, message = logic.load_map("nothing.nrmap")
    assert not ok and message == f"map file {tmp_path / 'out' / 'nothing.nrmap'} does not exist"
    assert len(pipeline.frames) == 3 and pipeline.resets == 0  # the map is untouched
    assert logic.reset() == (True, "map cleared (0 blocks dropped)") and pipeline.resets == 1


def test_update_parameters_applies_runtime_ones_and_refuses_the_rest():
    logic, pipeline, _ = make_logic()
    assert logic.update_parameters({"keyframe_min_rotation_deg": 20.0, "backlog_policy": "skip_fragment",
                                    "maximum_backlog_length": 7, "max_wait_for_pose_s": 5.0})[0]
    assert pipeline.fragments.config.keyframe_min_rotation_deg == 20.0
    assert logic.params.max_wait_for_pose_s == 5.0
    assert (logic.worker.policy, logic.worker.maximum_backlog) == ("skip_fragment", 7)
    assert logic.tf.cache_time_s == 20.0  # the TF history outlasts the longest wait
    refused = {
        "fragment_size": (5, "cannot change fragment_size while the node runs"),
        "global_frame": ("map", "cannot change global_frame while the node runs"),
        "voxel_sise": (0.05, "unknown parameter 'voxel_sise'; did you mean voxel_size?"),
        "keyframe_min_rotation_deg": (200.0, "parameter 'keyframe_min_rotation_deg': 200.0 is out of range"),
        "occupancy_min_height_m": (3.0, "occupancy_min_height_m (3.0) must not exceed occupancy_max"),
    }
    for name, (value, reason) in refused.items():
        ok, message = logic.update_parameters({"diagnostics_rate_hz": 5.0, name: value})
        assert not ok and message.startswith(reason), message
    assert logic.params.diagnostics_rate_hz == 0.0  # all or nothing
    assert {"keyframe_min_translation_m", "mesh_publish_rate_hz", "on_time_jump"} <= RUNTIME_PARAMETERS
    assert not {"voxel_size", "mode", "image_topic", "fragment_size"} & RUNTIME_PARAMETERS


@pytest.mark.skipif("map_clearing_frame" not in parameter_infos(), reason="MemoryBoundsConfig not registered")
def test_map_clearing_frame_is_looked_up_at_each_frame():
    logic, pipeline, _ = make_logic(map_clearing_frame="base_link")
    feed(logic, camera_stream(stamps(3)))
    assert len(pipeline.clearing_origins) == 3
    for origin, t in zip(pipeline.clearing_origins, stamps(3)):
        np.testing.assert_allclose(origin, T_odom_base(t)[:3, 3], atol=1e-9)
    logic, pipeline, _ = make_logic()  # default '': the camera (None)
    feed(logic, camera_stream(stamps(2)))
    assert pipeline.clearing_origins == [None, None]
