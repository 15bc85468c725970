"""neuralrecon_node on a real ROS 2 graph: the node in its own process, real rclpy publishers, subscriptions,
service and parameter clients in the test process (ROS 2 Kilted wheels from ``scripts/setup.sh --ros``).

One node per scenario, in depth mode on small images (the module takes about 2 minutes on a busy 2-core machine):

- the synthetic room published through rclpy: the map reaches the latched topics while no input arrives
  (a late subscriber gets it) and /diagnostics keeps coming; parameters change through the real parameter
  services; one SIGINT: exit 0, no [ERROR], no traceback, and the last mesh published before the context
  goes away is the mesh of ``neuralrecon-ros replay`` of the same bag;
- a best-effort camera with odometry poses, TF arriving late, a frame TF never connects, large images
  the middleware loses (counted), every service with failures that keep the map, a twice-pressed Ctrl-C;
- the reliable default naming a best-effort camera, an integer for a double at start-up; a bad start-up
  value (one clear line, exit 2).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy is not importable: `bash scripts/setup.sh --ros` (CI does) "
                                            "or source a ROS 2 install to run the live node tests")
pytest.importorskip("tf2_msgs.msg", reason="tf2_msgs is missing: `bash scripts/setup.sh --ros`")
pytest.importorskip("neuralrecon_ros_interfaces.srv", reason="neuralrecon_ros_interfaces is not built: "
                                                              "`bash scripts/setup.sh --ros`")

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from live_graph import (  # noqa: E402
    BEST_EFFORT,
    LATCHED,
    NODE,
    RELIABLE,
    TF_STATIC,
    LiveNode,
    Probe,
    diagnostics_values,
    rgbd_frame,
    run_node_to_exit,
    transform,
    wait_until,
)
from nav_msgs.msg import Odometry  # noqa: E402
from neuralrecon_ros_interfaces.srv import SaveFile  # noqa: E402
from rosbags.rosbag2 import Reader  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402
from tf2_msgs.msg import TFMessage  # noqa: E402
from visualization_msgs.msg import Marker  # noqa: E402

from neuralrecon_ros.io.ply import read_ply  # noqa: E402
from neuralrecon_ros.node.parameters import parameter_infos  # noqa: E402

CLI = str(Path(sys.executable).parent / "neuralrecon-ros")
FRAMES, WIDTH, HEIGHT = 16, 96, 72
#: the parameters of the first scenario (the replay gets the same)
ROOM_PARAMS = {"mode": "depth", "full_mesh_publish_rate_hz": 1.0, "diagnostics_rate_hz": 4.0}
BAG_QOS = {"/tf_static": TF_STATIC, "/tf": RELIABLE}


@pytest.fixture(scope="module")
def domain_id() -> int:
    return 100 + os.getpid() % 100  # one ROS domain per test run: other runs on this machine stay apart


@pytest.fixture(scope="module")
def probe(domain_id):
    probe = Probe(domain_id)
    yield probe
    probe.close()


def _last_diagnostics(diagnostics: list) -> dict[str, str]:
    return diagnostics_values(diagnostics[-1]) if diagnostics else {}


def _mesh_arrays(path: Path) -> tuple[np.ndarray, np.ndarray]:
    mesh = read_ply(path)
    return np.asarray(mesh.vertices), np.asarray(mesh.faces)


def _marker_triangles(marker) -> np.ndarray:
    return np.array([(p.x, p.y, p.z) for p in marker.points]).reshape(-1, 3, 3)


def _publish_bag(probe: Probe, bag: Path, qos_of_sensors, rate_hz: float = 40.0) -> int:
    """Every message of ``bag`` through rclpy (serialized, as recorded), in order; how many were sent."""
    with Reader(bag) as reader:
        publishers = {}
        for connection in reader.connections:
            msgtype = {"sensor_msgs/msg/Image": Image, "sensor_msgs/msg/CameraInfo": CameraInfo,
                       "tf2_msgs/msg/TFMessage": TFMessage, "nav_msgs/msg/Odometry": Odometry}[connection.msgtype]
            publishers[connection.topic] = probe.node.create_publisher(
                msgtype, connection.topic, BAG_QOS.get(connection.topic, qos_of_sensors))
        wait_until(lambda: all(p.get_subscription_count() or t == "/odom" for t, p in publishers.items()), 30,
                   "the node's subscriptions")
        sent = 0
        for connection, _, rawdata in reader.messages():
            publishers[connection.topic].publish(bytes(rawdata))
            sent += 1
            time.sleep(1.0 / rate_hz)
    return sent


@pytest.fixture(scope="module")
def room(tmp_path_factory, domain_id):
    """The depth node started, meanwhile a synthetic room's bag and its offline replay (same parameters)."""
    folder = tmp_path_factory.mktemp("live_room")
    node = LiveNode(domain_id, {**ROOM_PARAMS, "output_directory": str(folder)}, folder)
    try:
        subprocess.run([CLI, "synth", "--seed", "5", "--frames", str(FRAMES), "--width", str(WIDTH), "--height",
                        str(HEIGHT), "--output", str(folder / "room")], check=True, capture_output=True)
        overrides = [arg for name, value in ROOM_PARAMS.items() for arg in ("-p", f"{name}:={value}")]
        subprocess.run([CLI, "replay", str(folder / "room" / "bag"), "--output", str(folder / "replay"),
                        *overrides], check=True, capture_output=True)
        node.wait_ready()
        yield node, folder
    finally:
        node.kill()


def test_the_map_reaches_late_subscribers_when_input_stops(room, probe):
    node, folder = room
    assert set(parameter_infos()) <= set(probe.list_parameters())
    diagnostics = probe.subscribe(DiagnosticArray, "/diagnostics", RELIABLE)
    sent = _publish_bag(probe, folder / "room" / "bag", RELIABLE)
    assert sent == 1 + 5 * FRAMES
    wait_until(lambda: _last_diagnostics(diagnostics).get("frames") == str(FRAMES), 60, "every frame processed",
               lambda: f"{_last_diagnostics(diagnostics)}\n{node.log[-3000:]}")
    input_stopped = len(diagnostics)

    # outputs go on without input: /diagnostics keeps coming, the map reaches the latched topic
    wait_until(lambda: len(diagnostics) >= input_stopped + 4, 10, "diagnostics while no input arrives")
    time.sleep(1.5)  # one period of full_mesh_publish_rate_hz on the node's steady clock
    answer = probe.call(SaveFile, f"{NODE}/save_ply", SaveFile.Request(path="live.ply"))
    assert answer.success, answer.message
    vertices, faces = _mesh_arrays(folder / "live.ply")
    assert len(faces) > 100
    late = probe.subscribe(Marker, f"{NODE}/mesh", LATCHED)
    wait_until(lambda: late, 10, "the latched mesh for a late subscriber")
    np.testing.assert_allclose(_marker_triangles(late[-1]), vertices[faces], rtol=0, atol=1e-6)
    values = _last_diagnostics(diagnostics)
    assert values["dropped_total"] == "0" and values["dropped_lost_in_transport"] == "0", values
    assert "[ERROR]" not in node.log


def _check_services(probe: Probe, node: LiveNode, folder: Path) -> None:
    """Every service, failures included; none of them loses the map."""
    assert probe.call(SaveFile, f"{NODE}/save_ply", SaveFile.Request(path="reference.ply")).success
    reference = _mesh_arrays(folder / "reference.ply")
    assert len(reference[1]) > 0

    def save_ply(path: str):
        return probe.call(SaveFile, f"{NODE}/save_ply", SaveFile.Request(path=path))

    def same_map(name: str) -> None:
        assert save_ply(name).success
        for got, want in zip(_mesh_arrays(folder / name), reference):
            np.testing.assert_array_equal(got, want)

    empty = save_ply("  ")
    assert not empty.success and "path is empty" in empty.message
    (folder / "not_a_map.bin").write_bytes(b"garbage")
    bad_load = probe.call(SaveFile, f"{NODE}/load_map", SaveFile.Request(path="not_a_map.bin"))
    assert not bad_load.success and "not_a_map.bin" in bad_load.message
    directory = probe.call(SaveFile, f"{NODE}/save_map", SaveFile.Request(path=str(folder)))
    assert not directory.success and "is a directory" in directory.message
    same_map("after_failures.ply")
    off = probe.call(Trigger, f"{NODE}/resend_tsdf_layer", Trigger.Request())
    assert not off.success and "tsdf_layer_publish_rate_hz is 0" in off.message

    saved = probe.call(SaveFile, f"{NODE}/save_map", SaveFile.Request(path="room.nrmap"))
    assert saved.success, saved.message
    reset = probe.call(Trigger, f"{NODE}/reset", Trigger.Request())
    assert reset.success and "map cleared" in reset.message
    nothing = save_ply("empty.ply")
    assert not nothing.success and "mesh is empty" in nothing.message
    loaded = probe.call(SaveFile, f"{NODE}/load_map", SaveFile.Request(path="room.nrmap"))
    assert loaded.success, loaded.message
    same_map("reloaded.ply")
    # each service result is logged once, by the node logic (was twice)
    assert sum("~/save_map: saved" in line for line in node.lines) == 1


def test_parameters_change_through_the_parameter_services(room, probe):
    node, _ = room
    assert probe.set_parameter("mesh_publish_rate_hz", 3).successful  # an integer for a double
    assert probe.get_parameter("mesh_publish_rate_hz") == 3
    assert probe.set_parameter("max_wait_for_pose_s", 0.25).successful
    assert probe.get_parameter("max_wait_for_pose_s") == 0.25
    out_of_range = probe.set_parameter("max_wait_for_pose_s", -1.0)
    assert not out_of_range.successful and "max_wait_for_pose_s" in out_of_range.reason
    wrong_type = probe.set_parameter("full_mesh_publish_rate_hz", "fast")
    assert not wrong_type.successful and "expected a number" in wrong_type.reason
    read_only = probe.set_parameter("voxel_size", 0.1)
    assert not read_only.successful and "read-only" in read_only.reason.lower()
    assert probe.get_parameter("voxel_size") == parameter_infos()["voxel_size"].default
    assert "parameters changed: max_wait_for_pose_s=0.25" in node.log


def test_one_sigint_publishes_the_final_map_which_is_the_replay_map(room, probe):
    node, folder = room
    diagnostics = probe.subscribe(DiagnosticArray, "/diagnostics", RELIABLE)
    meshes = probe.subscribe(Marker, f"{NODE}/mesh", LATCHED)
    wait_until(lambda: diagnostics and meshes, 10, "diagnostics and the latched mesh")
    status = node.stop(signals=1)
    assert status == 0, node.log
    assert "final state published" in node.log
    assert "[ERROR]" not in node.log and "Traceback" not in node.log and "[FATAL]" not in node.log
    assert _last_diagnostics(diagnostics)["frames"] == str(FRAMES)  # the final report came through
    # the last mesh the node published before its context went away is `neuralrecon-ros replay`'s mesh
    vertices, faces = _mesh_arrays(folder / "replay" / "mesh.ply")
    np.testing.assert_allclose(_marker_triangles(meshes[-1]), vertices[faces], rtol=0, atol=1e-6)


def test_best_effort_camera_odometry_late_and_missing_tf_lost_images(tmp_path, domain_id, probe):
    node = LiveNode(domain_id, {"mode": "depth", "input_qos": "SENSOR_DATA", "pose_source": "odometry",
                                "output_directory": str(tmp_path),
                                "odometry_topic": "/vio/odom", "max_wait_for_pose_s": 1.0,
                                "mesh_publish_rate_hz": 2, "diagnostics_rate_hz": 4.0}, tmp_path)
    try:
        node.wait_ready()
        diagnostics = probe.subscribe(DiagnosticArray, "/diagnostics", RELIABLE)
        camera = {kind: probe.publisher(Image if kind != "info" else CameraInfo, topic, BEST_EFFORT)
                  for kind, topic in (("image", "/camera/color/image_raw"), ("info", "/camera/color/camera_info"),
                                      ("depth", "/camera/aligned_depth_to_color/image_raw"))}
        odometry = probe.publisher(Odometry, "/vio/odom", BEST_EFFORT)
        tf_static = probe.publisher(TFMessage, "/tf_static", TF_STATIC)
        t0 = 1_700_000_000_000_000_000
        # best effort: until the node's side of the match is complete, samples are lost; a pose one second
        # before the stream is sent until the node reports it, so the stream's own first pose is not lost
        warm_up = Odometry(child_frame_id="base_link")
        warm_up.header.stamp, warm_up.header.frame_id = transform(t0 - 1_000_000_000, "odom", "x").header.stamp, "odom"
        warm_up.pose.pose.orientation.w = 1.0

        _, warm_depth, warm_info = rgbd_frame(t0 - 1_000_000_000, "camera_optical", 64, 48)

        def best_effort_arrived() -> bool:  # a lone camera_info or depth image makes no frame and no drop
            odometry.publish(warm_up)
            camera["info"].publish(warm_info)
            camera["depth"].publish(warm_depth)
            values = _last_diagnostics(diagnostics)
            return all(int(values.get(f"{kind}_received", "0")) >= 1 for kind in ("odometry", "camera_info", "depth"))

        wait_until(best_effort_arrived, 20, "the node receiving best-effort odometry and camera messages")
        time.sleep(0.5)  # the image topic was matched alongside; let its discovery settle too

        def send(i: int, frame_id: str = "camera_optical", pose: bool = True) -> int:
            t = t0 + i * 100_000_000
            if pose:
                odom = Odometry(child_frame_id="base_link")
                odom.header.stamp, odom.header.frame_id = transform(t, "odom", "x").header.stamp, "odom"
                odom.pose.pose.position.x = -0.02 * i
                odom.pose.pose.orientation.w = 1.0
                odometry.publish(odom)
            image, depth, info = rgbd_frame(t, frame_id, 64, 48)
            camera["info"].publish(info)
            camera["depth"].publish(depth)
            camera["image"].publish(image)
            return t

        for i in range(6):  # a best-effort camera with odometry poses is received
            send(i)
            time.sleep(0.1)  # best effort, depth 5: a loaded node must keep up
            if i == 1:  # late TF: the camera extrinsic comes after the first two frames, which wait for it
                tf_static.publish(TFMessage(transforms=[transform(t0, "base_link", "camera_optical")]))
        # frame 6: its pose comes 0.3 s (message time) after the image: it waits for it
        t_late = send(6, pose=False)
        time.sleep(0.1)
        late_odom = Odometry(child_frame_id="base_link")
        late_odom.header.stamp, late_odom.header.frame_id = transform(t_late, "odom", "x").header.stamp, "odom"
        late_odom.pose.pose.orientation.w = 1.0
        odometry.publish(late_odom)
        send(7)
        send(8, frame_id="unknown_optical")  # TF never connects it: dropped after max_wait_for_pose_s
        for i in range(9, 22):
            send(i)
            time.sleep(0.1)  # best effort, depth 5: a loaded node must keep up
        details = lambda: f"{_last_diagnostics(diagnostics)}\n{node.log[-3000:]}"  # noqa: E731
        wait_until(lambda: _last_diagnostics(diagnostics).get("frames") == "21", 60, "21 frames processed", details)
        wait_until(lambda: _last_diagnostics(diagnostics).get("dropped_tf_missing") == "1", 10, "the tf drop",
                   details)

        # large best-effort images sent faster than the middleware can deliver them: losses are counted
        big = probe.publisher(Image, "/camera/color/image_raw", BEST_EFFORT)
        received_before = int(_last_diagnostics(diagnostics)["image_received"])
        sent_big = 40
        for i in range(sent_big):
            image, _, _ = rgbd_frame(t0 + (100 + i) * 100_000_000, "camera_optical", 1024, 768)
            big.publish(image)
        time.sleep(3.0)
        values = _last_diagnostics(diagnostics)
        received = int(values["image_received"]) - received_before
        lost = int(values["dropped_lost_in_transport"])
        assert received < sent_big, "no large image was lost: the loss detection went untested"
        assert lost >= 1 and received + lost <= sent_big, values

        try:
            _check_services(probe, node, tmp_path)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{node.log[-4000:]}") from None
        before_signal = len(node.lines)  # (failed service calls above log errors: the caller's mistakes)
        status = node.stop(signals=2)  # Ctrl-C twice, as ros2 launch and timeout do
        assert status == 0, node.log
        shutdown = "\n".join(node.lines[before_signal:])
        assert "[ERROR]" not in shutdown and "terminate called" not in shutdown, shutdown
        assert "Traceback" not in node.log and "final state published" in shutdown
    finally:
        node.kill()


def test_default_input_qos_is_reliable_and_a_best_effort_camera_is_named(tmp_path, domain_id, probe):
    node = LiveNode(domain_id, {"mode": "depth", "image_topic": "/be_camera/image",
                                "mesh_publish_rate_hz": 3}, tmp_path)  # an integer for a double at start-up
    try:
        node.wait_ready()
        probe.node.create_publisher(Image, "/be_camera/image", BEST_EFFORT)
        wait_until(lambda: "offers QoS incompatible" in node.log, 30, "the incompatible QoS warning")
        assert "input_qos: SENSOR_DATA" in node.log
        assert node.stop() == 0
    finally:
        node.kill()


def test_a_bad_start_up_value_is_one_clear_line(tmp_path, domain_id):
    status, log = run_node_to_exit(domain_id, {"voxel_size": -1.0}, tmp_path)
    assert status == 2, log
    (line,) = [line for line in log.splitlines() if "cannot start" in line]
    assert "parameter 'voxel_size'" in line and "('" not in line, line
    assert "Traceback" not in log
