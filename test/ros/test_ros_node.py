"""The ROS-free parts of neuralrecon_node: entry point without ROS, descriptors, mailbox, message classes."""

from __future__ import annotations

import array
import sys
import threading
import types

import numpy as np
import pytest

from neuralrecon_ros.io.messages import MessageError
from neuralrecon_ros.node.parameters import parameter_infos
from neuralrecon_ros.ros.node import (
    INT64_MAX,
    MISSING_ROS_MESSAGE,
    InputMailbox,
    RclpyTypes,
    descriptor_fields,
    main,
    plain_value,
    run_service_call,
)


def test_main_without_rclpy_explains_and_exits_1(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "rclpy", None)  # what an unsourced shell looks like
    assert main(["neuralrecon_node"]) == 1
    err = capsys.readouterr().err
    first_line = "neuralrecon_node needs ROS 2 (rclpy); offline use: neuralrecon-ros replay ..."
    assert err.splitlines()[0] == first_line
    assert MISSING_ROS_MESSAGE in err and "source your ROS 2 setup.bash" in err


def test_descriptors_carry_range_choices_unit_and_read_only():
    infos = parameter_infos()
    wait = descriptor_fields(infos["max_wait_for_pose_s"])
    assert wait.floating_point_range == (0.0, 60.0) and wait.integer_range is None
    assert wait.description.endswith("Unit: s.") and wait.additional_constraints == "in [0.0, 60.0]"
    assert not wait.read_only
    queue = descriptor_fields(infos["maximum_input_queue_length"])
    assert queue.integer_range == (1, 10000) and queue.floating_point_range is None
    weight = descriptor_fields(infos["max_weight"])  # only a minimum: open above
    assert weight.floating_point_range == (1.0, float("inf")) and weight.additional_constraints == ">= 1.0"
    backend = descriptor_fields(infos["sparse_backend"])
    assert backend.floating_point_range is None and backend.integer_range is None
    assert backend.additional_constraints == "one of 'auto', 'torch', 'torchsparse'" and backend.read_only
    assert descriptor_fields(infos["integrate_all_frames"]).integer_range is None  # bool is not an int here
    assert descriptor_fields(infos["depth_topic"]).read_only  # read when subscribing only
    for info in infos.values():
        fields = descriptor_fields(info)
        for bounds in (fields.floating_point_range, fields.integer_range):
            assert bounds is None or bounds[0] <= info.default <= bounds[1], info.name
    assert INT64_MAX == 2**63 - 1


def test_plain_value_turns_ros_arrays_into_lists():
    assert plain_value(array.array("d", [1.0, 2.5])) == [1.0, 2.5]
    assert plain_value((1, 2)) == [1, 2]
    assert plain_value("odom") == "odom" and plain_value(0.5) == 0.5


def test_mailbox_keeps_order_and_drops_the_oldest_frames_only():
    box = InputMailbox(frozenset({"image"}), max_per_kind=2)
    for item in [("tf", 0), ("image", 1), ("camera_info", 2), ("image", 3), ("tf", 4), ("image", 5)]:
        box.put(*item)
    assert box.dropped == {"image": 1}
    assert box.drain() == [("tf", 0), ("camera_info", 2), ("image", 3), ("tf", 4), ("image", 5)]
    assert len(box) == 0 and box.drain() == []
    box.put("image", 6)  # counts restart after a drain
    box.put("image", 7)
    assert box.dropped == {"image": 1} and len(box) == 2


def test_mailbox_total_cap_drops_the_oldest_of_any_kind():
    box = InputMailbox(frozenset({"image"}), max_per_kind=2, max_total=3)
    for item in [("tf", 0), ("image", 1), ("tf", 2), ("tf", 3)]:
        box.put(*item)
    assert box.drain() == [("image", 1), ("tf", 2), ("tf", 3)]
    assert box.dropped == {"tf": 1}
    with pytest.raises(ValueError, match="bad mailbox bounds"):
        InputMailbox(frozenset(), max_per_kind=5, max_total=4)


def test_mailbox_is_safe_across_threads():
    box = InputMailbox(frozenset(), max_per_kind=1)
    def produce(k: int) -> None:
        for i in range(2000):
            box.put(f"tf{k}", i)

    threads = [threading.Thread(target=produce, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    drained = []
    while any(t.is_alive() for t in threads):
        drained += box.drain()
    for thread in threads:
        thread.join()
    drained += box.drain()
    assert len(drained) == 8000
    for k in range(4):  # each producer's messages stay in its order
        assert [i for kind, i in drained if kind == f"tf{k}"] == list(range(2000))


def test_rclpy_types_import_message_classes_by_name(monkeypatch):
    Image = type("Image", (), {})
    monkeypatch.setitem(sys.modules, "sensor_msgs", types.ModuleType("sensor_msgs"))
    monkeypatch.setitem(sys.modules, "sensor_msgs.msg", types.SimpleNamespace(Image=Image))
    types_ = RclpyTypes()
    assert types_("sensor_msgs/msg/Image") is Image
    with pytest.raises(MessageError, match="'sensor_msgs/msg/Nope' is not available to rclpy"):
        types_("sensor_msgs/msg/Nope")
    with pytest.raises(MessageError, match="'not_a_pkg_xyz/msg/Thing' is not available"):
        types_("not_a_pkg_xyz/msg/Thing")
    with pytest.raises(MessageError, match="'sensor_msgs/Image' is not a full ROS 2 type name"):
        types_("sensor_msgs/Image")


@pytest.mark.parametrize(
    "dtype, code",
    [(np.uint8, "B"), (np.int8, "b"), (np.uint16, "H"), (np.int32, "i"), (np.float32, "f"),
     (np.float64, "d")],
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


def test_service_calls_report_failures_instead_of_raising():
    assert run_service_call(lambda path: (True, f"wrote {path}"), "/a.ply") == (True, "wrote /a.ply")
    assert run_service_call(lambda: (0, 5)) == (False, "5")

    def broken():
        raise PermissionError("read-only file system")

    assert run_service_call(broken) == (False, "PermissionError: read-only file system")
    assert run_service_call(lambda: None) == (False, "TypeError: cannot unpack non-iterable NoneType object")
