"""What the node publishes, read back from the output bag with rosbags AND with mcap, field by field.

One replay of the clean recording with every output on. With every frame integrated, each map output
is stamped with its triggering message: the newest image, whose bag time is its log time.
"""

from __future__ import annotations

import itertools
import struct

import numpy as np
import pytest
import yaml
from mcap.reader import make_reader
from replay_helpers import N_FRAMES, record, replay

from neuralrecon_ros.core.mapping.mesh_chunks import ID_BITS
from neuralrecon_ros.core.mapping.products import occupancy_grid, tsdf_voxel_cloud
from neuralrecon_ros.io import messages as m
from neuralrecon_ros.io.bags import BagReader
from neuralrecon_ros.io.mesh_markers import MESH_CHUNK_NS
from neuralrecon_ros.io.planner_messages import decode_occupancy_grid, decode_point_cloud
from neuralrecon_ros.node.diagnostics import diagnostic_values
from neuralrecon_ros.node.logic import DROP_REASONS
from neuralrecon_ros.node.outputs import OUTPUTS, output_topic_name

RATES = {"mesh_publish_rate_hz": 2.0, "full_mesh_publish_rate_hz": 1.0, "tsdf_cloud_publish_rate_hz": 1.0,
         "occupancy_publish_rate_hz": 2.0, "esdf_publish_rate_hz": 2.0,
         "fragment_volume_publish_rate_hz": 4.0, "diagnostics_rate_hz": 2.0}
MAP_TOPICS = ("mesh", "tsdf_voxels", "occupancy_grid", "esdf_slice")
VOXEL = 0.04
CHUNK_M = 4 * 8 * VOXEL  # mesh_chunk_size_blocks x block_size voxels
LINE_LIST = 5


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("streams")
    recording = record(folder)
    result, pipeline = replay(folder / "clean", folder / "out", fragment_size=3, **RATES)
    assert result.counts["frames"] == N_FRAMES and not result.dropped
    with BagReader(result.output_bag) as reader:
        messages = list(reader.messages())
    streams = {}
    for message in messages:
        streams.setdefault(message.topic, []).append((message.stamp_ns, message.msg))
    return recording, result, pipeline, messages, streams


def stream(run, key: str) -> list[tuple[int, object]]:
    return run[4][output_topic_name(key)]


# ------------------------------------------------------------------------------------- both readers


def test_topics_types_and_qos_as_mcap_sees_them(run):
    with open(run[1].output_bag, "rb") as handle:
        summary = make_reader(handle).get_summary()
    channels = {channel.topic: channel for channel in summary.channels.values()}
    assert set(channels) == {output_topic_name(out.key) for out in OUTPUTS}
    for out in OUTPUTS:
        channel = channels[output_topic_name(out.key)]
        schema = summary.schemas[channel.schema_id]
        assert (schema.name, schema.encoding, channel.message_encoding) == (out.msgtype, "ros2msg", "cdr")
        (qos,) = yaml.safe_load(channel.metadata["offered_qos_profiles"])
        assert qos["depth"] == 1 and qos["reliability"] == 1  # reliable
        assert qos["durability"] == (1 if out.latched else 2)  # transient_local / volatile
    assert output_topic_name("diagnostics") == "/diagnostics"
    assert output_topic_name("occupancy_grid") == "/neuralrecon_node/occupancy_grid"


def _cdr_header(data: bytes, offset: int = 4) -> tuple[int, int, str]:
    """(sec, nanosec, frame_id) of a std_msgs/Header at ``offset`` of little-endian CDR, parsed by hand."""
    assert data[:2] == b"\x00\x01"  # CDR, little endian
    sec, nanosec, length = struct.unpack_from("<iII", data, offset)
    frame_id = data[offset + 12: offset + 12 + length - 1].decode()
    return sec, nanosec, frame_id


def test_mcap_and_rosbags_read_the_same_messages(run):
    _, result, _, messages, _ = run
    with open(result.output_bag, "rb") as handle:
        raw = [(channel.topic, message.log_time, message.publish_time, message.data)
               for _, channel, message in make_reader(handle).iter_messages(log_time_order=True)]
    assert [(topic, t) for topic, t, _, _ in raw] == [(msg.topic, msg.stamp_ns) for msg in messages]
    assert all(publish == log for _, log, publish, _ in raw)
    for (topic, _, _, data), message in zip(raw, messages):
        msg = message.msg
        if topic == output_topic_name("mesh_markers"):
            (count,) = struct.unpack_from("<I", data, 4)
            assert count == len(msg.markers)
            msg, offset = msg.markers[0], 8
        else:
            offset = 4
        sec, nanosec, frame_id = _cdr_header(data, offset)
        header = msg.header
        assert (sec, nanosec, frame_id) == (header.stamp.sec, header.stamp.nanosec, header.frame_id)


# ---------------------------------------------------------------------------------------- map outputs


@pytest.mark.parametrize("key", MAP_TOPICS)
def test_map_outputs_are_stamped_with_their_triggering_message(run, key):
    recording = run[0]
    messages = stream(run, key)
    assert len(messages) >= 2
    log_times = [t for t, _ in messages]
    stamps = [m.header_stamp_ns(msg) for _, msg in messages]
    assert all(msg.header.frame_id == "odom" for _, msg in messages)
    assert log_times == sorted(log_times) and all(b > a for a, b in itertools.pairwise(stamps))
    # stamped with the newest frame in the map, to the nanosecond: the frame whose messages came last
    # (published right after it), or the one before (published on the next frame's first message, the
    # TF that moved message time past the output's period); the final state at finish: the last frame
    frames = recording.stamps_ns
    for stamp, log_time in zip(stamps, log_times):
        newest = max(s for s in frames if s <= log_time)
        assert stamp == newest or stamp == frames[frames.index(newest) - 1]
    assert stamps[-1] == log_times[-1] == frames[-1]


@pytest.mark.parametrize("key", [*MAP_TOPICS, "mesh_markers", "fragment_volume", "diagnostics"])
def test_rates_are_respected_on_message_time(run, key):
    rate = RATES[next(out.rate_parameter for out in OUTPUTS if out.key == key)]
    log_times = [t for t, _ in stream(run, key)][:-1]  # the last one: the final state at finish
    assert all((b - a) * 1e-9 >= 1.0 / rate - 1e-6 for a, b in itertools.pairwise(log_times))


def test_whole_mesh_marker(run):
    _, result, pipeline, _, _ = run
    markers = [msg for _, msg in stream(run, "mesh")]
    assert len(markers) == result.published["mesh"] == result.meshes_published
    for marker in markers:
        assert (marker.ns, marker.id, marker.type, marker.action) == ("mesh", 0, m.MARKER_TRIANGLE_LIST, 0)
        assert len(marker.points) % 3 == 0 and len(marker.colors) == len(marker.points)
    mesh = pipeline.mesh()
    np.testing.assert_allclose(m.decode_marker_triangles(markers[-1]), mesh.vertices[mesh.faces], atol=1e-6)


def _chunk_of_id(marker_id: int) -> np.ndarray:
    bx, by, bz = ID_BITS
    packed = marker_id & 0xFFFFFFFF
    fields = [(packed >> (by + bz)) & ((1 << bx) - 1), (packed >> bz) & ((1 << by) - 1),
              packed & ((1 << bz) - 1)]
    return np.array([f - (1 << b) if f >= 1 << (b - 1) else f for f, b in zip(fields, ID_BITS)])


def _triangles(points: np.ndarray) -> set[tuple[float, ...]]:
    corners = np.round(points.reshape(-1, 3, 3), 5)
    area = np.linalg.norm(np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]), axis=1)
    return {tuple(np.sort(c.reshape(3, 3), axis=0).ravel()) for c, a in zip(corners, area) if a > 1e-12}


def test_mesh_chunks_are_incremental_with_stable_ids_and_add_up_to_the_mesh(run):
    messages = [msg for _, msg in stream(run, "mesh_markers")]
    assert messages[0].markers[0].action == m.MARKER_DELETEALL  # the first update is a full one
    shown: dict[int, np.ndarray] = {}
    sent = 0
    for array in messages:
        markers = [mk for mk in array.markers if mk.action != m.MARKER_DELETEALL]
        ids = [mk.id for mk in markers]
        assert len(ids) == len(set(ids))  # one marker per chunk per message
        for marker in markers:
            assert marker.ns == MESH_CHUNK_NS and marker.header.frame_id == "odom"
            assert marker.action in (0, m.MARKER_DELETE) and -(2**31) <= marker.id < 2**31
            if marker.action == m.MARKER_DELETE:
                shown.pop(marker.id, None)
                continue
            assert marker.type == m.MARKER_TRIANGLE_LIST
            triangles = m.decode_marker_triangles(marker).reshape(-1, 3)
            # the id names the chunk, and the chunk's triangles lie in it (cells reach one voxel further)
            low = _chunk_of_id(marker.id) * CHUNK_M
            assert np.all(triangles >= low - 1e-4) and np.all(triangles <= low + CHUNK_M + VOXEL + 1e-4)
            shown[marker.id] = triangles
        sent += len(markers)
    assert len(messages) >= 3 and sent < sum(len(shown) for _ in messages)  # not everything every time
    final_mesh = m.decode_marker_triangles(stream(run, "mesh")[-1][1])
    assert _triangles(np.concatenate(list(shown.values()))) == _triangles(final_mesh)


def test_tsdf_voxel_cloud(run):
    _, _, pipeline, _, _ = run
    for _, cloud in stream(run, "tsdf_voxels"):
        assert [(f.name, f.offset, f.datatype, f.count) for f in cloud.fields] == [
            ("x", 0, 7, 1), ("y", 4, 7, 1), ("z", 8, 7, 1), ("tsdf", 12, 7, 1), ("weight", 16, 7, 1)]
        assert (cloud.height, cloud.point_step, cloud.is_bigendian, cloud.is_dense) == (1, 20, False, True)
        assert cloud.row_step == 20 * cloud.width and len(cloud.data) == cloud.row_step and cloud.width > 0
        values = decode_point_cloud(cloud)
        assert np.all(np.abs(values["tsdf"]) <= 0.5) and np.all(values["weight"] > 0)
    expected = tsdf_voxel_cloud(pipeline.tsdf_map, 0.5, 0.0)
    last = decode_point_cloud(stream(run, "tsdf_voxels")[-1][1])
    np.testing.assert_array_equal(np.stack([last["x"], last["y"], last["z"]], axis=1), expected.points)
    np.testing.assert_array_equal(last["tsdf"], expected.tsdf)


def test_occupancy_grid_metadata(run):
    _, _, pipeline, _, _ = run
    for _, msg in stream(run, "occupancy_grid"):
        info = msg.info
        assert info.resolution == pytest.approx(VOXEL) and info.width > 0 and info.height > 0
        assert len(msg.data) == info.width * info.height
        q = info.origin.orientation
        assert (q.x, q.y, q.z, q.w) == (0.0, 0.0, 0.0, 1.0) and info.origin.position.z == 0.0
        assert (info.map_load_time.sec, info.map_load_time.nanosec) == (msg.header.stamp.sec,
                                                                         msg.header.stamp.nanosec)
        assert set(np.unique(msg.data)) <= {-1, 0, 100} and 100 in set(msg.data)
    last = decode_occupancy_grid(stream(run, "occupancy_grid")[-1][1])
    expected = occupancy_grid(pipeline.tsdf_map, 0.1, 1.5)
    assert last.geometry.origin_xy == pytest.approx(expected.origin_xy, abs=1e-9)
    assert (last.width, last.height) == (expected.width, expected.height)
    np.testing.assert_array_equal(last.data, expected.data)


def test_esdf_slice_lies_on_the_grid_of_the_same_stamp(run):
    grids = {m.header_stamp_ns(msg): decode_occupancy_grid(msg) for _, msg in stream(run, "occupancy_grid")}
    for _, cloud in stream(run, "esdf_slice"):
        assert [(f.name, f.offset, f.datatype) for f in cloud.fields] == [
            ("x", 0, 7), ("y", 4, 7), ("z", 8, 7), ("distance", 12, 7)]
        assert cloud.point_step == 16 and cloud.header.frame_id == "odom"
        values = decode_point_cloud(cloud)
        grid = grids[m.header_stamp_ns(cloud)]  # published together, same stamp
        assert cloud.width == int(np.sum(grid.data != -1))  # one point per known cell
        assert np.all(values["z"] == np.float32(0.5))  # esdf_slice_height_m
        cells = (np.stack([values["x"], values["y"]], axis=1) - np.asarray(grid.origin_xy)) / VOXEL - 0.5
        np.testing.assert_allclose(cells, np.round(cells), atol=1e-3)  # cell centres
        assert np.all(np.abs(values["distance"]) <= 2.0)  # esdf_max_distance_m
        occupied = grid.data[np.round(cells[:, 1]).astype(int), np.round(cells[:, 0]).astype(int)] == 100
        assert np.all(values["distance"][occupied] <= 0) and np.all(values["distance"][~occupied] > 0)


def test_fragment_volume_marker_boxes_the_pending_keyframes(run):
    recording = run[0]
    messages = stream(run, "fragment_volume")
    assert any(msg.action == 0 for _, msg in messages)
    for _, marker in messages:
        assert (marker.ns, marker.id, marker.header.frame_id) == ("fragment_volume", 0, "odom")
        if marker.action == m.MARKER_DELETE:  # right after a fragment closed: nothing pending
            continue
        assert marker.type == LINE_LIST and len(marker.points) == 24  # the 12 edges of a box
        points = np.array([(p.x, p.y, p.z) for p in marker.points])
        assert all(len(np.unique(points[:, axis])) == 2 for axis in range(3))  # axis-aligned
        # the newest keyframe (the marker's stamp) is pending: its camera centre is in the box
        camera = recording.sequence.poses[recording.stamps_ns.index(m.header_stamp_ns(marker))][:3, 3]
        assert np.all(points.min(axis=0) <= camera) and np.all(camera <= points.max(axis=0))


def test_diagnostics_stream(run):
    pipeline = run[2]
    messages = stream(run, "diagnostics")
    assert len(messages) >= 4
    fixed_keys = None
    for log_time, msg in messages:
        assert abs(m.header_stamp_ns(msg) - log_time) < 1000  # the transport clock (bag time), to 1 us
        names = [status.name for status in msg.status]
        assert names == [f"neuralrecon_node: {task}" for task in ("inputs", "reconstruction", "map")]
        assert all(status.hardware_id == "neuralrecon_node" for status in msg.status)
        keys = {s.name: {k for k in diagnostic_values(s) if not k.startswith("latency_")} for s in msg.status}
        fixed_keys = fixed_keys or keys
        assert keys == fixed_keys  # a stable key set for plotting tools
    inputs, reconstruction, world = (diagnostic_values(s) for s in messages[-1][1].status)
    assert {f"dropped_{reason}" for reason in DROP_REASONS} <= set(inputs) | set(reconstruction)
    assert all(v == "0" for k, v in {**inputs, **reconstruction}.items() if k.startswith("dropped_"))
    assert inputs["image_received"] == str(N_FRAMES) and inputs["tf_drops"] == "0"
    assert reconstruction["frames"] == str(N_FRAMES)
    assert reconstruction["keyframes"] == str(pipeline.counts["keyframes"])
    assert reconstruction["fragments"] == str(pipeline.counts["fragments"]) != "0"
    assert float(reconstruction["latency_integrate_median_ms"]) > 0
    assert float(reconstruction["latency_integrate_last_ms"]) > 0
    assert world["map_blocks"] == str(pipeline.tsdf_map.num_blocks)
    assert float(world["map_memory_mib"]) == pytest.approx(pipeline.tsdf_map.memory_bytes() / 2**20, abs=1e-3)
    assert world["published_mesh"] == str(len(stream(run, "mesh")))
    assert "gpu_memory_allocated_mib" not in world  # a CPU map
    # while images flow the input rate is the camera's 30 Hz (counted between reports, on bag time)
    rates = [float(diagnostic_values(msg.status[0])["image_rate_hz"]) for _, msg in messages[1:-1]]
    assert rates and all(25.0 < rate < 35.0 for rate in rates)
    levels = [msg.status[0].level for _, msg in messages]
    assert levels[0] == 1 and set(levels[1:]) == {0}  # WARN before the first image, then OK
