"""The package's own ROS 2 interfaces (``neuralrecon_ros_interfaces``) for ``rosbags``, without ROS.

The ``.msg``/``.srv`` files are the ones the ROS build compiles: they live in the ament_cmake package
``interfaces/neuralrecon_ros_interfaces/`` (docs/ros.md explains why it is a separate package), and
the top-level ``srv/`` link makes ``setup.py`` install them into ``share/neuralrecon_ros/`` too. This
module finds them (source tree, colcon install, pip install), and registers them with a ``rosbags``
typestore so offline tools can write and read bags that carry these types.

Type names follow ROS 2: ``neuralrecon_ros_interfaces/msg/Name`` for a message and
``neuralrecon_ros_interfaces/srv/Name_Request`` / ``..._Response`` for the two halves of a service.
"""

from __future__ import annotations

import os
import re
import site
import sys
from pathlib import Path
from typing import Any

from rosbags.typesys import get_types_from_msg

INTERFACE_PACKAGE = "neuralrecon_ros_interfaces"
#: the Python package whose share directory also holds copies of the definitions (setup.py data_files)
PYTHON_PACKAGE = "neuralrecon_ros"
KINDS = ("msg", "srv")

_SERVICE_SEPARATOR = re.compile(r"^---[ \t]*$", re.MULTILINE)


class InterfaceError(RuntimeError):
    """The interface definitions cannot be found or do not parse; the message says which and where."""


def candidate_dirs() -> list[Path]:
    """Where the definitions may be, in search order; each may hold ``msg/`` and ``srv/``."""
    candidates = [Path(__file__).resolve().parents[2] / "interfaces" / INTERFACE_PACKAGE]  # source tree
    prefixes = [Path(p) for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    prefixes += [Path(sys.prefix), Path(site.getuserbase())]  # pip install (data_files)
    for prefix in prefixes:
        candidates += [prefix / "share" / INTERFACE_PACKAGE, prefix / "share" / PYTHON_PACKAGE]
    return candidates


def _definition_files(directory: Path) -> list[Path]:
    return sorted(f for kind in KINDS for f in (directory / kind).glob(f"*.{kind}") if f.is_file())


def find_definition_dir() -> Path:
    """The first candidate directory that holds definition files."""
    candidates = candidate_dirs()
    for directory in candidates:
        if _definition_files(directory):
            return directory
    searched = "\n  ".join(str(c) for c in candidates)
    raise InterfaceError(
        f"the {INTERFACE_PACKAGE} definitions (msg/*.msg, srv/*.srv) were not found; searched:\n  {searched}"
    )


def load_definitions(directory: str | os.PathLike | None = None) -> dict[str, str]:
    """``{'neuralrecon_ros_interfaces/srv/SaveFile': '<file text>', ...}`` of every definition file."""
    directory = Path(directory) if directory is not None else find_definition_dir()
    files = _definition_files(directory)
    if not files:
        raise InterfaceError(f"no msg/*.msg or srv/*.srv files in {directory}")
    return {f"{INTERFACE_PACKAGE}/{f.parent.name}/{f.stem}": f.read_text() for f in files}


def split_service(name: str, text: str) -> tuple[str, str]:
    """The request and response halves of a ``.srv`` text (split at its ``---`` line)."""
    parts = _SERVICE_SEPARATOR.split(text)
    if len(parts) != 2:
        raise InterfaceError(f"service {name} must have exactly one '---' line, found {len(parts) - 1}")
    return parts[0], parts[1]


def message_definitions(definitions: dict[str, str]) -> dict[str, str]:
    """Every definition as message texts: services become ``<name>_Request`` and ``<name>_Response``."""
    messages: dict[str, str] = {}
    for name, text in definitions.items():
        if "/srv/" in name:
            request, response = split_service(name, text)
            messages[f"{name}_Request"] = request
            messages[f"{name}_Response"] = response
        else:
            messages[name] = text
    return messages


def register_custom_types(typestore: Any, directory: str | os.PathLike | None = None) -> list[str]:
    """Register the package's interfaces with a rosbags ``typestore``; returns the type names added.

    ``directory`` overrides the search (a folder holding ``msg/`` and/or ``srv/``).
    """
    types: dict[str, Any] = {}
    for name, text in message_definitions(load_definitions(directory)).items():
        # Parse under a msg/ name, so that a bare type reference resolves to this package's msg/ as in
        # ROS (rosbags would file 'pkg/srv/X' under 'pkg/srv/msg/X'), and register under the ROS 2 name.
        package, _, stem = name.split("/")
        try:
            parsed = get_types_from_msg(text, f"{package}/msg/{stem}")
        except Exception as exc:  # rosbags raises parser-specific types for a bad definition
            raise InterfaceError(f"definition of {name} does not parse: {exc}") from exc
        ((_, definition),) = parsed.items()
        types[name] = definition
    typestore.register(types)
    return sorted(types)
