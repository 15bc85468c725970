"""Write a synthetic sequence as a ROS 2 bag shaped like a RealSense + odometry recording.

Per frame (all stamped with the frame stamp, bag time = stamp in ns, in this order so transforms
precede the images that need them): ``/tf`` (odom -> base_link), ``/odom``,
``/camera/color/camera_info``, ``/camera/color/image_raw`` and
``/camera/aligned_depth_to_color/image_raw``. Once, before the
first frame, ``/tf_static`` (latched: transient_local) with base_link -> camera_link (the
sequence's :class:`CameraMount`) and camera_link -> camera_color_optical_frame (REP-103 rotation).

The bag's ``odom`` frame is the scene's world frame, so the TF chain composes exactly to the
rendered pose: ``T_odom_base @ T_base_camera_link @ T_camera_link_optical = T_world_camera``. For
robot sequences the base moves on the floor plane; for hand-held ones it floats where the chain
puts it. Odometry twist is zero.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..core.geometry import invert
from ..core.synthetic import T_BODY_OPTICAL, CameraMount, SyntheticSequence
from .bags import BagWriter
from .messages import (
    encode_camera_info,
    encode_image,
    encode_odometry,
    encode_tf_message,
    encode_transform_stamped,
    sec_to_ns,
)

IMAGE_ENCODINGS = ("rgb8", "bgr8")
DEPTH_ENCODINGS = ("32FC1", "16UC1")


class SyntheticBagError(ValueError):
    """A synthetic bag cannot be written with the given options."""


@dataclass(frozen=True)
class SyntheticBagTopics:
    """Topic and frame names of the written bag (defaults: a RealSense driver plus odometry)."""

    image: str = "/camera/color/image_raw"
    camera_info: str = "/camera/color/camera_info"
    depth: str = "/camera/aligned_depth_to_color/image_raw"
    odom: str = "/odom"
    tf: str = "/tf"
    tf_static: str = "/tf_static"
    odom_frame: str = "odom"
    base_frame: str = "base_link"
    camera_link_frame: str = "camera_link"
    optical_frame: str = "camera_color_optical_frame"


def write_synthetic_bag(
    sequence: SyntheticSequence,
    path: str | os.PathLike,
    storage: str = "mcap",
    depth_encoding: str = "32FC1",
    image_encoding: str = "rgb8",
    topics: SyntheticBagTopics | None = None,
    mount: CameraMount | None = None,
    include_depth: bool = True,
    overwrite: bool = False,
) -> Path:
    """Render every frame of ``sequence`` into a bag at ``path``; returns the path.

    ``path`` ending in ``.mcap``/``.db3`` gives a single file, anything else a rosbag2 directory
    (see :class:`~neuralrecon_ros.io.bags.BagWriter`; the write is atomic). ``depth_encoding``
    ``'16UC1'`` stores millimetres. ``mount`` defaults to the sequence's own camera mount.
    """
    if image_encoding not in IMAGE_ENCODINGS:
        raise SyntheticBagError(f"image_encoding must be one of {IMAGE_ENCODINGS}, got {image_encoding!r}")
    if depth_encoding not in DEPTH_ENCODINGS:
        raise SyntheticBagError(f"depth_encoding must be one of {DEPTH_ENCODINGS}, got {depth_encoding!r}")
    if len(sequence) == 0:
        raise SyntheticBagError("the sequence has no frames")
    names = topics or SyntheticBagTopics()
    mount = mount or sequence.mount
    T_base_camera_link = mount.T_base_camera_link()
    T_optical_base = invert(T_base_camera_link @ T_BODY_OPTICAL)

    with BagWriter(path, storage=storage, overwrite=overwrite) as bag:
        types = bag.types
        bag.add_topic(names.tf_static, "tf2_msgs/msg/TFMessage", latched=True)
        bag.add_topic(names.tf, "tf2_msgs/msg/TFMessage")
        bag.add_topic(names.odom, "nav_msgs/msg/Odometry")
        bag.add_topic(names.camera_info, "sensor_msgs/msg/CameraInfo")
        bag.add_topic(names.image, "sensor_msgs/msg/Image")
        if include_depth:
            bag.add_topic(names.depth, "sensor_msgs/msg/Image")

        first = sequence.stamps[0]
        base, link, optical = names.base_frame, names.camera_link_frame, names.optical_frame
        odom = names.odom_frame
        static = [
            encode_transform_stamped(types, T_base_camera_link, first, base, link),
            encode_transform_stamped(types, T_BODY_OPTICAL, first, link, optical),
        ]
        bag.write(names.tf_static, sec_to_ns(first), encode_tf_message(types, static))

        for frame in sequence:
            stamp, stamp_ns = frame.stamp, sec_to_ns(frame.stamp)
            T_odom_base = frame.T_world_camera @ T_optical_base
            odom_tf = encode_transform_stamped(types, T_odom_base, stamp, odom, base)
            bag.write(names.tf, stamp_ns, encode_tf_message(types, [odom_tf]))
            bag.write(names.odom, stamp_ns, encode_odometry(types, T_odom_base, stamp, odom, base))
            info = encode_camera_info(types, frame.intrinsics, stamp, optical)
            bag.write(names.camera_info, stamp_ns, info)
            image = encode_image(types, frame.image, image_encoding, stamp, optical)
            bag.write(names.image, stamp_ns, image)
            if include_depth:
                if frame.depth is None:
                    raise SyntheticBagError(f"frame {frame.index} has no depth image")
                depth = encode_image(types, frame.depth, depth_encoding, stamp, optical)
                bag.write(names.depth, stamp_ns, depth)
    return Path(path)
