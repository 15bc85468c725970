"""Declarative parameters for component configs.

Every component owns a dataclass config whose fields are declared with :func:`param`. The field
name *is* the public parameter name (ROS parameter, YAML key, ``-p name:=value``), so the node,
the YAML file and the CLI map onto the configs one-to-one. :mod:`neuralrecon_ros.core.parameters`
collects all components into the product's single parameter set.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any


class ParameterError(ValueError):
    """A parameter name or value was rejected; the message names the parameter."""


@dataclass(frozen=True)
class ParamSpec:
    """What a parameter accepts, as shown to users (YAML comments, ROS descriptors, errors)."""

    description: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[Any, ...] | None = None
    unit: str = ""

    def describe_range(self) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        if self.minimum is not None and self.maximum is not None:
            return f"in [{self.minimum}, {self.maximum}]"
        if self.minimum is not None:
            return f">= {self.minimum}"
        if self.maximum is not None:
            return f"<= {self.maximum}"
        return ""


def param(
    default: Any,
    description: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    choices: tuple[Any, ...] | None = None,
    unit: str = "",
) -> Any:
    """Declare a config field that is also a public parameter."""
    spec = ParamSpec(description, minimum, maximum, choices, unit)
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"param": spec})
    return field(default=default, metadata={"param": spec})


def spec_of(f: dataclasses.Field) -> ParamSpec:
    return f.metadata["param"]


def _type_name(value: Any) -> str:
    return type(value).__name__


def coerce_value(name: str, value: Any, default: Any, spec: ParamSpec) -> Any:
    """Check ``value`` against the type of ``default`` and the spec; return the typed value."""
    bad = f"parameter '{name}': "
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ParameterError(bad + f"expected true or false, got {value!r}")
    elif isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParameterError(bad + f"expected an integer, got {value!r}")
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParameterError(bad + f"expected a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise ParameterError(bad + f"expected a finite number, got {value!r}")
    elif isinstance(default, str):
        if not isinstance(value, str):
            raise ParameterError(bad + f"expected a string, got {value!r} ({_type_name(value)})")
    elif isinstance(default, list):
        if not isinstance(value, (list, tuple)):
            raise ParameterError(bad + f"expected a list, got {value!r}")
        if default and isinstance(default[0], float):
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
                raise ParameterError(bad + f"expected a list of numbers, got {value!r}")
            value = [float(v) for v in value]
        else:
            value = list(value)
        if default and len(value) != len(default):
            raise ParameterError(bad + f"expected {len(default)} values, got {len(value)}")
    if spec.choices is not None and value not in spec.choices:
        raise ParameterError(bad + f"{value!r} is not allowed; expected {spec.describe_range()}")
    numbers = value if isinstance(value, list) else [value]
    for v in numbers:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            if (spec.minimum is not None and v < spec.minimum) or (
                spec.maximum is not None and v > spec.maximum
            ):
                raise ParameterError(bad + f"{v!r} is out of range; expected {spec.describe_range()}")
    return value


def config_fields(config_type: type) -> list[dataclasses.Field]:
    """The public-parameter fields of a component config dataclass."""
    return [f for f in dataclasses.fields(config_type) if "param" in f.metadata]


def default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory()  # type: ignore[misc]
