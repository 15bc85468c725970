"""The neuralrecon-ros commands end to end, as a user runs them (in-process through cli.main)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from neuralrecon_ros.cli import main
from neuralrecon_ros.core.network.checkpoint import save_checkpoint
from neuralrecon_ros.core.network.model import NeuralRecon
from neuralrecon_ros.core.training import weights
from neuralrecon_ros.io.bags import BagReader
from neuralrecon_ros.io.ply import read_ply

SUMMARY_KEYS = {"frames", "keyframes", "fragments", "dropped", "time_jumps", "timings_ms"}


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("scene")
    assert main(["synth", "--seed", "5", "--frames", "90", "--width", "128", "--height", "96",
                 "--output", str(out)]) == 0
    return out


def test_synth_writes_a_bag_and_both_ground_truth_meshes(scene):
    with BagReader(scene / "bag") as bag:
        assert {"/camera/color/image_raw", "/camera/color/camera_info", "/tf", "/tf_static", "/odom"} <= set(
            bag.topics)
        assert bag.topics["/camera/color/image_raw"].count == 90
    full, observed = read_ply(scene / "gt_mesh.ply"), read_ply(scene / "gt_mesh_observed.ply")
    assert 0 < len(observed.faces) < len(full.faces)


def test_replay_then_evaluate_depth_mode(scene, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["replay", str(scene / "bag"), "--output", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(summary)
    assert summary["frames"] == 90 and summary["dropped"] == {}
    assert {"median", "p95", "total"} <= set(summary["timings_ms"]["integrate"])
    assert (out / "output.mcap").is_file() and (out / "mesh.ply").is_file()
    capsys.readouterr()
    picture = tmp_path / "errors.png"
    assert main(["evaluate", str(out / "mesh.ply"), str(scene / "gt_mesh_observed.ply"), "--picture",
                 str(picture)]) == 0
    assert Image.open(picture).format == "PNG"
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["prec"] > 0.9 and metrics["fscore"] > 0.8  # low-res images, but exact depth and poses


def test_replay_loop_is_a_clock_jump_that_keeps_the_map(scene, tmp_path):
    once, twice = tmp_path / "once", tmp_path / "twice"
    assert main(["replay", str(scene / "bag"), "--output", str(once), "--no-progress"]) == 0
    assert main(["replay", str(scene / "bag"), "--output", str(twice), "--no-progress", "--loop", "2"]) == 0
    first, second = (json.loads((out / "summary.json").read_text()) for out in (once, twice))
    assert first["time_jumps"] == 0 and second["time_jumps"] == 1
    # the second pass maps the same room again on top of the first: nothing is lost, little is added
    assert second["map_blocks"] >= first["map_blocks"]
    assert second["frames"] + second["dropped"].get("clock_jump", 0) == 2 * first["frames"]


def test_replay_loop_must_be_positive(scene, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["replay", str(scene / "bag"), "--output", str(tmp_path / "out"), "--loop", "0"])
    assert "--loop: must be at least 1" in capsys.readouterr().err


def test_replay_with_config_file_and_overrides(scene, tmp_path):
    config = tmp_path / "params.yaml"
    config.write_text("neuralrecon_node:\n  ros__parameters:\n    voxel_size: 0.08\n    fragment_size: 3\n")
    out = tmp_path / "out"
    assert main(["replay", str(scene / "bag"), "--output", str(out), "--no-progress", "--config", str(config),
                 "-p", "integrate_all_frames:=false"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["fragments"] == summary["keyframes"] // 3


@pytest.fixture
def random_checkpoint(tmp_path) -> Path:
    """Random weights whose occupancy heads keep voxels, so every level and the map write run."""
    torch.manual_seed(0)
    model = NeuralRecon()
    with torch.no_grad():
        for head in model.neucon_net.occ_preds:
            head.bias.fill_(5.0)
    checkpoint = tmp_path / "random.ckpt"
    save_checkpoint(model, checkpoint)
    return checkpoint


@pytest.fixture
def no_shipped_weights(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(weights, "DEMO_WEIGHTS", tmp_path / "absent" / "demo_weights.pt")


def test_neuralrecon_mode_runs_a_checkpoint_through_replay(scene, tmp_path, random_checkpoint):
    out = tmp_path / "nr"
    code = main(["replay", str(scene / "bag"), "--output", str(out), "--no-progress", "--mode", "neuralrecon",
                 "--checkpoint", str(random_checkpoint), "-p", "fragment_size:=3"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["fragments"] >= 1
    assert summary["timings_ms"]["network"]["total"] > 0
    assert summary["map_blocks"] > 0  # the prediction was substituted into the map


def test_neuralrecon_mode_without_checkpoint_says_where_to_get_it(scene, tmp_path, capsys, no_shipped_weights):
    code = main(["replay", str(scene / "bag"), "--output", str(tmp_path / "x"), "--mode", "neuralrecon"])
    err = capsys.readouterr().err
    assert code == 2 and "model_000047.ckpt" in err and "--checkpoint" in err and "Traceback" not in err


DEMO_ARGS = ["demo", "--frames", "60", "--width", "128", "--height", "96", "--no-progress",
             "-p", "fragment_size:=3"]


def test_demo_scores_the_network_next_to_depth_fusion(tmp_path, capsys, random_checkpoint):
    out = tmp_path / "demo"
    assert main([*DEMO_ARGS, "--output", str(out), "--checkpoint", str(random_checkpoint)]) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert list(report["modes"]) == ["neuralrecon", "depth"]
    network, depth = report["modes"]["neuralrecon"], report["modes"]["depth"]
    assert network["inputs"] == "RGB + poses" and network["fragments"] >= 1
    assert Path(network["mesh"]).is_file() and 0.0 <= network["metrics"]["fscore"] <= 1.0  # random weights
    assert depth["metrics"]["fscore"] > 0.8
    assert (out / "scene" / "gt_mesh_observed.ply").is_file()
    picture = Image.open(report["picture"])  # three columns: the two reconstructions and the ground truth
    assert Path(report["picture"]) == out / "comparison.png" and picture.format == "PNG"
    assert picture.size[0] > 1.5 * picture.size[1]
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "neuralrecon (RGB + poses)" in last_line and f"{depth['metrics']['fscore']:.3f}" in last_line


def test_demo_runs_only_the_mode_asked_for(tmp_path, random_checkpoint):
    out = tmp_path / "demo"
    assert main([*DEMO_ARGS, "--output", str(out), "--mode", "depth", "--checkpoint", str(random_checkpoint)]) == 0
    assert list(json.loads((out / "metrics.json").read_text())["modes"]) == ["depth"]


def test_demo_without_any_weights_runs_depth_fusion_and_says_why(tmp_path, capsys, no_shipped_weights):
    out = tmp_path / "demo"
    assert main([*DEMO_ARGS, "--output", str(out)]) == 0
    assert list(json.loads((out / "metrics.json").read_text())["modes"]) == ["depth"]
    assert "no NeuralRecon weights ship" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["-p", "image_topic:=/nope"], "/camera/color/image_raw"),  # the message lists the bag's topics
        (["-p", "voxel_size:=-1"], "parameter 'voxel_size'"),
    ],
)
def test_bad_input_is_one_clear_line(scene, tmp_path, capsys, args, message):
    code = main(["replay", str(scene / "bag"), "--output", str(tmp_path / "o"), "--no-progress", *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


def test_missing_bag_and_unwritable_output(scene, tmp_path, capsys):
    assert main(["replay", str(tmp_path / "missing"), "--output", str(tmp_path / "o")]) == 2
    assert "missing" in capsys.readouterr().err
    if os.geteuid() == 0:
        blocker = tmp_path / "file"
        blocker.write_text("not a directory")
        target = blocker / "out"  # even root cannot create a directory below a regular file
    else:
        target = Path("/proc/neuralrecon_out")
    assert main(["replay", str(scene / "bag"), "--output", str(target)]) == 2
    assert "cannot create output directory" in capsys.readouterr().err
