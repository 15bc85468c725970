"""The rclpy transport of neuralrecon_node: subscriptions, publishers, services, parameters, threads.

It converts nothing and decides nothing: every message goes to :class:`~..node.logic.NodeLogic`,
which owns pairing, the TF buffer, pose timing and publishing by topic key. Threads:

- subscription callbacks (input group) only put messages in an :class:`.InputMailbox`;
- a steady-clock timer (compute group) drains the mailbox into the logic and calls
  ``spin_once(now)``; the logic hands posed frames to its worker thread (``threaded=True``), which
  runs the pipeline and publishes the map outputs, so a long NeuralRecon fragment never stalls TF,
  image reception or the tick;
- services (service group) and parameter changes call the logic under the same lock as the timer,
  so the logic only ever runs on one thread at a time (services wait for the worker's queued work).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any

import rclpy
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.logging import get_logger
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import (
    DurabilityPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
    qos_profile_system_default,
)

from ..core.config import ParameterError
from ..io.messages import MessageError
from ..node.logic import OUTPUTS, NodeLogic
from ..node.parameters import NODE_NAME, NodeParameters, parameter_infos
from ..node.pipeline_factory import build_pipeline
from .node import InputMailbox, RclpyTypes, descriptor_fields, plain_value, run_service_call

#: period of the compute tick (steady clock, so it also runs while a bag is paused)
TICK_PERIOD_S = 0.02
#: log the transport's own input drops at most this often
DROP_LOG_PERIOD_S = 10.0
#: tf2_ros listener QoS: /tf reliable volatile, /tf_static reliable transient_local, depth 100 each
TF_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
TF_STATIC_QOS = QoSProfile(
    depth=100, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
)
#: map-like outputs: a late subscriber (RViz, Nav2) gets the last message
LATCHED_QOS = QoSProfile(
    depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
)
VOLATILE_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
INPUT_QOS = {"SENSOR_DATA": qos_profile_sensor_data, "SYSTEM_DEFAULT": qos_profile_system_default}
#: kinds of input the mailbox bounds like the logic's frame queue
FRAME_KINDS = frozenset({"image", "depth"})

log = logging.getLogger("neuralrecon_ros")


class StartupError(RuntimeError):
    """The node cannot start (bad parameters, missing interfaces, unusable checkpoint)."""


class RosPublisher:
    """The logic's publisher: message classes by name, publishing by output key."""

    def __init__(self, node: Node, types: RclpyTypes) -> None:
        self.types = types
        self._publishers = {
            out.key: node.create_publisher(
                types(out.msgtype), out.ros_name, LATCHED_QOS if out.latched else VOLATILE_QOS
            )
            for out in OUTPUTS
        }

    def publish(self, topic_key: str, msg: Any) -> None:
        try:
            publisher = self._publishers[topic_key]
        except KeyError:
            declared = ", ".join(self._publishers)
            raise KeyError(f"no output topic '{topic_key}'; declared: {declared}") from None
        publisher.publish(msg)


class _RosLogHandler(logging.Handler):
    """Forward the package's Python log records (node logic, pipeline) to the node's ROS logger."""

    def __init__(self, ros_logger: Any) -> None:
        super().__init__()
        self._ros_logger = ros_logger

    def emit(self, record: logging.LogRecord) -> None:
        text = self.format(record)
        if record.levelno >= logging.ERROR:
            self._ros_logger.error(text)
        elif record.levelno >= logging.WARNING:
            self._ros_logger.warning(text)
        elif record.levelno >= logging.INFO:
            self._ros_logger.info(text)
        else:
            self._ros_logger.debug(text)


class NeuralReconNode(Node):
    def __init__(self) -> None:
        super().__init__(NODE_NAME)
        self.params = self._declare_parameters()
        self._types = RclpyTypes()
        try:
            save_file = self._types("neuralrecon_ros_interfaces/srv/SaveFile")
        except MessageError as exc:
            raise StartupError(
                f"{exc} The services need the neuralrecon_ros_interfaces package built in the same "
                "workspace: see docs/ros.md, 'Build'."
            ) from None
        # threaded: the pipeline runs on the logic's worker thread, so the compute tick stays short
        self.logic = NodeLogic(self.params, build_pipeline(self.params), RosPublisher(self, self._types),
                               threaded=True)
        self._lock = threading.Lock()
        self._mailbox = InputMailbox(FRAME_KINDS, self.params.maximum_input_queue_length)
        self._reported_drops: dict[str, int] = {}
        self._last_drop_log = self._steady_now()
        self._dispatch: dict[str, Callable[[Any], None]] = {
            "image": self.logic.on_image,
            "camera_info": self.logic.on_camera_info,
            "depth": self.logic.on_depth,
            "odometry": self.logic.on_odometry,
            "tf": lambda msg: self.logic.on_tf(msg, static=False),
            "tf_static": lambda msg: self.logic.on_tf(msg, static=True),
        }
        self._subscribe()
        compute = MutuallyExclusiveCallbackGroup()
        self.create_timer(TICK_PERIOD_S, self._tick, callback_group=compute,
                          clock=Clock(clock_type=ClockType.STEADY_TIME))
        services = MutuallyExclusiveCallbackGroup()
        trigger = self._types("std_srvs/srv/Trigger")
        for name in ("save_ply", "save_map", "load_map"):
            self.create_service(save_file, f"~/{name}", self._file_service(name), callback_group=services)
        self.create_service(trigger, "~/reset", self._reset_service, callback_group=services)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        # from here on the package's Python logging goes to the ROS logger (and /rosout)
        self._log_handler = _RosLogHandler(self.get_logger())
        self._saved_log_setup = (log.level, log.propagate)
        log.addHandler(self._log_handler)
        log.setLevel(logging.DEBUG)  # the ROS logger's own level decides what is shown
        log.propagate = False
        self.get_logger().info(
            f"mode '{self.params.mode}' on {self.params.device}; map in '{self.params.global_frame}'; "
            f"outputs under {self.get_fully_qualified_name()}/"
        )

    # --- parameters -------------------------------------------------------------------------

    def _declare_parameters(self) -> NodeParameters:
        infos = parameter_infos()
        for name, info in infos.items():
            fields = descriptor_fields(info)
            descriptor = ParameterDescriptor(
                description=fields.description,
                read_only=fields.read_only,
                additional_constraints=fields.additional_constraints,
            )
            if fields.floating_point_range is not None:
                low, high = fields.floating_point_range
                descriptor.floating_point_range = [FloatingPointRange(from_value=low, to_value=high)]
            if fields.integer_range is not None:
                low, high = fields.integer_range
                descriptor.integer_range = [IntegerRange(from_value=low, to_value=high)]
            self.declare_parameter(name, info.default, descriptor)
        self._warn_unknown_overrides()
        values = {name: plain_value(self.get_parameter(name).value) for name in infos}
        try:
            return NodeParameters(values)
        except ParameterError as exc:
            raise StartupError(str(exc)) from None

    def _warn_unknown_overrides(self) -> None:
        """rclpy silently ignores overrides of undeclared parameters: name the typos."""
        # rclpy has no public accessor for the overrides of a node in all supported distros
        overrides = getattr(self, "_parameter_overrides", {})
        for name, override in overrides.items():
            if self.has_parameter(name) or name.startswith("qos_overrides."):
                continue
            try:
                NodeParameters({name: override.value})
            except ParameterError as exc:
                self.get_logger().warning(f"ignored: {exc}")

    def _on_set_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        ours = {p.name: plain_value(p.value) for p in parameters if p.name in self.params.as_dict()}
        if not ours:
            return SetParametersResult(successful=True)
        trial = NodeParameters(self.params.as_dict())
        try:
            trial.update(ours)
        except ParameterError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        # Component configs are copied into the pipeline at start-up: only the logic knows what it
        # can change live, so without its hook a change is refused rather than silently ignored.
        apply = getattr(self.logic, "update_parameters", None)
        if apply is None:
            names = ", ".join(sorted(ours))
            return SetParametersResult(
                successful=False,
                reason=f"{names}: runtime changes are not supported yet; set it in the parameter file and "
                       "restart the node",
            )
        with self._lock:
            ok, message = run_service_call(apply, ours)
        return SetParametersResult(successful=ok, reason="" if ok else message)

    # --- inputs -----------------------------------------------------------------------------

    def _subscribe(self) -> None:
        p = self.params
        qos = INPUT_QOS[p.input_qos]
        inputs = MutuallyExclusiveCallbackGroup()
        if p.image_transport == "compressed":
            self._subscription("image", "sensor_msgs/msg/CompressedImage", p.image_topic + "/compressed", qos,
                               inputs)
        else:
            self._subscription("image", "sensor_msgs/msg/Image", p.image_topic, qos, inputs)
        self._subscription("camera_info", "sensor_msgs/msg/CameraInfo", p.camera_info_topic, qos, inputs)
        if self.logic.needs_depth:
            self._subscription("depth", "sensor_msgs/msg/Image", p.depth_topic, qos, inputs)
        if p.pose_source == "odometry":
            self._subscription("odometry", "nav_msgs/msg/Odometry", p.odometry_topic, qos, inputs)
        self._subscription("tf", "tf2_msgs/msg/TFMessage", "/tf", TF_QOS, inputs)
        self._subscription("tf_static", "tf2_msgs/msg/TFMessage", "/tf_static", TF_STATIC_QOS, inputs)

    def _subscription(self, kind: str, msgtype: str, topic: str, qos: QoSProfile, group: Any) -> None:
        put = self._mailbox.put
        self.create_subscription(self._types(msgtype), topic, lambda msg: put(kind, msg), qos,
                                 callback_group=group)
        self.get_logger().info(f"{kind}: {msgtype} on '{self.resolve_topic_name(topic)}'")

    # --- compute ----------------------------------------------------------------------------

    def _steady_now(self) -> float:
        return Clock(clock_type=ClockType.STEADY_TIME).now().nanoseconds * 1e-9

    def _feed_logic(self) -> None:
        """Hand the mailbox to the logic, in arrival order (call with the lock held)."""
        for kind, msg in self._mailbox.drain():
            try:
                self._dispatch[kind](msg)
            except Exception as exc:  # one bad message must not stop the node
                self.get_logger().error(f"{kind} message rejected: {type(exc).__name__}: {exc}",
                                        throttle_duration_sec=DROP_LOG_PERIOD_S)

    def _tick(self) -> None:
        with self._lock:
            self._feed_logic()
            now = self.get_clock().now().nanoseconds * 1e-9
            try:
                self.logic.spin_once(now)
            except Exception as exc:
                self.get_logger().error(f"reconstruction step failed: {type(exc).__name__}: {exc}",
                                        throttle_duration_sec=DROP_LOG_PERIOD_S)
        self._log_mailbox_drops()

    def _log_mailbox_drops(self) -> None:
        if self._mailbox.dropped == self._reported_drops:
            return
        if self._steady_now() - self._last_drop_log < DROP_LOG_PERIOD_S:
            return
        self._last_drop_log = self._steady_now()
        self._reported_drops = dict(self._mailbox.dropped)
        self.get_logger().warning(
            f"compute cannot keep up: input messages dropped before processing so far: {self._reported_drops}"
        )

    def finish(self) -> None:
        """Process what is left (called once, at shutdown)."""
        with self._lock:
            self._feed_logic()
            self.logic.finish()

    # --- services ---------------------------------------------------------------------------

    def _file_service(self, method: str) -> Callable[[Any, Any], Any]:
        def handle(request: Any, response: Any) -> Any:
            path = request.path.strip()
            if not path:
                response.success, response.message = False, "path is empty; give a file path"
                return response
            with self._lock:
                ok, message = run_service_call(self._logic_method(method), os.path.expanduser(path))
            response.success, response.message = ok, message
            # one call site per severity: rclpy refuses a call site that changes severity
            if ok:
                self.get_logger().info(f"~/{method}: {message}")
            else:
                self.get_logger().error(f"~/{method}: {message}")
            return response

        return handle

    def _reset_service(self, request: Any, response: Any) -> Any:
        with self._lock:
            response.success, response.message = run_service_call(self._logic_method("reset"))
        return response

    def _logic_method(self, name: str) -> Callable[..., tuple[bool, str]]:
        """The logic's service method, or one that says it is missing (the logic grows them over time)."""
        method = getattr(self.logic, name, None)
        if method is not None:
            return method
        return lambda *args: (False, f"{name} is not available in this version of neuralrecon_node")

    def destroy_node(self) -> None:
        self.logic.close()
        log.removeHandler(self._log_handler)
        level, log.propagate = self._saved_log_setup
        log.setLevel(level)
        super().destroy_node()


def run(args: list[str]) -> int:
    """Run the node until shutdown; exit status 2 when it cannot start."""
    rclpy.init(args=args)
    try:
        node = NeuralReconNode()
    except (StartupError, ParameterError, ParameterException, *_checkpoint_error()) as exc:
        get_logger(NODE_NAME).fatal(f"cannot start: {exc}")
        if rclpy.ok():
            rclpy.shutdown()
        return 2
    executor = MultiThreadedExecutor()
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        try:
            node.finish()
        except Exception as exc:  # the context may be gone (Ctrl-C): report, still clean up
            node.get_logger().error(f"finishing failed: {type(exc).__name__}: {exc}")
        executor.shutdown()
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0


def _checkpoint_error() -> tuple[type[BaseException], ...]:
    try:
        from ..core.network.checkpoint import CheckpointError
    except ImportError:
        return ()
    return (CheckpointError,)
