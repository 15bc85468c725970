"""Stand-ins for rclpy, rcl_interfaces and the ROS message packages, so the transport's code runs here.

They record what the transport creates (parameters, publishers, subscriptions, services, timers) and
let a test call its callbacks. They copy the *signatures* the transport uses, not ROS behaviour:
QoS matching, executors and DDS are out of scope (the launch proof-of-life test covers those where
ROS 2 is installed). Message classes are rosbags typestore classes, which the node logic and the
encoders handle like rclpy ones.
"""

from __future__ import annotations

import math
import sys
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar

import pytest
from rosbags.typesys import Stores, get_typestore

from neuralrecon_ros.io.interfaces import register_custom_types

TRANSPORT = "neuralrecon_ros.ros.transport"


class Logger:
    def __init__(self) -> None:
        self.records: list[tuple[str, str]] = []
        self._call_sites: dict[tuple[Any, int], str] = {}

    def _log(self, level: str, text: str, **_: Any) -> None:
        caller = sys._getframe(2)  # like rclpy: one call site (down to the bytecode) keeps one severity
        site = (caller.f_code, caller.f_lasti)
        if self._call_sites.setdefault(site, level) != level:
            raise ValueError("Logger severity cannot be changed between calls.")
        self.records.append((level, text))

    def debug(self, text: str, **kw: Any) -> None:
        self._log("debug", text, **kw)

    def info(self, text: str, **kw: Any) -> None:
        self._log("info", text, **kw)

    def warning(self, text: str, **kw: Any) -> None:
        self._log("warning", text, **kw)

    def error(self, text: str, **kw: Any) -> None:
        self._log("error", text, **kw)

    def fatal(self, text: str, **kw: Any) -> None:
        self._log("fatal", text, **kw)

    def texts(self, level: str) -> list[str]:
        return [text for lvl, text in self.records if lvl == level]


@dataclass
class Parameter:
    name: str
    value: Any


@dataclass
class ParameterDescriptor:
    description: str = ""
    read_only: bool = False
    additional_constraints: str = ""
    floating_point_range: list = field(default_factory=list)
    integer_range: list = field(default_factory=list)


@dataclass
class FloatingPointRange:
    from_value: float = 0.0
    to_value: float = 0.0
    step: float = 0.0


@dataclass
class IntegerRange:
    from_value: int = 0
    to_value: int = 0
    step: int = 0


@dataclass
class SetParametersResult:
    successful: bool = False
    reason: str = ""


class ParameterException(Exception):
    pass


class InvalidParameterValueException(ParameterException):
    pass


class ExternalShutdownException(Exception):
    pass


class ReliabilityPolicy(Enum):
    RELIABLE = 1
    BEST_EFFORT = 2


class DurabilityPolicy(Enum):
    VOLATILE = 1
    TRANSIENT_LOCAL = 2


@dataclass(frozen=True)
class QoSProfile:
    depth: int
    reliability: ReliabilityPolicy = ReliabilityPolicy.RELIABLE
    durability: DurabilityPolicy = DurabilityPolicy.VOLATILE


SENSOR_DATA = QoSProfile(depth=5, reliability=ReliabilityPolicy.BEST_EFFORT)
SYSTEM_DEFAULT = QoSProfile(depth=10)


class ClockType(Enum):
    ROS_TIME = 1
    STEADY_TIME = 2


class Clock:
    def __init__(
        self, clock_type: ClockType = ClockType.ROS_TIME, now_ns: Callable[[], int] | None = None
    ) -> None:
        self.clock_type = clock_type
        self._now_ns = now_ns or (lambda: 0)

    def now(self) -> Any:
        return types.SimpleNamespace(nanoseconds=self._now_ns())


class CallbackGroup:
    pass


@dataclass
class Endpoint:
    msg_class: type
    name: str
    qos: Any
    callback: Callable | None = None
    callback_group: Any = None
    messages: list = field(default_factory=list)

    def publish(self, msg: Any) -> None:
        self.messages.append(msg)


class Node:
    """Records what the transport creates; ``overrides`` plays the parameter file."""

    overrides: ClassVar[dict[str, Any]] = {}
    instances: ClassVar[list[Node]] = []

    def __init__(self, name: str) -> None:
        self.name = name
        self.logger = Logger()
        self.clock_ns = 0
        self._parameter_overrides = {k: Parameter(k, v) for k, v in self.overrides.items()}
        self.parameters: dict[str, Any] = {"use_sim_time": False}  # rclpy declares it for every node
        self.descriptors: dict[str, ParameterDescriptor] = {"use_sim_time": ParameterDescriptor()}
        self.set_callbacks: list[Callable] = []
        self.publishers: dict[str, Endpoint] = {}
        self.subscriptions: dict[str, Endpoint] = {}
        self.services: dict[str, Endpoint] = {}
        self.timers: list[tuple[float, Callable, Any, Any]] = []
        self.destroyed = False
        Node.instances.append(self)

    def get_logger(self) -> Logger:
        return self.logger

    def get_clock(self) -> Clock:
        return Clock(now_ns=lambda: self.clock_ns)

    def get_fully_qualified_name(self) -> str:
        return f"/{self.name}"

    def resolve_topic_name(self, topic: str) -> str:
        return f"/{self.name}/{topic[2:]}" if topic.startswith("~/") else topic

    def declare_parameter(self, name: str, value: Any, descriptor: ParameterDescriptor) -> Parameter:
        if name in self._parameter_overrides:
            value = self._parameter_overrides[name].value
        for bounds in descriptor.floating_point_range + descriptor.integer_range:  # as rclpy checks
            if not (bounds.from_value <= value <= bounds.to_value or math.isclose(value, bounds.from_value)):
                raise InvalidParameterValueException(f"{name}: {value} out of range")
        self.parameters[name] = value
        self.descriptors[name] = descriptor
        return Parameter(name, value)

    def has_parameter(self, name: str) -> bool:
        return name in self.parameters

    def get_parameter(self, name: str) -> Parameter:
        return Parameter(name, self.parameters[name])

    def add_on_set_parameters_callback(self, callback: Callable) -> None:
        self.set_callbacks.append(callback)

    def set_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        """rclpy's order: read-only check, then the callbacks, then store."""
        for p in parameters:
            if self.descriptors[p.name].read_only:
                return SetParametersResult(False, f"Trying to set a read-only parameter: {p.name}.")
        for callback in self.set_callbacks:
            result = callback(parameters)
            if not result.successful:
                return result
        self.parameters.update({p.name: p.value for p in parameters})
        return SetParametersResult(True)

    def create_publisher(self, msg_class: type, name: str, qos: Any) -> Endpoint:
        self.publishers[name] = Endpoint(msg_class, name, qos)
        return self.publishers[name]

    def create_subscription(self, msg_class: type, name: str, callback: Callable, qos: Any,
                            callback_group: Any = None) -> Endpoint:
        self.subscriptions[name] = Endpoint(msg_class, name, qos, callback, callback_group)
        return self.subscriptions[name]

    def create_service(
        self, srv_type: type, name: str, callback: Callable, callback_group: Any = None
    ) -> Endpoint:
        self.services[name] = Endpoint(srv_type, name, None, callback, callback_group)
        return self.services[name]

    def create_timer(self, period: float, callback: Callable, callback_group: Any = None,
                     clock: Any = None) -> None:
        self.timers.append((period, callback, callback_group, clock))

    def destroy_node(self) -> None:
        self.destroyed = True

    # --- test helpers -----------------------------------------------------------------------

    def deliver(self, topic: str, msg: Any) -> None:
        self.subscriptions[topic].callback(msg)

    def tick(self, stamp: float) -> None:
        self.clock_ns = round(stamp * 1e9)
        (_, callback, _, _), = self.timers
        callback()


class Executor:
    """Spins once: raises what ``Executor.stop_with`` says (Ctrl-C by default)."""

    stop_with: type[BaseException] = KeyboardInterrupt

    def __init__(self) -> None:
        self.nodes: list[Node] = []

    def add_node(self, node: Node) -> None:
        self.nodes.append(node)

    def spin(self) -> None:
        raise self.stop_with()

    def shutdown(self) -> None:
        pass


class _Rclpy:
    def __init__(self) -> None:
        self.initialised = False
        self.fatal = Logger()

    def init(self, args: Any = None) -> None:
        self.initialised = True

    def ok(self) -> bool:
        return self.initialised

    def shutdown(self) -> None:
        self.initialised = False


def _module(name: str, **attributes: Any) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    return module


@dataclass
class TriggerRequest:
    pass


@dataclass
class TriggerResponse:
    success: bool = False
    message: str = ""


@dataclass
class FakeRos:
    """What the ``fake_ros`` fixture hands a test."""

    typestore: Any
    rclpy: _Rclpy
    transport: Any  # the freshly imported neuralrecon_ros.ros.transport

    @property
    def nodes(self) -> list[Node]:
        return Node.instances


def _message_modules(typestore: Any) -> dict[str, types.ModuleType]:
    modules: dict[str, types.ModuleType] = {}
    for name, cls in typestore.types.items():
        package, kind, type_name = name.split("/")
        if kind != "msg":
            continue
        modules.setdefault(package, _module(package))
        module = modules.setdefault(f"{package}.msg", _module(f"{package}.msg"))
        setattr(module, type_name, cls)
    save_file = types.SimpleNamespace(
        Request=typestore.types["neuralrecon_ros_interfaces/srv/SaveFile_Request"],
        Response=typestore.types["neuralrecon_ros_interfaces/srv/SaveFile_Response"],
    )
    modules["neuralrecon_ros_interfaces"] = _module("neuralrecon_ros_interfaces")
    modules["neuralrecon_ros_interfaces.srv"] = _module("neuralrecon_ros_interfaces.srv", SaveFile=save_file)
    trigger = types.SimpleNamespace(Request=TriggerRequest, Response=TriggerResponse)
    modules["std_srvs"] = _module("std_srvs")
    modules["std_srvs.srv"] = _module("std_srvs.srv", Trigger=trigger)
    return modules


@pytest.fixture
def fake_ros(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeRos]:
    """Install the stand-ins in ``sys.modules`` and import the transport against them."""
    typestore = get_typestore(Stores.ROS2_HUMBLE)
    register_custom_types(typestore)
    rclpy_state = _Rclpy()
    rclpy_logging = _module("rclpy.logging", get_logger=lambda name: rclpy_state.fatal)
    fakes = {
        **_message_modules(typestore),  # first: the rcl_interfaces stand-ins below replace the typestore's
        "rclpy": _module("rclpy", init=rclpy_state.init, ok=rclpy_state.ok, shutdown=rclpy_state.shutdown,
                         logging=rclpy_logging),
        "rclpy.logging": rclpy_logging,
        "rclpy.node": _module("rclpy.node", Node=Node),
        "rclpy.callback_groups": _module(
            "rclpy.callback_groups", MutuallyExclusiveCallbackGroup=CallbackGroup
        ),
        "rclpy.clock": _module("rclpy.clock", Clock=Clock, ClockType=ClockType),
        "rclpy.exceptions": _module("rclpy.exceptions", ParameterException=ParameterException),
        "rclpy.executors": _module("rclpy.executors", ExternalShutdownException=ExternalShutdownException,
                                   MultiThreadedExecutor=Executor),
        "rclpy.parameter": _module("rclpy.parameter", Parameter=Parameter),
        "rclpy.qos": _module("rclpy.qos", DurabilityPolicy=DurabilityPolicy, QoSProfile=QoSProfile,
                             ReliabilityPolicy=ReliabilityPolicy, qos_profile_sensor_data=SENSOR_DATA,
                             qos_profile_system_default=SYSTEM_DEFAULT),
        "rcl_interfaces": _module("rcl_interfaces"),
        "rcl_interfaces.msg": _module("rcl_interfaces.msg", FloatingPointRange=FloatingPointRange,
                                      IntegerRange=IntegerRange, ParameterDescriptor=ParameterDescriptor,
                                      SetParametersResult=SetParametersResult),
    }
    for name, module in fakes.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.delitem(sys.modules, TRANSPORT, raising=False)
    monkeypatch.setattr(Node, "overrides", {})
    monkeypatch.setattr(Node, "instances", [])
    monkeypatch.setattr(Executor, "stop_with", KeyboardInterrupt)
    import importlib

    transport = importlib.import_module(TRANSPORT)
    yield FakeRos(typestore, rclpy_state, transport)
    # a node left alive keeps its handler on the package's logger; undo in reverse order of creation
    for node in reversed(Node.instances):
        if not node.destroyed and hasattr(node, "_log_handler"):
            node.destroy_node()
    sys.modules.pop(TRANSPORT, None)  # the next import (a real ROS run) must not see the fakes
