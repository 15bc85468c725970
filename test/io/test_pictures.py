"""Error-coloured pictures: decimation keeps the surface, colours say how far each mesh is from the truth."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy.spatial import cKDTree

from neuralrecon_ros.core.types import Mesh
from neuralrecon_ros.io.pictures import Panel, decimate, face_distances, render_comparison


def grid(n: int = 60, size: float = 2.0, z: float = 0.0, bump: float = 0.0) -> Mesh:
    """An n x n grid over [0, size]^2 at height z (plus a smooth bump), two triangles a cell."""
    u = np.linspace(0.0, size, n)
    x, y = np.meshgrid(u, u, indexing="ij")
    height = z + bump * np.sin(np.pi * x / size) * np.sin(np.pi * y / size)
    vertices = np.stack([x, y, height], -1).reshape(-1, 3).astype(np.float32)
    i = np.arange(n - 1)[:, None] * n + np.arange(n - 1)[None, :]
    a, b, c, d = i, i + 1, i + n, i + n + 1
    faces = np.concatenate([np.stack([a, b, d], -1).reshape(-1, 3), np.stack([a, d, c], -1).reshape(-1, 3)])
    return Mesh(vertices, faces.astype(np.int64))


def test_decimate_bounds_the_faces_and_keeps_the_surface():
    mesh = grid(120, bump=0.3)
    small = decimate(mesh, 2000)
    assert 0 < len(small.faces) <= 2000 < len(mesh.faces)
    # every kept vertex is a cluster mean of nearby vertices: it stays on (close to) the original surface
    distance, _ = cKDTree(mesh.vertices).query(small.vertices)
    assert np.percentile(distance, 99) < 0.05
    assert decimate(mesh, len(mesh.faces)) is mesh


def test_face_distances_are_exact_for_parallel_planes():
    distance = face_distances(grid(z=0.07), grid(z=0.0), spacing=0.005)
    np.testing.assert_allclose(distance, 0.07, atol=1e-3)


def _colour_fractions(path, box) -> tuple[float, float]:
    """Fractions of strongly green and strongly red pixels inside ``box`` (left, top, right, bottom)."""
    rgb = np.asarray(Image.open(path).convert("RGB").crop(box)).astype(int)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    green = (g > r + 40) & (g > b + 20)
    red = (r > g + 60) & (r > b + 60)
    return float(green.mean()), float(red.mean())


def test_picture_colours_an_exact_reconstruction_green_and_a_shifted_one_red(tmp_path):
    gt = grid(bump=0.2)
    exact, shifted = grid(bump=0.2), grid(z=0.3, bump=0.2)
    path = render_comparison([Panel("exact", exact, 1.0), Panel("shifted", shifted, 0.0)], gt,
                             tmp_path / "picture.png", threshold=0.05, ceiling_cut=0.0)
    image = Image.open(path)
    width, height = image.size
    assert image.format == "PNG" and width > height > 300
    third = width // 3
    top = (0, int(0.1 * height), third, int(0.55 * height))
    green, red = _colour_fractions(path, top)
    assert green > 0.05 and red < 0.01  # column 1: the exact mesh, all within the threshold
    green, red = _colour_fractions(path, (third, top[1], 2 * third, top[3]))
    assert red > 0.05 and green < 0.01  # column 2: 30 cm off everywhere
    green, red = _colour_fractions(path, (2 * third, top[1], width, top[3]))
    assert green < 0.01 and red < 0.01  # column 3: the ground truth, in grey


def test_picture_of_an_empty_reconstruction_and_bad_arguments(tmp_path):
    path = render_comparison([Panel("nothing", Mesh())], grid(), tmp_path / "empty.png")
    assert Image.open(path).size[0] > 0
    with pytest.raises(ValueError, match="up_axis"):
        render_comparison([], grid(), tmp_path / "x.png", up_axis="w")
    with pytest.raises(ValueError, match="empty"):
        render_comparison([], Mesh(), tmp_path / "x.png")
