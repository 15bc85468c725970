"""The node logic under the bag transport, on synthetic bags with injected faults.

Every fault bag is the clean recording (60 frames, 30 Hz, 160x120, depth mode) with some messages
delayed, dropped, re-stamped or corrupted. Each test checks the exact drop counts (in the replay summary
and in the last /diagnostics message), that the replay finishes, and that what was integrated before
the fault is still in the map afterwards (a map saved through ``~/save_map`` just before the fault has
every block in the final map, its mesh lies on the final mesh).
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np
import pytest
from replay_helpers import (
    N_FRAMES,
    QUIET,
    TOPICS,
    Recording,
    block_set,
    faulty_bag,
    read_output,
    record,
    replay,
)
from scipy.spatial import cKDTree

from neuralrecon_ros.core.geometry import make_transform
from neuralrecon_ros.core.types import CameraIntrinsics
from neuralrecon_ros.io import messages as m
from neuralrecon_ros.io.bags import default_typestore
from neuralrecon_ros.io.map_file import load_map
from neuralrecon_ros.io.ply import read_ply
from neuralrecon_ros.node.bag_transport import replay_bag
from neuralrecon_ros.node.diagnostics import diagnostic_values
from neuralrecon_ros.node.logic import DROP_REASONS
from neuralrecon_ros.node.outputs import output_topic_name
from neuralrecon_ros.node.parameters import NodeParameters
from neuralrecon_ros.node.pipeline_factory import build_pipeline

VOXEL = 0.04
TYPES = m.rosbags_types(default_typestore())
DIAGNOSTICS = {"diagnostics_rate_hz": 1.0}


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> Recording:
    return record(tmp_path_factory.mktemp("recording"))


@pytest.fixture(scope="module")
def clean(recording, tmp_path_factory):
    folder = tmp_path_factory.mktemp("clean")
    bag = faulty_bag(folder, recording, lambda msg, frame: [msg], name="bag")
    result, pipeline = replay(bag, folder / "out", **DIAGNOSTICS)
    return result, pipeline


def last_diagnostics(output_bag: Path) -> dict[str, dict[str, str]]:
    """The values of the last /diagnostics message, by task (inputs, reconstruction, map)."""
    _, message = read_output(output_bag)[output_topic_name("diagnostics")][-1]
    return {status.name.split(": ")[1]: diagnostic_values(status) for status in message.status}


def check_counts(result, pipeline, expected_drops: dict[str, int], frames: int, images: int = N_FRAMES,
                 other_drops: int = 0) -> None:
    """Drops by reason and frames, in the summary and in the final diagnostics; every image accounted for.

    ``other_drops``: how many of the ``stale_stamp`` drops are not images (camera_info, depth, TF).
    """
    assert result.dropped == expected_drops and not result.errors
    assert result.counts["frames"] == frames
    not_images = ("invalid_transform", "bad_camera_info")
    image_drops = sum(v for k, v in result.dropped.items() if k not in not_images) - other_drops
    assert frames + image_drops == result.received["image"] == images
    diagnostics = last_diagnostics(result.output_bag)
    inputs, reconstruction = diagnostics["inputs"], diagnostics["reconstruction"]
    for reason in DROP_REASONS:
        where = reconstruction if reason in ("backlog_full", "backlog_skip", "pipeline_error") else inputs
        assert int(where[f"dropped_{reason}"]) == expected_drops.get(reason, 0), reason
    tf_drops = expected_drops.get("tf_missing", 0) + expected_drops.get("tf_extrapolation", 0)
    assert int(inputs["tf_drops"]) == tf_drops and int(inputs["image_received"]) == images
    assert int(reconstruction["frames"]) == frames
    assert int(diagnostics["map"]["map_blocks"]) == pipeline.tsdf_map.num_blocks


def run_with_snapshot(recording: Recording, tmp_path: Path, edit, before_frame: int, **values):
    """Replay the fault bag, saving the map and the mesh right after frame ``before_frame - 1``."""
    bag = faulty_bag(tmp_path, recording, edit)
    at = recording.time_of(before_frame - 1)
    calls = [(at, "save_map", "before.nrmap"), (at, "save_ply", "before.ply")]
    result, pipeline = replay(bag, tmp_path / "out", service_calls=calls, output_directory=str(tmp_path),
                              **DIAGNOSTICS, **values)
    assert [r.success for r in result.service_results] == [True, True], result.service_results
    return result, pipeline


def check_map_kept(tmp_path: Path, pipeline, tolerance_m: float = VOXEL) -> None:
    """Everything integrated before the fault is still in the map: blocks, and surfaces where they were."""
    before = load_map(tmp_path / "before.nrmap")
    assert before.num_blocks > 50
    assert block_set(before.map_state["block_coords"]) <= block_set(pipeline.tsdf_map.block_coords())
    mesh_before = read_ply(tmp_path / "before.ply")
    distance, _ = cKDTree(pipeline.mesh().vertices).query(mesh_before.vertices)
    assert np.percentile(distance, 95) < tolerance_m


def check_sharp_mesh(recording: Recording, pipeline) -> None:
    """The surfaces are where the scene is: no frame was integrated with a wrong pose."""
    mesh = pipeline.mesh()
    distance = np.abs(recording.sequence.scene.sdf(mesh.vertices.astype(np.float64)))
    assert np.median(distance) < 0.01


# ------------------------------------------------------------------------------------------------- tests


def test_clean_bag_has_no_drops(clean, recording):
    result, pipeline = clean
    check_counts(result, pipeline, {}, N_FRAMES)
    check_sharp_mesh(recording, pipeline)


def test_tf_arriving_late_within_the_wait_is_waited_for(recording, tmp_path, clean):
    delay_ns = 200_000_000  # 0.2 s < max_wait_for_pose_s 0.45, from frame 20 to the end

    def late_tf(msg, frame):
        if msg.topic == TOPICS.tf and frame >= 20:
            return [msg._replace(stamp_ns=msg.stamp_ns + delay_ns)]
        return [msg]

    result, pipeline = run_with_snapshot(recording, tmp_path, late_tf, before_frame=20)
    check_counts(result, pipeline, {}, N_FRAMES)
    check_map_kept(tmp_path, pipeline)
    # the same frames with the same poses: the same map as the clean replay, voxel for voxel
    clean_map = clean[1].tsdf_map
    assert block_set(pipeline.tsdf_map.block_coords()) == block_set(clean_map.block_coords())
    np.testing.assert_array_equal(pipeline.tsdf_map.state_dict()["tsdf"].numpy(),
                                  clean_map.state_dict()["tsdf"].numpy())


def test_tf_arriving_too_late_drops_the_frames_that_waited_too_long(recording, tmp_path):
    # 0.8 s late from frame 20 on: frame k is dropped once images 0.45 s newer have arrived, which happens
    # before its TF for k <= 45; later frames (within 0.45 s of the last image) get their TF in the end
    def late_tf(msg, frame):
        if msg.topic == TOPICS.tf and frame >= 20:
            return [msg._replace(stamp_ns=msg.stamp_ns + 800_000_000)]
        return [msg]

    result, pipeline = run_with_snapshot(recording, tmp_path, late_tf, before_frame=20)
    check_counts(result, pipeline, {"tf_extrapolation": 26}, N_FRAMES - 26)
    check_map_kept(tmp_path, pipeline)
    check_sharp_mesh(recording, pipeline)


def test_tf_missing_for_a_stretch(recording, tmp_path):
    # no TF for frames 20..39 (0.67 s): frames 20..25 expire before TF resumes at frame 40; frames 26..39
    # are still waiting then and are posed by interpolation across the gap
    def gap(msg, frame):
        return [] if msg.topic == TOPICS.tf and 20 <= frame < 40 else [msg]

    result, pipeline = run_with_snapshot(recording, tmp_path, gap, before_frame=20)
    check_counts(result, pipeline, {"tf_extrapolation": 6}, N_FRAMES - 6)
    check_map_kept(tmp_path, pipeline, tolerance_m=2 * VOXEL)  # the interpolated poses smear a little


def test_camera_frame_disconnected_for_a_stretch(recording, tmp_path):
    # frames 20..29 come from another camera frame that nothing connects to odom: tf_missing
    def other_frame(msg, frame):
        if msg.topic in (TOPICS.image, TOPICS.camera_info, TOPICS.depth) and 20 <= frame < 30:
            msg.msg.header.frame_id = "other_camera_optical_frame"
        return [msg]

    result, pipeline = run_with_snapshot(recording, tmp_path, other_frame, before_frame=20)
    check_counts(result, pipeline, {"tf_missing": 10}, N_FRAMES - 10)
    check_map_kept(tmp_path, pipeline)
    check_sharp_mesh(recording, pipeline)


def test_out_of_order_stamps(recording, tmp_path):
    # frames 10 and 11, 30 and 31 arrive swapped: the newer one is processed first, the older one (image,
    # camera_info and depth) is then behind the last processed frame: stale
    swapped = {10: 11, 11: 10, 30: 31, 31: 30}

    def swap(msg, frame):
        if frame in swapped:
            return [msg._replace(stamp_ns=recording.stamps_ns[swapped[frame]])]
        return [msg]

    result, pipeline = run_with_snapshot(recording, tmp_path, swap, before_frame=10)
    check_counts(result, pipeline, {"stale_stamp": 6}, N_FRAMES - 2, other_drops=4)
    check_map_kept(tmp_path, pipeline)
    check_sharp_mesh(recording, pipeline)


def test_image_and_camera_info_mismatch(recording, tmp_path):
    intrinsics = recording.sequence.intrinsics
    doubled = CameraIntrinsics(2 * intrinsics.fx, 2 * intrinsics.fy, 2 * intrinsics.cx, 2 * intrinsics.cy,
                               2 * intrinsics.width, 2 * intrinsics.height)
    types = TYPES

    def mismatch(msg, frame):
        if msg.topic == TOPICS.camera_info and 10 <= frame < 15:  # the wrong camera's size
            stamp = m.header_stamp(msg.msg)
            return [msg._replace(msg=m.encode_camera_info(types, doubled, stamp, msg.msg.header.frame_id))]
        if msg.topic == TOPICS.camera_info and 30 <= frame < 33:  # missing
            return []
        if msg.topic == TOPICS.camera_info and frame in (40, 41):  # stamped differently from the image
            msg.msg.header.stamp.nanosec = (msg.msg.header.stamp.nanosec + 10_000_000) % 1_000_000_000
            return [msg]
        if msg.topic == TOPICS.depth and frame == 50:  # depth not registered to the colour image
            depth = np.ones((120, 120), np.float32)
            return [msg._replace(msg=m.encode_image(types, depth, "32FC1", m.header_stamp(msg.msg),
                                                    msg.msg.header.frame_id))]
        return [msg]

    result, pipeline = run_with_snapshot(recording, tmp_path, mismatch, before_frame=10)
    check_counts(result, pipeline, {"size_mismatch": 6, "no_camera_info": 5}, N_FRAMES - 11)
    check_map_kept(tmp_path, pipeline)
    check_sharp_mesh(recording, pipeline)


def test_nan_pose(recording, tmp_path):
    # TF of frames 20..22 carries NaN: rejected; the frames are posed from TF 19 and 23 (interpolated)
    def nan_tf(msg, frame):
        if msg.topic == TOPICS.tf and 20 <= frame < 23:
            msg.msg.transforms[0].transform.translation.x = float("nan")
        return [msg]

    result, pipeline = run_with_snapshot(recording, tmp_path, nan_tf, before_frame=20)
    check_counts(result, pipeline, {"invalid_transform": 3}, N_FRAMES)
    check_map_kept(tmp_path, pipeline)
    check_sharp_mesh(recording, pipeline)


def test_nan_odometry(recording, tmp_path):
    def nan_odometry(msg, frame):
        if msg.topic == TOPICS.odom and frame in (20, 21):
            msg.msg.pose.pose.orientation.w = float("nan")
        return [msg]

    result, pipeline = run_with_snapshot(recording, tmp_path, nan_odometry, before_frame=20,
                                         pose_source="odometry")
    check_counts(result, pipeline, {"invalid_transform": 2}, N_FRAMES)
    assert result.received["odometry"] == N_FRAMES
    check_map_kept(tmp_path, pipeline)


CAMERA_TOPICS = (TOPICS.image, TOPICS.camera_info, TOPICS.depth)


def _redelivered(recording: Recording, after_frame: int, frames: range, shift_s: float = 0.0):
    """After frame ``after_frame`` (bag time), the camera driver re-delivers the image, camera_info and
    depth of ``frames`` with their old header stamps (minus ``shift_s``) while the bag clock moves on."""
    step = recording.stamps_ns[1] - recording.stamps_ns[0]
    at_ns = recording.stamps_ns[min(after_frame, N_FRAMES - 1)] + step // 2

    def redeliver(msg, frame):
        if msg.topic not in CAMERA_TOPICS or frame not in frames:
            return [msg]
        again = copy.deepcopy(msg.msg)
        stamp = m.header_stamp(again) - shift_s
        again.header.stamp.sec, again.header.stamp.nanosec = divmod(m.sec_to_ns(stamp), 1_000_000_000)
        return [msg, msg._replace(stamp_ns=at_ns + frame, msg=again)]

    return redeliver


@pytest.mark.parametrize(("after_frame", "frames", "shift_s"), [
    (5, range(0, 5), 0.0),  # at the start
    (30, range(20, 30), 0.0),  # in the middle
    (60, range(50, 60), 0.0),  # at the end, after the last frame
    (30, range(0, 10), 5.0),  # from 5 s before the recording began
], ids=["start", "middle", "end", "long_ago"])
def test_stale_redelivery_is_dropped_and_changes_nothing(recording, tmp_path, clean, after_frame, frames,
                                                          shift_s):
    edit = _redelivered(recording, after_frame, frames, shift_s)
    result, pipeline = run_with_snapshot(recording, tmp_path, edit, before_frame=after_frame)
    n = len(frames)
    check_counts(result, pipeline, {"stale_stamp": 3 * n}, N_FRAMES, images=N_FRAMES + n, other_drops=2 * n)
    assert result.time_jumps == 0 and pipeline.counts["frames"] == N_FRAMES
    check_map_kept(tmp_path, pipeline)
    # stale messages change nothing: the map is the clean replay's, voxel for voxel
    clean_map = clean[1].tsdf_map
    assert block_set(pipeline.tsdf_map.block_coords()) == block_set(clean_map.block_coords())
    np.testing.assert_array_equal(pipeline.tsdf_map.state_dict()["tsdf"].numpy(),
                                  clean_map.state_dict()["tsdf"].numpy())


def test_late_tf_interleaved_with_stale_images(recording, tmp_path, clean):
    redeliver = _redelivered(recording, 30, range(20, 30))

    def late_tf_and_stale(msg, frame):
        if msg.topic == TOPICS.tf and frame >= 20:  # 0.2 s late: waited for
            return [msg._replace(stamp_ns=msg.stamp_ns + 200_000_000)]
        return redeliver(msg, frame)

    result, pipeline = run_with_snapshot(recording, tmp_path, late_tf_and_stale, before_frame=20)
    check_counts(result, pipeline, {"stale_stamp": 30}, N_FRAMES, images=N_FRAMES + 10, other_drops=20)
    check_map_kept(tmp_path, pipeline)
    np.testing.assert_array_equal(pipeline.tsdf_map.state_dict()["tsdf"].numpy(),
                                  clean[1].tsdf_map.state_dict()["tsdf"].numpy())


def test_stamps_going_back_while_the_clock_moves_on_are_stale_not_a_jump(recording, tmp_path):
    """The camera restarts its stamps (frames 0..19 again, old stamps) while the bag clock goes on: no jump,
    nothing cleared; the repeated images, camera_infos and depth images are stale. Their TF lies within
    the kept TF history and only re-inserts the same samples."""
    step = recording.stamps_ns[1] - recording.stamps_ns[0]
    offset = recording.stamps_ns[40] - recording.stamps_ns[0]

    def restamped(msg, frame):
        if frame is None:
            return [msg]
        if frame >= 40:
            return []
        again = [msg._replace(stamp_ns=msg.stamp_ns + offset + step, msg=copy.deepcopy(msg.msg))]
        return [msg, *again] if frame < 20 else [msg]

    result, pipeline = run_with_snapshot(recording, tmp_path, restamped, before_frame=40)
    check_counts(result, pipeline, {"stale_stamp": 60}, 40, other_drops=40)
    assert result.time_jumps == 0
    check_map_kept(tmp_path, pipeline)


def _loop_calls(recording: Recording) -> list[tuple[float, str, str]]:
    """Save the map and the mesh at the end of the first pass, just before the replay clock restarts."""
    at = recording.time_of(N_FRAMES - 1)
    return [(at, "save_map", "before.nrmap"), (at, "save_ply", "before.ply")]


def test_loop_is_a_clock_jump_that_keeps_the_map(recording, tmp_path, clean):
    bag = faulty_bag(tmp_path, recording, lambda msg, frame: [msg], name="bag")
    result, pipeline = replay(bag, tmp_path / "out", service_calls=_loop_calls(recording), loops=2,
                              output_directory=str(tmp_path), **DIAGNOSTICS)
    assert [r.success for r in result.service_results] == [True, True]
    # the default keeps the map: everything from the first pass is still there
    assert result.time_jumps == 1 and result.received["image"] == 2 * N_FRAMES
    check_map_kept(tmp_path, pipeline)
    waiting = result.dropped.get("clock_jump", 0)  # frames of pass 1 still waiting when the clock went back
    assert set(result.dropped) <= {"clock_jump"} and waiting <= 2
    assert result.counts["frames"] == 2 * N_FRAMES - waiting
    assert block_set(clean[1].tsdf_map.block_coords()) <= block_set(pipeline.tsdf_map.block_coords())
    diagnostics = last_diagnostics(result.output_bag)
    assert diagnostics["inputs"]["time_jumps"] == "1"
    assert int(diagnostics["inputs"]["dropped_clock_jump"]) == waiting
    # the output bag's log times never go back, though the replay clock restarted
    times = [t for stream in read_output(result.output_bag).values() for t, _ in stream]
    assert max(times) > recording.stamps_ns[-1] + 1_000_000_000


def test_loop_with_clear_map_starts_a_new_map(recording, tmp_path, clean):
    bag = faulty_bag(tmp_path, recording, lambda msg, frame: [msg], name="bag")
    result, pipeline = replay(bag, tmp_path / "out", loops=2, on_time_jump="clear_map", mesh_publish_rate_hz=1.0,
                              full_mesh_publish_rate_hz=1.0, **DIAGNOSTICS)
    assert result.time_jumps == 1 and set(result.dropped) <= {"clock_jump"}
    # the map holds exactly what the second pass gives on its own: the clean replay's map
    np.testing.assert_array_equal(pipeline.tsdf_map.state_dict()["tsdf"].numpy(),
                                  clean[1].tsdf_map.state_dict()["tsdf"].numpy())
    streams = read_output(result.output_bag)
    restart_ns = recording.stamps_ns[-1] + 1_000_000_000  # replay time of the second pass's first message
    # after the jump: the chunked mesh is resent from scratch (DELETEALL first), the whole mesh replaced
    after = [msg for t, msg in streams[output_topic_name("mesh_markers")] if t >= restart_ns]
    assert after and after[0].markers[0].action == m.MARKER_DELETEALL
    before = [msg for t, msg in streams[output_topic_name("mesh_markers")] if t < restart_ns]
    deletes = sum(marker.action == m.MARKER_DELETEALL for msg in before for marker in msg.markers)
    assert deletes == 1  # the first, full update at the start


def test_garbage_never_crashes_and_every_image_is_accounted_for(recording, tmp_path):
    types = TYPES

    def garbage(msg, frame):
        if msg.topic == TOPICS.image and frame == 5:  # a raw Bayer stream on the colour topic
            msg.msg.encoding = "bayer_rggb8"
        elif msg.topic == TOPICS.image and frame == 6:  # rows padded, data not: malformed
            msg.msg.step += 1
        elif msg.topic == TOPICS.camera_info and frame == 7:  # uncalibrated
            msg.msg.k = np.zeros(9)
        elif msg.topic == TOPICS.tf and frame == 8:  # a loop: odom above itself
            loop = m.encode_transform_stamped(types, make_transform(np.eye(3), [0, 0, 0]),
                                              m.stamp_to_sec(msg.msg.transforms[0].header.stamp),
                                              "base_link", "odom")
            return [msg, msg._replace(msg=m.encode_tf_message(types, [loop]))]
        elif msg.topic == TOPICS.depth and frame == 9:  # a colour image on the depth topic
            msg.msg.encoding = "rgb8"
            msg.msg.step = msg.msg.width * 3
            msg.msg.data = np.zeros(msg.msg.height * msg.msg.width * 3, np.uint8)
        return [msg]

    bag = faulty_bag(tmp_path, recording, garbage)
    result, pipeline = replay(bag, tmp_path / "out", **DIAGNOSTICS)
    # frame 9 loses its depth image (unsupported_encoding), so the frame itself waits in vain (no_depth)
    assert result.dropped == {"unsupported_encoding": 2, "bad_image": 1, "bad_camera_info": 1,
                              "no_camera_info": 1, "no_depth": 1, "invalid_transform": 1}
    assert result.counts["frames"] == N_FRAMES - 4 and not result.errors
    assert result.received == {"image": 60, "camera_info": 60, "depth": 60, "tf": 61, "tf_static": 1}
    assert not pipeline.mesh().is_empty


def test_threaded_replay_with_a_slow_pipeline_accounts_for_every_image(recording, tmp_path):
    """The live node's worker thread on a bag read faster than the pipeline runs: frames the worker cannot
    take are dropped by the backlog policy (how many depends on the machine), never lost unaccounted."""
    bag = faulty_bag(tmp_path, recording, lambda msg, frame: [msg])
    params = NodeParameters({**QUIET, "maximum_backlog_length": 2, "backlog_policy": "skip_fragment",
                             "fragment_size": 3, "diagnostics_rate_hz": 1.0})
    pipeline = build_pipeline(params)
    process = pipeline.process
    pipeline.process = lambda frame: (time.sleep(0.005), process(frame))[1]
    result = replay_bag(bag, tmp_path / "out", params, pipeline, progress=False, threaded=True)
    assert not result.errors and set(result.dropped) <= {"backlog_skip"}
    assert result.counts["frames"] + result.dropped.get("backlog_skip", 0) == N_FRAMES
    assert (result.fragments_skipped > 0) == ("backlog_skip" in result.dropped)
    diagnostics = last_diagnostics(result.output_bag)
    assert int(diagnostics["reconstruction"]["frames"]) == result.counts["frames"]
    assert int(diagnostics["reconstruction"]["fragments_skipped"]) == result.fragments_skipped
    assert int(diagnostics["map"]["map_blocks"]) == pipeline.tsdf_map.num_blocks > 0
