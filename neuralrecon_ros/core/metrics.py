"""3D reconstruction metrics of NeuralRecon / Atlas: accuracy, completeness, precision, recall, F-score.

Protocol (upstream evaluation, step 5): both meshes become point sets, voxel-downsampled at
``downsample`` (each occupied voxel -> centroid of its points, the grid anchored half a voxel below the
set's minimum corner, as Open3D's ``voxel_down_sample`` does); nearest-neighbour distances are taken
both ways. Upstream uses the mesh vertices as the point set; we add uniform surface samples (density
``1 / sample_spacing^2``, so only triangles larger than about ``sample_spacing^2`` get any, see
:func:`sample_surface`) so that meshes with large triangles, like exact ground truth, are represented by
their whole surface while finely tessellated meshes stay essentially their vertices.

- ``acc``: mean distance pred -> GT; ``comp``: mean distance GT -> pred; ``chamfer``: their mean.
- ``prec``: fraction of pred points within ``threshold`` of GT; ``recall``: GT points within
  ``threshold`` of pred; ``fscore``: 2 prec recall / (prec + recall).

An empty prediction scores acc/comp/chamfer = inf and prec/recall/fscore = 0; an empty ground truth is
an error. Both meshes are sampled with the same fixed seed: results are deterministic and identical
meshes score exactly acc = comp = 0, F = 1.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.spatial import cKDTree

from .types import Mesh


class MetricsError(ValueError):
    """The meshes or parameters given to the evaluation are unusable."""


def sample_surface(mesh: Mesh, spacing: float, seed: int = 0) -> np.ndarray:
    """float64 (N, 3): the mesh's vertices plus uniform random samples of its triangles.

    Only vertices used by a triangle count, unless the mesh has no faces (a point cloud).
    A triangle of area ``a`` gets ``floor(a / spacing^2)`` samples plus one more with probability equal
    to the remainder, so the expected density is ``1 / spacing^2`` everywhere.
    """
    vertices = np.asarray(mesh.vertices, dtype=np.float64).reshape(-1, 3)
    faces = np.asarray(mesh.faces, dtype=np.int64).reshape(-1, 3)
    if len(faces) == 0:
        return vertices
    rng = np.random.default_rng(seed)
    used = vertices[np.unique(faces)]
    a, b, c = vertices[faces[:, 0]], vertices[faces[:, 1]], vertices[faces[:, 2]]
    expected = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1) / spacing**2
    counts = np.floor(expected).astype(np.int64)
    counts += rng.random(len(faces)) < (expected - counts)
    face = np.repeat(np.arange(len(faces)), counts)
    u, v = rng.random(len(face)), rng.random(len(face))
    flip = u + v > 1.0  # reflect into the triangle: uniform barycentric samples
    u, v = np.where(flip, 1.0 - u, u), np.where(flip, 1.0 - v, v)
    samples = a[face] + u[:, None] * (b[face] - a[face]) + v[:, None] * (c[face] - a[face])
    return np.concatenate([used, samples])


def voxel_downsample(points: np.ndarray, voxel: float) -> np.ndarray:
    """Centroid of the points in each occupied voxel (grid origin = min corner - voxel / 2)."""
    if len(points) == 0:
        return points.reshape(0, 3)
    origin = points.min(axis=0) - 0.5 * voxel
    cells = np.floor((points - origin) / voxel).astype(np.int64)
    dims = cells.max(axis=0) + 1
    if float(np.prod(dims.astype(np.float64))) < 2.0**62:  # one int64 key per cell: much faster than axis=0
        keys = (cells[:, 0] * dims[1] + cells[:, 1]) * dims[2] + cells[:, 2]
        _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    else:
        _, inverse, counts = np.unique(cells, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    sums = np.stack([np.bincount(inverse, points[:, k], minlength=len(counts)) for k in range(3)], axis=1)
    return sums / counts[:, None]


def evaluate_meshes(
    pred: Mesh,
    gt: Mesh,
    threshold: float = 0.05,
    downsample: float = 0.02,
    sample_spacing: float = 0.01,
    seed: int = 0,
) -> dict[str, float | int]:
    """NeuralRecon 3D metrics of ``pred`` against ``gt`` (metres); JSON-ready dict (see module doc).

    Keys: acc, comp, chamfer, prec, recall, fscore, n_pred_points, n_gt_points (after downsampling).
    """
    checks = (("threshold", threshold), ("downsample", downsample), ("sample_spacing", sample_spacing))
    for name, value in checks:
        if not (value > 0 and math.isfinite(value)):
            raise MetricsError(f"{name} must be a positive number, got {value!r}")
    gt_points = voxel_downsample(sample_surface(gt, sample_spacing, seed), downsample)
    if len(gt_points) == 0:
        raise MetricsError("the ground-truth mesh has no vertices")
    pred_points = voxel_downsample(sample_surface(pred, sample_spacing, seed), downsample)
    counts = {"n_pred_points": len(pred_points), "n_gt_points": len(gt_points)}
    if len(pred_points) == 0:
        return {"acc": math.inf, "comp": math.inf, "chamfer": math.inf, "prec": 0.0, "recall": 0.0,
                "fscore": 0.0, **counts}
    dist_pred_gt = cKDTree(gt_points).query(pred_points, workers=-1)[0]
    dist_gt_pred = cKDTree(pred_points).query(gt_points, workers=-1)[0]
    acc, comp = float(dist_pred_gt.mean()), float(dist_gt_pred.mean())
    prec = float((dist_pred_gt < threshold).mean())
    recall = float((dist_gt_pred < threshold).mean())
    fscore = 2.0 * prec * recall / (prec + recall) if prec + recall > 0 else 0.0
    return {"acc": acc, "comp": comp, "chamfer": 0.5 * (acc + comp), "prec": prec, "recall": recall,
            "fscore": fscore, **counts}
