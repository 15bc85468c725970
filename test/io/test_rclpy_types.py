"""Message classes by name for the live node (stand-in modules: the lookup itself needs no ROS)."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from neuralrecon_ros.io.messages import MessageError
from neuralrecon_ros.io.rclpy_types import RclpyTypes


def test_rclpy_types_import_message_classes_by_name(monkeypatch):
    Image = type("Image", (), {})
    monkeypatch.setitem(sys.modules, "fake_sensor_msgs", types.ModuleType("fake_sensor_msgs"))
    monkeypatch.setitem(sys.modules, "fake_sensor_msgs.msg", types.SimpleNamespace(Image=Image))
    types_ = RclpyTypes()
    assert types_("fake_sensor_msgs/msg/Image") is Image
    with pytest.raises(MessageError, match="'fake_sensor_msgs/msg/Nope' is not available to rclpy"):
        types_("fake_sensor_msgs/msg/Nope")
    with pytest.raises(MessageError, match="'not_a_pkg_xyz/msg/Thing' is not available"):
        types_("not_a_pkg_xyz/msg/Thing")
    with pytest.raises(MessageError, match="'sensor_msgs/Image' is not a full ROS 2 type name"):
        types_("sensor_msgs/Image")


@pytest.mark.parametrize(
    "dtype, code",
    [(np.uint8, "B"), (np.int8, "b"), (np.uint16, "H"), (np.int32, "i"), (np.float32, "f"), (np.float64, "d")],
)
def test_rclpy_sequences_are_typed_arrays(dtype, code):
    values = np.arange(5).astype(dtype)
    sequence = RclpyTypes.sequence(values)
    assert sequence.typecode == code and list(sequence) == values.tolist()


def test_rclpy_sequences_convert_byte_order_and_refuse_objects():
    big_endian = np.array([1.5, -2.0], dtype=">f8")
    assert list(RclpyTypes.sequence(big_endian)) == [1.5, -2.0]
    with pytest.raises(MessageError, match="no rclpy sequence type for numpy dtype complex128"):
        RclpyTypes.sequence(np.zeros(2, np.complex128))
