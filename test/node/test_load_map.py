"""``replay --load-map``: a saved map continues with a second bag on top of it; summary timings."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial import cKDTree

from neuralrecon_ros import cli
from neuralrecon_ros.core.keyframes import KeyframeConfig
from neuralrecon_ros.core.mapping.tsdf_map import TSDFMap
from neuralrecon_ros.core.pipeline import ReconstructionPipeline
from neuralrecon_ros.core.reconstructor import MapUpdate, Reconstructor
from neuralrecon_ros.core.synthetic import make_sequence
from neuralrecon_ros.core.timing import StageTimer
from neuralrecon_ros.io.map_file import save_map
from neuralrecon_ros.io.ply import read_ply
from neuralrecon_ros.io.synthetic_bag import write_synthetic_bag
from neuralrecon_ros.node.bag_transport import replay_bag
from neuralrecon_ros.node.parameters import NodeParameters
from neuralrecon_ros.node.pipeline_factory import build_pipeline

N_FRAMES = 40
VALUES = {"mode": "depth", "integrate_all_frames": False, "fragment_size": 2}
OVERRIDES = ["--mode", "depth", "-p", "integrate_all_frames:=false", "-p", "fragment_size:=2",
             "--no-progress"]


@pytest.fixture(scope="module")
def halves(tmp_path_factory):
    """Bags of the first and second half of one synthetic sequence."""
    sequence = make_sequence(seed=5, n_frames=N_FRAMES, width=96, height=72)
    folder = tmp_path_factory.mktemp("bags")
    bags = []
    for name, part in (("first", slice(0, N_FRAMES // 2)), ("second", slice(N_FRAMES // 2, N_FRAMES))):
        half = dataclasses.replace(sequence, stamps=sequence.stamps[part], poses=sequence.poses[part])
        bags.append(write_synthetic_bag(half, folder / name))
    return bags


@pytest.fixture(scope="module")
def first_map(halves, tmp_path_factory):
    """The first half replayed and saved: (map file, its block count, its mesh)."""
    params = NodeParameters(VALUES)
    pipeline = build_pipeline(params)
    output = tmp_path_factory.mktemp("first")
    replay_bag(halves[0], output, params, pipeline, progress=False)
    path = save_map(output / "map.nrmap", pipeline, frame_id=params.global_frame)
    return path, pipeline.tsdf_map.num_blocks, pipeline.mesh()


def run(args: list[str]) -> int:
    return cli.main([str(a) for a in args])


def test_replay_with_load_map_continues_the_map(halves, first_map, tmp_path):
    path, blocks_before, mesh_before = first_map
    assert run(["replay", halves[1], "--output", tmp_path / "continued", "--load-map", path, *OVERRIDES]) == 0
    assert run(["replay", halves[1], "--output", tmp_path / "alone", *OVERRIDES]) == 0
    continued = json.loads((tmp_path / "continued" / "summary.json").read_text())
    alone = json.loads((tmp_path / "alone" / "summary.json").read_text())
    assert continued["loaded_map"] == {"path": str(path), "blocks": blocks_before}
    assert continued["map_blocks"] >= blocks_before and continued["map_blocks"] > alone["map_blocks"]
    assert continued["frames"] == N_FRAMES // 2 and not continued["errors"]
    assert {"integrate", "mesh_update", "network"} <= set(continued["timings_ms"])
    assert continued["frames_per_integrate_call"] == 1
    # the old geometry is still there: every surface point of the first map lies on the continued mesh
    new_vertices = read_ply(tmp_path / "continued" / "mesh.ply").vertices
    distance, _ = cKDTree(new_vertices).query(mesh_before.vertices)
    assert np.percentile(distance, 99) < 0.02  # half a voxel
    only_first, _ = cKDTree(read_ply(tmp_path / "alone" / "mesh.ply").vertices).query(mesh_before.vertices)
    assert (only_first > 0.1).mean() > 0.02  # ... including parts the second half alone never saw


def test_a_bad_map_file_is_a_user_error(halves, tmp_path, capsys):
    bad = tmp_path / "bad.nrmap"
    bad.write_text("not a map")
    assert run(["replay", halves[1], "--output", tmp_path / "out", "--load-map", bad, *OVERRIDES]) == 2
    assert "error:" in capsys.readouterr().err and not (tmp_path / "out" / "summary.json").exists()


def test_a_map_of_another_voxel_size_is_refused(halves, first_map, tmp_path, capsys):
    path, _, _ = first_map
    code = run(["replay", halves[1], "--output", tmp_path / "out", "--load-map", path, *OVERRIDES,
                "-p", "voxel_size:=0.05"])
    assert code == 2 and "voxel_size 0.04 (running: 0.05)" in capsys.readouterr().err


def test_summary_names_the_stages_without_a_loaded_map(halves, tmp_path):
    params = NodeParameters(VALUES)
    summary = cli.run_replay(Path(halves[0]), tmp_path / "out", params, progress=False)
    assert summary["loaded_map"] is None and summary["timings_ms"]["network"] is None
    assert summary["timings_ms"]["integrate"]["median"] > 0 and summary["frames_per_integrate_call"] == 1


def test_a_fragment_reconstructor_reports_its_map_write_as_one_integrate_call():
    """NeuralRecon writes a whole fragment at once: 'integrate' is that write, frames_per_integrate_call the
    fragment size (the reconstructor times the write as 'map_write' on its own timer)."""
    class FragmentWriter(Reconstructor):
        name = "fragment_writer"

        def __init__(self, tsdf_map: TSDFMap) -> None:
            self.tsdf_map, self.timer = tsdf_map, StageTimer()

        def on_fragment(self, fragment):
            with self.timer.stage("map_write"):
                update = self.tsdf_map.set_voxels(np.array([[fragment.index, 0, 0]]), np.zeros(1))
            return MapUpdate(update.touched_blocks, frames_integrated=len(fragment.keyframes))

    sequence = make_sequence(seed=1, n_frames=12, width=32, height=24)
    tsdf_map = TSDFMap()
    every_frame = KeyframeConfig(keyframe_min_translation_m=0.0, keyframe_min_rotation_deg=0.0,
                                 fragment_size=3)
    pipeline = ReconstructionPipeline(every_frame, tsdf_map, FragmentWriter(tsdf_map))
    for frame in sequence:
        pipeline.process(frame)
    timings = pipeline.timer.summary()
    assert timings["integrate"]["count"] == timings["network"]["count"] == pipeline.counts["fragments"] >= 2
    assert pipeline.frames_per_integrate_call == 3
