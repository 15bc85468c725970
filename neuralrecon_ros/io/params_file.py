"""ROS 2 parameter files (``node: ros__parameters: {...}``) and ``name:=value`` overrides, without ROS."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..core.config import ParameterError


def load_parameter_file(path: str | Path, node_name: str) -> dict[str, Any]:
    """Read the parameters of ``node_name`` from a ROS 2 parameter YAML file.

    Accepts the node's own section, the ``/**`` wildcard section and a leading ``/`` on the node
    name, as ``ros2 run --ros-args --params-file`` does. Nested dictionaries are flattened with
    dots (ROS 2's own rule), so ``a: {b: 1}`` becomes ``a.b``.
    """
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParameterError(f"parameter file {path} does not exist") from None
    except (OSError, yaml.YAMLError) as exc:
        raise ParameterError(f"parameter file {path} could not be read: {exc}") from None
    if not isinstance(document, dict):
        raise ParameterError(f"parameter file {path}: expected a mapping of node names at the top level")
    values: dict[str, Any] = {}
    matched = False
    for key in ("/**", node_name, "/" + node_name):
        section = document.get(key)
        if section is None:
            continue
        if not isinstance(section, dict) or not isinstance(section.get("ros__parameters"), dict):
            raise ParameterError(f"parameter file {path}: section '{key}' has no 'ros__parameters' mapping")
        values.update(_flatten(section["ros__parameters"]))
        matched = True
    if not matched:
        raise ParameterError(
            f"parameter file {path} has no section for node '{node_name}' "
            f"(found: {', '.join(map(str, document)) or 'nothing'})"
        )
    return values


def _flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def parse_override(text: str) -> tuple[str, Any]:
    """Parse ``name:=value``; the value is read as a YAML scalar or list, as ``ros2 run -p`` does."""
    name, sep, raw = text.partition(":=")
    if not sep or not name.strip():
        raise ParameterError(f"override {text!r} is not of the form name:=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return name.strip(), value


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    return dict(parse_override(item) for item in items or [])
