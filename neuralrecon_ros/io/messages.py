"""Conversion between ROS 2 messages and the core's numpy types.

Written once against the ROS 2 message *fields*, so the same code works with ``rosbags``
typestore classes (offline, tests) and rclpy classes (on a robot):

- decoders only read attributes (``msg.header.stamp.sec``, ``msg.k``, ``msg.data``, ...);
- encoders take a ``types`` callable mapping a full type name (``'sensor_msgs/msg/Image'``) to the
  message class and always pass fields by keyword. Fields the class does not declare (a field
  added in a later ROS distro) are skipped, so one encoder serves several distros.

Unbounded primitive sequences (``Image.data``, ``CameraInfo.d``) are handed to the message library
through ``types.sequence(array)`` when the ``types`` object has it: rosbags wants numpy arrays,
rclpy wants ``array.array``. Fixed-size arrays (``k``, ``r``, ``p``, covariances) are numpy in both.
"""

from __future__ import annotations

import dataclasses
import gc
import io
import math
import struct
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

import numpy as np

from ..core.geometry import PoseError, make_transform, matrix_to_quaternion, quaternion_to_matrix
from ..core.types import CameraIntrinsics, Mesh

NS_PER_S = 1_000_000_000

#: Image encodings :func:`decode_image` accepts -> (numpy dtype, channels).
IMAGE_ENCODINGS: dict[str, tuple[str, int]] = {
    "rgb8": ("u1", 3),
    "bgr8": ("u1", 3),
    "rgba8": ("u1", 4),
    "bgra8": ("u1", 4),
    "mono8": ("u1", 1),
    "32FC1": ("f4", 1),
    "16UC1": ("u2", 1),
}
DEPTH_ENCODINGS = ("32FC1", "16UC1")
COLOR_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8")

#: Compressed formats decoded, as Pillow names them: anything else in the payload is refused, whatever
#: ``format`` says (Pillow would otherwise open any of its ~40 formats, some through external programs).
COMPRESSED_IMAGE_FORMATS = ("JPEG", "PNG")
#: Pixels a compressed image may decode to (above 8K UHD): a few kB of PNG can declare gigabytes.
MAX_COMPRESSED_PIXELS = 1 << 25
#: Pillow modes of a 16-bit single-channel PNG, what compressed_depth_image_transport writes.
_DEPTH_PNG_MODES = ("I;16", "I;16B", "I;16L", "I")
#: Widest field of view K may describe; a wider "pinhole" is a broken calibration (and would spread each
#: pixel over metres of map, allocating blocks without bound).
MAX_PINHOLE_FOV_DEG = 170.0
INT32_MAX = 2**31 - 1

#: Colour of a mesh marker whose mesh has no vertex colours (RGBA, 0..1).
DEFAULT_MESH_COLOR = (0.7, 0.7, 0.7, 1.0)

# visualization_msgs/Marker constants (identical in every ROS 2 distro).
MARKER_TRIANGLE_LIST = 11
MARKER_ADD = 0
MARKER_DELETE = 2
MARKER_DELETEALL = 3


class MessageError(ValueError):
    """A message cannot be converted: wrong size, bad values, missing type."""


class UnsupportedEncodingError(MessageError):
    """An image encoding or compressed format this package does not decode."""


class PoseMessageError(MessageError, PoseError):
    """A Transform, Pose or Odometry message is not a finite rigid transform (a PoseError too)."""


class MessageTypes(Protocol):
    """What encoders need from a message library: the class of a full type name."""

    def __call__(self, name: str) -> type: ...


class RosbagsTypes:
    """:class:`MessageTypes` over a ``rosbags`` typestore."""

    def __init__(self, typestore: Any) -> None:
        self.typestore = typestore

    def __call__(self, name: str) -> type:
        try:
            return self.typestore.types[name]
        except KeyError:
            raise MessageError(f"message type '{name}' is not in the rosbags typestore") from None

    @staticmethod
    def sequence(values: np.ndarray) -> np.ndarray:
        """Container for an unbounded primitive sequence field: rosbags uses numpy arrays."""
        return np.ascontiguousarray(values)


def rosbags_types(typestore: Any) -> RosbagsTypes:
    """The ``types`` callable for encoders, backed by a rosbags typestore."""
    return RosbagsTypes(typestore)


# --------------------------------------------------------------------------------------------
# construction helpers


_FIELD_CACHE: dict[type, frozenset[str]] = {}


def _field_names(cls: type) -> frozenset[str]:
    names = _FIELD_CACHE.get(cls)
    if names is None:
        if dataclasses.is_dataclass(cls):  # rosbags (ClassVar constants are not fields)
            names = frozenset(f.name for f in dataclasses.fields(cls))
        elif hasattr(cls, "get_fields_and_field_types"):  # rclpy
            names = frozenset(cls.get_fields_and_field_types())
        else:
            raise MessageError(f"{cls!r} is not a ROS 2 message class (rosbags or rclpy)")
        _FIELD_CACHE[cls] = names
    return names


def _make(types: MessageTypes, name: str, **values: Any) -> Any:
    """Build message ``name`` from keyword values, skipping fields the class does not declare.

    A callable value is a lazily built sub-message: it is called only when the field exists, so
    a type that only newer distros have is never looked up on older ones.
    """
    cls = types(name)
    fields = _field_names(cls)
    kwargs = {k: (v() if callable(v) else v) for k, v in values.items() if k in fields}
    try:
        return cls(**kwargs)
    except (TypeError, AssertionError) as exc:
        missing = sorted(fields - kwargs.keys())
        raise MessageError(f"cannot build {name}: {exc} (fields not given: {missing})") from exc


def _sequence(types: MessageTypes, values: np.ndarray) -> Any:
    convert = getattr(types, "sequence", None)
    return convert(values) if convert is not None else np.ascontiguousarray(values)


def _as_bytes(data: Any) -> np.ndarray:
    """A uint8 view of a message's byte payload (numpy array, bytes, array.array or list)."""
    if isinstance(data, np.ndarray):
        return np.ascontiguousarray(data).view(np.uint8).reshape(-1)
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except TypeError:
        return np.asarray(data, dtype=np.uint8)


# --------------------------------------------------------------------------------------------
# time


def stamp_to_ns(stamp: Any) -> int:
    """Integer nanoseconds of a ``builtin_interfaces/Time`` (exact; use it as a key)."""
    return int(stamp.sec) * NS_PER_S + int(stamp.nanosec)


def stamp_to_sec(stamp: Any) -> float:
    """Float seconds of a ``builtin_interfaces/Time``."""
    return int(stamp.sec) + int(stamp.nanosec) * 1e-9


def header_stamp(msg: Any) -> float:
    return stamp_to_sec(msg.header.stamp)


def header_stamp_ns(msg: Any) -> int:
    return stamp_to_ns(msg.header.stamp)


def sec_to_ns(stamp: float) -> int:
    """Nanoseconds of float seconds, splitting off whole seconds first to keep ns precision."""
    if not math.isfinite(stamp):
        raise MessageError(f"time stamp {stamp!r} is not finite")
    sec = math.floor(stamp)
    return sec * NS_PER_S + round((stamp - sec) * NS_PER_S)


def make_time(types: MessageTypes, stamp: float) -> Any:
    """``builtin_interfaces/Time`` of float seconds."""
    sec, nanosec = divmod(sec_to_ns(stamp), NS_PER_S)
    if not -INT32_MAX - 1 <= sec <= INT32_MAX:
        raise MessageError(f"time stamp {stamp!r} s does not fit builtin_interfaces/Time (int32 seconds)")
    return _make(types, "builtin_interfaces/msg/Time", sec=sec, nanosec=nanosec)


def make_header(types: MessageTypes, stamp: float, frame_id: str) -> Any:
    return _make(types, "std_msgs/msg/Header", stamp=make_time(types, stamp), frame_id=frame_id)


# --------------------------------------------------------------------------------------------
# images


def decode_image(msg: Any) -> np.ndarray:
    """``sensor_msgs/Image`` -> RGB uint8 (H, W, 3) for colour, float32 metres (H, W) for depth.

    Honours ``step`` (row padding) and ``is_bigendian``. 16UC1 is millimetres; 0 stays 0 (invalid).
    Always returns a new, writable array (never a view of the message buffer).
    """
    encoding = str(msg.encoding)
    if encoding not in IMAGE_ENCODINGS:
        raise UnsupportedEncodingError(
            f"image encoding '{encoding}' is not supported; expected one of {', '.join(IMAGE_ENCODINGS)}"
        )
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    kind, channels = IMAGE_ENCODINGS[encoding]
    itemsize = int(kind[1])
    row_bytes = width * channels * itemsize
    if height <= 0 or width <= 0:
        raise MessageError(f"image ({encoding}) has a non-positive size {width}x{height}")
    if step < row_bytes:
        raise MessageError(
            f"image ({encoding}, {width}x{height}) has step {step} < {row_bytes} bytes needed per row"
        )
    data = _as_bytes(msg.data)
    if data.size != step * height:
        raise MessageError(
            f"image ({encoding}, {width}x{height}, step {step}) has {data.size} data bytes, "
            f"expected step*height = {step * height}"
        )
    rows = data.reshape(height, step)[:, :row_bytes]
    byteorder = ">" if int(msg.is_bigendian) else "<"
    pixels = np.ascontiguousarray(rows).view(np.dtype(byteorder + kind)).reshape(height, width, channels)
    if encoding == "32FC1":
        return pixels[:, :, 0].astype(np.float32)
    if encoding == "16UC1":
        return pixels[:, :, 0].astype(np.float32) * np.float32(1e-3)
    if encoding == "mono8":
        return np.repeat(pixels, 3, axis=2)
    colour = pixels[:, :, 2::-1] if encoding.startswith("bgr") else pixels[:, :, :3]
    return np.array(colour, dtype=np.uint8, order="C")  # always a copy


def encode_image(
    types: MessageTypes, array: np.ndarray, encoding: str, stamp: float, frame_id: str
) -> Any:
    """Array -> ``sensor_msgs/Image`` (little-endian, unpadded rows). Inverse of :func:`decode_image`.

    Colour encodings take RGB uint8 (H, W, 3) (mono8 also takes (H, W)); 32FC1 takes metres;
    16UC1 takes float metres (NaN/<=0 -> 0, rounded to mm) or uint16 millimetres as they are.
    """
    array = np.asarray(array)
    if encoding not in IMAGE_ENCODINGS:
        raise UnsupportedEncodingError(
            f"cannot encode image as '{encoding}'; expected one of {', '.join(IMAGE_ENCODINGS)}"
        )
    if encoding in DEPTH_ENCODINGS:
        if array.ndim != 2:
            raise MessageError(f"{encoding} image must be (H, W), got shape {array.shape}")
        if encoding == "32FC1":
            pixels = array.astype("<f4")
        elif array.dtype == np.uint16:
            pixels = array.astype("<u2")
        else:
            metres = np.nan_to_num(array.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
            millimetres = np.rint(np.where(metres > 0, metres, 0.0) * 1000.0)
            if millimetres.max(initial=0.0) > np.iinfo(np.uint16).max:
                raise MessageError(
                    f"16UC1 depth cannot hold {metres.max():.3f} m (max 65.535 m); use 32FC1"
                )
            pixels = millimetres.astype("<u2")
    else:
        if array.dtype != np.uint8:
            raise MessageError(f"{encoding} image must be uint8, got {array.dtype}")
        if encoding == "mono8":
            pixels = array if array.ndim == 2 else None
            if pixels is None:
                raise MessageError(f"mono8 image must be (H, W) uint8, got shape {array.shape}")
        else:
            if array.ndim != 3 or array.shape[2] != 3:
                raise MessageError(f"{encoding} image needs RGB (H, W, 3) input, got shape {array.shape}")
            pixels = array[:, :, ::-1] if encoding.startswith("bgr") else array
            if encoding.endswith("a8"):
                alpha = np.full((*array.shape[:2], 1), 255, np.uint8)
                pixels = np.concatenate([pixels, alpha], axis=2)
    height, width = pixels.shape[:2]
    data = np.ascontiguousarray(pixels).view(np.uint8).reshape(-1)
    return _make(
        types,
        "sensor_msgs/msg/Image",
        header=make_header(types, stamp, frame_id),
        height=height,
        width=width,
        encoding=encoding,
        is_bigendian=0,
        step=data.size // height,
        data=_sequence(types, data),
    )


def _compressed_depth_payload(fmt: str, data: np.ndarray) -> tuple[str, np.ndarray, tuple[float, float]]:
    """Split a compressed_depth_image_transport payload: (depth encoding, PNG bytes, quantisation).

    Formats: ``"16UC1; compressedDepth"`` (older, PNG) or ``"<enc>; compressedDepth png|rvl"``.
    """
    depth_encoding, _, method = (part.strip() for part in fmt.partition(";"))
    if depth_encoding not in DEPTH_ENCODINGS:
        raise UnsupportedEncodingError(f"compressedDepth of '{depth_encoding}' is not supported ('{fmt}')")
    if method.split()[1:] not in ([], ["png"]):
        raise UnsupportedEncodingError(f"compressed depth format '{fmt}' is not supported (only png)")
    header_size = 12  # int32 format + float32 depthParam[2]
    if data.size <= header_size:
        raise MessageError(f"compressedDepth image ('{fmt}') has only {data.size} bytes")
    _, quant_a, quant_b = struct.unpack("<iff", data[:header_size].tobytes())
    if depth_encoding == "32FC1" and not (math.isfinite(quant_a) and math.isfinite(quant_b)):
        raise MessageError(f"compressedDepth image ('{fmt}') has non-finite quantisation {quant_a}, {quant_b}")
    return depth_encoding, data[header_size:], (quant_a, quant_b)


def decode_compressed_image(msg: Any) -> np.ndarray:
    """``sensor_msgs/CompressedImage`` -> RGB uint8 (H, W, 3), or float32 metres for compressedDepth.

    Accepts the formats of image_transport's compressed plugins: ``jpeg``/``png`` (optionally
    prefixed ``"<encoding>; ... compressed ..."``) and ``"16UC1|32FC1; compressedDepth [png]"``.
    """
    from PIL import Image as PILImage

    fmt = str(msg.format)
    data = _as_bytes(msg.data)
    lowered = fmt.lower()
    if "compresseddepth" in lowered:
        depth_encoding, png, (quant_a, quant_b) = _compressed_depth_payload(fmt, data)
        image = _open_image(PILImage, png, fmt, ("PNG",))
        if image.mode not in _DEPTH_PNG_MODES:
            raise MessageError(f"compressedDepth image ('{fmt}') is a {image.mode!r} PNG, not 16-bit single-channel")
        raw = np.asarray(image).astype(np.float32)
        if depth_encoding == "16UC1":
            return raw * np.float32(1e-3)
        # 32FC1 is stored as quantised inverse depth: depth = a / (q - b); q == 0 is invalid, and so is
        # a depth the quantisation cannot give (not finite, not positive)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            depth = (np.float32(quant_a) / (raw - np.float32(quant_b))).astype(np.float32)
        valid = (raw > 0) & np.isfinite(depth) & (depth > 0)
        return np.where(valid, depth, np.float32(np.nan)).astype(np.float32)
    if "jpeg" not in lowered and "jpg" not in lowered and "png" not in lowered:
        raise UnsupportedEncodingError(
            f"compressed image format '{fmt}' is not supported; expected jpeg, png or compressedDepth"
        )
    image = _open_image(PILImage, data, fmt, COMPRESSED_IMAGE_FORMATS)
    try:
        return np.array(image.convert("RGB"), dtype=np.uint8)
    except (ValueError, OSError) as exc:  # a mode Pillow cannot turn into RGB
        raise MessageError(f"compressed image ('{fmt}') of mode {image.mode!r} cannot be made RGB: {exc}") from exc


def _open_image(PILImage: Any, data: np.ndarray, fmt: str, formats: Sequence[str]) -> Any:
    """Decode ``data`` if it is one of ``formats`` (Pillow names) of at most MAX_COMPRESSED_PIXELS."""
    what = f"compressed image ('{fmt}', {data.size} bytes)"
    try:
        image = PILImage.open(io.BytesIO(data.tobytes()), formats=list(formats))
    except PILImage.UnidentifiedImageError:
        raise MessageError(f"cannot decode {what}: the data is no {' or '.join(formats)} image") from None
    except Exception as exc:  # Pillow raises several unrelated types for corrupt data
        raise MessageError(f"cannot decode {what}: {exc}") from exc
    width, height = image.size
    if width * height > MAX_COMPRESSED_PIXELS:  # checked on the header, before anything is decompressed
        raise MessageError(f"{what} declares {width}x{height} pixels, more than the {MAX_COMPRESSED_PIXELS} "
                           "accepted (a decompression bomb?)")
    try:
        image.load()
    except Exception as exc:  # Pillow raises several unrelated types for corrupt data
        raise MessageError(f"cannot decode {what}: {exc}") from exc
    return image


def encode_compressed_image(
    types: MessageTypes, array: np.ndarray, fmt: str, stamp: float, frame_id: str, quality: int = 90
) -> Any:
    """RGB uint8 (H, W, 3) -> ``sensor_msgs/CompressedImage`` with format ``'jpeg'`` or ``'png'``."""
    from PIL import Image as PILImage

    if fmt not in ("jpeg", "png"):
        raise UnsupportedEncodingError(f"cannot compress as '{fmt}'; expected 'jpeg' or 'png'")
    array = np.asarray(array)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise MessageError(f"compressed image needs RGB uint8 (H, W, 3), got {array.dtype} {array.shape}")
    buffer = io.BytesIO()
    PILImage.fromarray(array).save(buffer, format=fmt.upper(), quality=quality)
    return _make(
        types,
        "sensor_msgs/msg/CompressedImage",
        header=make_header(types, stamp, frame_id),
        format=fmt,
        data=_sequence(types, np.frombuffer(buffer.getvalue(), np.uint8)),
    )


# --------------------------------------------------------------------------------------------
# camera info


def decode_camera_info(msg: Any) -> CameraIntrinsics:
    """``sensor_msgs/CameraInfo`` -> intrinsics of the published image (from K, ROI and binning).

    Distortion (``d``) is not applied; callers decide whether a non-zero ``d`` matters (non-finite
    coefficients are an error). Raises MessageError naming the problem: K not a finite camera matrix,
    focal lengths not positive or giving a field of view over MAX_PINHOLE_FOV_DEG, an empty image, a ROI
    outside the image, binning that leaves no pixel.
    """
    K = np.asarray(msg.k, dtype=np.float64).reshape(-1)
    width, height = int(msg.width), int(msg.height)
    if K.size != 9:
        raise MessageError(f"camera_info K has {K.size} values, expected 9")
    if not np.all(np.isfinite(K)) or not np.any(K):
        raise MessageError(f"camera_info K is all zero or not finite (uncalibrated camera?): {K.tolist()}")
    if K[3] != 0 or K[6] != 0 or K[7] != 0 or K[8] != 1:
        raise MessageError(f"camera_info K is not a camera matrix (expected [fx, s, cx, 0, fy, cy, 0, 0, 1]): "
                           f"{K.tolist()}")
    d = np.asarray(getattr(msg, "d", ()), dtype=np.float64)
    if not np.all(np.isfinite(d)):
        raise MessageError(f"camera_info distortion coefficients ({msg.distortion_model}) are not finite: "
                           f"{d.tolist()}")
    if width <= 0 or height <= 0:
        raise MessageError(f"camera_info has a non-positive image size {width}x{height}")
    fx, fy, cx, cy = (float(v) for v in K[[0, 4, 2, 5]])
    if fx <= 0 or fy <= 0:
        raise MessageError(f"camera_info focal lengths must be positive, got fx={fx}, fy={fy}")
    half_fov = math.tan(math.radians(MAX_PINHOLE_FOV_DEG / 2))
    if fx * 2 * half_fov < width or fy * 2 * half_fov < height:
        raise MessageError(f"camera_info focal lengths fx={fx}, fy={fy} for a {width}x{height} image give a "
                           f"field of view over {MAX_PINHOLE_FOV_DEG:g} degrees: not a pinhole calibration")
    roi = getattr(msg, "roi", None)
    if roi is not None and int(roi.width) > 0 and int(roi.height) > 0:
        x0, y0, roi_w, roi_h = int(roi.x_offset), int(roi.y_offset), int(roi.width), int(roi.height)
        if x0 + roi_w > width or y0 + roi_h > height:
            raise MessageError(f"camera_info ROI {roi_w}x{roi_h} at ({x0}, {y0}) lies outside the "
                               f"{width}x{height} image")
        cx, cy, width, height = cx - x0, cy - y0, roi_w, roi_h
    bin_x, bin_y = max(int(getattr(msg, "binning_x", 0)), 1), max(int(getattr(msg, "binning_y", 0)), 1)
    if bin_x > width or bin_y > height:
        raise MessageError(f"camera_info binning {bin_x}x{bin_y} leaves no pixel of the {width}x{height} image")
    if bin_x > 1 or bin_y > 1:
        fx, cx, width = fx / bin_x, cx / bin_x, width // bin_x
        fy, cy, height = fy / bin_y, cy / bin_y, height // bin_y
    return CameraIntrinsics(float(fx), float(fy), float(cx), float(cy), width, height)


def camera_info_has_distortion(msg: Any) -> bool:
    return bool(np.any(np.asarray(msg.d, dtype=np.float64) != 0.0))


def encode_camera_info(types: MessageTypes, intrinsics: CameraIntrinsics, stamp: float, frame_id: str) -> Any:
    """Intrinsics -> ``sensor_msgs/CameraInfo`` (plumb_bob, zero distortion, R = I, P = [K | 0])."""
    K = intrinsics.matrix
    P = np.zeros((3, 4))
    P[:, :3] = K
    roi = _make(
        types, "sensor_msgs/msg/RegionOfInterest", x_offset=0, y_offset=0, height=0, width=0, do_rectify=False
    )
    return _make(
        types,
        "sensor_msgs/msg/CameraInfo",
        header=make_header(types, stamp, frame_id),
        height=intrinsics.height,
        width=intrinsics.width,
        distortion_model="plumb_bob",
        d=_sequence(types, np.zeros(5)),
        k=K.reshape(-1),
        r=np.eye(3).reshape(-1),
        p=P.reshape(-1),
        binning_x=0,
        binning_y=0,
        roi=roi,
    )


# --------------------------------------------------------------------------------------------
# transforms, poses, odometry


def _rigid(what: str, xyz: Any, q: Any) -> np.ndarray:
    """4x4 of a translation and a quaternion; PoseMessageError if either is not finite or q is zero."""
    translation = np.array([xyz.x, xyz.y, xyz.z], dtype=np.float64)
    if not np.all(np.isfinite(translation)):
        raise PoseMessageError(f"{what} translation {translation.tolist()} is not finite")
    try:
        return make_transform(quaternion_to_matrix(q.x, q.y, q.z, q.w), translation)
    except PoseError as exc:
        raise PoseMessageError(f"{what} {exc}") from None


def transform_to_matrix(transform: Any) -> np.ndarray:
    """``geometry_msgs/Transform`` -> 4x4 float64 (quaternion normalised; PoseMessageError if degenerate)."""
    return _rigid("transform", transform.translation, transform.rotation)


def pose_to_matrix(pose: Any) -> np.ndarray:
    """``geometry_msgs/Pose`` -> 4x4 float64 (quaternion normalised; PoseMessageError if degenerate)."""
    return _rigid("pose", pose.position, pose.orientation)


def decode_odometry(msg: Any) -> tuple[float, str, str, np.ndarray]:
    """``nav_msgs/Odometry`` -> (stamp, frame_id, child_frame_id, T_frame_child)."""
    return header_stamp(msg), str(msg.header.frame_id), str(msg.child_frame_id), pose_to_matrix(msg.pose.pose)


def _vector3(types: MessageTypes, xyz: Sequence[float]) -> Any:
    return _make(types, "geometry_msgs/msg/Vector3", x=float(xyz[0]), y=float(xyz[1]), z=float(xyz[2]))


def _quaternion(types: MessageTypes, R: np.ndarray) -> Any:
    x, y, z, w = matrix_to_quaternion(R)
    return _make(types, "geometry_msgs/msg/Quaternion", x=x, y=y, z=z, w=w)


def _pose(types: MessageTypes, T: np.ndarray) -> Any:
    t = T[:3, 3]
    position = _make(types, "geometry_msgs/msg/Point", x=float(t[0]), y=float(t[1]), z=float(t[2]))
    orientation = _quaternion(types, T[:3, :3])
    return _make(types, "geometry_msgs/msg/Pose", position=position, orientation=orientation)


def encode_transform(types: MessageTypes, T: np.ndarray) -> Any:
    T = np.asarray(T, dtype=np.float64)
    return _make(
        types,
        "geometry_msgs/msg/Transform",
        translation=_vector3(types, T[:3, 3]),
        rotation=_quaternion(types, T[:3, :3]),
    )


def encode_transform_stamped(
    types: MessageTypes, T_parent_child: np.ndarray, stamp: float, parent: str, child: str
) -> Any:
    """``geometry_msgs/TransformStamped`` of ``T_parent_child`` (header.frame_id = parent)."""
    return _make(
        types,
        "geometry_msgs/msg/TransformStamped",
        header=make_header(types, stamp, parent),
        child_frame_id=child,
        transform=encode_transform(types, T_parent_child),
    )


def encode_tf_message(types: MessageTypes, transforms: Iterable[Any]) -> Any:
    """``tf2_msgs/TFMessage`` of TransformStamped messages."""
    return _make(types, "tf2_msgs/msg/TFMessage", transforms=list(transforms))


def encode_odometry(
    types: MessageTypes, T_parent_child: np.ndarray, stamp: float, frame_id: str, child_frame_id: str
) -> Any:
    """``nav_msgs/Odometry`` with the pose ``T_parent_child``, zero twist and zero covariances."""
    T = np.asarray(T_parent_child, dtype=np.float64)
    zero = _vector3(types, (0.0, 0.0, 0.0))
    twist = _make(types, "geometry_msgs/msg/Twist", linear=zero, angular=zero)
    pose = _make(types, "geometry_msgs/msg/PoseWithCovariance", pose=_pose(types, T), covariance=np.zeros(36))
    return _make(
        types,
        "nav_msgs/msg/Odometry",
        header=make_header(types, stamp, frame_id),
        child_frame_id=child_frame_id,
        pose=pose,
        twist=_make(types, "geometry_msgs/msg/TwistWithCovariance", twist=twist, covariance=np.zeros(36)),
    )


# --------------------------------------------------------------------------------------------
# mesh markers


def _color(types: MessageTypes, rgba: Sequence[float]) -> Any:
    r, g, b, a = (float(v) for v in rgba)
    return _make(types, "std_msgs/msg/ColorRGBA", r=r, g=g, b=b, a=a)


def _duration_zero(types: MessageTypes) -> Any:
    return _make(types, "builtin_interfaces/msg/Duration", sec=0, nanosec=0)


@contextmanager
def _gc_paused() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _per_corner(per_vertex: list[Any], order: np.ndarray) -> list[Any]:
    """``[per_vertex[i] for i in order]``, done by numpy object-array indexing."""
    table = np.empty(len(per_vertex), dtype=object)
    table[:] = per_vertex
    return table[order].tolist()


def encode_mesh_marker(
    types: MessageTypes,
    mesh: Mesh,
    stamp: float,
    frame_id: str,
    ns: str = "mesh",
    marker_id: int = 0,
    action: int = MARKER_ADD,
    color: Sequence[float] = DEFAULT_MESH_COLOR,
) -> Any:
    """``visualization_msgs/Marker`` TRIANGLE_LIST of ``mesh`` (identity pose, scale 1).

    ``points`` lists the three vertices of every face in order. With ``mesh.vertex_colors`` each
    point gets its vertex's colour in ``colors``; without, ``colors`` is empty and the marker's
    ``color`` (default grey) applies to the whole mesh, as the Marker definition specifies.
    One Point/ColorRGBA object is built per *vertex* and shared by the faces that use it.
    """
    vertices = np.asarray(mesh.vertices, dtype=np.float64).reshape(-1, 3)
    faces = np.asarray(mesh.faces, dtype=np.int64).reshape(-1, 3)
    if faces.size and (faces.min() < 0 or faces.max() >= len(vertices)):
        raise MessageError(
            f"mesh faces index vertices {faces.min()}..{faces.max()} but the mesh has {len(vertices)}"
        )
    Point = types("geometry_msgs/msg/Point")
    ColorRGBA = types("std_msgs/msg/ColorRGBA")
    order = faces.reshape(-1)
    with _gc_paused():  # hundreds of thousands of small objects: skip pointless GC passes
        points = _per_corner([Point(x=x, y=y, z=z) for x, y, z in vertices.tolist()], order)
        colors: list[Any] = []
        if mesh.vertex_colors is not None and len(order):
            rgb = np.asarray(mesh.vertex_colors)
            if rgb.shape != (len(vertices), 3):
                raise MessageError(f"mesh vertex_colors has shape {rgb.shape}, expected ({len(vertices)}, 3)")
            rgb = rgb.astype(np.float64) / 255.0
            colors = _per_corner([ColorRGBA(r=r, g=g, b=b, a=1.0) for r, g, b in rgb.tolist()], order)
    empty = np.zeros(0, np.uint8)
    return _make(
        types,
        "visualization_msgs/msg/Marker",
        header=make_header(types, stamp, frame_id),
        ns=ns,
        id=int(marker_id),
        type=MARKER_TRIANGLE_LIST,
        action=int(action),
        pose=_pose(types, np.eye(4)),
        scale=_vector3(types, (1.0, 1.0, 1.0)),
        color=_color(types, color if not colors else (1.0, 1.0, 1.0, 1.0)),
        lifetime=_duration_zero(types),
        frame_locked=False,
        points=points,
        colors=colors,
        texture_resource="",
        texture=lambda: _make(
            types,
            "sensor_msgs/msg/CompressedImage",
            header=make_header(types, 0.0, ""),
            format="",
            data=_sequence(types, empty),
        ),
        uv_coordinates=[],
        text="",
        mesh_resource="",
        mesh_file=lambda: _make(
            types, "visualization_msgs/msg/MeshFile", filename="", data=_sequence(types, empty)
        ),
        mesh_use_embedded_materials=False,
    )


def encode_marker_array(types: MessageTypes, markers: Iterable[Any]) -> Any:
    return _make(types, "visualization_msgs/msg/MarkerArray", markers=list(markers))


def decode_marker_triangles(marker: Any) -> np.ndarray:
    """Triangle corners of a TRIANGLE_LIST marker as float64 (F, 3, 3) (for checks and tools)."""
    points = np.array([(p.x, p.y, p.z) for p in marker.points], dtype=np.float64).reshape(-1, 3)
    if len(points) % 3:
        raise MessageError(f"TRIANGLE_LIST marker has {len(points)} points, not a multiple of 3")
    return points.reshape(-1, 3, 3)

