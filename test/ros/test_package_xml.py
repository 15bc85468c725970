"""package.xml against the code: format, name, and a dependency for everything the code imports or names."""

from __future__ import annotations

import ast
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE_DIR = REPO / "neuralrecon_ros"

#: Python import -> rosdep key of the package that provides it
ROSDEP_KEYS = {
    "numpy": "python3-numpy",
    "torch": "python3-torch",
    "scipy": "python3-scipy",
    "skimage": "python3-skimage",
    "yaml": "python3-yaml",
    "tqdm": "python3-tqdm",
    "PIL": "python3-pil",
    "matplotlib": "python3-matplotlib",
    "mpl_toolkits": "python3-matplotlib",
    "rosbags": "python3-rosbags-pip",
    "rclpy": "rclpy",
    "rcl_interfaces": "rcl_interfaces",
    "launch": "launch",
    "launch_ros": "launch_ros",
    "launch_pytest": "launch_pytest",
    "launch_testing": "launch_testing",
    "ament_index_python": "ament_index_python",
    "pytest": "python3-pytest",
}
#: imports that are optional on purpose, so they need no dependency
OPTIONAL = {
    "torchsparse": "alternative sparse-conv backend, used only when importable",
    "mcap": "only the recovery reader for MCAP files without a footer; the 'test' extra installs it",
    "foxglove": "only the offline replay's live view (pip installs foxglove-sdk; a ROS install has foxglove_bridge)",
}
#: command words of ROS executables the launch files start -> package providing them
EXECUTABLES = {("rviz2",): "rviz2", ("ros2", "bag"): "ros2bag"}
TYPE_NAME = re.compile(r"\b([a-z][a-z0-9_]*)/(?:msg|srv)/[A-Z][A-Za-z0-9_]*\b")


def _manifest() -> ET.Element:
    return ET.parse(REPO / "package.xml").getroot()


def _dependencies(*tags: str) -> set[str]:
    root = _manifest()
    return {element.text.strip() for tag in tags for element in root.iter(tag) if element.text}


def _imports(paths: list[Path]) -> dict[str, list[str]]:
    """Top-level modules imported (absolute imports only) -> files importing them."""
    found: dict[str, list[str]] = {}
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], []).append(str(path.relative_to(REPO)))
    return found


def _third_party(found: dict[str, list[str]]) -> dict[str, list[str]]:
    return {
        name: files for name, files in found.items()
        if name not in sys.stdlib_module_names and name != "neuralrecon_ros" and name not in OPTIONAL
    }


def _string_constants(path: Path) -> list[str]:
    """Every string literal except docstrings (those name placeholders like 'pkg/msg/Name')."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value) for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        node.value for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]


def test_format_3_and_name_matches_setup_py():
    root = _manifest()
    assert root.get("format") == "3"
    setup = ast.parse((REPO / "setup.py").read_text())
    constants = {
        target.id: node.value.value for node in setup.body if isinstance(node, ast.Assign)
        for target in node.targets if isinstance(target, ast.Name) and isinstance(node.value, ast.Constant)
    }
    assert root.findtext("name") == constants["PACKAGE"] == "neuralrecon_ros"
    assert root.find("export/build_type").text == "ament_python"
    assert (REPO / "resource" / "neuralrecon_ros").is_file()  # ament index marker that setup.py installs


def test_every_third_party_import_of_the_package_has_an_exec_depend():
    sources = sorted(PACKAGE_DIR.rglob("*.py")) + sorted((REPO / "launch").glob("*.py"))
    imports = _third_party(_imports(sources))
    unknown = {name: files for name, files in imports.items() if name not in ROSDEP_KEYS}
    assert not unknown, f"add these imports to ROSDEP_KEYS (or OPTIONAL) and package.xml: {unknown}"
    exec_depends = _dependencies("exec_depend", "depend")
    missing = {ROSDEP_KEYS[name]: f for name, f in imports.items() if ROSDEP_KEYS[name] not in exec_depends}
    assert not missing, f"package.xml lacks <exec_depend> for: {missing}"


def test_every_test_import_has_a_test_or_exec_depend():
    imports = _third_party(_imports(sorted((REPO / "test").rglob("*.py"))))
    known = {name: files for name, files in imports.items() if name in ROSDEP_KEYS}
    depends = _dependencies("exec_depend", "test_depend", "depend")
    missing = {ROSDEP_KEYS[name]: files for name, files in known.items() if ROSDEP_KEYS[name] not in depends}
    assert not missing, f"package.xml lacks <test_depend> for: {missing}"


def test_every_ros_message_package_named_in_code_has_an_exec_depend():
    named: dict[str, set[str]] = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        for text in _string_constants(path):
            for package in TYPE_NAME.findall(text):
                named.setdefault(package, set()).add(path.name)
    expected = {"sensor_msgs", "visualization_msgs", "tf2_msgs", "std_srvs", "neuralrecon_ros_interfaces"}
    assert expected <= set(named)  # the scan itself works
    exec_depends = _dependencies("exec_depend", "depend")
    missing = {package: sorted(files) for package, files in named.items() if package not in exec_depends}
    assert not missing, f"package.xml lacks <exec_depend> for message packages: {missing}"


@pytest.mark.parametrize("launch_file", sorted(p.name for p in (REPO / "launch").glob("*.launch.py")))
def test_executables_started_by_launch_files_have_an_exec_depend(launch_file):
    constants = set(_string_constants(REPO / "launch" / launch_file))
    exec_depends = _dependencies("exec_depend", "depend")
    for words, package in EXECUTABLES.items():
        if set(words) <= constants:
            command = " ".join(words)
            assert package in exec_depends, f"{launch_file} runs {command}: add <exec_depend>{package}"


def test_the_interface_package_is_a_dependency():
    interfaces = ET.parse(REPO / "interfaces" / "neuralrecon_ros_interfaces" / "package.xml").getroot()
    assert interfaces.findtext("name") in _dependencies("exec_depend")
