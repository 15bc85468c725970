"""``neuralrecon_node``: entry point of the ROS 2 node, plus the ROS-free pieces of its transport.

``main()`` starts the rclpy transport (:mod:`.transport`) or, where rclpy cannot be imported, says
so and exits 1. The helpers here (parameter descriptors, the callback-to-compute mailbox, message
classes by name, service result handling) carry no ROS import, so they are tested without ROS.
"""

from __future__ import annotations

import array
import importlib
import math
import sys
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np

from ..io.messages import MessageError
from ..node.parameters import ParameterInfo

MISSING_ROS_MESSAGE = "neuralrecon_node needs ROS 2 (rclpy); offline use: neuralrecon-ros replay ..."

#: parameters the transport reads once, when it subscribes: changing them at runtime would not
#: resubscribe, so they are declared read-only whatever the component config says
STARTUP_ONLY_PARAMETERS = frozenset(
    {"image_topic", "camera_info_topic", "depth_topic", "odometry_topic", "pose_source", "input_qos",
     "image_transport", "mode"}
)

#: bounds of a ROS integer parameter (int64) for a one-sided range
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


# ------------------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class DescriptorFields:
    """The values of an ``rcl_interfaces/ParameterDescriptor`` for one public parameter."""

    description: str
    read_only: bool
    additional_constraints: str
    floating_point_range: tuple[float, float] | None  # (from_value, to_value), step 0
    integer_range: tuple[int, int] | None


def descriptor_fields(info: ParameterInfo) -> DescriptorFields:
    """Descriptor of a registry parameter: description (+ unit), range of a number, choices, read-only."""
    spec = info.spec
    description = spec.description + (f" Unit: {spec.unit}." if spec.unit else "")
    constraints = spec.describe_range()
    has_range = spec.minimum is not None or spec.maximum is not None
    float_range = int_range = None
    if has_range and isinstance(info.default, float):
        float_range = (
            -math.inf if spec.minimum is None else float(spec.minimum),
            math.inf if spec.maximum is None else float(spec.maximum),
        )
    elif has_range and isinstance(info.default, int) and not isinstance(info.default, bool):
        int_range = (
            INT64_MIN if spec.minimum is None else math.ceil(spec.minimum),
            INT64_MAX if spec.maximum is None else math.floor(spec.maximum),
        )
    return DescriptorFields(
        description=description,
        read_only=spec.read_only or info.name in STARTUP_ONLY_PARAMETERS,
        additional_constraints=constraints,
        floating_point_range=float_range,
        integer_range=int_range,
    )


def plain_value(value: Any) -> Any:
    """A ROS parameter value as the registry expects it (array parameters come back as array.array)."""
    if isinstance(value, (array.array, tuple)):
        return list(value)
    return value


# ---------------------------------------------------------------------------------------- messages


#: numpy dtype -> array.array typecode that rclpy accepts for an unbounded primitive sequence
SEQUENCE_TYPECODES: Mapping[np.dtype, str] = MappingProxyType({
    np.dtype(np.uint8): "B", np.dtype(np.int8): "b", np.dtype(np.uint16): "H", np.dtype(np.int16): "h",
    np.dtype(np.uint32): "I", np.dtype(np.int32): "i", np.dtype(np.uint64): "Q", np.dtype(np.int64): "q",
    np.dtype(np.float32): "f", np.dtype(np.float64): "d",
})


class RclpyTypes:
    """The node logic's ``types`` callable over rclpy message classes (``'pkg/msg/Type'`` -> class)."""

    def __init__(self) -> None:
        self._classes: dict[str, type] = {}

    def __call__(self, name: str) -> type:
        cls = self._classes.get(name)
        if cls is None:
            package, kind, type_name = _split_type_name(name)
            try:
                cls = getattr(importlib.import_module(f"{package}.{kind}"), type_name)
            except (ImportError, AttributeError) as exc:
                raise MessageError(
                    f"message type '{name}' is not available to rclpy ({exc}); is its package built and "
                    "the workspace sourced?"
                ) from None
            self._classes[name] = cls
        return cls

    @staticmethod
    def sequence(values: np.ndarray) -> array.array:
        """rclpy takes unbounded primitive sequences fastest (and checked) as ``array.array``."""
        values = np.ascontiguousarray(values)
        native = values.dtype.newbyteorder("=")
        try:
            code = SEQUENCE_TYPECODES[native]
        except KeyError:
            raise MessageError(f"no rclpy sequence type for numpy dtype {values.dtype}") from None
        return array.array(code, values.astype(native, copy=False).tobytes())


def _split_type_name(name: str) -> tuple[str, str, str]:
    parts = name.split("/")
    if len(parts) != 3 or parts[1] not in ("msg", "srv") or not all(parts):
        raise MessageError(f"'{name}' is not a full ROS 2 type name like 'sensor_msgs/msg/Image'")
    return parts[0], parts[1], parts[2]


# ----------------------------------------------------------------------------------------- mailbox


class InputMailbox:
    """Messages from subscription callbacks, handed to the compute thread in arrival order.

    Callbacks only :meth:`put` (cheap, never waits for the reconstruction), so TF and images keep
    arriving while the compute thread runs a fragment; the compute thread :meth:`drain` s the lot
    at its next tick. Kinds in ``bounded`` (images) keep at most ``max_per_kind`` waiting, dropping
    the oldest, as the node logic's own input queue does; everything together is capped at
    ``max_total`` (a stalled compute thread must not grow memory without bound).
    """

    def __init__(self, bounded: frozenset[str], max_per_kind: int, max_total: int = 100_000) -> None:
        if max_per_kind < 1 or max_total < max_per_kind:
            raise ValueError(f"bad mailbox bounds: max_per_kind={max_per_kind}, max_total={max_total}")
        self.bounded = bounded
        self.max_per_kind = max_per_kind
        self.max_total = max_total
        self.dropped: dict[str, int] = {}
        self._items: deque[tuple[str, Any]] = deque()
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def put(self, kind: str, msg: Any) -> None:
        with self._lock:
            if kind in self.bounded and self._counts.get(kind, 0) >= self.max_per_kind:
                self._drop_oldest(kind)
            elif len(self._items) >= self.max_total:
                self._drop_oldest(None)
            self._items.append((kind, msg))
            self._counts[kind] = self._counts.get(kind, 0) + 1

    def _drop_oldest(self, kind: str | None) -> None:
        for index, (item_kind, _) in enumerate(self._items):
            if kind is None or item_kind == kind:
                del self._items[index]
                self._counts[item_kind] -= 1
                self.dropped[item_kind] = self.dropped.get(item_kind, 0) + 1
                return

    def drain(self) -> list[tuple[str, Any]]:
        with self._lock:
            items = list(self._items)
            self._items.clear()
            self._counts.clear()
        return items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


# ---------------------------------------------------------------------------------------- services


def run_service_call(call: Callable[..., Any], *args: Any) -> tuple[bool, str]:
    """Run a node-logic service method that returns ``(ok, message)``; an exception is a failure."""
    try:
        ok, message = call(*args)
    except Exception as exc:  # a failed save/load must answer the caller, not kill the node
        return False, f"{type(exc).__name__}: {exc}"
    return bool(ok), str(message)


# -------------------------------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> int:
    """Run neuralrecon_node (``ros2 run neuralrecon_ros neuralrecon_node [--ros-args ...]``)."""
    try:
        import rclpy  # noqa: F401  (only probing that ROS 2 is there)
    except ImportError as exc:
        print(f"{MISSING_ROS_MESSAGE}\n(cannot import rclpy: {exc}; source your ROS 2 setup.bash first)",
              file=sys.stderr)
        return 1
    from .transport import run

    return run(sys.argv if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
