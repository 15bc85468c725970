"""A real ROS 2 graph for the node's tests: ``neuralrecon_node`` in its own process, and a probe node in the
test process with real rclpy publishers, subscriptions, service and parameter clients.

Each test module gets its own ROS domain (isolated from other test runs on the machine) and discovery is
limited to this host. rclpy comes from ``bash scripts/setup.sh --ros`` (or a sourced ROS 2 install).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import rclpy
from rcl_interfaces.msg import Parameter as ParameterMsg
from rcl_interfaces.msg import ParameterType, ParameterValue
from rcl_interfaces.srv import GetParameters, ListParameters, SetParameters
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

from neuralrecon_ros.node.diagnostics import diagnostic_values

NODE = "/neuralrecon_node"
NODE_EXECUTABLE = str(Path(sys.executable).parent / "neuralrecon_node")
RELIABLE = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
BEST_EFFORT = QoSProfile(depth=100, reliability=ReliabilityPolicy.BEST_EFFORT)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
TF_STATIC = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                       durability=DurabilityPolicy.TRANSIENT_LOCAL)
START_TIMEOUT_S = 120.0  # importing torch on a loaded 2-core machine takes a while


def ros_environment(domain_id: int) -> dict[str, str]:
    return {**os.environ, "ROS_DOMAIN_ID": str(domain_id), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
            "RCUTILS_COLORIZED_OUTPUT": "0", "PYTHONUNBUFFERED": "1"}


def wait_until(condition: Callable[[], Any], timeout: float, what: str,
               details: Callable[[], str] | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}" + (f"\n{details()}" if details else ""))


class LiveNode:
    """``neuralrecon_node --ros-args -p ...`` in its own process; its log lines are collected."""

    def __init__(self, domain_id: int, params: dict[str, Any], cwd: Path) -> None:
        args = [arg for name, value in params.items() for arg in ("-p", f"{name}:={_ros_arg(value)}")]
        self.process = subprocess.Popen([NODE_EXECUTABLE, "--ros-args", *args], cwd=cwd,
                                        env=ros_environment(domain_id), stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def wait_ready(self) -> None:
        wait_until(lambda: "outputs under" in self.log or self.process.poll() is not None, START_TIMEOUT_S,
                   "the node to start")
        assert self.process.poll() is None, f"the node exited {self.process.returncode}:\n{self.log}"

    def stop(self, signals: int = 1, timeout: float = 60.0) -> int:
        """SIGINT ``signals`` times (0.2 s apart, as a twice-pressed Ctrl-C); the exit status."""
        for i in range(signals):
            if i:
                time.sleep(0.2)
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGINT)
        status = self.process.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return status

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def run_node_to_exit(domain_id: int, params: dict[str, Any], cwd: Path, timeout: float = START_TIMEOUT_S
                     ) -> tuple[int, str]:
    """A node that is expected to stop by itself (bad start-up values): exit status and log."""
    args = [arg for name, value in params.items() for arg in ("-p", f"{name}:={_ros_arg(value)}")]
    done = subprocess.run([NODE_EXECUTABLE, "--ros-args", *args], cwd=cwd, env=ros_environment(domain_id),
                          capture_output=True, text=True, timeout=timeout)
    return done.returncode, done.stdout + done.stderr


def _ros_arg(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


class Probe:
    """A node in the test process, spun on a background thread, on its own rclpy context."""

    def __init__(self, domain_id: int) -> None:
        os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
        self.context = Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = rclpy.create_node("neuralrecon_test_probe", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while self.context.ok():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception:  # the context went away during shutdown
                return

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)
        self._thread.join(timeout=5)

    def subscribe(self, msgtype: type, topic: str, qos: QoSProfile) -> list[Any]:
        received: list[Any] = []
        self.node.create_subscription(msgtype, topic, received.append, qos)
        return received

    def publisher(self, msgtype: type, topic: str, qos: QoSProfile, subscribers: int = 1) -> Any:
        publisher = self.node.create_publisher(msgtype, topic, qos)
        wait_until(lambda: publisher.get_subscription_count() >= subscribers, 30, f"a subscriber of {topic}")
        return publisher

    def call(self, srvtype: type, name: str, request: Any, timeout: float = 60.0) -> Any:
        client = self.node.create_client(srvtype, name)
        try:
            assert client.wait_for_service(timeout_sec=30), f"service {name} is not there"
            future = client.call_async(request)
            wait_until(future.done, timeout, f"the answer of {name}")
            return future.result()
        finally:
            self.node.destroy_client(client)

    def set_parameter(self, name: str, value: Any) -> Any:
        """``ros2 param set``: the SetParametersResult."""
        request = SetParameters.Request(parameters=[ParameterMsg(name=name, value=parameter_value(value))])
        (result,) = self.call(SetParameters, f"{NODE}/set_parameters", request).results
        return result

    def get_parameter(self, name: str) -> Any:
        (value,) = self.call(GetParameters, f"{NODE}/get_parameters", GetParameters.Request(names=[name])).values
        return {ParameterType.PARAMETER_DOUBLE: value.double_value,
                ParameterType.PARAMETER_INTEGER: value.integer_value,
                ParameterType.PARAMETER_STRING: value.string_value}.get(value.type, value)

    def list_parameters(self) -> list[str]:
        return list(self.call(ListParameters, f"{NODE}/list_parameters", ListParameters.Request()).result.names)


def parameter_value(value: Any) -> ParameterValue:
    if isinstance(value, bool):
        return ParameterValue(type=ParameterType.PARAMETER_BOOL, bool_value=value)
    if isinstance(value, int):
        return ParameterValue(type=ParameterType.PARAMETER_INTEGER, integer_value=value)
    if isinstance(value, float):
        return ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=value)
    return ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=str(value))


def diagnostics_values(msg: Any) -> dict[str, str]:
    """Every key/value of the node's three statuses in one dict."""
    values: dict[str, str] = {}
    for status in msg.status:
        values.update(diagnostic_values(status))
    return values


def stamp(t_ns: int) -> Any:
    from builtin_interfaces.msg import Time

    return Time(sec=t_ns // 1_000_000_000, nanosec=t_ns % 1_000_000_000)


def rgbd_frame(t_ns: int, frame_id: str, width: int, height: int, depth_m: float = 1.5) -> tuple[Any, Any, Any]:
    """An rgb8 image, a 32FC1 depth image of a flat wall ``depth_m`` ahead, and their camera_info."""
    from sensor_msgs.msg import CameraInfo, Image

    header = {"stamp": stamp(t_ns), "frame_id": frame_id}
    rng = np.random.default_rng(t_ns % 1000)
    image = Image(height=height, width=width, encoding="rgb8", step=3 * width, **{"header": _header(**header)})
    image.data = rng.integers(0, 255, (height, width, 3), np.uint8).tobytes()
    depth = Image(height=height, width=width, encoding="32FC1", step=4 * width, header=_header(**header))
    depth.data = np.full((height, width), depth_m, np.float32).tobytes()
    focal = 0.8 * width
    info = CameraInfo(header=_header(**header), width=width, height=height, distortion_model="plumb_bob",
                      k=[focal, 0.0, width / 2, 0.0, focal, height / 2, 0.0, 0.0, 1.0],
                      p=[focal, 0.0, width / 2, 0.0, 0.0, focal, height / 2, 0.0, 0.0, 0.0, 1.0, 0.0],
                      r=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0], d=[0.0] * 5)
    return image, depth, info


def clock(t_ns: int) -> Any:
    """A rosgraph_msgs/Clock message (what a player publishes on /clock for ``use_sim_time`` nodes)."""
    from rosgraph_msgs.msg import Clock

    return Clock(clock=stamp(t_ns))


def recorded_frames(bag: Path) -> tuple[dict[str, str], list[tuple[str, bytes]], dict[int, list[tuple[str, bytes]]]]:
    """A recorded bag as ``ros2 bag play`` would send it: the message type of each topic, the /tf_static
    messages, and the rest grouped by receive time in ns (one group per camera frame in a synthetic bag), in
    order, each message as its serialized bytes (publishable as is)."""
    from rosbags.rosbag2 import Reader

    static: list[tuple[str, bytes]] = []
    groups: dict[int, list[tuple[str, bytes]]] = {}
    with Reader(bag) as reader:
        msgtypes = {connection.topic: connection.msgtype for connection in reader.connections}
        for connection, t_ns, rawdata in reader.messages():
            message = (connection.topic, bytes(rawdata))
            (static if connection.topic == "/tf_static" else groups.setdefault(t_ns, [])).append(message)
    return msgtypes, static, dict(sorted(groups.items()))


def saved_blocks(path: Path) -> set[tuple[int, int, int]]:
    """The block coordinates of a map file written by ``~/save_map``."""
    from neuralrecon_ros.io.map_file import load_map

    coords = np.asarray(load_map(path).map_state["block_coords"]).reshape(-1, 3)
    return {tuple(int(v) for v in row) for row in coords}


def _header(stamp: Any, frame_id: str) -> Any:
    from std_msgs.msg import Header

    return Header(stamp=stamp, frame_id=frame_id)


def transform(t_ns: int, parent: str, child: str, x: float = 0.0) -> Any:
    """``parent <- child``: the child ``x`` m along the parent's x axis, its optical axes (z forward) along
    the parent's x (REP-103 body to optical frame)."""
    from geometry_msgs.msg import TransformStamped

    msg = TransformStamped(header=_header(stamp(t_ns), parent), child_frame_id=child)
    msg.transform.translation.x = x
    msg.transform.rotation.x, msg.transform.rotation.y = -0.5, 0.5
    msg.transform.rotation.z, msg.transform.rotation.w = -0.5, 0.5
    return msg
