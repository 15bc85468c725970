"""Message conversion: every encoder/decoder, round-tripped through CDR with rosbags classes."""

from __future__ import annotations

import dataclasses
import io
import struct

import numpy as np
import pytest
from PIL import Image as PILImage
from rosbags.typesys import Stores, get_typestore

from neuralrecon_ros.core.geometry import PoseError, make_transform, rotation_about_axis
from neuralrecon_ros.core.types import CameraIntrinsics, Mesh
from neuralrecon_ros.io import messages as m

TYPESTORE = get_typestore(Stores.ROS2_HUMBLE)
TYPES = m.rosbags_types(TYPESTORE)


def cdr_round_trip(msg):
    msgtype = msg.__msgtype__
    return TYPESTORE.deserialize_cdr(TYPESTORE.serialize_cdr(msg, msgtype), msgtype)


def raw_image(height, width, encoding, data: bytes, step, bigendian=0):
    return TYPES("sensor_msgs/msg/Image")(
        header=m.make_header(TYPES, 1.0, "cam"),
        height=height,
        width=width,
        encoding=encoding,
        is_bigendian=bigendian,
        step=step,
        data=np.frombuffer(data, np.uint8),
    )


def random_pose(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return make_transform(rotation_about_axis(rng.normal(size=3), rng.uniform(-3, 3)), rng.normal(size=3))


# ---------------------------------------------------------------------------------------- time


def test_time_round_trip_keeps_nanoseconds():
    stamp = 1_700_000_000.123456
    msg = cdr_round_trip(m.make_time(TYPES, stamp))
    assert msg.sec == 1_700_000_000
    assert abs(msg.nanosec - 123_456_000) <= 256  # float64 resolution at this epoch is ~240 ns
    assert m.stamp_to_sec(msg) == pytest.approx(stamp, abs=1e-6)
    assert m.stamp_to_ns(m.make_time(TYPES, 12.5)) == 12_500_000_000
    assert m.sec_to_ns(2.9999999999) == 3_000_000_000  # rounding carries into the seconds
    header = cdr_round_trip(m.make_header(TYPES, 3.25, "base"))
    assert header.frame_id == "base"
    with pytest.raises(m.MessageError, match="not finite"):
        m.make_time(TYPES, float("nan"))


# ---------------------------------------------------------------------------------------- images


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8"])
def test_colour_encodings_round_trip(encoding):
    rgb = np.random.default_rng(1).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    msg = cdr_round_trip(m.encode_image(TYPES, rgb, encoding, 4.5, "cam"))
    assert (msg.encoding, msg.width, msg.height) == (encoding, 5, 7)
    assert m.header_stamp(msg) == 4.5 and msg.header.frame_id == "cam"
    decoded = m.decode_image(msg)
    assert decoded.dtype == np.uint8 and decoded.shape == (7, 5, 3)
    np.testing.assert_array_equal(decoded, rgb)
    assert decoded.flags.writeable


def test_bgr_channel_order_is_swapped():
    msg = raw_image(1, 2, "bgr8", bytes([1, 2, 3, 4, 5, 6]), step=6)
    np.testing.assert_array_equal(m.decode_image(msg), [[[3, 2, 1], [6, 5, 4]]])
    msg = raw_image(1, 1, "bgra8", bytes([10, 20, 30, 40]), step=4)
    np.testing.assert_array_equal(m.decode_image(msg), [[[30, 20, 10]]])


def test_mono8_becomes_grey_rgb():
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    decoded = m.decode_image(cdr_round_trip(m.encode_image(TYPES, grey, "mono8", 0.0, "cam")))
    assert decoded.shape == (3, 4, 3)
    for c in range(3):
        np.testing.assert_array_equal(decoded[:, :, c], grey)


def test_depth_32fc1_round_trip_keeps_nan():
    depth = np.random.default_rng(2).uniform(0.2, 7.0, (6, 4)).astype(np.float32)
    depth[1, 2] = np.nan
    depth[0, 0] = 0.0
    decoded = m.decode_image(cdr_round_trip(m.encode_image(TYPES, depth, "32FC1", 0.0, "cam")))
    assert decoded.dtype == np.float32
    np.testing.assert_array_equal(decoded, depth)


def test_depth_16uc1_is_millimetres():
    depth = np.array([[0.0, 1.234], [np.nan, 65.535]], dtype=np.float32)
    msg = cdr_round_trip(m.encode_image(TYPES, depth, "16UC1", 0.0, "cam"))
    assert np.frombuffer(msg.data.tobytes(), "<u2").tolist() == [0, 1234, 0, 65535]
    decoded = m.decode_image(msg)
    assert decoded.dtype == np.float32
    np.testing.assert_allclose(decoded, [[0.0, 1.234], [0.0, 65.535]], rtol=1e-6)
    raw_mm = np.array([[1, 2]], dtype=np.uint16)
    np.testing.assert_allclose(m.decode_image(m.encode_image(TYPES, raw_mm, "16UC1", 0, "c")), [[1e-3, 2e-3]])
    with pytest.raises(m.MessageError, match="65.535"):
        m.encode_image(TYPES, np.array([[70.0]]), "16UC1", 0.0, "cam")


def test_bigendian_16uc1_and_32fc1():
    mm = np.array([[1000, 2500, 0]], dtype=">u2")
    msg = raw_image(1, 3, "16UC1", mm.tobytes(), step=6, bigendian=1)
    np.testing.assert_allclose(m.decode_image(msg), [[1.0, 2.5, 0.0]])
    metres = np.array([[1.5, 3.25]], dtype=">f4")
    msg = raw_image(1, 2, "32FC1", metres.tobytes(), step=8, bigendian=1)
    np.testing.assert_array_equal(m.decode_image(msg), [[1.5, 3.25]])


def test_step_padding_is_skipped():
    rgb = np.random.default_rng(3).integers(0, 256, (3, 2, 3), dtype=np.uint8)
    padded = np.full((3, 8), 0xEE, np.uint8)  # 6 bytes of pixels + 2 bytes of padding per row
    padded[:, :6] = rgb.reshape(3, 6)
    msg = cdr_round_trip(raw_image(3, 2, "rgb8", padded.tobytes(), step=8))
    np.testing.assert_array_equal(m.decode_image(msg), rgb)
    depth = np.zeros((2, 4), np.uint8)  # 1 px of 16UC1 + 2 bytes padding per row
    depth[:, :2] = np.frombuffer(np.array([1500, 250], "<u2").tobytes(), np.uint8).reshape(2, 2)
    decoded = m.decode_image(raw_image(2, 1, "16UC1", depth.tobytes(), step=4))
    np.testing.assert_allclose(decoded, [[1.5], [0.25]])


def test_bad_images_raise_named_errors():
    with pytest.raises(m.UnsupportedEncodingError, match="'yuv422'"):
        m.decode_image(raw_image(1, 1, "yuv422", bytes(2), step=2))
    with pytest.raises(m.MessageError, match="expected step\\*height = 12"):
        m.decode_image(raw_image(2, 2, "rgb8", bytes(11), step=6))
    with pytest.raises(m.MessageError, match="step 5 < 6"):
        m.decode_image(raw_image(2, 2, "rgb8", bytes(10), step=5))
    with pytest.raises(m.MessageError, match="non-positive size"):
        m.decode_image(raw_image(0, 2, "rgb8", b"", step=6))
    with pytest.raises(m.UnsupportedEncodingError, match="'bayer_rggb8'"):
        m.encode_image(TYPES, np.zeros((2, 2), np.uint8), "bayer_rggb8", 0.0, "cam")
    with pytest.raises(m.MessageError, match="uint8"):
        m.encode_image(TYPES, np.zeros((2, 2, 3), np.float32), "rgb8", 0.0, "cam")
    with pytest.raises(m.MessageError, match="shape"):
        m.encode_image(TYPES, np.zeros((2, 2, 3), np.float32), "32FC1", 0.0, "cam")


# ---------------------------------------------------------------------------------------- compressed


def test_compressed_png_is_lossless_and_jpeg_is_close():
    rgb = np.random.default_rng(4).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    png = cdr_round_trip(m.encode_compressed_image(TYPES, rgb, "png", 2.0, "cam"))
    assert png.format == "png" and m.header_stamp(png) == 2.0
    np.testing.assert_array_equal(m.decode_compressed_image(png), rgb)
    smooth = np.broadcast_to(np.linspace(0, 255, 24, dtype=np.uint8)[None, :, None], (16, 24, 3)).copy()
    jpeg = cdr_round_trip(m.encode_compressed_image(TYPES, smooth, "jpeg", 2.0, "cam", quality=95))
    decoded = m.decode_compressed_image(jpeg)
    assert decoded.shape == (16, 24, 3) and np.abs(decoded.astype(int) - smooth).max() < 12


def _compressed(fmt: str, payload: bytes):
    return TYPES("sensor_msgs/msg/CompressedImage")(
        header=m.make_header(TYPES, 0.0, "cam"), format=fmt, data=np.frombuffer(payload, np.uint8)
    )


def _png16(values: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    PILImage.fromarray(values.astype(np.uint16)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_compressed_image_transport_formats():
    grey = np.full((4, 4), 77, np.uint8)
    buffer = io.BytesIO()
    PILImage.fromarray(grey).save(buffer, format="PNG")
    decoded = m.decode_compressed_image(_compressed("mono8; png compressed mono8", buffer.getvalue()))
    np.testing.assert_array_equal(decoded, np.full((4, 4, 3), 77))

    mm = np.array([[0, 1000], [2500, 65535]])
    header = struct.pack("<iff", 0, 0.0, 0.0)
    depth = m.decode_compressed_image(_compressed("16UC1; compressedDepth png", header + _png16(mm)))
    np.testing.assert_allclose(depth, mm / 1000.0, rtol=1e-6)

    # 32FC1 compressedDepth stores quantised inverse depth q = a / d + b.
    a, b = 100.0, -1.0
    truth = np.array([[0.5, 2.0], [4.0, np.nan]], dtype=np.float32)
    q = np.where(np.isnan(truth), 0, np.rint(a / np.nan_to_num(truth, nan=1.0) + b))
    payload = struct.pack("<iff", 0, a, b) + _png16(q)
    depth = m.decode_compressed_image(_compressed("32FC1; compressedDepth", payload))
    np.testing.assert_allclose(depth[~np.isnan(truth)], truth[~np.isnan(truth)], rtol=1e-6)
    assert np.isnan(depth[1, 1])


def test_compressed_errors_are_named():
    with pytest.raises(m.UnsupportedEncodingError, match="'tiff'"):
        m.decode_compressed_image(_compressed("tiff", b"xx"))
    with pytest.raises(m.UnsupportedEncodingError, match="only png"):
        m.decode_compressed_image(_compressed("16UC1; compressedDepth rvl", bytes(20)))
    with pytest.raises(m.MessageError, match="cannot decode compressed image"):
        m.decode_compressed_image(_compressed("jpeg", b"not a jpeg at all"))


# ---------------------------------------------------------------------------------------- camera info


def test_camera_info_round_trip():
    intrinsics = CameraIntrinsics(520.5, 521.0, 319.5, 239.25, 640, 480)
    msg = cdr_round_trip(m.encode_camera_info(TYPES, intrinsics, 7.0, "cam_optical"))
    assert msg.distortion_model == "plumb_bob" and list(msg.d) == [0.0] * 5
    np.testing.assert_array_equal(msg.r.reshape(3, 3), np.eye(3))
    np.testing.assert_array_equal(msg.p.reshape(3, 4)[:, :3], intrinsics.matrix)
    assert m.decode_camera_info(msg) == intrinsics
    assert not m.camera_info_has_distortion(msg)


def test_camera_info_roi_and_binning():
    msg = m.encode_camera_info(TYPES, CameraIntrinsics(400, 400, 320, 240, 640, 480), 0.0, "cam")
    msg.binning_x = msg.binning_y = 2
    assert m.decode_camera_info(msg) == CameraIntrinsics(200, 200, 160, 120, 320, 240)
    msg.binning_x = msg.binning_y = 0
    msg.roi.x_offset, msg.roi.y_offset, msg.roi.width, msg.roi.height = 100, 40, 200, 100
    assert m.decode_camera_info(msg) == CameraIntrinsics(400, 400, 220, 200, 200, 100)


def test_camera_info_rejects_uncalibrated_and_bad_size():
    msg = m.encode_camera_info(TYPES, CameraIntrinsics(400, 400, 320, 240, 640, 480), 0.0, "cam")
    msg.k = np.zeros(9)
    with pytest.raises(m.MessageError, match="all zero"):
        m.decode_camera_info(msg)
    msg = m.encode_camera_info(TYPES, CameraIntrinsics(400, 400, 320, 240, 640, 480), 0.0, "cam")
    msg.width = 0
    with pytest.raises(m.MessageError, match="non-positive image size 0x480"):
        m.decode_camera_info(msg)
    msg.width, msg.k[0] = 640, -1.0
    with pytest.raises(m.MessageError, match="fx=-1"):
        m.decode_camera_info(msg)


# ---------------------------------------------------------------------------------------- transforms


def test_transform_stamped_and_tf_message_round_trip():
    poses = [random_pose(seed) for seed in range(4)]
    msgs = [m.encode_transform_stamped(TYPES, T, 1.5 + i, "odom", f"link{i}") for i, T in enumerate(poses)]
    tf = cdr_round_trip(m.encode_tf_message(TYPES, msgs))
    assert len(tf.transforms) == 4
    for i, (msg, T) in enumerate(zip(tf.transforms, poses, strict=True)):
        assert (msg.header.frame_id, msg.child_frame_id, m.header_stamp(msg)) == ("odom", f"link{i}", 1.5 + i)
        np.testing.assert_allclose(m.transform_to_matrix(msg.transform), T, atol=1e-12)


def test_transform_with_zero_quaternion_raises_pose_error():
    msg = m.encode_transform_stamped(TYPES, np.eye(4), 0.0, "a", "b")
    msg.transform.rotation.w = 0.0
    with pytest.raises(PoseError, match="zero length"):
        m.transform_to_matrix(msg.transform)


def test_odometry_round_trip():
    T = random_pose(7)
    msg = cdr_round_trip(m.encode_odometry(TYPES, T, 3.0, "odom", "base_link"))
    stamp, frame, child, T_back = m.decode_odometry(msg)
    assert (stamp, frame, child) == (3.0, "odom", "base_link")
    np.testing.assert_allclose(T_back, T, atol=1e-12)
    np.testing.assert_allclose(m.pose_to_matrix(msg.pose.pose), T, atol=1e-12)


# ---------------------------------------------------------------------------------------- markers


def _mesh(colours: bool) -> Mesh:
    vertices = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32)
    faces = np.array([[0, 1, 2], [0, 3, 1], [3, 2, 1]], np.int64)
    rgb = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [51, 102, 153]], np.uint8) if colours else None
    return Mesh(vertices, faces, rgb)


def test_mesh_marker_round_trip_with_colours():
    mesh = _mesh(colours=True)
    marker = cdr_round_trip(m.encode_mesh_marker(TYPES, mesh, 9.0, "map", ns="chunks", marker_id=4))
    assert (marker.type, marker.action) == (m.MARKER_TRIANGLE_LIST, m.MARKER_ADD)
    assert (marker.ns, marker.id) == ("chunks", 4)
    assert marker.header.frame_id == "map" and m.header_stamp(marker) == 9.0
    assert (marker.scale.x, marker.scale.y, marker.scale.z) == (1.0, 1.0, 1.0)
    np.testing.assert_allclose(m.pose_to_matrix(marker.pose), np.eye(4))
    assert not marker.frame_locked
    np.testing.assert_array_equal(m.decode_marker_triangles(marker), mesh.vertices[mesh.faces])
    colours = np.array([(c.r, c.g, c.b, c.a) for c in marker.colors])
    expected = mesh.vertex_colors[mesh.faces.reshape(-1)] / 255.0
    np.testing.assert_allclose(colours[:, :3], expected, atol=1e-7)
    np.testing.assert_array_equal(colours[:, 3], 1.0)


def test_mesh_marker_without_colours_uses_marker_colour():
    marker = cdr_round_trip(m.encode_mesh_marker(TYPES, _mesh(colours=False), 0.0, "map"))
    assert len(marker.points) == 9 and len(marker.colors) == 0
    c = marker.color
    assert (c.r, c.g, c.b, c.a) == pytest.approx(m.DEFAULT_MESH_COLOR)


def test_empty_mesh_marker_and_marker_array():
    empty = m.encode_mesh_marker(TYPES, Mesh(), 0.0, "map", action=m.MARKER_DELETE)
    full = m.encode_mesh_marker(TYPES, _mesh(True), 0, "map")
    array = cdr_round_trip(m.encode_marker_array(TYPES, [empty, full]))
    assert [len(mk.points) for mk in array.markers] == [0, 9]
    assert array.markers[0].action == m.MARKER_DELETE


def test_mesh_marker_rejects_bad_mesh():
    mesh = _mesh(colours=True)
    mesh.faces = np.array([[0, 1, 9]])
    with pytest.raises(m.MessageError, match="has 4"):
        m.encode_mesh_marker(TYPES, mesh, 0.0, "map")
    mesh = _mesh(colours=True)
    mesh.vertex_colors = mesh.vertex_colors[:2]
    with pytest.raises(m.MessageError, match="vertex_colors"):
        m.encode_mesh_marker(TYPES, mesh, 0.0, "map")


# ---------------------------------------------------------------------------------- rclpy-shaped classes


class _KwargsMessage:
    """Imitates an rclpy message class: keyword construction, defaults, get_fields_and_field_types."""

    _fields: tuple[str, ...] = ()

    def __init__(self, **kwargs):
        unknown = set(kwargs) - set(self._fields)
        assert not unknown, f"Invalid arguments passed to constructor: {unknown}"
        for name in self._fields:
            setattr(self, name, kwargs.get(name))

    @classmethod
    def get_fields_and_field_types(cls):
        return {name: "any" for name in cls._fields}


def _rclpy_like_types(drop: dict[str, set[str]]):
    """Classes shaped like rclpy's, with some fields (and whole types) missing as on older distros."""
    classes = {}

    def types(name: str):
        if name in drop and drop[name] == {"*"}:
            raise KeyError(name)
        if name not in classes:
            dropped = drop.get(name, set())
            fields = tuple(f.name for f in dataclasses.fields(TYPESTORE.types[name]) if f.name not in dropped)
            classes[name] = type(name.replace("/", "_"), (_KwargsMessage,), {"_fields": fields})
        return classes[name]

    return types


def test_encoders_work_with_kwargs_classes_missing_newer_fields():
    types = _rclpy_like_types(
        {
            "visualization_msgs/msg/Marker": {"mesh_file", "texture", "texture_resource", "uv_coordinates"},
            "visualization_msgs/msg/MeshFile": {"*"},
            "sensor_msgs/msg/CompressedImage": {"*"},
        }
    )
    marker = m.encode_mesh_marker(types, _mesh(colours=True), 1.0, "map")
    assert not hasattr(marker, "mesh_file")
    np.testing.assert_array_equal(m.decode_marker_triangles(marker), _mesh(True).vertices[_mesh(True).faces])
    image = m.encode_image(types, np.zeros((2, 3, 3), np.uint8), "rgb8", 1.0, "cam")
    assert m.decode_image(image).shape == (2, 3, 3)
    info = m.encode_camera_info(types, CameraIntrinsics(1, 1, 1, 1, 3, 2), 1.0, "cam")
    assert m.decode_camera_info(info) == CameraIntrinsics(1, 1, 1, 1, 3, 2)


def test_unknown_type_name_is_named():
    with pytest.raises(m.MessageError, match="'my_msgs/msg/Nope'"):
        TYPES("my_msgs/msg/Nope")
