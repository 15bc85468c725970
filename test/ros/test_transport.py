"""The rclpy transport against rclpy stand-ins (conftest.py): wiring, parameters, services, a real mesh."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest

from neuralrecon_ros.core.geometry import make_transform
from neuralrecon_ros.core.types import CameraIntrinsics
from neuralrecon_ros.io import messages as m
from neuralrecon_ros.node.logic import OUTPUTS
from neuralrecon_ros.node.parameters import NODE_NAME, parameter_infos

INTRINSICS = CameraIntrinsics(20.0, 20.0, 15.5, 11.5, 32, 24)
CAMERA = "camera_color_optical_frame"
PLANE_Z = 1.0  # a wall 1 m in front of the camera, which looks along +z of odom


def make_node(fake_ros, **overrides):
    fake_ros.transport.Node.overrides = overrides
    return fake_ros.transport.NeuralReconNode()


# ------------------------------------------------------------------------------------------ wiring


def test_every_registry_parameter_is_declared_with_its_descriptor(fake_ros):
    node = make_node(fake_ros)
    infos = parameter_infos()
    assert set(node.descriptors) == set(infos) | {"use_sim_time"}
    assert {name: node.parameters[name] for name in infos} == {n: i.default for n, i in infos.items()}
    voxel = node.descriptors["voxel_size"]
    assert voxel.read_only and (voxel.floating_point_range[0].from_value,
                                voxel.floating_point_range[0].to_value) == (0.005, 1.0)
    fragment = node.descriptors["fragment_size"]
    assert (fragment.integer_range[0].from_value, fragment.integer_range[0].to_value) == (1, 64)
    assert node.descriptors["mode"].additional_constraints == "one of 'depth', 'neuralrecon'"
    translation = node.descriptors["keyframe_min_translation_m"].floating_point_range[0]
    assert translation.from_value == 0.0 and translation.to_value == math.inf
    # topics are read once, when subscribing: declared read-only although the registry allows changes
    assert node.descriptors["image_topic"].read_only and not infos["image_topic"].spec.read_only
    assert not node.descriptors["keyframe_min_rotation_deg"].read_only


def test_subscriptions_follow_the_input_parameters(fake_ros):
    t = fake_ros.transport
    node = make_node(fake_ros)
    assert set(node.subscriptions) == {
        "/camera/color/image_raw", "/camera/color/camera_info", "/camera/aligned_depth_to_color/image_raw",
        "/tf", "/tf_static",
    }
    image = node.subscriptions["/camera/color/image_raw"]
    assert image.msg_class is fake_ros.typestore.types["sensor_msgs/msg/Image"]
    assert image.qos == t.qos_profile_sensor_data
    assert node.subscriptions["/tf_static"].qos.durability == t.DurabilityPolicy.TRANSIENT_LOCAL
    assert node.subscriptions["/tf"].qos.durability == t.DurabilityPolicy.VOLATILE

    node = make_node(fake_ros, image_topic="cam/image", image_transport="compressed", pose_source="odometry",
                     odometry_topic="/vio/odom", input_qos="SYSTEM_DEFAULT")
    compressed = node.subscriptions["cam/image/compressed"]
    assert compressed.msg_class is fake_ros.typestore.types["sensor_msgs/msg/CompressedImage"]
    assert compressed.qos == t.qos_profile_system_default
    assert node.subscriptions["/vio/odom"].msg_class is fake_ros.typestore.types["nav_msgs/msg/Odometry"]
    assert "cam/image" not in node.subscriptions


def test_publishers_services_and_timer(fake_ros):
    t = fake_ros.transport
    node = make_node(fake_ros)
    assert set(node.publishers) == {out.ros_name for out in OUTPUTS}
    diagnostics = node.publishers["/diagnostics"]  # the standard topic, not private
    assert diagnostics.msg_class is fake_ros.typestore.types["diagnostic_msgs/msg/DiagnosticArray"]
    for out in OUTPUTS:
        publisher = node.publishers[out.ros_name]
        assert publisher.msg_class is fake_ros.typestore.types[out.msgtype]
        assert publisher.qos == (t.LATCHED_QOS if out.latched else t.VOLATILE_QOS)
    assert t.LATCHED_QOS.depth == 1 and t.LATCHED_QOS.durability == t.DurabilityPolicy.TRANSIENT_LOCAL
    assert set(node.services) == {"~/save_ply", "~/save_map", "~/load_map", "~/reset"}
    assert node.services["~/save_ply"].msg_class.Request is fake_ros.typestore.types[
        "neuralrecon_ros_interfaces/srv/SaveFile_Request"]
    (period, _, group, clock), = node.timers
    assert period == t.TICK_PERIOD_S and clock.clock_type == t.ClockType.STEADY_TIME
    # compute, inputs and services run in different callback groups (so a fragment does not block TF)
    groups = (group, node.subscriptions["/tf"].callback_group, node.services["~/reset"].callback_group)
    assert len({id(g) for g in groups}) == 3
    assert node.name == NODE_NAME


# -------------------------------------------------------------------------------------- parameters


def test_bad_start_up_values_are_named(fake_ros):
    with pytest.raises(fake_ros.transport.StartupError, match="parameter 'mode': 'lidar' is not allowed"):
        make_node(fake_ros, mode="lidar")
    # a value outside the descriptor's range is refused by rclpy itself, while declaring
    with pytest.raises(fake_ros.transport.ParameterException, match="fragment_size"):
        make_node(fake_ros, fragment_size=0)


def test_unknown_parameter_in_the_file_is_named(fake_ros):
    node = make_node(fake_ros, voxel_sise=0.05, **{"qos_overrides./tf.subscription.depth": 10})
    (warning,) = [w for w in node.logger.texts("warning") if w.startswith("ignored")]
    assert "unknown parameter 'voxel_sise'; did you mean voxel_size" in warning


def test_runtime_changes_are_validated_then_handed_to_the_logic(fake_ros):
    node = make_node(fake_ros)
    Parameter = fake_ros.transport.Parameter
    result = node.set_parameters([Parameter("keyframe_min_rotation_deg", 200.0)])
    assert not result.successful
    expected = "parameter 'keyframe_min_rotation_deg': 200.0 is out of range; expected in [0.0, 180.0]"
    assert result.reason == expected
    # the logic applies what it can change live ...
    assert node.set_parameters([Parameter("keyframe_min_rotation_deg", 20.0)]).successful
    assert node.logic.pipeline.fragments.config.keyframe_min_rotation_deg == 20.0
    # ... and refuses, by name, what it reads at start-up only (not read-only for rclpy itself)
    result = node.set_parameters([Parameter("fragment_size", 5)])
    assert not result.successful
    assert result.reason.startswith("cannot change fragment_size while the node runs")
    assert node.parameters["fragment_size"] == 9  # refused, not silently ignored
    # without the logic's hook a change would be refused rather than ignored
    node.logic.update_parameters = None
    result = node.set_parameters([Parameter("keyframe_min_rotation_deg", 25.0)])
    assert not result.successful and "runtime changes are not supported yet" in result.reason

    applied = []
    node.logic.update_parameters = lambda values: (applied.append(values), (True, "ok"))[1]
    assert node.set_parameters([Parameter("keyframe_min_rotation_deg", 20.0)]).successful
    assert applied == [{"keyframe_min_rotation_deg": 20.0}]
    assert node.set_parameters([Parameter("use_sim_time", True)]).successful  # not ours: untouched
    assert not node.set_parameters([Parameter("image_topic", "/other")]).successful  # read-only


# ---------------------------------------------------------------------------------------- services


def test_file_services_delegate_to_the_logic(fake_ros, monkeypatch):
    node = make_node(fake_ros)
    calls = []
    node.logic.save_ply = lambda path: (calls.append(path), (True, f"wrote {path}"))[1]

    def failing_load(path):
        raise FileNotFoundError(f"no map file {path}")

    node.logic.load_map = failing_load
    SaveFile = node.services["~/save_ply"].msg_class
    monkeypatch.setenv("HOME", "/home/robot")

    def call(service: str, path: str):
        request = SaveFile.Request(path=path)
        return node.services[service].callback(request, SaveFile.Response(success=False, message=""))

    response = call("~/save_ply", " ~/room.ply ")
    assert (response.success, response.message) == (True, "wrote /home/robot/room.ply")
    assert calls == ["/home/robot/room.ply"]
    response = call("~/save_ply", "")
    assert not response.success and "path is empty" in response.message
    response = call("~/load_map", "/x.map")
    assert (response.success, response.message) == (False, "FileNotFoundError: no map file /x.map")

    Trigger = node.services["~/reset"].msg_class
    if not hasattr(node.logic, "reset"):  # not implemented by the logic yet: said so, not a crash
        response = node.services["~/reset"].callback(Trigger.Request(), Trigger.Response())
        assert (response.success, response.message) == (
            False, "reset is not available in this version of neuralrecon_node")
    node.logic.reset = lambda: (True, "map cleared")
    response = node.services["~/reset"].callback(Trigger.Request(), Trigger.Response())
    assert (response.success, response.message) == (True, "map cleared")


# ----------------------------------------------------------------------------------- end to end


def _frame_messages(types, index: int, stamp: float):
    T_odom_camera = make_transform(np.eye(3), [0.15 * index, 0.0, 0.0])
    tf = m.encode_tf_message(types, [m.encode_transform_stamped(types, T_odom_camera, stamp, "odom", CAMERA)])
    info = m.encode_camera_info(types, INTRINSICS, stamp, CAMERA)
    depth = m.encode_image(types, np.full((24, 32), PLANE_Z, np.float32), "32FC1", stamp, CAMERA)
    image = m.encode_image(types, np.full((24, 32, 3), 90 + 10 * index, np.uint8), "rgb8", stamp, CAMERA)
    return tf, info, depth, image


def test_messages_flow_from_subscriptions_to_a_published_mesh(fake_ros):
    node = make_node(fake_ros, fragment_size=2, full_mesh_publish_rate_hz=100.0)
    types = m.rosbags_types(fake_ros.typestore)
    topics = ("/tf", "/camera/color/camera_info", "/camera/aligned_depth_to_color/image_raw",
              "/camera/color/image_raw")
    stamp = 100.0
    for index in range(6):
        stamp = 100.0 + 0.1 * index
        for topic, msg in zip(topics, _frame_messages(types, index, stamp)):
            node.deliver(topic, msg)
        node.tick(stamp)
    node.deliver("/tf", _frame_messages(types, 6, stamp + 0.1)[0])
    node.tick(stamp + 1.0)
    assert node.logic.worker.wait_idle(timeout_s=60.0)  # the pipeline runs on the logic's worker thread
    node.tick(stamp + 1.1)  # collects its outcomes and queues a publication of the last changes
    assert node.logic.worker.wait_idle(timeout_s=60.0)

    assert node.logic.frames_processed == 6
    markers = node.publishers["~/mesh"].messages
    assert markers, "no mesh was published"
    marker = markers[-1]
    assert marker.header.frame_id == "odom"
    triangles = m.decode_marker_triangles(marker)
    assert len(triangles) > 50
    # the wall at z = 1 m, seen from x = 0 .. 0.75 m: the mesh lies on it and spans the camera path
    np.testing.assert_allclose(triangles[..., 2], PLANE_Z, atol=0.02)
    assert triangles[..., 0].min() < 0.0 and triangles[..., 0].max() > 0.75
    assert not node.logger.texts("error")


def test_a_bad_message_is_reported_and_the_node_goes_on(fake_ros):
    node = make_node(fake_ros)
    node.deliver("/tf", object())  # not a TFMessage at all
    node.tick(1.0)
    (error,) = node.logger.texts("error")
    assert error.startswith("tf message rejected: AttributeError")
    node.tick(2.0)  # still ticking


def test_run_spins_until_ctrl_c_then_finishes(fake_ros, monkeypatch):
    finished = []
    monkeypatch.setattr(fake_ros.transport.NodeLogic, "finish", lambda self: finished.append(True))
    package_log = logging.getLogger("neuralrecon_ros")
    before = (package_log.level, package_log.propagate, list(package_log.handlers))
    assert fake_ros.transport.run(["neuralrecon_node"]) == 0
    (node,) = fake_ros.nodes
    assert finished == [True] and node.destroyed and not fake_ros.rclpy.ok()
    # while it ran, the package's log records went to the ROS logger; afterwards logging is as before
    assert (package_log.level, package_log.propagate, list(package_log.handlers)) == before


def test_run_reports_a_start_up_error_and_exits_2(fake_ros):
    fake_ros.transport.Node.overrides = {"device": "gpu"}
    assert fake_ros.transport.run(["neuralrecon_node"]) == 2
    (fatal,) = fake_ros.rclpy.fatal.texts("fatal")
    assert fatal.startswith("cannot start: parameter 'device': 'gpu' is not allowed")


def test_missing_interface_package_is_explained(fake_ros, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "neuralrecon_ros_interfaces.srv", None)
    with pytest.raises(fake_ros.transport.StartupError, match="neuralrecon_ros_interfaces package built"):
        make_node(fake_ros)


def test_transport_is_the_only_module_importing_ros():
    """Layering: rclpy, tf2 and message packages are imported under neuralrecon_ros/ros/ only."""
    import ast

    ros_modules = ("rclpy", "rcl_interfaces", "tf2_ros", "launch", "launch_ros", "message_filters",
                   "sensor_msgs", "std_srvs", "nav_msgs", "visualization_msgs", "neuralrecon_ros_interfaces")
    package = Path(__file__).resolve().parents[2] / "neuralrecon_ros"
    offenders = []
    for path in package.rglob("*.py"):
        if path.parent.name == "ros":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else []
            )
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in ros_modules]
    assert not offenders
