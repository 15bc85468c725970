"""Mesh chunks as ``visualization_msgs/MarkerArray``: one TRIANGLE_LIST marker per chunk, for RViz.

Every marker lives in namespace :data:`MESH_CHUNK_NS` with the chunk's stable id
(:func:`~neuralrecon_ros.core.mapping.mesh_chunks.chunk_marker_id`), so a viewer replaces a chunk in
place when it is re-sent. A chunk that became empty is a DELETE marker; a full update (after a reset, a
map load, or a resend on request) starts with one DELETEALL marker, so chunks the viewer still holds from
before disappear. Per-vertex colours are whatever the mesher produced (image colours, or the height colour
map); vertices are transformed from the map frame into ``frame_id`` with ``T_frame_map``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..core.mapping.mesh_chunks import ChunkUpdate, transform_mesh
from ..core.types import Mesh
from .messages import (
    MARKER_DELETE,
    MARKER_DELETEALL,
    MessageTypes,
    encode_marker_array,
    encode_mesh_marker,
)

#: namespace of the chunk markers (the single full-mesh marker uses 'mesh')
MESH_CHUNK_NS = "mesh_chunks"


def encode_mesh_chunk_markers(
    types: MessageTypes,
    changes: ChunkUpdate,
    stamp: float,
    frame_id: str,
    T_frame_map: np.ndarray | None = None,
    delete_all: bool | None = None,
) -> Any:
    """``visualization_msgs/MarkerArray`` of ``changes`` (:meth:`ReconstructionPipeline.mesh_chunks`).

    ``delete_all`` (default: ``changes.full``) puts a DELETEALL marker first.
    """
    T = np.eye(4) if T_frame_map is None else np.asarray(T_frame_map, dtype=np.float64)
    markers = []
    if changes.full if delete_all is None else delete_all:
        markers.append(encode_mesh_marker(types, Mesh(), stamp, frame_id, ns=MESH_CHUNK_NS, marker_id=0,
                                          action=MARKER_DELETEALL))
    for chunk in changes.chunks:
        if chunk.mesh is None:
            markers.append(encode_mesh_marker(types, Mesh(), stamp, frame_id, ns=MESH_CHUNK_NS,
                                              marker_id=chunk.marker_id, action=MARKER_DELETE))
        else:
            markers.append(encode_mesh_marker(types, transform_mesh(chunk.mesh, T), stamp, frame_id,
                                              ns=MESH_CHUNK_NS, marker_id=chunk.marker_id))
    return encode_marker_array(types, markers)
