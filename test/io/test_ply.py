"""PLY files: round trips, files written by other tools, atomic writing and clear errors."""

from __future__ import annotations

import os

import numpy as np
import pytest

from neuralrecon_ros.core.types import Mesh
from neuralrecon_ros.io import ply
from neuralrecon_ros.io.atomic import OutputError
from neuralrecon_ros.io.ply import PlyError, read_ply, write_ply


def sample_mesh(colors: bool = True, normals: bool = True) -> Mesh:
    rng = np.random.default_rng(0)
    vertices = rng.normal(size=(50, 3)).astype(np.float32)
    faces = rng.integers(0, 50, size=(80, 3))
    return Mesh(
        vertices,
        faces,
        rng.integers(0, 256, size=(50, 3)).astype(np.uint8) if colors else None,
        rng.normal(size=(50, 3)).astype(np.float32) if normals else None,
    )


def assert_meshes_equal(a: Mesh, b: Mesh) -> None:
    np.testing.assert_array_equal(a.vertices, b.vertices)
    np.testing.assert_array_equal(a.faces, b.faces)
    for x, y in ((a.vertex_colors, b.vertex_colors), (a.vertex_normals, b.vertex_normals)):
        assert (x is None) == (y is None)
        if x is not None:
            np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("extras", [(True, True), (False, False), (True, False)])
def test_round_trip(tmp_path, binary, extras):
    mesh = sample_mesh(*extras)
    path = tmp_path / "mesh.ply"
    write_ply(path, mesh, binary=binary)
    back = read_ply(path)
    assert back.vertices.dtype == np.float32 and back.faces.dtype == np.int64
    assert_meshes_equal(mesh, back)
    assert [p.name for p in tmp_path.iterdir()] == ["mesh.ply"]


def test_empty_mesh_round_trip(tmp_path):
    write_ply(tmp_path / "empty.ply", Mesh())
    back = read_ply(tmp_path / "empty.ply")
    assert back.vertices.shape == (0, 3) and back.faces.shape == (0, 3)


def test_foreign_ascii_file(tmp_path):
    """Doubles, extra properties, float colours, a quad and a triangle, int counts, an extra element."""
    text = "\n".join([
        "ply", "format ascii 1.0", "comment made elsewhere", "obj_info whatever",
        "element vertex 5",
        "property double x", "property double y", "property double z",
        "property float confidence",
        "property float r", "property float g", "property float b",
        "element face 2",
        "property list int int vertex_index",
        "property uchar flags",
        "element edge 1", "property int vertex1", "property int vertex2",
        "end_header",
        "0 0 0 0.5 1 0 0", "1 0 0 0.5 0 1 0", "1 1 0 0.5 0 0 1", "0 1 0 0.5 1 1 1", "0.5 0.5 1 0.5 0 0 0",
        "4 0 1 2 3 7", "3 0 1 4 0",
        "0 1", "",
    ])
    path = tmp_path / "foreign.ply"
    path.write_text(text)
    mesh = read_ply(path)
    np.testing.assert_allclose(mesh.vertices[4], [0.5, 0.5, 1.0])
    assert mesh.faces.tolist() == [[0, 1, 2], [0, 2, 3], [0, 1, 4]]
    assert mesh.vertex_colors[0].tolist() == [255, 0, 0] and mesh.vertex_normals is None


@pytest.mark.parametrize("order", ["<", ">"])
def test_foreign_binary_file_with_mixed_polygons(tmp_path, order):
    name = {"<": "binary_little_endian", ">": "binary_big_endian"}[order]
    header = "\n".join([
        "ply", f"format {name} 1.0",
        "element vertex 4", "property float x", "property float y", "property float z",
        "property uchar red", "property uchar green", "property uchar blue", "property uchar alpha",
        "element face 2", "property list uchar uint vertex_indices",
        "element material 1", "property list uchar float params",
        "end_header", "",
    ]).encode()
    vertices = np.zeros(4, dtype=[("xyz", order + "f4", 3), ("rgba", "u1", 4)])
    vertices["xyz"] = [[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]]
    vertices["rgba"] = [[1, 2, 3, 255]] * 4
    quad = np.array([4], np.uint8).tobytes() + np.array([0, 1, 2, 3], order + "u4").tobytes()
    tri = np.array([3], np.uint8).tobytes() + np.array([3, 2, 1], order + "u4").tobytes()
    material = np.array([2], np.uint8).tobytes() + np.array([0.5, 0.25], order + "f4").tobytes()
    path = tmp_path / "foreign.ply"
    path.write_bytes(header + vertices.tobytes() + quad + tri + material)
    mesh = read_ply(path)
    np.testing.assert_array_equal(mesh.vertices, vertices["xyz"])
    assert mesh.faces.tolist() == [[0, 1, 2], [0, 2, 3], [3, 2, 1]]
    assert (mesh.vertex_colors == [1, 2, 3]).all()


def test_open3d_written_file(tmp_path):
    o3d = pytest.importorskip("open3d", reason="open3d not installed")
    mesh = o3d.geometry.TriangleMesh.create_box(1.0, 2.0, 3.0)
    mesh.compute_vertex_normals()
    path = tmp_path / "o3d.ply"
    for binary in (True, False):
        o3d.io.write_triangle_mesh(str(path), mesh, write_ascii=not binary)
        ours = read_ply(path)
        np.testing.assert_allclose(ours.vertices, np.asarray(mesh.vertices), atol=1e-6)
        np.testing.assert_array_equal(ours.faces, np.asarray(mesh.triangles))
        np.testing.assert_allclose(ours.vertex_normals, np.asarray(mesh.vertex_normals), atol=1e-6)


def test_write_is_atomic_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "mesh.ply"
    write_ply(path, sample_mesh())
    before = path.read_bytes()

    def explode(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(ply.np, "savetxt", explode)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_ply(path, sample_mesh(colors=False), binary=False)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["mesh.ply"]  # no temporary file left behind


def test_unwritable_directory_names_the_path(tmp_path):
    target = tmp_path / "missing" / "mesh.ply"
    with pytest.raises(OutputError, match="missing/mesh.ply"):
        write_ply(target, sample_mesh())


def test_invalid_meshes_are_refused(tmp_path):
    path = tmp_path / "bad.ply"
    with pytest.raises(PlyError, match="face indices"):
        write_ply(path, Mesh(np.zeros((3, 3), np.float32), np.array([[0, 1, 3]])))
    with pytest.raises(PlyError, match="NaN"):
        write_ply(path, Mesh(np.full((3, 3), np.nan, np.float32), np.array([[0, 1, 2]])))
    with pytest.raises(PlyError, match="vertex_colors"):
        write_ply(path, Mesh(np.zeros((3, 3), np.float32), np.array([[0, 1, 2]]), np.zeros((3, 3))))
    assert not path.exists()


def test_malformed_files_raise_plyerror_naming_the_file(tmp_path):
    path = tmp_path / "broken.ply"
    path.write_text("solid ascii stl\n")
    with pytest.raises(PlyError, match="broken.ply.*not a PLY"):
        read_ply(path)
    write_ply(path, sample_mesh())
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(PlyError, match="ends inside element 'face'"):
        read_ply(path)
    path.write_text("ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nproperty float y\n"
                    "property float z\nelement face 1\nproperty list uchar int vertex_indices\nend_header\n"
                    "0 0 0\n3 0 1 2\n")
    with pytest.raises(PlyError, match="face indices"):
        read_ply(path)
    path.write_text("ply\nformat binary_middle_endian 1.0\nend_header\n")
    with pytest.raises(PlyError, match="unsupported format"):
        read_ply(path)
