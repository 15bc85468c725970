"""rviz/neuralrecon.rviz against the node: fixed frame, and displays for exactly what the node publishes."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from neuralrecon_ros.node.logic import OUTPUTS, output_topic_name
from neuralrecon_ros.node.parameters import NodeParameters

RVIZ = Path(__file__).resolve().parents[2] / "rviz" / "neuralrecon.rviz"
#: RViz display class -> the message type it shows
DISPLAY_TYPES = {
    "rviz_default_plugins/Marker": "visualization_msgs/msg/Marker",
    "rviz_default_plugins/MarkerArray": "visualization_msgs/msg/MarkerArray",
    "rviz_default_plugins/PointCloud2": "sensor_msgs/msg/PointCloud2",
    "rviz_default_plugins/Map": "nav_msgs/msg/OccupancyGrid",
    "rviz_default_plugins/Image": "sensor_msgs/msg/Image",
}
PUBLISHED = {output_topic_name(out.key): out for out in OUTPUTS}


def _config() -> dict:
    return yaml.safe_load(RVIZ.read_text())


def _topic_displays() -> list[dict]:
    return [d for d in _config()["Visualization Manager"]["Displays"] if "Topic" in d]


def test_parses_and_uses_the_global_frame():
    config = _config()
    manager = config["Visualization Manager"]
    assert manager["Global Options"]["Fixed Frame"] == NodeParameters().global_frame == "odom"
    classes = {d["Class"]: d for d in manager["Displays"]}
    assert classes["rviz_default_plugins/TF"]["Enabled"]
    assert classes["rviz_default_plugins/Grid"]["Reference Frame"] == "<Fixed Frame>"
    assert manager["Views"]["Current"]["Target Frame"] == "<Fixed Frame>"


@pytest.mark.parametrize("display", _topic_displays(), ids=lambda d: d["Name"])
def test_enabled_displays_show_published_topics_with_matching_qos(display):
    topic = display["Topic"]
    assert display["Class"] in DISPLAY_TYPES, f"unknown display class {display['Class']}"
    if display["Class"] == "rviz_default_plugins/Image":  # the node's input, as camera drivers publish it
        assert topic["Value"] == NodeParameters().image_topic
        assert topic["Reliability Policy"] == "Best Effort"
        return
    name, shown = display["Name"], topic["Value"]
    if not display["Enabled"]:
        # a planned output: once the node publishes it, the display must be switched on
        assert shown not in PUBLISHED, f"{shown} is published now: enable the display '{name}'"
        assert shown.startswith("/neuralrecon_node/")
        return
    assert shown in PUBLISHED, f"display '{name}' shows {shown}, which the node does not publish"
    output = PUBLISHED[shown]
    assert DISPLAY_TYPES[display["Class"]] == output.msgtype
    assert topic["Durability Policy"] == ("Transient Local" if output.latched else "Volatile")
    assert topic["Reliability Policy"] == "Reliable"


def test_every_published_output_has_an_enabled_display():
    shown = {d["Topic"]["Value"]: d for d in _topic_displays() if d["Enabled"]}
    displayable = {name: out for name, out in PUBLISHED.items() if out.msgtype in DISPLAY_TYPES.values()}
    missing = sorted(set(displayable) - set(shown))
    assert not missing, f"add (or enable) an RViz display for {missing} in {RVIZ.name}"
