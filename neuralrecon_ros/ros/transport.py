"""The rclpy glue of neuralrecon_node around :class:`~..node.logic.NodeLogic` (inputs, services, outputs:
tables in :mod:`..node.interface` and :mod:`..node.outputs`, shared with the bag replay). Subscription
callbacks only fill an InputMailbox; a 50 Hz steady timer feeds and ticks the logic; services and parameter
changes call it under the timer's lock. SIGINT/SIGTERM: the final map is published, then the context ends.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any

import rclpy
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.duration import Duration
from rclpy.exceptions import ParameterException
from rclpy.executors import MultiThreadedExecutor
from rclpy.logging import get_logger
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSPresetProfiles, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions

try:
    from rclpy.event_handler import SubscriptionEventCallbacks, UnsupportedEventTypeError
except ImportError:  # Humble
    from rclpy.qos_event import SubscriptionEventCallbacks, UnsupportedEventTypeError

from ..core.config import ParameterError
from ..core.network.checkpoint import CheckpointError
from ..io.messages import MessageError
from ..io.rclpy_types import RclpyTypes
from ..node.interface import FRAME_KINDS, SERVICES, InputMailbox, InputTopic, Service, input_handlers, input_topics
from ..node.logic import OUTPUTS, NodeLogic
from ..node.parameters import NODE_NAME, NodeParameters, descriptor_fields, parameter_infos, plain_value
from ..node.pipeline_factory import build_pipeline

TICK_PERIOD_S = 0.02
FINAL_ACK_TIMEOUT_S = 2.0  # at shutdown, how long reliable subscribers get to receive the final state
#: /tf reliable volatile, /tf_static reliable transient_local, depth 100 each (as tf2_ros listeners)
TF_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
TF_STATIC_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                           durability=DurabilityPolicy.TRANSIENT_LOCAL)
#: map-like outputs: a late subscriber (RViz, Nav2) gets the last message
LATCHED_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
VOLATILE_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
#: RELIABLE: rmw's default profile (keep last 10, reliable, volatile), spelled out as Humble has no DEFAULT preset
INPUT_QOS = {"RELIABLE": VOLATILE_QOS, "SENSOR_DATA": QoSPresetProfiles.SENSOR_DATA.value,
             "SYSTEM_DEFAULT": QoSPresetProfiles.SYSTEM_DEFAULT.value}

log = logging.getLogger("neuralrecon_ros")


class StartupError(RuntimeError):
    """The node cannot start (bad parameters, missing interfaces)."""


class RosPublisher:
    """The logic's publisher: message classes by name, publishing by output key."""

    def __init__(self, node: Node, types: RclpyTypes) -> None:
        self.types = types
        self._publishers = {out.key: node.create_publisher(types(out.msgtype), out.ros_name,
                                                           LATCHED_QOS if out.latched else VOLATILE_QOS)
                            for out in OUTPUTS}

    def publish(self, topic_key: str, msg: Any) -> None:
        self._publishers[topic_key].publish(msg)

    def wait_for_acks(self, timeout_s: float) -> None:
        """Let reliable subscribers receive what was published (before the node goes away)."""
        deadline = time.monotonic() + timeout_s
        for publisher in self._publishers.values():
            publisher.wait_for_all_acked(Duration(seconds=max(0.0, deadline - time.monotonic())))


class _RosLogHandler(logging.Handler):
    """The package's Python log records (node logic, pipeline) to the node's ROS logger (and /rosout)."""

    def __init__(self, ros_logger: Any) -> None:
        super().__init__()
        self.ros_logger = ros_logger

    def emit(self, record: logging.LogRecord) -> None:  # rclpy: one severity per call site
        text, level = self.format(record), record.levelno
        if level >= logging.ERROR:
            self.ros_logger.error(text)
        elif level >= logging.WARNING:
            self.ros_logger.warning(text)
        elif level >= logging.INFO:
            self.ros_logger.info(text)
        else:
            self.ros_logger.debug(text)


class NeuralReconNode(Node):
    def __init__(self) -> None:
        super().__init__(NODE_NAME)
        self.params = self._declare_parameters()
        types = RclpyTypes()
        try:
            service_types = {s.srvtype: types(s.srvtype) for s in SERVICES}
            publisher = RosPublisher(self, types)
        except MessageError as exc:
            raise StartupError(f"{exc} The node needs the neuralrecon_ros_interfaces package built in the "
                               "same workspace: see docs/ros.md, 'Build'.") from None
        self.publisher = publisher
        self.logic = NodeLogic(self.params, build_pipeline(self.params), publisher, threaded=True)
        self._lock = threading.Lock()  # the logic runs on one thread at a time
        self._mailbox = InputMailbox(FRAME_KINDS, self.params.maximum_input_queue_length)
        self._handlers = input_handlers(self.logic)
        self._handlers["lost"] = lambda lost: self.logic.count_dropped(
            "lost_in_transport", lost[1], f"{lost[0]}: the middleware lost {lost[1]} message(s) on the way")
        inputs = MutuallyExclusiveCallbackGroup()
        for wanted in input_topics(self.params, self.logic.needs_depth):
            qos = INPUT_QOS[self.params.input_qos] if wanted.sensor else (
                TF_STATIC_QOS if wanted.kind == "tf_static" else TF_QOS)
            self._subscribe(wanted, types(wanted.msgtype), qos, inputs)
        self._steady = Clock(clock_type=ClockType.STEADY_TIME)
        self.create_timer(TICK_PERIOD_S, self._tick, MutuallyExclusiveCallbackGroup(), clock=self._steady)
        services = MutuallyExclusiveCallbackGroup()
        for service in SERVICES:
            self.create_service(service_types[service.srvtype], f"~/{service.name}", self._service(service),
                                callback_group=services)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._log_handler = _RosLogHandler(self.get_logger())  # from here on, package logs go to ROS
        log.addHandler(self._log_handler)
        log.setLevel(logging.DEBUG)  # the ROS logger's own level decides what is shown
        log.propagate = False
        self.get_logger().info(f"mode '{self.params.mode}' on {self.params.device}; map in "
                               f"'{self.params.global_frame}'; outputs under {self.get_fully_qualified_name()}/")

    def _declare_parameters(self) -> NodeParameters:
        infos = parameter_infos()
        for name, info in infos.items():
            fields = descriptor_fields(info)
            descriptor = ParameterDescriptor(description=fields.description, read_only=fields.read_only,
                                             additional_constraints=fields.additional_constraints,
                                             dynamic_typing=fields.dynamic_typing)
            if fields.floating_point_range is not None:
                descriptor.floating_point_range = [FloatingPointRange(from_value=fields.floating_point_range[0],
                                                                      to_value=fields.floating_point_range[1])]
            if fields.integer_range is not None:
                descriptor.integer_range = [IntegerRange(from_value=fields.integer_range[0],
                                                         to_value=fields.integer_range[1])]
            try:
                self.declare_parameter(name, info.default, descriptor)
            except ParameterException as exc:  # rclpy's own range check of a start-up value
                raise StartupError(f"parameter '{name}': {exc.args[0]}") from None
        for name, override in getattr(self, "_parameter_overrides", {}).items():  # rclpy ignores typos
            if not self.has_parameter(name) and not name.startswith("qos_overrides."):
                try:
                    NodeParameters({name: override.value})
                except ParameterError as exc:
                    self.get_logger().warning(f"ignored: {exc}")
        try:
            return NodeParameters({name: plain_value(self.get_parameter(name).value) for name in infos})
        except ParameterError as exc:
            raise StartupError(str(exc)) from None

    def _on_set_parameters(self, parameters: list[Any]) -> SetParametersResult:
        ours = {p.name: plain_value(p.value) for p in parameters if p.name in self.params.as_dict()}
        if not ours:
            return SetParametersResult(successful=True)
        with self._lock:
            ok, message = self.logic.update_parameters(ours)
        return SetParametersResult(successful=ok, reason="" if ok else message)

    def _subscribe(self, wanted: InputTopic, msgtype: type, qos: QoSProfile, group: Any) -> None:
        put, kind, topic = self._mailbox.put, wanted.kind, wanted.topic
        events = {"incompatible_qos": lambda info: self._incompatible_qos(topic, info),
                  "message_lost": lambda info: put("lost", (kind, info.total_count_change))}
        try:
            self.create_subscription(msgtype, topic, lambda msg: put(kind, msg), qos, callback_group=group,
                                     event_callbacks=SubscriptionEventCallbacks(**events))
        except UnsupportedEventTypeError:  # a middleware without message-lost events
            del events["message_lost"]
            self.create_subscription(msgtype, topic, lambda msg: put(kind, msg), qos, callback_group=group,
                                     event_callbacks=SubscriptionEventCallbacks(**events))
            self.get_logger().warning(f"{kind}: this middleware reports no lost messages", once=True)
        self.get_logger().info(f"{kind}: {wanted.msgtype} on '{self.resolve_topic_name(topic)}'")

    def _incompatible_qos(self, topic: str, info: Any) -> None:
        self.get_logger().warning(
            f"a publisher on '{self.resolve_topic_name(topic)}' offers QoS incompatible with ours (policy "
            f"{info.last_policy_kind}): nothing of it is received. input_qos is '{self.params.input_qos}'; "
            "a best-effort camera driver needs input_qos: SENSOR_DATA (see docs/ros.md, QoS)")

    def _service(self, service: Service) -> Any:
        method = getattr(self.logic, service.name)

        def handle(request: Any, response: Any) -> Any:
            with self._lock:  # the logic logs the outcome
                response.success, response.message = method(*((request.path,) if service.takes_path else ()))
            return response

        return handle

    def _tick(self) -> None:
        with self._lock:
            now = self.get_clock().now().nanoseconds * 1e-9
            self.logic.observe_clock(now)
            self._feed_logic()
            try:
                self.logic.spin_once(now, steady=self._steady.now().nanoseconds * 1e-9)
            except Exception as exc:  # a failed step must not stop the node
                self.get_logger().error(f"step failed: {type(exc).__name__}: {exc}", throttle_duration_sec=10.0)

    def _feed_logic(self) -> None:
        """Hand the mailbox to the logic in arrival order, and count what it had to drop (lock held)."""
        for kind, dropped in self._mailbox.take_dropped().items():
            self.logic.count_dropped("queue_full", dropped, f"{kind}: more than maximum_input_queue_length "
                                                            "waiting for the compute thread")
        for kind, msg in self._mailbox.drain():
            try:
                self._handlers[kind](msg)
            except Exception as exc:  # one bad message must not stop the node
                log.warning("%s message rejected: %s: %s", kind, type(exc).__name__, exc)

    def finish(self) -> None:
        """Process what is left and publish the final state (at shutdown, the context still valid)."""
        with self._lock:
            self._feed_logic()
            self.logic.finish()
        self.publisher.wait_for_acks(FINAL_ACK_TIMEOUT_S)

    def destroy_node(self) -> None:  # also for a node that failed to start (rclpy.shutdown destroys it)
        if hasattr(self, "logic"):
            self.logic.close()
        if hasattr(self, "_log_handler"):
            log.removeHandler(self._log_handler)
            log.propagate = True
        super().destroy_node()


def run(args: list[str]) -> int:
    """Run the node until SIGINT/SIGTERM; exit status 2 when it cannot start."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:  # stays installed until the process exits
        if stop.is_set():
            get_logger(NODE_NAME).info(f"{signal.Signals(signum).name} again: still finishing, please wait")
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):  # before start-up: a signal then stops the node cleanly too
        signal.signal(sig, on_signal)
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    try:
        node = NeuralReconNode()
    except (StartupError, ParameterError, CheckpointError) as exc:
        get_logger(NODE_NAME).fatal(f"cannot start: {exc}")
        rclpy.shutdown()
        return 2
    executor = MultiThreadedExecutor()
    executor.add_node(node)
    try:
        while not stop.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
        started = time.monotonic()
        node.get_logger().info("shutting down: finishing the frames received so far")
        node.finish()
        node.get_logger().info(f"finished in {time.monotonic() - started:.1f} s; final state published")
    finally:
        executor.shutdown()
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0

