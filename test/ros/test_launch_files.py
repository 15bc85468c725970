"""The launch files, read as Python syntax trees (launch itself is not imported: no ROS needed here).

Checks that every LaunchConfiguration is declared (and every declared argument used), the argument
names, defaults and choices, that the files they reference exist and are installed, and that the node
they start is the console script setup.py installs, under the name the parameter file expects.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest

from neuralrecon_ros.node.parameters import NODE_NAME, parameter_infos

REPO = Path(__file__).resolve().parents[2]
LAUNCH_DIR = REPO / "launch"
NODE_LAUNCH = LAUNCH_DIR / "neuralrecon.launch.py"
REPLAY_LAUNCH = LAUNCH_DIR / "replay_bag.launch.py"
#: launch arguments that override the node parameter of the same name when not empty
PARAMETER_ARGUMENTS = {"checkpoint", "device", "mode", "global_frame", "image_topic", "camera_info_topic",
                       "depth_topic"}


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _calls(tree: ast.AST, name: str) -> list[ast.Call]:
    def called(node: ast.Call) -> str | None:
        func = node.func
        if isinstance(func, ast.Name):
            return func.id
        return func.attr if isinstance(func, ast.Attribute) else None

    return [node for node in ast.walk(tree) if isinstance(node, ast.Call) and called(node) == name]


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _module_constants(tree: ast.Module) -> dict[str, Any]:
    constants = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                constants[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    return constants


def _value(node: ast.expr | None, constants: dict[str, Any]) -> Any:
    if isinstance(node, ast.Name):
        return constants[node.id]
    return ast.literal_eval(node) if node is not None else None


def _arguments(path: Path) -> dict[str, dict[str, Any]]:
    """Declared launch arguments: name -> {'default': literal / ('join', parts) / None, 'choices': ...}."""
    tree = _tree(path)
    constants = _module_constants(tree)
    declared: dict[str, dict[str, Any]] = {}
    for call in _calls(tree, "DeclareLaunchArgument"):
        name = ast.literal_eval(call.args[0])
        assert name not in declared, f"{path.name}: argument '{name}' declared twice"
        default = _keyword(call, "default_value")
        if isinstance(default, ast.Call) and _calls(default, "join"):  # os.path.join(share, "config", ...)
            default_value: Any = ("join", [ast.literal_eval(a) for a in default.args[1:]])
        else:
            default_value = _value(default, constants)
        declared[name] = {
            "default": default_value,
            "choices": _value(_keyword(call, "choices"), constants),
            "description": _value(_keyword(call, "description"), constants),
        }
    return declared


def _used(path: Path) -> set[str]:
    return {ast.literal_eval(call.args[0]) for call in _calls(_tree(path), "LaunchConfiguration")}


def _console_scripts() -> dict[str, str]:
    setup = _tree(REPO / "setup.py")
    (call,) = _calls(setup, "setup")
    entry_points = _keyword(call, "entry_points")
    scripts = ast.literal_eval(entry_points)["console_scripts"]
    return dict(line.replace(" ", "").split("=") for line in scripts)


@pytest.mark.parametrize("path", [NODE_LAUNCH, REPLAY_LAUNCH], ids=lambda p: p.name)
def test_every_launch_configuration_is_declared_and_every_argument_used(path):
    declared, used = set(_arguments(path)), _used(path)
    assert used - declared == set(), f"{path.name} uses undeclared launch arguments"
    assert declared - used == set(), f"{path.name} declares arguments it never uses"
    for name, argument in _arguments(path).items():
        assert argument["description"], f"{path.name}: argument '{name}' has no description"


def test_node_launch_arguments_and_defaults():
    arguments = _arguments(NODE_LAUNCH)
    others = {"config", "use_sim_time", "rviz", "rviz_config", "log_level"}
    assert set(arguments) == PARAMETER_ARGUMENTS | others
    defaults = {name: argument["default"] for name, argument in arguments.items()}
    assert {name: defaults[name] for name in PARAMETER_ARGUMENTS} == dict.fromkeys(PARAMETER_ARGUMENTS, "")
    assert defaults["use_sim_time"] == "false" and defaults["rviz"] == "false"
    assert defaults["config"] == ("join", ["config", "neuralrecon.yaml"])
    assert defaults["rviz_config"] == ("join", ["rviz", "neuralrecon.rviz"])
    assert arguments["use_sim_time"]["choices"] == arguments["rviz"]["choices"] == ["true", "false"]


def test_parameter_arguments_are_parameters_with_the_same_choices():
    infos = parameter_infos()
    for path in (NODE_LAUNCH, REPLAY_LAUNCH):
        for name, argument in _arguments(path).items():
            if name not in PARAMETER_ARGUMENTS:
                continue
            assert name in infos, f"{path.name}: '{name}' is not a node parameter"
            choices = infos[name].spec.choices
            if argument["choices"] is not None or choices is not None:
                assert argument["choices"] == ["", *choices], f"{path.name}: choices of '{name}'"


def test_referenced_files_exist_and_are_installed():
    setup_text = (REPO / "setup.py").read_text()
    for name in ("config", "rviz_config"):
        folder, filename = _arguments(NODE_LAUNCH)[name]["default"][1]
        assert (REPO / folder / filename).is_file()
        assert f'glob("{folder}/*' in setup_text, f"setup.py does not install {folder}/"
    assert 'glob("launch/*.py")' in setup_text
    constants = _module_constants(_tree(REPLAY_LAUNCH))
    assert "neuralrecon.launch.py" in ast.unparse(_tree(REPLAY_LAUNCH))
    # NODE_LAUNCH is built from __file__ (so it works installed), not a literal path
    assert NODE_LAUNCH.is_file() and "NODE_LAUNCH" not in constants


def test_node_is_the_installed_console_script_under_the_parameter_file_name():
    tree = _tree(NODE_LAUNCH)
    constants = _module_constants(tree)
    scripts = _console_scripts()
    assert scripts[constants["EXECUTABLE"]] == "neuralrecon_ros.ros.node:main"
    assert constants["PACKAGE"] == "neuralrecon_ros"
    nodes = {_value(_keyword(call, "package"), constants): call for call in _calls(tree, "Node")}
    assert set(nodes) == {"neuralrecon_ros", "rviz2"}
    node, rviz = nodes["neuralrecon_ros"], nodes["rviz2"]
    assert _value(_keyword(node, "executable"), constants) == constants["EXECUTABLE"]
    assert _value(_keyword(node, "name"), constants) == NODE_NAME  # the key of config/neuralrecon.yaml
    assert _calls(_keyword(rviz, "condition"), "IfCondition")


def test_replay_arguments_shared_with_the_node_launch_keep_its_defaults():
    """An included launch file sees the includer's launch configurations, so an argument declared in both
    gets the replay's default in the node launch too: an empty ``config`` there reached the node as the
    parameter file path "" (``Parameter file path is not a file: .``)."""
    node, replay = _arguments(NODE_LAUNCH), _arguments(REPLAY_LAUNCH)
    deliberately_different = {"rviz"}  # RViz on by default when replaying
    for name in set(node) & set(replay) - deliberately_different:
        assert replay[name]["default"] == node[name]["default"], f"replay_bag.launch.py: default of '{name}'"
        assert replay[name]["choices"] == node[name]["choices"], f"replay_bag.launch.py: choices of '{name}'"
    assert replay["config"]["default"] == ("join", ["config", "neuralrecon.yaml"])


def test_replay_runs_the_bag_on_its_clock_into_the_node_launch():
    arguments = _arguments(REPLAY_LAUNCH)
    assert arguments["bag"]["default"] is None  # required
    assert (arguments["rate"]["default"], arguments["loop"]["default"], arguments["rviz"]["default"]) == (
        "1.0", "false", "true")
    tree = _tree(REPLAY_LAUNCH)
    (play,) = [call for call in _calls(tree, "ExecuteProcess")]
    assert "cmd" in {k.arg for k in play.keywords}
    command = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    assert {"ros2", "bag", "play", "--clock", "--rate", "--loop"} <= set(command)
    # the arguments handed to the included node launch exist there, and sim time is on
    (forwarded,) = [
        node.value for node in ast.walk(tree)
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
        and node.targets[0].id == "node_arguments"
    ]
    keys = {ast.literal_eval(k) for k in forwarded.keys}
    keys |= {
        ast.literal_eval(node.targets[0].slice) for node in ast.walk(tree)
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Subscript)
    }
    assert keys <= set(_arguments(NODE_LAUNCH))
    values = dict(zip([ast.literal_eval(k) for k in forwarded.keys], forwarded.values))
    assert ast.literal_eval(values["use_sim_time"]) == "true"
