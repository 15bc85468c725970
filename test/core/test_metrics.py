"""NeuralRecon 3D metrics on meshes with known answers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from neuralrecon_ros.core.metrics import MetricsError, evaluate_meshes, sample_surface, voxel_downsample
from neuralrecon_ros.core.types import Mesh


def square(size: float = 2.0, z: float = 0.0, cells: int = 1) -> Mesh:
    """A horizontal square [0, size]^2 at height z, as a grid of 2 * cells^2 triangles."""
    a = np.linspace(0.0, size, cells + 1)
    x, y = np.meshgrid(a, a, indexing="ij")
    vertices = np.stack([x.ravel(), y.ravel(), np.full(x.size, z)], axis=1).astype(np.float32)
    i, j = np.meshgrid(np.arange(cells), np.arange(cells), indexing="ij")
    v00 = (i * (cells + 1) + j).ravel()
    v10, v01, v11 = v00 + cells + 1, v00 + 1, v00 + cells + 2
    faces = np.concatenate([np.stack([v00, v10, v11], 1), np.stack([v00, v11, v01], 1)])
    return Mesh(vertices, faces.astype(np.int64))


def shifted(mesh: Mesh, offset: tuple[float, float, float]) -> Mesh:
    return Mesh(mesh.vertices + np.asarray(offset, np.float32), mesh.faces)


def test_identical_meshes_score_perfectly():
    mesh = square(cells=4)
    result = evaluate_meshes(mesh, mesh)
    assert result["acc"] == 0.0 and result["comp"] == 0.0 and result["chamfer"] == 0.0
    assert result["prec"] == result["recall"] == result["fscore"] == 1.0
    # 2 m x 2 m at 2 cm: 101 x 101 downsampling cells, nearly all occupied at 4 samples per cell
    assert result["n_pred_points"] == result["n_gt_points"] == pytest.approx(101**2, rel=0.03)
    json.dumps(result)  # plain JSON types


def test_large_triangles_are_sampled_over_their_surface():
    coarse, fine = square(cells=1), square(cells=100)
    result = evaluate_meshes(fine, coarse)
    assert result["fscore"] == 1.0
    assert result["acc"] < 0.006 and result["comp"] < 0.006
    assert result["n_gt_points"] > 9000  # 4 m² sampled, not just 4 vertices


def test_three_centimetre_offset():
    gt = square(cells=50)
    result = evaluate_meshes(shifted(gt, (0, 0, 0.03)), gt)
    assert result["acc"] == pytest.approx(0.03, abs=0.004)
    assert result["comp"] == pytest.approx(0.03, abs=0.004)
    assert result["chamfer"] == pytest.approx(0.5 * (result["acc"] + result["comp"]))
    assert result["prec"] == 1.0 and result["recall"] == 1.0 and result["fscore"] == 1.0
    # at a 2 cm threshold nothing matches
    assert evaluate_meshes(shifted(gt, (0, 0, 0.03)), gt, threshold=0.02)["fscore"] == 0.0


def test_ten_centimetre_offset_scores_zero():
    gt = square(cells=50)
    result = evaluate_meshes(shifted(gt, (0, 0, 0.10)), gt)
    assert result["fscore"] == 0.0 and result["prec"] == 0.0 and result["recall"] == 0.0
    assert result["acc"] == pytest.approx(0.10, abs=0.004)


def test_partial_prediction_lowers_recall_only():
    gt = square(cells=50)
    half = Mesh(gt.vertices, gt.faces[: len(gt.faces) // 4])  # first quarter of each triangle set
    result = evaluate_meshes(half, gt)
    assert result["prec"] == 1.0 and result["acc"] < 0.008  # centroids of differently sampled cells
    assert 0.2 < result["recall"] < 0.8
    assert result["fscore"] == pytest.approx(2 * result["recall"] / (1 + result["recall"]))


def test_deterministic_and_empty_inputs():
    gt, pred = square(cells=3), shifted(square(cells=7), (0.01, 0.0, 0.02))
    assert evaluate_meshes(pred, gt) == evaluate_meshes(pred, gt)
    empty = evaluate_meshes(Mesh(), gt)
    assert empty["fscore"] == 0.0 and math.isinf(empty["acc"]) and empty["n_pred_points"] == 0
    with pytest.raises(MetricsError, match="ground-truth"):
        evaluate_meshes(gt, Mesh())
    with pytest.raises(MetricsError, match="threshold"):
        evaluate_meshes(gt, gt, threshold=0.0)


def test_voxel_downsample_takes_centroids():
    points = np.array([[0.0, 0.0, 0.0], [0.004, 0.0, 0.0], [0.05, 0.0, 0.0]])
    out = voxel_downsample(points, 0.02)
    np.testing.assert_allclose(np.sort(out[:, 0]), [0.002, 0.05])


def test_sample_density():
    samples = sample_surface(square(cells=1), spacing=0.01, seed=1)
    assert len(samples) == pytest.approx(4 + 4.0 / 0.01**2, rel=0.02)
    fine = sample_surface(square(cells=400), spacing=0.01)  # used vertices + samples of the surface
    assert len(fine) == pytest.approx(401**2 + 4.0 / 0.01**2, rel=0.02)
    assert samples[:, :2].min() >= 0 and samples[:, :2].max() <= 2.0 and (samples[:, 2] == 0).all()
