"""Synthetic bags: real ROS 2 bags readable by rosbags and by the independent MCAP reader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from mcap.reader import make_reader
from rosbags.highlevel import AnyReader
from rosbags.interfaces import QosDurability
from rosbags.typesys import Stores, get_typestore

from neuralrecon_ros.core.geometry import make_transform, quaternion_to_matrix
from neuralrecon_ros.core.synthetic import T_BODY_OPTICAL, make_sequence
from neuralrecon_ros.io.messages import sec_to_ns
from neuralrecon_ros.io.synthetic_bag import SyntheticBagError, SyntheticBagTopics, write_synthetic_bag

N_FRAMES = 20
T = SyntheticBagTopics()
PER_FRAME_TOPICS = (T.tf, T.odom, T.camera_info, T.image, T.depth)
EXPECTED_TYPES = {
    T.tf_static: "tf2_msgs/msg/TFMessage",
    T.tf: "tf2_msgs/msg/TFMessage",
    T.odom: "nav_msgs/msg/Odometry",
    T.camera_info: "sensor_msgs/msg/CameraInfo",
    T.image: "sensor_msgs/msg/Image",
    T.depth: "sensor_msgs/msg/Image",
}


@pytest.fixture(scope="module")
def handheld():
    return make_sequence(seed=2, n_frames=N_FRAMES, width=160, height=120, style="handheld")


@pytest.fixture(scope="module")
def robot():
    return make_sequence(seed=4, n_frames=N_FRAMES, width=160, height=120, style="robot")


def transform_matrix(transform) -> np.ndarray:
    t, q = transform.translation, transform.rotation
    return make_transform(quaternion_to_matrix(q.x, q.y, q.z, q.w), [t.x, t.y, t.z])


def stamp_ns(header) -> int:
    return header.stamp.sec * 1_000_000_000 + header.stamp.nanosec


def read_all(path: Path) -> tuple[dict[str, list[tuple[int, object]]], dict[str, object]]:
    """{topic: [(bag time ns, message)]} and {topic: connection} via rosbags' AnyReader."""
    messages: dict[str, list[tuple[int, object]]] = {}
    with AnyReader([path], default_typestore=get_typestore(Stores.ROS2_HUMBLE)) as reader:
        connections = {c.topic: c for c in reader.connections}
        for connection, time_ns, data in reader.messages():
            msg = reader.deserialize(data, connection.msgtype)
            messages.setdefault(connection.topic, []).append((time_ns, msg))
    return messages, connections


def decoded_image(msg) -> np.ndarray:
    """Pixels of an unpadded little-endian Image, decoded here independently of io.messages."""
    dtype = {"rgb8": "u1", "bgr8": "u1", "32FC1": "<f4", "16UC1": "<u2"}[msg.encoding]
    pixels = np.frombuffer(np.asarray(msg.data, np.uint8).tobytes(), dtype).reshape(msg.height, msg.width, -1)
    return pixels[..., 0] if msg.encoding.endswith("C1") else pixels


def check_tf_chain(messages, sequence) -> list[np.ndarray]:
    """The bag's odom -> base_link -> camera_link -> optical chain equals every rendered pose."""
    (_, static_msg), = messages[T.tf_static]
    static = {
        (t.header.frame_id, t.child_frame_id): transform_matrix(t.transform) for t in static_msg.transforms
    }
    T_base_link = static[(T.base_frame, T.camera_link_frame)]
    T_link_optical = static[(T.camera_link_frame, T.optical_frame)]
    np.testing.assert_allclose(T_link_optical, T_BODY_OPTICAL, atol=1e-12)
    np.testing.assert_allclose(T_base_link, sequence.mount.T_base_camera_link(), atol=1e-12)
    bases = []
    for index, ((time_ns, tf_msg), (_, odom)) in enumerate(zip(messages[T.tf], messages[T.odom])):
        (transform,) = tf_msg.transforms
        assert (transform.header.frame_id, transform.child_frame_id) == (T.odom_frame, T.base_frame)
        assert stamp_ns(transform.header) == time_ns
        T_odom_base = transform_matrix(transform.transform)
        T_chain = T_odom_base @ T_base_link @ T_link_optical
        np.testing.assert_allclose(T_chain, sequence.poses[index], atol=1e-9)
        p, q = odom.pose.pose.position, odom.pose.pose.orientation
        T_odom = make_transform(quaternion_to_matrix(q.x, q.y, q.z, q.w), [p.x, p.y, p.z])
        np.testing.assert_allclose(T_odom, T_odom_base, atol=1e-12)
        assert (odom.header.frame_id, odom.child_frame_id) == (T.odom_frame, T.base_frame)
        bases.append(T_odom_base)
    return bases


@pytest.mark.parametrize(
    ("storage", "name", "depth_encoding", "image_encoding"),
    [
        ("mcap", "bag", "32FC1", "rgb8"),
        ("sqlite3", "bag", "16UC1", "bgr8"),
        ("mcap", "single.mcap", "16UC1", "rgb8"),
        ("sqlite3", "single.db3", "32FC1", "rgb8"),
    ],
)
def test_bag_round_trip_with_rosbags(tmp_path, handheld, storage, name, depth_encoding, image_encoding):
    path = write_synthetic_bag(
        handheld, tmp_path / name, storage, depth_encoding=depth_encoding, image_encoding=image_encoding
    )
    assert path.is_dir() == (name == "bag")
    messages, connections = read_all(path)

    assert {topic: c.msgtype for topic, c in connections.items()} == EXPECTED_TYPES
    assert len(messages[T.tf_static]) == 1
    assert all(len(messages[topic]) == N_FRAMES for topic in PER_FRAME_TOPICS)
    assert connections[T.tf_static].ext.offered_qos_profiles[0].durability == QosDurability.TRANSIENT_LOCAL
    assert connections[T.tf].ext.offered_qos_profiles[0].durability == QosDurability.VOLATILE

    stamps_ns = [sec_to_ns(s) for s in handheld.stamps]
    assert messages[T.tf_static][0][0] == stamps_ns[0]
    for topic in PER_FRAME_TOPICS:
        assert [time_ns for time_ns, _ in messages[topic]] == stamps_ns
        headers = [msg.transforms[0].header if topic == T.tf else msg.header for _, msg in messages[topic]]
        assert [stamp_ns(header) for header in headers] == stamps_ns

    K = handheld.intrinsics.matrix
    for index, frame in enumerate(handheld):
        _, image = messages[T.image][index]
        assert (image.width, image.height, image.encoding) == (160, 120, image_encoding)
        assert image.step == 160 * 3 and image.is_bigendian == 0
        assert image.header.frame_id == T.optical_frame
        rgb = decoded_image(image)
        np.testing.assert_array_equal(rgb[..., ::-1] if image_encoding == "bgr8" else rgb, frame.image)

        _, info = messages[T.camera_info][index]
        assert (info.width, info.height, info.distortion_model) == (160, 120, "plumb_bob")
        np.testing.assert_allclose(info.k, K.ravel())
        np.testing.assert_allclose(info.r, np.eye(3).ravel())
        np.testing.assert_allclose(info.p, np.hstack([K, np.zeros((3, 1))]).ravel())
        np.testing.assert_array_equal(info.d, np.zeros(5))
        assert info.header.frame_id == T.optical_frame

        _, depth = messages[T.depth][index]
        assert depth.encoding == depth_encoding and depth.header.frame_id == T.optical_frame
        values = decoded_image(depth)
        if depth_encoding == "32FC1":
            assert depth.step == 160 * 4
            np.testing.assert_array_equal(values, frame.depth)
        else:
            assert depth.step == 160 * 2
            np.testing.assert_allclose(values.astype(np.float64) / 1000.0, frame.depth, atol=0.5e-3 + 1e-7)
    check_tf_chain(messages, handheld)


def test_mcap_file_read_by_the_independent_mcap_reader(tmp_path, handheld):
    path = write_synthetic_bag(handheld, tmp_path / "bag.mcap", storage="mcap")
    typestore = get_typestore(Stores.ROS2_HUMBLE)
    with open(path, "rb") as handle:
        reader = make_reader(handle)
        summary = reader.get_summary()
        assert summary is not None
        channels = {c.topic: c for c in summary.channels.values()}
        assert set(channels) == set(EXPECTED_TYPES)
        for topic, channel in channels.items():
            assert channel.message_encoding == "cdr"
            schema = summary.schemas[channel.schema_id]
            assert schema.name == EXPECTED_TYPES[topic] and schema.encoding == "ros2msg"
            expected_count = 1 if topic == T.tf_static else N_FRAMES
            assert summary.statistics.channel_message_counts[channel.id] == expected_count
        assert "durability: 1" in channels[T.tf_static].metadata["offered_qos_profiles"]  # transient_local

        decoded: dict[str, list[tuple[int, object]]] = {}
        for schema, channel, message in reader.iter_messages(log_time_order=True):
            msg = typestore.deserialize_cdr(message.data, schema.name)
            assert message.publish_time == message.log_time
            decoded.setdefault(channel.topic, []).append((message.log_time, msg))
    check_tf_chain(decoded, handheld)
    _, image = decoded[T.image][5]
    np.testing.assert_array_equal(decoded_image(image), handheld[5].image)


def test_robot_base_moves_on_the_floor_plane(tmp_path, robot):
    messages, _ = read_all(write_synthetic_bag(robot, tmp_path / "robot", storage="sqlite3"))
    bases = check_tf_chain(messages, robot)
    for T_odom_base in bases:
        assert abs(T_odom_base[2, 3]) < 1e-9  # on the floor
        np.testing.assert_allclose(T_odom_base[:3, 2], [0.0, 0.0, 1.0], atol=1e-9)  # yaw only
    assert np.linalg.norm(bases[-1][:3, 3] - bases[0][:3, 3]) > 0.1


def test_custom_topic_names_and_bad_options(tmp_path, handheld):
    short = make_sequence(seed=2, n_frames=2, width=32, height=24)
    names = SyntheticBagTopics(image="/rgb", depth="/depth", odom_frame="world")
    path = write_synthetic_bag(short, tmp_path / "custom", topics=names, include_depth=False)
    messages, connections = read_all(path)
    assert "/rgb" in connections and "/depth" not in connections
    assert messages[T.tf][0][1].transforms[0].header.frame_id == "world"
    with pytest.raises(SyntheticBagError, match="depth_encoding"):
        write_synthetic_bag(short, tmp_path / "x", depth_encoding="mono8")
    with pytest.raises(SyntheticBagError, match="image_encoding"):
        write_synthetic_bag(short, tmp_path / "y", image_encoding="rgba8")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
