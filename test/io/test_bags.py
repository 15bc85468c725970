"""Bag writing and reading: round trips in both storages, independent MCAP reader, damaged bags."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from mcap.reader import make_reader
from rosbags.highlevel import AnyReader
from rosbags.interfaces import QosDurability

from neuralrecon_ros.io import messages as m
from neuralrecon_ros.io.bags import (
    BagError,
    BagReader,
    BagReadError,
    BagTopicError,
    BagWriter,
    default_typestore,
)

N_IMAGES = 120


def image_value(i: int) -> np.ndarray:
    # 12 kB images: the sample bag spans two 1 MiB MCAP chunks, so a truncated file keeps one whole
    return np.full((64, 64, 3), i % 256, np.uint8)


def write_sample_bag(path: Path, storage: str | None = None) -> None:
    """Images at 10 Hz, TF at 20 Hz written out of time order, one latched static TF."""
    with BagWriter(path, storage=storage) as bag:
        types = bag.types
        bag.add_topic("/camera/image", "sensor_msgs/msg/Image")
        bag.add_topic("/tf", "tf2_msgs/msg/TFMessage")
        bag.add_topic("/tf_static", "tf2_msgs/msg/TFMessage", latched=True)
        static = m.encode_transform_stamped(types, np.eye(4), 0.0, "base_link", "camera")
        bag.write("/tf_static", 0, m.encode_tf_message(types, [static]))
        for i in range(N_IMAGES):
            stamp = 1.0 + 0.1 * i
            image = m.encode_image(types, image_value(i), "rgb8", stamp, "camera")
            bag.write("/camera/image", m.sec_to_ns(stamp), image)
        for i in range(2 * N_IMAGES):  # TF written after the images: the reader must merge by time
            stamp = 1.0 + 0.05 * i
            T = np.eye(4)
            T[0, 3] = stamp
            tf = m.encode_transform_stamped(types, T, stamp, "odom", "base_link")
            bag.write("/tf", m.sec_to_ns(stamp), m.encode_tf_message(types, [tf]))


def check_images(messages: list, first: int = 0) -> None:
    for k, message in enumerate(messages):
        i = first + k
        assert message.topic == "/camera/image" and message.msgtype == "sensor_msgs/msg/Image"
        assert message.stamp_ns == m.sec_to_ns(1.0 + 0.1 * i)
        np.testing.assert_array_equal(m.decode_image(message.msg), image_value(i))


@pytest.fixture(scope="module")
def bags(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bags")
    paths = {
        "mcap_file": root / "sample.mcap",
        "mcap_dir": root / "sample_mcap",
        "sqlite3_file": root / "sample.db3",
        "sqlite3_dir": root / "sample_sqlite3",
    }
    for name, path in paths.items():
        write_sample_bag(path, storage="sqlite3" if name == "sqlite3_dir" else None)
    return paths


@pytest.mark.parametrize("kind", ["mcap_file", "mcap_dir", "sqlite3_file", "sqlite3_dir"])
def test_round_trip_in_time_order(bags, kind):
    path = bags[kind]
    assert path.is_dir() == kind.endswith("_dir")
    with BagReader(path) as reader:
        assert not reader.recovered
        topics = reader.topics
        assert {t: (s.msgtype, s.count) for t, s in topics.items()} == {
            "/camera/image": ("sensor_msgs/msg/Image", N_IMAGES),
            "/tf": ("tf2_msgs/msg/TFMessage", 2 * N_IMAGES),
            "/tf_static": ("tf2_msgs/msg/TFMessage", 1),
        }
        assert reader.message_count == 3 * N_IMAGES + 1
        assert reader.start_ns == 0 and reader.end_ns == m.sec_to_ns(1.0 + 0.05 * (2 * N_IMAGES - 1))
        everything = list(reader.messages())
        stamps = [msg.stamp_ns for msg in everything]
        assert stamps == sorted(stamps) and len(everything) == 3 * N_IMAGES + 1
        images = list(reader.messages(["/camera/image"]))
        check_images(images)
        topic, msgtype, stamp_ns, msg = next(iter(reader.messages(["/tf"])))  # plain tuple unpacking
        assert (topic, msgtype, stamp_ns) == ("/tf", "tf2_msgs/msg/TFMessage", 1_000_000_000)
        assert msg.transforms[0].child_frame_id == "base_link"


def test_latched_topics_offer_transient_local(bags):
    with AnyReader([bags["mcap_dir"]]) as reader:
        durability = {
            c.topic: c.ext.offered_qos_profiles[0].durability for c in reader.connections
        }
    assert durability["/tf_static"] == QosDurability.TRANSIENT_LOCAL
    assert durability["/tf"] == QosDurability.VOLATILE


def test_mcap_is_readable_by_the_independent_mcap_reader(bags):
    typestore = default_typestore()
    with open(bags["mcap_file"], "rb") as handle:
        reader = make_reader(handle)
        assert reader.get_header().profile == "ros2"
        images = [
            (message.log_time, typestore.deserialize_cdr(message.data, schema.name))
            for schema, channel, message in reader.iter_messages(topics=["/camera/image"])
        ]
        channels = {c.topic: c.message_encoding for c in reader.get_summary().channels.values()}
    assert channels == {"/camera/image": "cdr", "/tf": "cdr", "/tf_static": "cdr"}
    assert len(images) == N_IMAGES
    for i, (log_time, msg) in enumerate(images):
        assert log_time == m.sec_to_ns(1.0 + 0.1 * i)
        np.testing.assert_array_equal(m.decode_image(msg), image_value(i))


def test_topic_errors_list_the_bag_contents(bags):
    with BagReader(bags["mcap_file"]) as reader:
        expected = "/camera/rgb.*it has: /camera/image \\(sensor_msgs/msg/Image, 120 msgs\\), /tf "
        with pytest.raises(BagTopicError, match=expected):
            reader.messages(["/camera/rgb", "/tf"])
        with pytest.raises(BagTopicError, match="'/tf' \\(camera_info\\) .* carries tf2_msgs/msg/TFMessage, "
                                                "expected sensor_msgs/msg/CameraInfo"):
            reader.require("/tf", "sensor_msgs/msg/CameraInfo", purpose="camera_info")
        assert reader.require("/tf", ("tf2_msgs/msg/TFMessage",)) == "tf2_msgs/msg/TFMessage"


def test_missing_and_non_bag_paths(tmp_path):
    with pytest.raises(BagError, match="bag not found: .*nope"):
        BagReader(tmp_path / "nope")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(BagError, match="not a ROS 2 bag"):
        BagReader(text)
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(BagError, match="no metadata.yaml and no .mcap/.db3"):
        BagReader(tmp_path / "empty_dir")
    garbage = tmp_path / "garbage.mcap"
    garbage.write_bytes(b"\x00" * 100)
    with pytest.raises(BagError, match="cannot open bag"):
        BagReader(garbage)


def test_writer_refuses_to_overwrite_and_is_atomic(tmp_path, bags):
    target = tmp_path / "out.mcap"
    shutil.copy(bags["mcap_file"], target)
    with pytest.raises(BagError, match="exists already"):
        BagWriter(target)
    with pytest.raises(RuntimeError, match="boom"), BagWriter(tmp_path / "new.mcap") as bag:
        bag.add_topic("/tf", "tf2_msgs/msg/TFMessage")
        bag.write("/tf", 1, m.encode_tf_message(bag.types, []))
        raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mcap"]  # nothing half-written left
    with BagWriter(target, overwrite=True) as bag:
        bag.add_topic("/only", "tf2_msgs/msg/TFMessage")
        bag.write("/only", 5, m.encode_tf_message(bag.types, []))
    with BagReader(target) as reader:
        assert list(reader.topics) == ["/only"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mcap"]


def test_writer_errors_are_named(tmp_path):
    with pytest.raises(BagError, match="suffix .mcap but storage 'sqlite3'"):
        BagWriter(tmp_path / "x.mcap", storage="sqlite3")
    with pytest.raises(BagError, match="unknown bag storage 'zip'"):
        BagWriter(tmp_path / "x", storage="zip")
    with BagWriter(tmp_path / "x.mcap") as bag:
        with pytest.raises(BagTopicError, match="'/a' was not added"):
            bag.write("/a", 0, m.encode_tf_message(bag.types, []))
        with pytest.raises(BagTopicError, match="'my_msgs/msg/Thing' of topic '/a' is unknown"):
            bag.add_topic("/a", "my_msgs/msg/Thing")
        bag.add_topic("/a", "tf2_msgs/msg/TFMessage")
        with pytest.raises(BagTopicError, match="added as tf2_msgs/msg/TFMessage, not sensor_msgs/msg/Image"):
            bag.add_topic("/a", "sensor_msgs/msg/Image")
        with pytest.raises(BagError, match="cannot serialize a message for '/a'"):
            bag.write("/a", 0, m.make_time(bag.types, 1.0))


def test_custom_message_types_round_trip(tmp_path):
    definition = "std_msgs/Header header\nfloat32[] values\nstring label\nuint32 count\n"
    with BagWriter(tmp_path / "custom.mcap") as bag:
        bag.register_types({"neuralrecon_msgs/msg/Sample": definition})
        bag.add_topic("/sample", "neuralrecon_msgs/msg/Sample")
        Sample = bag.types("neuralrecon_msgs/msg/Sample")
        msg = Sample(
            header=m.make_header(bag.types, 2.0, "map"),
            values=np.array([1.5, -2.0], np.float32),
            label="hello",
            count=7,
        )
        bag.write("/sample", 10, msg)
    with BagReader(tmp_path / "custom.mcap") as reader:  # a fresh reader learns the type from the bag
        (message,) = list(reader.messages())
    assert message.msgtype == "neuralrecon_msgs/msg/Sample"
    assert (message.msg.label, message.msg.count, m.header_stamp(message.msg)) == ("hello", 7, 2.0)
    np.testing.assert_array_equal(message.msg.values, [1.5, -2.0])


# ---------------------------------------------------------------------------------------- damaged bags


def truncate(path: Path, fraction: float) -> None:
    with open(path, "r+b") as handle:
        handle.truncate(int(os.path.getsize(path) * fraction))


def read_until_error(reader: BagReader, topics=None) -> tuple[list, BagReadError | None]:
    got = []
    try:
        for message in reader.messages(topics):
            got.append(message)
    except BagReadError as exc:
        return got, exc
    return got, None


@pytest.mark.parametrize("kind", ["mcap_file", "mcap_dir", "sqlite3_file"])
def test_truncated_bag_yields_readable_prefix_then_raises(tmp_path, bags, kind, caplog):
    source = bags[kind]
    copy = tmp_path / source.name
    if source.is_dir():
        shutil.copytree(source, copy)
        storage_file = next(copy.glob("*.mcap"))
    else:
        shutil.copy(source, copy)
        storage_file = copy
    truncate(storage_file, 0.8)  # inside the second MCAP chunk
    with BagReader(copy) as reader:
        assert reader.recovered
        assert "damaged" in caplog.text
        assert reader.topics["/camera/image"].msgtype == "sensor_msgs/msg/Image"
        images, error = read_until_error(reader, ["/camera/image"])
    assert error is not None and "damaged" in str(error) and str(storage_file.name) in str(error)
    assert 0 < len(images) < N_IMAGES
    check_images(images)  # exactly the first messages, intact


def test_corrupt_message_raises_after_the_good_ones(tmp_path):
    path = tmp_path / "corrupt.mcap"
    with BagWriter(path) as bag:
        bag.add_topic("/camera/image", "sensor_msgs/msg/Image")
        for i in range(5):
            stamp = 1.0 + 0.1 * i
            msg = m.encode_image(bag.types, image_value(i), "rgb8", stamp, "camera")
            bag.write("/camera/image", m.sec_to_ns(stamp), msg)
        bag.write_raw("/camera/image", m.sec_to_ns(1.5), b"\x00\x01\x00\x00\xff\xff")
        last = m.encode_image(bag.types, image_value(6), "rgb8", 1.6, "camera")
        bag.write("/camera/image", m.sec_to_ns(1.6), last)
    with BagReader(path) as reader:
        images, error = read_until_error(reader)
    check_images(images)
    assert len(images) == 5
    assert error is not None
    assert "message 5 on '/camera/image' (sensor_msgs/msg/Image) cannot be decoded" in str(error)


def test_directory_without_metadata_is_read_from_its_storage_file(tmp_path, bags, caplog):
    copy = tmp_path / "interrupted"
    shutil.copytree(bags["sqlite3_dir"], copy)
    (copy / "metadata.yaml").unlink()
    with BagReader(copy) as reader:
        images, error = read_until_error(reader, ["/camera/image"])
    assert error is None and "no metadata.yaml" in caplog.text
    check_images(images)
    assert len(images) == N_IMAGES
