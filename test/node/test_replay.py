"""Replay of small synthetic RGB-D bags through the bag transport, the node logic and the real pipeline."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from neuralrecon_ros.core.synthetic import make_sequence
from neuralrecon_ros.io import messages as m
from neuralrecon_ros.io.bags import BagReader, BagTopicError
from neuralrecon_ros.io.synthetic_bag import SyntheticBagTopics, write_synthetic_bag
from neuralrecon_ros.node.bag_transport import OUTPUT_BAG_NAME, image_topic_of, replay_bag
from neuralrecon_ros.node.logic import output_topic_name
from neuralrecon_ros.node.parameters import NodeParameters
from neuralrecon_ros.node.pipeline_factory import build_pipeline

N_FRAMES = 40
MESH_TOPIC = output_topic_name("mesh")
RENAMED = SyntheticBagTopics(
    image="/cam/rgb", camera_info="/cam/rgb_info", depth="/cam/depth", odom="/vio/odometry",
    odom_frame="map", optical_frame="cam_optical",
)


@pytest.fixture(scope="module")
def sequence():
    return make_sequence(seed=3, n_frames=N_FRAMES, width=96, height=72)


def replay(bag: Path, output: Path, **values):
    # keyframes only keeps depth fusion cheap; the whole mesh is published after every map change
    params = NodeParameters({"mode": "depth", "integrate_all_frames": False, "fragment_size": 2,
                             "full_mesh_publish_rate_hz": 100.0, **values})
    pipeline = build_pipeline(params)
    recorded = []
    process = pipeline.process
    pipeline.process = lambda frame: (recorded.append(frame), process(frame))[1]
    result = replay_bag(bag, output, params, pipeline, progress=False)
    return result, pipeline, recorded


def check_reconstruction(result, pipeline, recorded, sequence, output: Path) -> None:
    assert result.counts["frames"] == N_FRAMES and not result.dropped and not result.errors
    assert [result.received[kind] for kind in ("image", "camera_info", "depth")] == [N_FRAMES] * 3
    for frame in recorded:  # poses arrive exactly, through CDR, TF chain and interpolation
        np.testing.assert_allclose(frame.T_world_camera, sequence.poses[frame.index], atol=1e-6)
        assert frame.depth is not None and frame.image.shape == (72, 96, 3)
    mesh = pipeline.mesh()
    assert len(mesh.faces) > 500
    distance = np.abs(sequence.scene.sdf(mesh.vertices.astype(np.float64)))
    assert np.median(distance) < 0.01  # a wrong pose anywhere would smear surfaces by far more
    with BagReader(output / OUTPUT_BAG_NAME) as out:
        assert out.topics[MESH_TOPIC].msgtype == "visualization_msgs/msg/Marker"
        markers = [msg.msg for msg in out.messages([MESH_TOPIC])]
    assert result.counts["fragments"] >= 2
    assert len(markers) == result.meshes_published >= result.counts["fragments"]
    last = markers[-1]
    triangles = m.decode_marker_triangles(last)
    np.testing.assert_allclose(triangles, mesh.vertices[mesh.faces], atol=1e-6)
    assert last.type == m.MARKER_TRIANGLE_LIST and len(last.colors) == len(last.points)


def test_replay_reconstructs_the_scene(tmp_path, sequence):
    write_synthetic_bag(sequence, tmp_path / "bag")
    result, pipeline, recorded = replay(tmp_path / "bag", tmp_path / "out")
    check_reconstruction(result, pipeline, recorded, sequence, tmp_path / "out")
    assert result.received["tf"] == N_FRAMES and result.received["tf_static"] == 1
    assert result.output_bag == tmp_path / "out" / OUTPUT_BAG_NAME
    with BagReader(result.output_bag) as out:
        first = next(iter(out.messages([MESH_TOPIC])))
    assert first.msg.header.frame_id == "odom" and len(first.msg.points) > 0
    assert {"integrate", "decode"} <= set(result.timings)
    assert result.bag_duration_s == pytest.approx(sequence.stamps[-1] - sequence.stamps[0], abs=1e-6)


def test_replay_with_renamed_topics_frames_and_odometry(tmp_path, sequence):
    bag = tmp_path / "bag.db3"
    write_synthetic_bag(sequence, bag, storage="sqlite3", depth_encoding="16UC1", topics=RENAMED)
    with pytest.raises(BagTopicError, match="'/camera/color/image_raw' .* it has: /cam/depth"):
        replay(bag, tmp_path / "fails")
    renamed = {"image_topic": "/cam/rgb", "camera_info_topic": "/cam/rgb_info", "depth_topic": "/cam/depth"}
    with pytest.raises(BagTopicError, match="'/odom' \\(odometry_topic\\) is not in bag"):
        replay(bag, tmp_path / "fails", pose_source="odometry", **renamed)
    result, pipeline, recorded = replay(
        bag, tmp_path / "out", global_frame="map", pose_source="odometry", odometry_topic="/vio/odometry",
        **renamed,
    )
    check_reconstruction(result, pipeline, recorded, sequence, tmp_path / "out")
    assert result.received["odometry"] == N_FRAMES
    assert all(frame.frame_id == "cam_optical" for frame in recorded)


def test_wrong_frame_names_are_counted_and_outputs_overwritten(tmp_path, sequence):
    write_synthetic_bag(sequence, tmp_path / "bag")
    for _ in range(2):  # a global frame nothing publishes; the second replay replaces output.mcap
        result, pipeline, _ = replay(tmp_path / "bag", tmp_path / "out", global_frame="world")
        assert result.counts["frames"] == 0 and result.dropped == {"tf_missing": N_FRAMES}
        assert pipeline.mesh().is_empty and result.meshes_published == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [OUTPUT_BAG_NAME]


def test_truncated_bag_keeps_what_was_mapped(tmp_path, sequence):
    write_synthetic_bag(sequence, tmp_path / "bag")
    storage = next((tmp_path / "bag").glob("*.mcap"))
    with open(storage, "r+b") as handle:
        handle.truncate(int(os.path.getsize(storage) * 0.75))
    result, pipeline, _ = replay(tmp_path / "bag", tmp_path / "out")
    assert len(result.errors) == 1 and "damaged" in result.errors[0]
    assert 0 < result.counts["frames"] < N_FRAMES
    assert not pipeline.mesh().is_empty
    with BagReader(result.output_bag) as out:  # the output bag is complete and readable
        assert MESH_TOPIC in out.topics


def test_compressed_image_transport_topic_name():
    assert image_topic_of(NodeParameters({"image_topic": "/cam/rgb/"})) == "/cam/rgb/"
    params = NodeParameters({"image_topic": "/cam/rgb", "image_transport": "compressed"})
    assert image_topic_of(params) == "/cam/rgb/compressed"
