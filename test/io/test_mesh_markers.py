"""Chunk MarkerArrays: one TRIANGLE_LIST per chunk with its stable id, DELETE / DELETEALL, frame change."""

from __future__ import annotations

import numpy as np
from rosbags.typesys import Stores, get_typestore

from neuralrecon_ros.core.geometry import make_transform, rotation_about_axis
from neuralrecon_ros.core.mapping.mesh_chunks import ChunkMesh, ChunkUpdate, chunk_marker_id
from neuralrecon_ros.core.types import Mesh
from neuralrecon_ros.io import messages as m
from neuralrecon_ros.io.mesh_markers import MESH_CHUNK_NS, encode_mesh_chunk_markers

TYPESTORE = get_typestore(Stores.ROS2_HUMBLE)
TYPES = m.rosbags_types(TYPESTORE)


def triangle_mesh(offset: float, colors: bool = True) -> Mesh:
    vertices = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0.5]], np.float32) + offset
    faces = np.array([[0, 1, 2], [1, 3, 2]])
    rgb = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]], np.uint8) if colors else None
    return Mesh(vertices, faces, rgb)


def chunk(coord: tuple[int, int, int], mesh: Mesh | None) -> ChunkMesh:
    return ChunkMesh(coord, int(chunk_marker_id(np.array([coord]))[0]), mesh)


def round_trip(msg):
    msgtype = msg.__msgtype__
    return TYPESTORE.deserialize_cdr(TYPESTORE.serialize_cdr(msg, msgtype), msgtype)


def test_changed_and_deleted_chunks():
    update = ChunkUpdate([chunk((0, 0, 0), triangle_mesh(0.0)), chunk((-3, 2, 1), None),
                          chunk((5, -1, 0), triangle_mesh(2.0, colors=False))])
    array = round_trip(encode_mesh_chunk_markers(TYPES, update, 12.5, "odom"))
    assert array.__msgtype__ == "visualization_msgs/msg/MarkerArray" and len(array.markers) == 3
    added, deleted, plain = array.markers
    assert [mk.ns for mk in array.markers] == [MESH_CHUNK_NS] * 3
    assert [mk.id for mk in array.markers] == [c.marker_id for c in update.chunks]
    assert (added.type, added.action) == (m.MARKER_TRIANGLE_LIST, m.MARKER_ADD)
    stamp = added.header.stamp
    assert added.header.frame_id == "odom" and (stamp.sec, stamp.nanosec) == (12, 5 * 10**8)
    corners = triangle_mesh(0.0).vertices[[0, 1, 2, 1, 3, 2]].reshape(2, 3, 3)
    np.testing.assert_allclose(m.decode_marker_triangles(added), corners)
    assert len(added.colors) == 6  # corner 4 is vertex 3
    fourth = added.colors[4]
    np.testing.assert_allclose([fourth.r, fourth.g, fourth.b], np.array([10, 20, 30]) / 255)
    assert deleted.action == m.MARKER_DELETE and len(deleted.points) == 0
    assert plain.action == m.MARKER_ADD and len(plain.colors) == 0 and len(plain.points) == 6


def test_full_update_starts_with_deleteall():
    full = ChunkUpdate([chunk((1, 1, 1), triangle_mesh(0.0))], full=True)
    markers = encode_mesh_chunk_markers(TYPES, full, 0.0, "map").markers
    assert [mk.action for mk in markers] == [m.MARKER_DELETEALL, m.MARKER_ADD]
    assert markers[0].ns == MESH_CHUNK_NS
    # after a reset with nothing mapped yet: only the DELETEALL
    nothing = encode_mesh_chunk_markers(TYPES, ChunkUpdate(full=True), 0.0, "map").markers
    assert [mk.action for mk in nothing] == [m.MARKER_DELETEALL]
    # forced on an incremental update, or suppressed on a full one
    incremental = ChunkUpdate([chunk((1, 1, 1), triangle_mesh(0.0))])
    assert encode_mesh_chunk_markers(TYPES, incremental, 0.0, "map", delete_all=True).markers[0].action == (
        m.MARKER_DELETEALL)
    assert len(encode_mesh_chunk_markers(TYPES, full, 0.0, "map", delete_all=False).markers) == 1


def test_vertices_are_transformed_into_the_output_frame():
    T_odom_map = make_transform(rotation_about_axis(np.array([0.0, 0.0, 1.0]), 0.7), [1.0, -2.0, 0.3])
    mesh = triangle_mesh(0.25)
    marker = encode_mesh_chunk_markers(TYPES, ChunkUpdate([chunk((0, 0, 0), mesh)]), 0.0, "odom",
                                       T_frame_map=T_odom_map).markers[0]
    expected = mesh.vertices.astype(np.float64) @ T_odom_map[:3, :3].T + T_odom_map[:3, 3]
    np.testing.assert_allclose(m.decode_marker_triangles(marker), expected[mesh.faces], atol=1e-5)


def test_empty_update_is_an_empty_array():
    assert len(encode_mesh_chunk_markers(TYPES, ChunkUpdate(), 0.0, "map").markers) == 0
