"""The package's own interface definitions registered with rosbags: found, parsed, (de)serialised, in bags."""

from pathlib import Path

import pytest
from rosbags.typesys import Stores, get_typestore

from neuralrecon_ros.io import interfaces
from neuralrecon_ros.io.bags import BagReader, BagWriter
from neuralrecon_ros.io.interfaces import (
    InterfaceError,
    load_definitions,
    register_custom_types,
    split_service,
)

REPO = Path(__file__).resolve().parents[2]
SOURCE_DIR = REPO / "interfaces" / "neuralrecon_ros_interfaces"
REQUEST = "neuralrecon_ros_interfaces/srv/SaveFile_Request"
RESPONSE = "neuralrecon_ros_interfaces/srv/SaveFile_Response"
LAYER = "neuralrecon_ros_interfaces/msg/TsdfLayer"


def test_definitions_are_found_in_the_source_tree():
    assert interfaces.find_definition_dir() == SOURCE_DIR
    text = (SOURCE_DIR / "srv" / "SaveFile.srv").read_text()
    layer = (SOURCE_DIR / "msg" / "TsdfLayer.msg").read_text()
    assert load_definitions() == {"neuralrecon_ros_interfaces/srv/SaveFile": text, LAYER: layer}


def test_save_file_round_trips_through_cdr():
    typestore = get_typestore(Stores.ROS2_HUMBLE)
    assert register_custom_types(typestore) == [LAYER, REQUEST, RESPONSE]
    request = typestore.types[REQUEST](path="/data/room.ply")
    response = typestore.types[RESPONSE](success=True, message="wrote 12 vertices")
    for msg, name in ((request, REQUEST), (response, RESPONSE)):
        raw = typestore.serialize_cdr(msg, name)
        assert typestore.deserialize_cdr(raw, name) == msg
    # the definitions rosbags embeds in a bag are the fields of the .srv halves, comments stripped
    assert typestore.generate_msgdef(REQUEST)[0] == "string path\n"
    assert typestore.generate_msgdef(RESPONSE)[0] == "bool success\nstring message\n"


def test_tsdf_layer_fields_and_constant():
    typestore = get_typestore(Stores.ROS2_HUMBLE)
    register_custom_types(typestore)
    cls = typestore.types[LAYER]
    assert cls.TSDF_SCALE == 32767
    fields = typestore.generate_msgdef(LAYER)[0].split("=" * 80)[0].splitlines()
    assert fields == [
        "int16 TSDF_SCALE=32767", "std_msgs/Header header", "uint64 sequence", "bool full",
        "float64 voxel_size", "uint32 block_size",
        "float64 truncation_distance_vox", "geometry_msgs/Pose grid_pose", "int32[] block_indices",
        "int16[] tsdf", "uint16[] weight", "uint8[] color", "int32[] removed_block_indices"]


def test_registering_twice_is_harmless():
    typestore = get_typestore(Stores.ROS2_HUMBLE)
    register_custom_types(typestore)
    assert register_custom_types(typestore) == [LAYER, REQUEST, RESPONSE]


def _write_definitions(directory: Path) -> None:
    (directory / "msg").mkdir(parents=True)
    (directory / "srv").mkdir()
    (directory / "msg" / "Progress.msg").write_text("# a comment\nuint32 frames\nfloat64 fraction  # 0..1\n")
    (directory / "srv" / "Ping.srv").write_text("Progress last\n---\nbool ok\n")


def test_a_bag_carries_a_custom_message(tmp_path):
    _write_definitions(tmp_path / "defs")
    progress = "neuralrecon_ros_interfaces/msg/Progress"
    bag = tmp_path / "progress.mcap"
    with BagWriter(bag) as writer:
        register_custom_types(writer.typestore, tmp_path / "defs")
        writer.add_topic("/neuralrecon_node/progress", progress)
        msg = writer.types(progress)(frames=7, fraction=0.25)
        writer.write("/neuralrecon_node/progress", 5_000_000_000, msg)
    with BagReader(bag) as reader:  # no registration here: the definition comes from the bag itself
        (message,) = list(reader.messages())
    assert message.msgtype == progress
    assert (message.msg.frames, message.msg.fraction) == (7, 0.25)


def test_messages_and_services_from_a_directory(tmp_path):
    _write_definitions(tmp_path)
    typestore = get_typestore(Stores.ROS2_HUMBLE)
    names = register_custom_types(typestore, tmp_path)
    assert names == [
        "neuralrecon_ros_interfaces/msg/Progress",
        "neuralrecon_ros_interfaces/srv/Ping_Request",
        "neuralrecon_ros_interfaces/srv/Ping_Response",
    ]
    # a bare type name inside a .srv refers to the package's msg/, as in ROS
    request = typestore.types["neuralrecon_ros_interfaces/srv/Ping_Request"](
        last=typestore.types["neuralrecon_ros_interfaces/msg/Progress"](frames=3, fraction=0.5)
    )
    raw = typestore.serialize_cdr(request, "neuralrecon_ros_interfaces/srv/Ping_Request")
    assert typestore.deserialize_cdr(raw, "neuralrecon_ros_interfaces/srv/Ping_Request").last.frames == 3


@pytest.mark.parametrize(
    "text, message",
    [("string path\n", "exactly one '---' line, found 0"), ("a\n---\nb\n---\nc\n", "found 2")],
)
def test_malformed_service_is_named(text, message):
    with pytest.raises(InterfaceError, match=message):
        split_service("pkg/srv/Bad", text)


def test_bad_definition_and_missing_files_are_named(tmp_path, monkeypatch):
    with pytest.raises(InterfaceError, match="no msg/\\*.msg or srv/\\*.srv files in"):
        load_definitions(tmp_path)
    (tmp_path / "msg").mkdir()
    (tmp_path / "msg" / "Broken.msg").write_text("uint32[ frames\n")
    with pytest.raises(InterfaceError, match="neuralrecon_ros_interfaces/msg/Broken does not parse"):
        register_custom_types(get_typestore(Stores.ROS2_HUMBLE), tmp_path)
    monkeypatch.setattr(interfaces, "candidate_dirs", lambda: [tmp_path / "nowhere"])
    with pytest.raises(InterfaceError, match="not found; searched:\n  .*nowhere"):
        interfaces.find_definition_dir()


def test_installed_share_directories_are_searched(tmp_path, monkeypatch):
    monkeypatch.setenv("AMENT_PREFIX_PATH", f"{tmp_path / 'a'}:{tmp_path / 'b'}")
    candidates = interfaces.candidate_dirs()
    assert candidates[0] == SOURCE_DIR
    assert tmp_path / "a" / "share" / "neuralrecon_ros_interfaces" in candidates
    assert tmp_path / "b" / "share" / "neuralrecon_ros" in candidates
