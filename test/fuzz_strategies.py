"""Hypothesis strategies for hostile ROS messages, shared by the fuzz tests (test/io, test/node).

Messages are rosbags typestore classes (what a bag replay delivers; the node logic treats rclpy ones alike),
built with field values anywhere in their ROS type's range.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from hypothesis import assume
from hypothesis import strategies as st
from PIL import Image as PILImage

from neuralrecon_ros.core.types import CameraIntrinsics
from neuralrecon_ros.io import messages as m
from neuralrecon_ros.io.bags import default_typestore

TYPES = m.rosbags_types(default_typestore())
UINT32 = st.integers(0, 2**32 - 1)
#: sizes: mostly small (valid images), sometimes anything a uint32 holds (overflowing products)
SIZES = st.one_of(st.integers(0, 9), UINT32)
ANY_FLOAT = st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True)
ODD_ENCODINGS = ["", "RGB8", "rgb16", "bayer_rggb8", "yuv422", "8UC3", "32FC3", "64FC1", "16SC1", "jpeg"]
#: a pose component: anything a float64 holds, mostly plausible, with the classic troublemakers
COMPONENT = st.one_of(ANY_FLOAT, st.floats(-2.0, 2.0), st.sampled_from([0.0, 5e-324, -5e-324, 1e200, 1e-200]))
#: compressed formats Pillow writes that are neither JPEG nor PNG
OTHER_FORMATS = ["BMP", "GIF", "TIFF", "WEBP", "ICO", "PPM", "TGA", "PCX", "EPS"]
COMPRESSED_FORMATS = ["jpeg", "png", "rgb8; jpeg compressed bgr8", "bgr8; png compressed", "JPG", "tiff", "", "raw"]


def header(stamp: float = 1.5, frame_id: str = "camera") -> object:
    return m.make_header(TYPES, stamp, frame_id)


def image_message(encoding: str, height: int, width: int, step: int, data: bytes, bigendian: int = 0,
                  stamp: float = 1.5, frame_id: str = "camera"):
    return TYPES("sensor_msgs/msg/Image")(
        header=header(stamp, frame_id), height=height, width=width, encoding=encoding, is_bigendian=bigendian,
        step=step, data=np.frombuffer(data, np.uint8).copy())


def compressed_message(fmt: str, payload: bytes, stamp: float = 1.5, frame_id: str = "camera"):
    return TYPES("sensor_msgs/msg/CompressedImage")(header=header(stamp, frame_id), format=fmt,
                                                    data=np.frombuffer(payload, np.uint8).copy())


# ---------------------------------------------------------------------------------------------- raw images

RAW_FAULTS = ("none", "truncated", "oversized", "step", "overflow", "zero")
KNOWN_ENCODINGS = tuple(sorted(m.IMAGE_ENCODINGS))


@st.composite
def raw_images(draw, encodings=KNOWN_ENCODINGS, size: tuple[int, int] | None = None, faults=RAW_FAULTS):
    """(Image message, fault): a known encoding whose fields are right ('none') or wrong in one way.
    ``size``: (width, height) of the image (default: drawn, 1..6)."""
    encoding = draw(st.sampled_from(encodings))
    kind, channels = m.IMAGE_ENCODINGS[encoding]
    width, height = size or (draw(st.integers(1, 6)), draw(st.integers(1, 6)))
    row = width * channels * int(kind[1])
    step = row + draw(st.integers(0, 5))
    fault = draw(st.sampled_from(faults))
    size_bytes = step * height
    if fault == "truncated":
        size_bytes = draw(st.integers(0, size_bytes - 1))
    elif fault == "oversized":
        size_bytes += draw(st.integers(1, 64))
    elif fault == "step":
        step = draw(st.integers(0, row - 1))
    elif fault == "overflow":  # width x height x channels beyond any memory; the data stays small
        width, height = draw(st.integers(2**16, 2**32 - 1)), draw(st.integers(2**16, 2**32 - 1))
        step = width * channels * int(kind[1])
        size_bytes = min(size_bytes, 4096)
    elif fault == "zero":
        width, height = draw(st.sampled_from([(0, height), (width, 0), (0, 0)]))
    data = draw(st.binary(min_size=size_bytes, max_size=size_bytes))
    return image_message(encoding, height, width, step, data, draw(st.integers(0, 1))), fault


# ------------------------------------------------------------------------------------- compressed images


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header (with valid CRCs) declares ``width`` x ``height`` and whose data is a few bytes:
    what a decompression bomb looks like before it is decompressed."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


def encoded(image: PILImage.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def png(image: PILImage.Image) -> bytes:
    """PNG of ``image``; modes PNG cannot hold (CMYK, F, I) as 8-bit grey."""
    return encoded(image if image.mode not in ("CMYK", "F", "I") else image.convert("L"), "PNG")


@st.composite
def pil_images(draw, modes=("RGB", "L", "RGBA", "P", "1", "LA", "I;16", "CMYK", "F", "I"), max_side: int = 12):
    mode = draw(st.sampled_from(modes))
    width, height = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
    seed = draw(st.integers(0, 2**16))
    noise = np.random.default_rng(seed).integers(0, 256, (height, width, 3), np.uint8)
    image = PILImage.fromarray(noise)
    if mode == "I;16":
        return PILImage.fromarray(noise[:, :, 0].astype(np.uint16) * 257)
    return image.convert(mode)


@st.composite
def compressed_payloads(draw, max_side: int = 12):
    """(format field, payload, what it is) for CompressedImage messages, hostile or not."""
    fmt = draw(st.one_of(st.sampled_from(COMPRESSED_FORMATS), st.text(max_size=20)))
    kind = draw(st.sampled_from(["png", "jpeg", "other", "garbage", "truncated", "flipped", "bomb"]))
    if kind == "garbage":
        return fmt, draw(st.binary(max_size=200)), kind
    if kind == "bomb":
        width, height = draw(st.integers(1, 2**31 - 1)), draw(st.integers(1, 2**31 - 1))
        assume(width * height > m.MAX_COMPRESSED_PIXELS)
        return fmt, png_declaring(width, height), kind
    image = draw(pil_images(max_side=max_side))
    if kind == "other":
        target = draw(st.sampled_from(OTHER_FORMATS))
        try:
            return fmt, encoded(image, target), kind
        except (OSError, ValueError, KeyError):  # a mode that format cannot hold
            return fmt, encoded(image.convert("RGB"), target if target != "EPS" else "BMP"), kind
    container = "PNG" if kind == "png" else "JPEG" if kind == "jpeg" else draw(st.sampled_from(["PNG", "JPEG"]))
    if container == "JPEG" and image.mode not in ("RGB", "L", "CMYK"):
        image = image.convert("RGB")
    payload = bytearray(png(image) if container == "PNG" else encoded(image, container))
    if kind == "truncated":
        payload = payload[:draw(st.integers(0, len(payload) - 1))]
    elif kind == "flipped":
        at = draw(st.integers(0, len(payload) - 1))
        payload[at] ^= draw(st.integers(1, 255))
    return fmt, bytes(payload), kind


# ------------------------------------------------------------------------------------------- camera info


@st.composite
def camera_infos(draw, base: CameraIntrinsics | None = None, stamp: float = 1.5, frame_id: str = "camera"):
    """CameraInfo messages: a plausible calibration (``base``, or drawn) with up to three fields replaced by
    anything their type holds."""
    if base is None:
        width, height = draw(st.integers(1, 2000)), draw(st.integers(1, 2000))
        fx, fy = draw(st.floats(0.5, 3.0)) * width, draw(st.floats(0.5, 3.0)) * height
        base = CameraIntrinsics(fx, fy, draw(st.floats(0, width)), draw(st.floats(0, height)), width, height)
    width, height = base.width, base.height
    K = base.matrix.reshape(-1).tolist()
    d = [0.0] * 5
    roi = dict(x_offset=0, y_offset=0, height=0, width=0)
    binning = [0, 0]
    model = "plumb_bob"
    for _ in range(draw(st.integers(0 if base is None else 1, 3))):
        fault = draw(st.sampled_from(["k", "size", "roi", "binning", "d", "model", "k_length"]))
        if fault == "k" and K:
            K[draw(st.integers(0, len(K) - 1))] = draw(
                st.one_of(ANY_FLOAT, st.sampled_from([0.0, -1.0, 5e-324, 1e308])))
        elif fault == "size":
            width, height = draw(SIZES), draw(SIZES)
        elif fault == "roi":
            roi = dict(x_offset=draw(SIZES), y_offset=draw(SIZES), height=draw(SIZES), width=draw(SIZES))
        elif fault == "binning":
            binning = [draw(SIZES), draw(SIZES)]
        elif fault == "d":
            d = draw(st.lists(ANY_FLOAT, max_size=14))
        elif fault == "model":
            model = draw(st.one_of(st.sampled_from(["equidistant", "rational_polynomial", "fisheye", ""]),
                                   st.text(max_size=20)))
        else:
            K = K[: draw(st.integers(0, 8))]
    info = m.encode_camera_info(TYPES, CameraIntrinsics(1.0, 1.0, 0.0, 0.0, 1, 1), stamp, frame_id)
    info.width, info.height, info.k, info.d, info.distortion_model = width, height, np.array(K), np.array(d), model
    info.binning_x, info.binning_y = binning
    for key, value in roi.items():
        setattr(info.roi, key, value)
    return info
