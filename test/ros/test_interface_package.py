"""The neuralrecon_ros_interfaces package: a well-formed rosidl package holding every definition file."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
INTERFACES = REPO / "interfaces" / "neuralrecon_ros_interfaces"


def _definition_files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for kind in ("msg", "srv") for p in (root / kind).glob(f"*.{kind}")}


def test_manifest_is_a_rosidl_interface_package():
    root = ET.parse(INTERFACES / "package.xml").getroot()
    assert root.get("format") == "3"
    assert root.findtext("name") == INTERFACES.name
    assert root.findtext("export/build_type") == "ament_cmake"
    assert root.findtext("member_of_group") == "rosidl_interface_packages"
    assert {e.text for e in root.iter("buildtool_depend")} == {"ament_cmake", "rosidl_default_generators"}
    assert {e.text for e in root.iter("exec_depend")} == {"rosidl_default_runtime"}
    main = ET.parse(REPO / "package.xml").getroot()
    assert root.findtext("version") == main.findtext("version")


def test_cmake_generates_exactly_the_definition_files():
    cmake = "\n".join(line.split("#")[0] for line in (INTERFACES / "CMakeLists.txt").read_text().splitlines())
    assert re.search(r"^project\(neuralrecon_ros_interfaces\)$", cmake, re.MULTILINE)
    (arguments,) = re.findall(r"rosidl_generate_interfaces\(\$\{PROJECT_NAME\}(.*?)\)", cmake, re.DOTALL)
    listed = set(re.findall(r'"([^"]+)"', arguments))
    assert listed == _definition_files(INTERFACES) == {"msg/TsdfLayer.msg", "srv/SaveFile.srv"}
    # the packages the messages use are found by CMake, passed to rosidl and declared in package.xml
    (dependencies,) = re.findall(r"DEPENDENCIES ([^\n)]*)", arguments)
    used = set(dependencies.split())
    assert used == {"std_msgs", "geometry_msgs"}
    assert all(f"find_package({name} REQUIRED)" in cmake for name in used)
    root = ET.parse(INTERFACES / "package.xml").getroot()
    assert {e.text for e in root.iter("depend")} == used
    # interfaces only: no Python package of its own (avoids the rosidl + ament_python target clash)
    assert "ament_python_install_package" not in cmake


def test_save_file_fields():
    request, response = (INTERFACES / "srv" / "SaveFile.srv").read_text().split("\n---\n")
    fields = [line.split("#")[0].split() for line in (request + "\n" + response).splitlines()]
    assert [f for f in fields if f] == [["string", "path"], ["bool", "success"], ["string", "message"]]


def test_the_python_package_installs_the_same_files():
    """setup.py installs srv/ into share/neuralrecon_ros; that srv/ is a link to the interface package's."""
    for kind in ("msg", "srv"):
        link = REPO / kind
        assert link.is_symlink() and link.resolve() == (INTERFACES / kind).resolve()
    # a .msg added to the interface package needs the same link for msg/
    assert _definition_files(REPO) == _definition_files(INTERFACES)
    assert 'glob("srv/*.srv")' in (REPO / "setup.py").read_text()
    assert 'glob("msg/*.msg")' in (REPO / "setup.py").read_text()
