"""The shipped Foxglove layout against the node: its panels show what the node publishes."""

from __future__ import annotations

import json

from neuralrecon_ros.cli import FOXGLOVE_LAYOUT as LAYOUT
from neuralrecon_ros.node.outputs import OUTPUTS, output_topic_name
from neuralrecon_ros.node.parameters import NodeParameters

PUBLISHED = {output_topic_name(out.key) for out in OUTPUTS}
DEFAULTS = NodeParameters()


def _panel_ids(node) -> list[str]:
    if isinstance(node, str):
        return [node]
    return _panel_ids(node["first"]) + _panel_ids(node["second"])


def test_layout_panels_exist_and_show_the_published_topics():
    layout = json.loads(LAYOUT.read_text())
    configs = layout["configById"]
    assert sorted(_panel_ids(layout["layout"])) == sorted(configs)
    scene = configs["3D!map"]
    assert scene["followTf"] == DEFAULTS.global_frame
    shown = {topic for topic, options in scene["topics"].items() if options.get("visible")}
    assert output_topic_name("mesh_markers") in shown and output_topic_name("occupancy_grid") in shown
    assert set(scene["topics"]) <= PUBLISHED | {DEFAULTS.image_topic}
    assert configs["Image!camera"]["imageMode"]["imageTopic"] == DEFAULTS.image_topic
    assert configs["DiagnosticSummary!diagnostics"]["topicToRender"] == output_topic_name("diagnostics")
