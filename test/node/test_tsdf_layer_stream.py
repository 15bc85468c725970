"""~/tsdf_layer end to end: a replay's output bag alone rebuilds the node's map, across a reset, clearing-radius
drops and a map load; a lost message is detected and a resend on request resyncs; the CLI writes the map."""

from __future__ import annotations

import json

import numpy as np
import pytest
from replay_helpers import read_output, record, replay

from neuralrecon_ros import cli
from neuralrecon_ros.core.mapping.keys import pack_keys
from neuralrecon_ros.core.mapping.meshing import extract_mesh
from neuralrecon_ros.core.pipeline import FrameResult
from neuralrecon_ros.io.bags import default_typestore
from neuralrecon_ros.io.interfaces import register_custom_types
from neuralrecon_ros.io.layer_replica import APPLIED, RESYNCED, STALE, WAITING, LayerReplica, replicate_bag
from neuralrecon_ros.io.map_file import load_map
from neuralrecon_ros.io.messages import rosbags_types
from neuralrecon_ros.io.ply import read_ply
from neuralrecon_ros.io.tsdf_layer import TSDF_MAX_ERROR
from neuralrecon_ros.node.outputs import MapOutputs, output_topic_name
from neuralrecon_ros.node.parameters import NodeParameters, parameter_infos
from neuralrecon_ros.node.pipeline_factory import build_pipeline

LAYER = output_topic_name("tsdf_layer")
#: a clearing radius small enough to drop blocks (also ones already sent) as the synthetic camera moves
LAYER_VALUES = {"tsdf_layer_publish_rate_hz": 5.0, "map_clearing_radius_m": 2.5,
                "on_time_jump": parameter_infos()["on_time_jump"].default}  # no clock jump here anyway


def rows(flat) -> set[tuple[int, ...]]:
    return {tuple(int(v) for v in row) for row in np.asarray(flat).reshape(-1, 3)}


def assert_same_map(replica_map, node_map) -> None:
    """Same blocks, same weights and colours, TSDF within the stream's quantisation."""
    order_r = np.argsort(pack_keys(replica_map.block_coords()))
    order_n = np.argsort(pack_keys(node_map.block_coords()))
    np.testing.assert_array_equal(replica_map.block_coords()[order_r], node_map.block_coords()[order_n])
    r = {k: v for k, v in replica_map.state_dict().items()}
    n = {k: v for k, v in node_map.state_dict().items()}
    np.testing.assert_array_equal(r["weight"].numpy()[order_r], n["weight"].numpy()[order_n])
    error = np.abs(r["tsdf"].numpy()[order_r] - n["tsdf"].numpy()[order_n])
    assert error.max(initial=0.0) <= TSDF_MAX_ERROR * (1 + 1e-6)
    assert (r["color"] is None) == (n["color"] is None)
    if n["color"] is not None:
        np.testing.assert_array_equal(r["color"].numpy()[order_r], n["color"].numpy()[order_n])


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    folder = tmp_path_factory.mktemp("layer")
    return folder, record(folder)


@pytest.fixture(scope="module")
def run(recording):
    """Save the map early, map on, reset, map again, load the saved map, map on; clearing radius all along."""
    folder, rec = recording
    saved = folder / "early.nrmap"
    calls = [(rec.time_of(12), "save_map", str(saved)), (rec.time_of(25), "reset"),
             (rec.time_of(40), "load_map", str(saved))]
    result, pipeline = replay(folder / "clean", folder / "out", service_calls=calls, **LAYER_VALUES)
    assert all(r.success for r in result.service_results), result.service_results
    messages = [msg for _, msg in read_output(result.output_bag)[LAYER]]
    return result, pipeline, messages


def test_the_stream_alone_rebuilds_the_final_map(run):
    result, pipeline, messages = run
    assert result.published["tsdf_layer"] == len(messages) > 10
    assert [m.sequence for m in messages] == list(range(len(messages)))
    # full messages: the first, after the reset and after the load; the map lost blocks to the radius
    assert [i for i, m in enumerate(messages) if m.full][:1] == [0]
    assert sum(m.full for m in messages) == 3
    assert pipeline.memory.cleared_blocks > 0
    sent: set[tuple[int, ...]] = set()
    removed_after_sending = 0
    for msg in messages:
        if msg.full:
            sent.clear()
        removed_after_sending += len(sent & rows(msg.removed_block_indices))
        sent |= rows(msg.block_indices)
    assert removed_after_sending > 0  # drops a replica must apply, not only blocks it never saw
    replica = LayerReplica()
    outcomes = [replica.apply(m) for m in messages]
    assert set(outcomes) == {APPLIED, RESYNCED} and replica.in_sync
    assert replica.frame_id == "odom" and replica.sequence == len(messages) - 1
    np.testing.assert_allclose(replica.T_frame_grid, pipeline.T_global_map, atol=1e-12)
    assert pipeline.tsdf_map.num_blocks > 0
    assert_same_map(replica.tsdf_map, pipeline.tsdf_map)


def test_the_full_message_after_the_load_is_the_loaded_map(recording, run):
    folder, _ = recording
    _, _, messages = run
    after_load = [i for i, m in enumerate(messages) if m.full][2]
    replica = LayerReplica()
    for msg in messages[: after_load + 1]:
        replica.apply(msg)
    assert replica.in_sync and replica.sequence == after_load
    assert_same_map(replica.tsdf_map, load_map(folder / "early.nrmap").to_map())


def test_a_lost_message_is_detected_and_a_resend_resyncs(recording):
    folder, rec = recording
    calls = [(rec.time_of(45), "resend_tsdf_layer")]
    result, pipeline = replay(folder / "clean", folder / "resend", service_calls=calls, **LAYER_VALUES)
    (answer,) = result.service_results
    assert answer.success and "on ~/tsdf_layer as message" in answer.message
    messages = [msg for _, msg in read_output(result.output_bag)[LAYER]]
    resend = next(i for i, m in enumerate(messages) if m.full and i > 0)
    assert resend > 3
    requests = []
    replica = LayerReplica(on_resync_needed=requests.append)
    lost = 2
    outcomes = [replica.apply(m) for i, m in enumerate(messages[:resend]) if i != lost]
    assert outcomes[:lost] == [RESYNCED, APPLIED] and set(outcomes[lost:]) == {WAITING}
    assert not replica.in_sync and replica.sequence == lost - 1 and replica.counts.gaps == 1
    assert len(requests) == 1 and "1 message(s) lost" in requests[0]
    # the resend resyncs; the rest applies; a late copy of the lost message is ignored
    assert replica.apply(messages[resend]) == RESYNCED
    assert replica.apply(messages[lost]) == STALE
    for msg in messages[resend + 1:]:
        assert replica.apply(msg) == APPLIED
    assert_same_map(replica.tsdf_map, pipeline.tsdf_map)


def test_reordered_messages_are_not_applied(run):
    _, _, messages = run
    replica = LayerReplica()
    replica.apply(messages[0])
    assert replica.apply(messages[2]) == WAITING  # 1 is missing (or late)
    assert replica.apply(messages[1]) == WAITING  # a late one does not repair the state
    assert not replica.in_sync and replica.sequence == 0


def test_resend_when_the_stream_is_off(recording):
    folder, rec = recording
    result, _ = replay(folder / "clean", folder / "off", service_calls=[(rec.time_of(5), "resend_tsdf_layer")],
                       on_time_jump=LAYER_VALUES["on_time_jump"])
    (answer,) = result.service_results
    assert not answer.success and "tsdf_layer_publish_rate_hz is 0" in answer.message
    assert LAYER not in read_output(result.output_bag)


def test_cli_rebuilds_map_file_and_mesh_from_the_output_bag(run, tmp_path, capsys):
    result, pipeline, _ = run
    map_path, mesh_path = tmp_path / "replica.nrmap", tmp_path / "replica.ply"
    status = cli.main(["rebuild-map", str(result.output_bag), "--map", str(map_path), "--mesh", str(mesh_path)])
    assert status == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["in_sync"] and summary["blocks"] == pipeline.tsdf_map.num_blocks
    snapshot = load_map(map_path)
    assert snapshot.frame_id == "odom"
    assert_same_map(snapshot.to_map(), pipeline.tsdf_map)
    mesh = read_ply(mesh_path)
    reference = extract_mesh(pipeline.tsdf_map)
    assert len(mesh.faces) == len(reference.faces) > 0
    # a vertex interpolates an edge's two TSDF values: the quantisation moves it along the edge by at most
    # voxel_size * 2 * TSDF_MAX_ERROR / |difference of the two values| (sub-millimetre on real surfaces)
    np.testing.assert_allclose(np.sort(mesh.vertices, axis=0), np.sort(reference.vertices, axis=0), atol=2e-3)
    # the same through the library entry point
    assert replicate_bag(result.output_bag).tsdf_map.num_blocks == pipeline.tsdf_map.num_blocks


def test_cli_names_a_bag_without_the_stream(recording, tmp_path, capsys):
    folder, _ = recording
    status = cli.main(["rebuild-map", str(folder / "clean"), "--map", str(tmp_path / "x.nrmap")])
    assert status != 0
    assert "tsdf_layer" in capsys.readouterr().err
    assert not (tmp_path / "x.nrmap").exists()


class _FlakyPublisher:
    def __init__(self) -> None:
        typestore = default_typestore()
        register_custom_types(typestore)
        self.types = rosbags_types(typestore)
        self.sent: list[object] = []
        self.fail_next = False

    def publish(self, key: str, msg: object) -> None:
        assert key == "tsdf_layer"
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("link down")
        self.sent.append(msg)


def test_a_failed_publication_is_followed_by_a_full_message():
    rates = {name: 0.0 for name, info in parameter_infos().items() if name.endswith("_rate_hz")}
    params = NodeParameters({**rates, "mode": "depth", "tsdf_layer_publish_rate_hz": 1.0})
    pipeline = build_pipeline(params)
    publisher = _FlakyPublisher()
    outputs = MapOutputs(params, pipeline, publisher)

    def write(voxel: list[int], stamp_ns: int) -> None:
        update = pipeline.tsdf_map.set_voxels(np.array([voxel]), np.array([0.5]))
        pipeline.layer_tracker.mark(update.touched_blocks)
        outputs.note_frame(None, FrameResult(False, update=update), stamp_ns=stamp_ns)

    write([0, 0, 0], 1)
    outputs.publish_due(0.0)
    write([40, 0, 0], 2)
    publisher.fail_next = True
    outputs.publish_due(1.0)
    assert outputs.errors == 1 and len(publisher.sent) == 1
    outputs.publish_due(1.5)  # not due yet
    outputs.publish_due(2.0)  # nothing changed, but the lost changes are resent in full
    assert [(m.sequence, m.full) for m in publisher.sent] == [(0, True), (2, True)]
    replica = LayerReplica()
    assert [replica.apply(m) for m in publisher.sent] == [RESYNCED, RESYNCED]
    assert_same_map(replica.tsdf_map, pipeline.tsdf_map)
    outputs.publish_due(3.0)  # nothing new: nothing sent
    assert len(publisher.sent) == 2
