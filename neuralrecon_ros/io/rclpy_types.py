"""Message classes for the live node: the node logic's ``types`` callable over the message packages
rclpy sees (``'pkg/msg/Type'`` -> class), imported by name. No ROS import here: the classes come from
whatever ``importlib`` finds, so this is tested with stand-in modules too.
"""

from __future__ import annotations

import array
import importlib
from collections.abc import Mapping
from types import MappingProxyType

import numpy as np

from .messages import MessageError

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
