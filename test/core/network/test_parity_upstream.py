"""THE parity test: our NeuralRecon against outputs of the original implementation (torchsparse 1.4).

Every upstream-parity fixture is checked (see ``conftest.parity_fixture_dirs``: the primary one, each folder
under ``../shared/fixtures`` with the fixture layout, and env ``NEURALRECON_EXTRA_PARITY_FIXTURES``). A
fixture holds consecutive 9-view fragments (any number), deterministic weights (its ``weights_rule.py``)
and upstream's outputs after each fragment. The fragments of one fixture run once, in order, with the
recurrent state carried over, feeding the stored derived matrices; every assertion reads the cached results.

Tolerances: TSDF and occupancy at half the fixture README's (the target of issue 15: 2.5e-5 and 1e-3,
where upstream's own round-off envelope is 1e-5 and 3.4e-4); the others are the README's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from parity_fixtures import SHARED_DIR, parity_fixture_dirs
from PIL import Image

from neuralrecon_ros.core.network.model import NeuralRecon
from neuralrecon_ros.core.network.projection import FragmentGeometry
from neuralrecon_ros.core.network.sparse import set_backend

TSDF_TOL = 2.5e-5
OCC_TOL = 1e-3
FEATURE_TOL = 5e-3
GRU_STATS_TOL = 1e-5
LEVELS = (0, 1, 2)
#: where the network runs (bench/device_check.sh sets cuda); results are compared on the CPU
DEVICE = torch.device(os.environ.get("NEURALRECON_TEST_DEVICE", "cpu"))


def _load_weights_rule(folder: Path):
    spec = importlib.util.spec_from_file_location("upstream_parity_weights_rule", folder / "weights_rule.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _geometry(fragment: dict) -> FragmentGeometry:
    return FragmentGeometry(
        proj_matrices=torch.tensor(np.array(fragment["proj_matrices"], np.float32)),
        world_to_aligned_camera=torch.tensor(np.array(fragment["world_to_aligned_camera"], np.float32)),
        vol_origin_voxels=torch.tensor(fragment["vol_origin_partial_voxels"], dtype=torch.int64),
        vol_origin_partial=torch.tensor(np.array(fragment["vol_origin_partial"], np.float32)),
    )


def _rows_sha256(coords: torch.Tensor, points: torch.Tensor) -> bytes:
    """sha256 of float32 little-endian points with rows sorted by their voxel (x, y, z) (batch is 0)."""
    c = coords.numpy()
    order = np.lexsort((c[:, 2], c[:, 1], c[:, 0]))
    return hashlib.sha256(np.ascontiguousarray(points.numpy()[order]).astype("<f4").tobytes()).digest()


def _cases() -> list:
    """One case per (fixture folder, fragment index), grouped by folder."""
    cases = []
    for folder in parity_fixture_dirs():
        n_fragments = len(json.loads((folder / "inputs.json").read_text())["fragments"])
        cases += [pytest.param((folder, k), id=f"{folder.name}-fragment{k}") for k in range(n_fragments)]
    return cases or [pytest.param(None, id="no-fixture")]


_latest: dict[Path, list[dict]] = {}  # results of the fixture folder in use (one at a time, they are large)


def _run_fixture(folder: Path, tsv: Path) -> list[dict]:
    """Run every fragment of ``folder`` in order: per fragment (trace, result, global TSDF, GRU states, reference)."""
    rule = _load_weights_rule(folder)
    config = json.loads((folder / "weights.json").read_text())
    state = rule.make_state_dict(str(tsv), config["seed"], config["overrides"])
    inputs = json.loads((folder / "inputs.json").read_text())

    set_backend("torch")
    model = NeuralRecon().eval()
    model.load_state_dict({k.removeprefix("module."): torch.from_numpy(v) for k, v in state.items()}, strict=True)
    model.to(DEVICE)
    out = []
    for k, fragment in enumerate(inputs["fragments"]):
        images = np.stack([np.asarray(Image.open(folder / p), np.float32) for p in fragment["images"]])
        images = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
        trace: dict = {}
        with torch.no_grad():
            result = _cpu(model(images.to(DEVICE), _geometry(fragment).to(DEVICE), trace=trace))
        trace = _cpu(trace)
        global_coords, global_tsdf = (t.cpu().clone() for t in model.global_tsdf)
        hidden = [store.values.cpu().clone() for store in model.neucon_net.gru_fusion.hidden]
        reference = dict(np.load(folder / f"frag{k}_outputs.npz"))
        out.append({"trace": trace, "result": result, "global_coords": global_coords, "global_tsdf": global_tsdf,
                    "hidden": hidden, "ref": reference, "origin": fragment["vol_origin_partial_voxels"]})
    return out


def _cpu(value):
    """``value`` (tensors in dicts, lists, tuples, dataclasses) with every tensor on the CPU."""
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, dict):
        return {key: _cpu(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_cpu(item) for item in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(value, **{f.name: _cpu(getattr(value, f.name))
                                              for f in dataclasses.fields(value) if f.init})
    return value


@pytest.fixture(scope="module", params=_cases())
def run(request, expected_state_dict_tsv):
    """Our results and upstream's reference for one fragment of one fixture."""
    if request.param is None:
        pytest.skip(f"no upstream parity fixture found (looked under {SHARED_DIR / 'fixtures'}); set "
                    "NEURALRECON_PARITY_FIXTURES or NEURALRECON_EXTRA_PARITY_FIXTURES")
    folder, k = request.param
    if folder not in _latest:
        _latest.clear()
        _latest[folder] = _run_fixture(folder, expected_state_dict_tsv)
    return _latest[folder][k]


def _level(run: dict, level: int) -> dict:
    return run["trace"][f"level{level}"]


def _near(run: dict, level: int) -> set[tuple[int, int, int]]:
    return {tuple(c) for c in run["ref"][f"l{level}_near_coords"][:, 1:].tolist()}


@pytest.mark.parametrize("level", LEVELS)
def test_voxel_counts_identical(run, level):
    trace, ref = _level(run, level), run["ref"]
    assert len(trace["candidate_coords"]) == ref[f"l{level}_n_candidates"]
    assert len(trace["fused_coords"]) == ref[f"l{level}_n_fused"]


@pytest.mark.parametrize("level", LEVELS)
def test_survivors_and_values(run, level):
    trace, ref = _level(run, level), run["ref"]
    keep = trace["survivors"]
    ours = trace["fused_coords"][keep].numpy()
    theirs = ref[f"l{level}_coords"][:, 1:]
    assert (ref[f"l{level}_coords"][:, 0] == 0).all()
    if level < 2 or np.array_equal(ours, theirs):
        # identical sets in upstream order (ascending x, y, z)
        np.testing.assert_array_equal(ours, theirs)
        ours_idx = np.arange(len(ours))
        theirs_idx = np.arange(len(theirs))
    else:
        # level 2: only voxels whose logit is within 1e-3 of the threshold may flip
        ours_set, theirs_set = set(map(tuple, ours.tolist())), set(map(tuple, theirs.tolist()))
        assert (ours_set ^ theirs_set) <= _near(run, level)
        common = ours_set & theirs_set
        ours_idx = np.array([i for i, c in enumerate(map(tuple, ours.tolist())) if c in common])
        theirs_idx = np.array([i for i, c in enumerate(map(tuple, theirs.tolist())) if c in common])
    tsdf = trace["tsdf"][keep].numpy()[ours_idx]
    occ = trace["occ"][keep].numpy()[ours_idx]
    np.testing.assert_allclose(tsdf, ref[f"l{level}_tsdf"][theirs_idx], rtol=0, atol=TSDF_TOL)
    np.testing.assert_allclose(occ, ref[f"l{level}_occ"][theirs_idx], rtol=0, atol=OCC_TOL)


@pytest.mark.parametrize("level", LEVELS)
def test_near_threshold_voxels_agree_within_tolerance(run, level):
    trace, ref = _level(run, level), run["ref"]
    fused = {tuple(c): i for i, c in enumerate(trace["fused_coords"].tolist())}
    for coord, logit in zip(ref[f"l{level}_near_coords"][:, 1:].tolist(), ref[f"l{level}_near_occ"]):
        assert abs(trace["occ"][fused[tuple(coord)]].item() - logit) <= OCC_TOL


@pytest.mark.parametrize("level", LEVELS)
def test_border_views_have_upstream_validity(run, level):
    """Voxel-views a hair from the image border: the float32 recipe decides them exactly as upstream."""
    trace, ref = _level(run, level), run["ref"]
    index = {tuple(c): i for i, c in enumerate(trace["candidate_coords"].tolist())}
    for (_, x, y, z, view), valid in zip(ref[f"l{level}_border_fragile"].tolist(),
                                         ref[f"l{level}_border_fragile_valid"]):
        assert bool(trace["backproject_valid"][view, index[(x, y, z)]]) == bool(valid)


@pytest.mark.parametrize("level", LEVELS)
def test_point_coordinates_bit_identical(run, level):
    trace, ref = _level(run, level), run["ref"]
    assert _rows_sha256(trace["candidate_coords"], trace["spvcnn_points"]) == bytes(
        ref[f"l{level}_spvcnn_points_sha256"])
    assert _rows_sha256(trace["fused_coords"], trace["gru_points"]) == bytes(ref[f"l{level}_gru_points_sha256"])


@pytest.mark.parametrize("scale", [0, 1, 2])
def test_backbone_features_of_view0(run, scale):
    ref = run["ref"]
    feat = run["trace"]["features"][scale][0].double().numpy()
    np.testing.assert_allclose(feat.mean(axis=(1, 2)), ref[f"feat_s{scale}_mean"], rtol=0, atol=FEATURE_TOL)
    np.testing.assert_allclose(feat.std(axis=(1, 2)), ref[f"feat_s{scale}_std"], rtol=0, atol=FEATURE_TOL)
    r, c = ref[f"feat_s{scale}_crop_rc"]
    np.testing.assert_allclose(feat[:, r:r + 8, c:c + 8], ref[f"feat_s{scale}_crop"], rtol=0, atol=FEATURE_TOL)


@pytest.mark.parametrize("level", LEVELS)
def test_gru_hidden_state_statistics(run, level):
    ref = run["ref"]
    hidden = run["hidden"][level].double().numpy()
    assert len(hidden) == ref[f"gru_l{level}_n"]
    np.testing.assert_allclose(hidden.mean(axis=0), ref[f"gru_l{level}_mean"], rtol=0, atol=GRU_STATS_TOL)
    np.testing.assert_allclose(hidden.std(axis=0), ref[f"gru_l{level}_std"], rtol=0, atol=GRU_STATS_TOL)


def test_final_and_global_tsdf(run):
    ref, result = run["ref"], run["result"]
    assert result is not None
    level2 = _level(run, 2)
    np.testing.assert_array_equal(result.coords.numpy(), level2["fused_coords"][level2["survivors"]].numpy())
    np.testing.assert_array_equal(result.tsdf.numpy(), level2["tsdf"][level2["survivors"]].numpy())
    if np.array_equal(result.coords.numpy(), ref["final_coords"][:, 1:]):
        np.testing.assert_allclose(result.tsdf.numpy(), ref["final_tsdf"], rtol=0, atol=TSDF_TOL)
    else:
        assert set(map(tuple, result.coords.tolist())) ^ set(map(tuple, ref["final_coords"][:, 1:].tolist())) <= (
            _near(run, 2))
    ours, theirs = run["global_coords"].numpy(), ref["global_coords"]
    if np.array_equal(ours, theirs):
        ours_values, theirs_values = run["global_tsdf"].numpy(), ref["global_tsdf"]
    else:
        # only near-threshold level-2 voxels may differ (their global index = local + volume origin)
        near = {tuple(np.add(c, run["origin"]).tolist()) for c in _near(run, 2)}
        ours_map = dict(zip(map(tuple, ours.tolist()), run["global_tsdf"].tolist()))
        theirs_map = dict(zip(map(tuple, theirs.tolist()), ref["global_tsdf"].tolist()))
        assert set(ours_map) ^ set(theirs_map) <= near
        common = sorted(set(ours_map) & set(theirs_map))
        ours_values = np.array([ours_map[c] for c in common])
        theirs_values = np.array([theirs_map[c] for c in common])
    np.testing.assert_allclose(ours_values, theirs_values, rtol=0, atol=TSDF_TOL)
    # the substituted set of this fragment is the tail of the global list
    new = len(result.global_coords)
    np.testing.assert_array_equal(run["global_coords"][-new:].numpy(), result.global_coords.numpy())
