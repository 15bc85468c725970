from pathlib import Path

import pytest
import yaml

from neuralrecon_ros.cli import main, render_parameter_file
from neuralrecon_ros.core.config import ParameterError
from neuralrecon_ros.core.keyframes import KeyframeConfig
from neuralrecon_ros.io.params_file import load_parameter_file, parse_override
from neuralrecon_ros.node.parameters import NODE_NAME, NodeParameters, parameter_infos

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "config" / "neuralrecon.yaml"


def test_defaults_equal_upstream_where_upstream_has_one():
    p = NodeParameters()
    assert (p.keyframe_min_translation_m, p.keyframe_min_rotation_deg, p.fragment_size) == (0.1, 15.0, 9)
    assert p.voxel_size == 0.04 and p.global_frame == "odom"
    assert p.group(KeyframeConfig) == KeyframeConfig()


def test_shipped_yaml_lists_every_parameter_with_its_default():
    values = load_parameter_file(SHIPPED, NODE_NAME)
    infos = parameter_infos()
    regenerate = "run `neuralrecon-ros params --output config/neuralrecon.yaml`"
    assert set(values) == set(infos), f"config/neuralrecon.yaml is out of date: {regenerate}"
    for name, info in infos.items():
        assert values[name] == info.default, name
    assert SHIPPED.read_text() == render_parameter_file(), "regenerate config/neuralrecon.yaml"


@pytest.mark.parametrize(
    "values, message",
    [
        ({"voxel_sise": 0.05}, "unknown parameter 'voxel_sise'; did you mean voxel_size"),
        ({"voxel_size": "big"}, "parameter 'voxel_size': expected a number"),
        ({"voxel_size": -1.0}, "parameter 'voxel_size': -1.0 is out of range"),
        ({"fragment_size": 2.5}, "parameter 'fragment_size': expected an integer"),
        ({"mode": "lidar"}, "parameter 'mode': 'lidar' is not allowed; expected one of 'depth', 'neuralrecon'"),
        ({"integrate_all_frames": "yes"}, "parameter 'integrate_all_frames': expected true or false"),
        ({"max_wait_for_pose_s": float("nan")}, "expected a finite number"),
    ],
)
def test_bad_names_and_values_are_rejected_by_name(values, message):
    with pytest.raises(ParameterError, match=message.replace("(", r"\(").replace("[", r"\[")):
        NodeParameters(values)


def test_rejected_update_changes_nothing():
    p = NodeParameters()
    with pytest.raises(ParameterError):
        p.update({"voxel_size": 0.05, "fragment_size": -3})
    assert p.voxel_size == 0.04


def test_parameter_file_layouts(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump({
        "/**": {"ros__parameters": {"global_frame": "map", "voxel_size": 0.05}},
        "/neuralrecon_node": {"ros__parameters": {"voxel_size": 0.06}},
    }))
    assert load_parameter_file(f, NODE_NAME) == {"global_frame": "map", "voxel_size": 0.06}
    f.write_text(yaml.safe_dump({"other_node": {"ros__parameters": {"a": 1}}}))
    with pytest.raises(ParameterError, match="no section for node 'neuralrecon_node'.*other_node"):
        load_parameter_file(f, NODE_NAME)
    f.write_text("neuralrecon_node: [1, 2")
    with pytest.raises(ParameterError, match="could not be read"):
        load_parameter_file(f, NODE_NAME)
    with pytest.raises(ParameterError, match="does not exist"):
        load_parameter_file(tmp_path / "missing.yaml", NODE_NAME)


def test_override_syntax_matches_ros2_run():
    assert parse_override("voxel_size:=0.05") == ("voxel_size", 0.05)
    assert parse_override("fragment_size:=9") == ("fragment_size", 9)
    assert parse_override("global_frame:=map") == ("global_frame", "map")
    assert parse_override("integrate_all_frames:=false") == ("integrate_all_frames", False)
    assert parse_override("checkpoint:=") == ("checkpoint", "")
    with pytest.raises(ParameterError, match="name:=value"):
        parse_override("voxel_size=0.05")


def test_cli_reports_bad_parameter_without_traceback(capsys, tmp_path):
    code = main(["params", "-p", "voxel_size:=abc"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: parameter 'voxel_size'") and "Traceback" not in err
    cfg = tmp_path / "c.yaml"
    cfg.write_text("neuralrecon_node:\n  ros__parameters:\n    fragment_size: 5\n")
    assert main(["params", "--config", str(cfg), "-p", "voxel_size:=0.05", "--output", str(tmp_path / "o.yaml")]) == 0
    values = load_parameter_file(tmp_path / "o.yaml", NODE_NAME)
    assert values["fragment_size"] == 5 and values["voxel_size"] == 0.05
