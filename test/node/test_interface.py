"""The node's interface tables shared by both transports, the callback mailbox, and parameter descriptors."""

from __future__ import annotations

import array
import threading

import pytest

from neuralrecon_ros.core.config import config_fields
from neuralrecon_ros.core.keyframes import KeyframeConfig
from neuralrecon_ros.node.interface import SERVICES, InputMailbox, image_topic_of, input_topics
from neuralrecon_ros.node.logic import NodeLogic
from neuralrecon_ros.node.parameters import (
    INT64_MAX,
    RUNTIME_PARAMETERS,
    NodeParameters,
    descriptor_fields,
    parameter_infos,
    plain_value,
)


def test_input_topics_follow_the_parameters():
    params = NodeParameters({"image_topic": "/cam/rgb/", "image_transport": "compressed",
                             "pose_source": "odometry", "odometry_topic": "/vio/odom"})
    by_kind = {t.kind: t for t in input_topics(params, needs_depth=False)}
    assert list(by_kind) == ["image", "camera_info", "odometry", "tf", "tf_static"]
    assert by_kind["image"].topic == image_topic_of(params) == "/cam/rgb/compressed"  # one trailing '/' rule
    assert by_kind["image"].msgtype == "sensor_msgs/msg/CompressedImage"
    assert by_kind["odometry"].topic == "/vio/odom" and not by_kind["tf_static"].sensor
    depth = {t.kind: t for t in input_topics(NodeParameters({"mode": "depth"}), needs_depth=True)}
    assert depth["depth"].topic == "/camera/aligned_depth_to_color/image_raw" and "odometry" not in depth
    assert depth["image"].msgtype == "sensor_msgs/msg/Image"


def test_every_service_is_a_logic_method():
    for service in SERVICES:
        assert callable(getattr(NodeLogic, service.name)), service.name
    assert {s.name for s in SERVICES if s.takes_path} == {"save_ply", "save_map", "load_map"}


def test_runtime_parameters_have_one_home():
    infos = parameter_infos()
    assert RUNTIME_PARAMETERS <= infos.keys()
    assert {"keyframe_min_translation_m", "mesh_publish_rate_hz", "on_time_jump"} <= RUNTIME_PARAMETERS
    for name in ("voxel_size", "mode", "image_topic", "input_qos", "fragment_size", "keyframe_max_count"):
        if name in infos:
            assert infos[name].read_only and descriptor_fields(infos[name]).read_only, name
    # keyframe thresholds change live; the rest of KeyframeConfig is start-up only
    keyframe = {f.name for f in config_fields(KeyframeConfig)}
    assert keyframe & RUNTIME_PARAMETERS == {"keyframe_min_translation_m", "keyframe_min_rotation_deg"}


def test_descriptors_carry_range_choices_unit_and_read_only():
    infos = parameter_infos()
    wait = descriptor_fields(infos["max_wait_for_pose_s"])
    assert wait.floating_point_range == (0.0, 60.0) and wait.integer_range is None
    assert wait.description.endswith("Unit: s.") and wait.additional_constraints == "in [0.0, 60.0]"
    assert not wait.read_only and wait.dynamic_typing  # a double also takes an integer
    queue = descriptor_fields(infos["maximum_input_queue_length"])
    assert queue.integer_range == (1, 10000) and queue.floating_point_range is None and not queue.dynamic_typing
    weight = descriptor_fields(infos["max_weight"])  # only a minimum: open above
    assert weight.floating_point_range == (1.0, float("inf")) and weight.additional_constraints == ">= 1.0"
    backend = descriptor_fields(infos["sparse_backend"])
    assert backend.additional_constraints == "one of 'auto', 'torch', 'torchsparse'" and backend.read_only
    assert descriptor_fields(infos["integrate_all_frames"]).integer_range is None  # bool is not an int here
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
    assert box.dropped == {"image": 1} and box.take_dropped() == {"image": 1} and box.take_dropped() == {}
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
