"""Layering of the ROS side: only neuralrecon_ros/ros/ imports ROS; the entry point explains a missing rclpy."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from neuralrecon_ros.ros.node import MISSING_ROS_MESSAGE, main

PACKAGE = Path(__file__).resolve().parents[2] / "neuralrecon_ros"
ROS_MODULES = ("rclpy", "rcl_interfaces", "tf2_ros", "tf2_msgs", "launch", "launch_ros", "message_filters",
               "sensor_msgs", "std_srvs", "nav_msgs", "visualization_msgs", "neuralrecon_ros_interfaces")


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names.append("." * node.level + (node.module or ""))
    return names


def test_only_the_ros_package_imports_ros():
    offenders = [f"{path.relative_to(PACKAGE)}: {name}" for path in PACKAGE.rglob("*.py")
                 if path.parent.name != "ros" for name in _imports(path) if name.split(".")[0] in ROS_MODULES]
    assert not offenders


def test_ros_adapter_is_thin_and_one_way():
    ros = PACKAGE / "ros"
    assert sum(len(p.read_text().splitlines()) for p in ros.glob("*.py")) <= 300
    transport = _imports(ros / "transport.py")
    assert not [name for name in transport if name in (".node", ".")]  # the entry point imports it, not back


def test_main_without_rclpy_explains_and_exits_1(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "rclpy", None)  # what an unsourced shell looks like
    assert main(["neuralrecon_node"]) == 1
    err = capsys.readouterr().err
    assert err.splitlines()[0] == MISSING_ROS_MESSAGE
    assert "source your ROS 2 setup.bash" in err and "setup.sh --ros" in err
