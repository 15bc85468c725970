"""Hostile messages, fuzzed (Hypothesis): every conversion returns a valid value or raises a named error.

Message fields take any value their ROS type allows (uint32 sizes, float64 with NaN, inf and subnormals,
arbitrary strings and payloads). Each test checks that the decoder either returns what the message
describes (checked against an independent computation where the input is valid) or raises
:class:`MessageError` (or PoseError for poses) whose message names the problem. Case counts per test
are in ``@settings``; the ``ci`` profile (test/conftest.py) makes them deterministic.
"""

from __future__ import annotations

import io
import math
import struct

import numpy as np
from fuzz_strategies import (
    ANY_FLOAT,
    COMPONENT,
    ODD_ENCODINGS,
    SIZES,
    TYPES,
    UINT32,
    camera_infos,
    compressed_message,
    compressed_payloads,
    image_message,
    pil_images,
    png,
    raw_images,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image as PILImage
from scipy.spatial.transform import Rotation

from neuralrecon_ros.core.geometry import PoseError, check_rigid
from neuralrecon_ros.io import messages as m

# ---------------------------------------------------------------------------------------------- raw images


@settings(max_examples=150)
@given(raw_images())
def test_raw_image_decodes_exactly_or_names_the_fault(case):
    msg, fault = case
    if fault != "none":
        problem = {"truncated": "data bytes", "oversized": "data bytes", "step": "step",
                   "overflow": "data bytes", "zero": "non-positive size"}[fault]
        try:
            m.decode_image(msg)
        except m.MessageError as exc:
            assert problem in str(exc) and msg.encoding in str(exc)
            return
        raise AssertionError(f"{fault} image was accepted")
    decoded = m.decode_image(msg)
    # independent reference: row by row with Python's struct
    kind, channels = m.IMAGE_ENCODINGS[msg.encoding]
    code = {"u1": "B", "u2": "H", "f4": "f"}[kind]
    order = ">" if msg.is_bigendian else "<"
    size = int(kind[1])
    raw = bytes(msg.data)
    rows = [struct.unpack(f"{order}{msg.width * channels}{code}", raw[r * msg.step:r * msg.step
                                                                     + msg.width * channels * size])
            for r in range(msg.height)]
    pixels = np.array(rows, dtype=np.float64).reshape(msg.height, msg.width, channels)
    if msg.encoding == "32FC1":
        np.testing.assert_array_equal(decoded, pixels[:, :, 0].astype(np.float32))
    elif msg.encoding == "16UC1":
        assert decoded.dtype == np.float32
        np.testing.assert_allclose(decoded, pixels[:, :, 0] * 1e-3, rtol=1e-6)  # millimetres
    else:
        order_rgb = {"rgb8": [0, 1, 2], "rgba8": [0, 1, 2], "bgr8": [2, 1, 0], "bgra8": [2, 1, 0],
                     "mono8": [0, 0, 0]}[msg.encoding]
        np.testing.assert_array_equal(decoded, pixels[:, :, order_rgb].astype(np.uint8))
        assert decoded.dtype == np.uint8 and decoded.flags.writeable


@settings(max_examples=150)
@given(encoding=st.one_of(st.sampled_from(sorted(m.IMAGE_ENCODINGS) + ODD_ENCODINGS), st.text(max_size=12)),
       height=SIZES, width=SIZES, step=SIZES, bigendian=st.integers(0, 255), data=st.binary(max_size=300))
def test_raw_image_with_any_fields_decodes_or_raises_a_named_error(encoding, height, width, step, bigendian,
                                                                    data):
    msg = image_message(encoding, height, width, step, data, bigendian)
    known = encoding in m.IMAGE_ENCODINGS
    if known:
        kind, channels = m.IMAGE_ENCODINGS[encoding]
        row = width * channels * int(kind[1])
        valid = height > 0 and width > 0 and step >= row and len(data) == step * height
    else:
        valid = False
    try:
        decoded = m.decode_image(msg)
    except m.UnsupportedEncodingError as exc:
        assert not known and f"'{encoding}'" in str(exc)
        return
    except m.MessageError as exc:
        assert known and not valid, exc
        assert str(exc)
        return
    assert valid
    assert decoded.shape[:2] == (height, width)


# ------------------------------------------------------------------------------------- compressed images


@settings(max_examples=150)
@given(compressed_payloads())
def test_compressed_image_decodes_to_rgb_or_raises_a_named_error(case):
    fmt, payload, kind = case
    lowered = fmt.lower()
    claims_image = any(word in lowered for word in ("jpeg", "jpg", "png")) and "compresseddepth" not in lowered
    try:
        image = m.decode_compressed_image(compressed_message(fmt, payload))
    except m.MessageError as exc:
        message = str(exc)
        if not claims_image and "compresseddepth" not in lowered:
            assert isinstance(exc, m.UnsupportedEncodingError) and "format" in message
        elif kind == "bomb":
            assert "decompression bomb" in message
        elif kind == "other":
            assert "no JPEG or PNG image" in message
        else:
            assert kind != "png" and kind != "jpeg", message  # intact PNG/JPEG always decode
            assert any(problem in message for problem in ("cannot decode", "cannot be made RGB", "bomb"))
        return
    assert claims_image, f"format {fmt!r} was decoded"
    assert kind in ("png", "jpeg", "truncated", "flipped"), f"{kind} payload was decoded"
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert image.shape[0] * image.shape[1] <= m.MAX_COMPRESSED_PIXELS
    if kind == "png":  # lossless: the RGB conversion of what was encoded (the reference is Pillow's own)
        reference = PILImage.open(io.BytesIO(payload))
        np.testing.assert_array_equal(image, np.asarray(reference.convert("RGB")))


@settings(max_examples=100)
@given(encoding=st.sampled_from(["16UC1", "32FC1", "8UC1", "32FC3"]),
       method=st.sampled_from(["", " png", " rvl", " png extra"]),
       quantisation=st.tuples(*[st.floats(width=32, allow_subnormal=True)] * 2), image=pil_images(),
       truncate=st.booleans(),
       header_bytes=st.sampled_from([12, 0, 5]))
def test_compressed_depth_gives_positive_depth_or_nan_or_a_named_error(encoding, method, quantisation, image,
                                                                        truncate, header_bytes):
    fmt = f"{encoding}; compressedDepth{method}"
    data = png(image)
    image = PILImage.open(io.BytesIO(data))  # the reference: what the PNG holds
    payload = struct.pack("<iff", 0, *quantisation)[:header_bytes] + (data[: len(data) // 2] if truncate else data)
    try:
        depth = m.decode_compressed_image(compressed_message(fmt, payload))
    except m.MessageError as exc:
        assert str(exc)
        return
    assert encoding in ("16UC1", "32FC1") and method in ("", " png") and header_bytes == 12 and not truncate
    assert image.mode.startswith("I"), f"a {image.mode} PNG was taken as depth"
    assert depth.dtype == np.float32 and depth.shape == (image.height, image.width)
    valid = ~np.isnan(depth)
    assert np.all(np.isfinite(depth[valid])) and np.all(depth[valid] >= 0)
    raw = np.asarray(image).astype(np.float64)
    if encoding == "16UC1":
        np.testing.assert_allclose(depth, raw * 1e-3, rtol=1e-6)
    else:
        assert not np.any(valid & (raw == 0))


# ------------------------------------------------------------------------------------------- camera info


@settings(max_examples=200)
@given(camera_infos())
def test_camera_info_gives_usable_intrinsics_or_a_named_error(info):
    try:
        intrinsics = m.decode_camera_info(info)
    except m.MessageError as exc:
        assert "camera_info" in str(exc)
        return
    # what was accepted is a usable pinhole camera ...
    values = np.array([intrinsics.fx, intrinsics.fy, intrinsics.cx, intrinsics.cy])
    assert np.all(np.isfinite(values)) and intrinsics.fx > 0 and intrinsics.fy > 0
    assert intrinsics.width >= 1 and intrinsics.height >= 1
    limit = 2 * math.tan(math.radians(m.MAX_PINHOLE_FOV_DEG / 2))
    assert intrinsics.width <= intrinsics.fx * limit * (1 + 1e-9) + 1
    assert np.all(np.isfinite(info.d))
    K = np.asarray(info.k)
    assert K.size == 9 and K[8] == 1 and K[6] == K[7] == K[3] == 0
    # ... described exactly by the message (ROI shifts the principal point, binning divides)
    bx, by = max(info.binning_x, 1), max(info.binning_y, 1)
    roi = info.roi
    x0, y0 = (roi.x_offset, roi.y_offset) if roi.width > 0 and roi.height > 0 else (0, 0)
    assert intrinsics.fx == K[0] / bx and intrinsics.fy == K[4] / by
    assert intrinsics.cx == (K[2] - x0) / bx and intrinsics.cy == (K[5] - y0) / by


# --------------------------------------------------------------------------------------- poses and time


@settings(max_examples=200)
@given(translation=st.tuples(COMPONENT, COMPONENT, COMPONENT),
       quaternion=st.tuples(COMPONENT, COMPONENT, COMPONENT, COMPONENT), as_pose=st.booleans())
def test_pose_messages_give_a_rigid_transform_or_a_named_error(translation, quaternion, as_pose):
    point = TYPES("geometry_msgs/msg/Point" if as_pose else "geometry_msgs/msg/Vector3")(*translation)
    q = TYPES("geometry_msgs/msg/Quaternion")(*quaternion)
    msg = TYPES("geometry_msgs/msg/Pose")(point, q) if as_pose else TYPES("geometry_msgs/msg/Transform")(point, q)
    convert = m.pose_to_matrix if as_pose else m.transform_to_matrix
    finite = all(math.isfinite(v) for v in (*translation, *quaternion))
    try:
        T = convert(msg)
    except m.PoseMessageError as exc:
        assert isinstance(exc, PoseError)
        assert "not finite" in str(exc) or "zero length" in str(exc)
        assert not finite or max(abs(v) for v in quaternion) < 1e-9
        return
    assert finite
    check_rigid(T)
    np.testing.assert_array_equal(T[:3, 3], translation)
    # independent reference: scipy's quaternion (after scaling, which a rotation does not see)
    scale = max(abs(v) for v in quaternion)
    expected = Rotation.from_quat([v / scale for v in quaternion]).as_matrix()
    np.testing.assert_allclose(T[:3, :3], expected, atol=1e-9)


@settings(max_examples=100)
@given(sec=st.integers(-(2**31), 2**31 - 1), nanosec=UINT32)
def test_header_stamps_are_exact_nanoseconds(sec, nanosec):
    stamp = TYPES("builtin_interfaces/msg/Time")(sec=sec, nanosec=nanosec)
    assert m.stamp_to_ns(stamp) == sec * 10**9 + nanosec
    assert m.stamp_to_sec(stamp) == sec + nanosec * 1e-9


@settings(max_examples=100)
@given(st.one_of(ANY_FLOAT, st.floats(-(2.0**31), 2.0**31)))
def test_make_time_round_trips_or_refuses_what_time_cannot_hold(stamp):
    try:
        time = m.make_time(TYPES, stamp)
    except m.MessageError as exc:
        assert "not finite" in str(exc) or "int32" in str(exc)
        assert not math.isfinite(stamp) or not -(2**31) <= m.sec_to_ns(stamp) // 10**9 < 2**31
        return
    assert -(2**31) <= time.sec < 2**31 and 0 <= time.nanosec < 10**9
    assert abs(m.stamp_to_ns(time) - stamp * 1e9) <= max(1.0, abs(stamp) * 1e9 * 2**-52)
