"""The node's services called at bag times through the bag transport: save_ply, save_map / load_map, reset,
update_parameters; inline and with the worker thread of the live node (which must give the same map)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from replay_helpers import N_FRAMES, Recording, block_set, faulty_bag, read_output, record, replay

from neuralrecon_ros.io import messages as m
from neuralrecon_ros.io.map_file import load_map
from neuralrecon_ros.io.ply import read_ply
from neuralrecon_ros.node.outputs import output_topic_name

#: no frame may be dropped when the worker thread falls behind the bag: the comparisons are exact
NO_BACKLOG_DROPS = {"maximum_backlog_length": 10000, "full_mesh_publish_rate_hz": 5.0,
                    "mesh_publish_rate_hz": 5.0}


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> Recording:
    return record(tmp_path_factory.mktemp("recording"))


def calls(recording: Recording, tmp_path: Path) -> dict[str, tuple]:
    """Labelled service calls, in time order."""
    t = recording.time_of
    end = t(N_FRAMES - 1) + 10.0
    return {
        "save_ply": (t(14), "save_ply", "early/mesh.ply"),  # relative: into output_directory, folder made
        "save_map": (t(14), "save_map", "early.nrmap"),
        "load_map": (t(14), "load_map", "early.nrmap"),  # a round trip at one instant ...
        "save_map_again": (t(14), "save_map", "early_again.nrmap"),  # ... changes nothing
        "save_before_failed_load": (t(20), "save_map", "before_failed_load.nrmap"),
        "failed_load": (t(20), "load_map", "missing.nrmap"),  # fails: the map is kept
        "save_after_failed_load": (t(20), "save_map", str(tmp_path / "after_failed_load.nrmap")),  # absolute
        "save_ply_to_directory": (t(20), "save_ply", str(tmp_path)),
        "save_ply_no_path": (t(20), "save_ply", "  "),
        "reset": (t(30), "reset"),
        "save_empty": (t(30), "save_ply", "empty.ply"),  # nothing to save
        # after frame 39: frames 40.. integrate on top of the early map
        "load_again": (t(39), "load_map", "early.nrmap"),
        "change_rate": (t(39), "update_parameters", {"full_mesh_publish_rate_hz": 0.0}),
        "change_voxel_size": (t(39), "update_parameters", {"voxel_size": 0.05}),  # start-up only
        "save_final_map": (end, "save_map", "final.nrmap"),  # after the last message: after finish
        "save_final_ply": (end, "save_ply", "final.ply"),
    }


@pytest.fixture(scope="module")
def reference(recording, tmp_path_factory):
    """Frames 0..14 then 40..59 on their own: what the map must hold at the end of the service run."""
    folder = tmp_path_factory.mktemp("reference")
    bag = faulty_bag(folder, recording, lambda msg, f: [] if f is not None and 15 <= f < 40 else [msg])
    return replay(bag, folder / "out")[1]


def by_block(state: dict, name: str) -> np.ndarray:
    """A map state's array ``name`` with its blocks sorted by coordinate."""
    order = np.lexsort(np.asarray(state["block_coords"]).T[::-1])
    return np.asarray(state[name])[order]


@pytest.mark.parametrize("threaded", [False, True], ids=["inline", "worker_thread"])
def test_services_at_bag_times(recording, reference, tmp_path, threaded):
    bag = faulty_bag(tmp_path, recording, lambda msg, frame: [msg], name="bag")
    scheduled = calls(recording, tmp_path)
    result, pipeline = replay(bag, tmp_path / "out", service_calls=list(scheduled.values()),
                              threaded=threaded, output_directory=str(tmp_path), **NO_BACKLOG_DROPS)
    assert result.counts["frames"] == N_FRAMES and not result.dropped
    answered = [(r.call.time_s, r.call.service, *r.call.args) for r in result.service_results]
    assert answered == list(scheduled.values())  # all of them, in order
    ok = {label: r.success for label, r in zip(scheduled, result.service_results)}
    message = {label: r.message for label, r in zip(scheduled, result.service_results)}

    # save_ply: a mesh on the scene's surfaces, where the message says
    assert ok["save_ply"]
    assert message["save_ply"].endswith(f"to {tmp_path / 'early' / 'mesh.ply'}")
    early_mesh = read_ply(tmp_path / "early" / "mesh.ply")
    assert len(early_mesh.faces) > 1000
    assert np.median(np.abs(recording.sequence.scene.sdf(early_mesh.vertices.astype(np.float64)))) < 0.01

    # save_map -> load_map -> save_map at one instant: bit-exact
    assert ok["save_map"] and ok["load_map"] and ok["save_map_again"]
    early, again = load_map(tmp_path / "early.nrmap"), load_map(tmp_path / "early_again.nrmap")
    assert early.num_blocks > 50 and early.frame_id == "odom"
    for name in ("block_coords", "tsdf", "weight", "color"):
        np.testing.assert_array_equal(early.map_state[name].numpy(), again.map_state[name].numpy())

    # a failing load names the file and keeps the map exactly as it was
    assert not ok["failed_load"]
    assert str(tmp_path / "missing.nrmap") in message["failed_load"]
    kept = load_map(tmp_path / "before_failed_load.nrmap")
    after = load_map(tmp_path / "after_failed_load.nrmap")
    np.testing.assert_array_equal(kept.map_state["tsdf"].numpy(), after.map_state["tsdf"].numpy())
    assert not ok["save_ply_to_directory"] and "is a directory" in message["save_ply_to_directory"]
    assert not ok["save_ply_no_path"] and "path is empty" in message["save_ply_no_path"]

    # reset empties the map: nothing to save; the outputs say so at the next message
    assert ok["reset"] and message["reset"].startswith("map cleared (")
    assert not ok["save_empty"] and "the mesh is empty" in message["save_empty"]
    assert not (tmp_path / "empty.ply").exists()
    streams = read_output(result.output_bag)
    reset_ns, next_ns = recording.stamps_ns[30], recording.stamps_ns[31]
    chunks = [msg for t, msg in streams[output_topic_name("mesh_markers")] if t > reset_ns]
    assert chunks[0].markers[0].action == m.MARKER_DELETEALL  # the chunked mesh starts over
    if not threaded:  # inline, publications happen at known messages: right at the next one
        meshes = [msg for t, msg in streams[output_topic_name("mesh")] if reset_ns < t <= next_ns]
        assert meshes and meshes[0].action == m.MARKER_DELETE
        assert [mk.action for mk in chunks[0].markers] == [m.MARKER_DELETEALL]

    # load_map brings the early map back; the rest of the bag goes on top of it
    assert ok["load_again"] and message["load_again"].startswith("loaded")
    final, expected = load_map(tmp_path / "final.nrmap"), reference.tsdf_map.state_dict()
    assert block_set(final.map_state["block_coords"]) == block_set(reference.tsdf_map.block_coords())
    assert block_set(early.map_state["block_coords"]) <= block_set(final.map_state["block_coords"])
    for name in ("tsdf", "weight", "color"):  # the same voxels, block for block (storage order may differ)
        np.testing.assert_array_equal(*(by_block(state, name) for state in (final.map_state, expected)))
    final_mesh, mesh = read_ply(tmp_path / "final.ply"), pipeline.mesh()
    np.testing.assert_array_equal(final_mesh.faces, mesh.faces)
    np.testing.assert_allclose(final_mesh.vertices, mesh.vertices, atol=1e-6)

    # runtime parameters: the rate change applies from then on, a start-up parameter is refused by name
    assert ok["change_rate"] and ok["save_final_map"] and ok["save_final_ply"]
    refused = message["change_voxel_size"]
    assert not ok["change_voxel_size"]
    assert refused.startswith("cannot change voxel_size while the node runs")
    change_ns = recording.stamps_ns[39]
    if not threaded:  # (threaded, a publication under way while the rate changes may still go out)
        assert not [t for t, _ in streams[output_topic_name("mesh")] if t > change_ns]
    assert [t for t, _ in streams[output_topic_name("mesh_markers")] if t > change_ns]  # the others go on
