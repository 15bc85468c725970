"""Error-coloured pictures of reconstructions next to the ground truth, rendered headless.

Each column is one mesh seen from the same viewpoints (rows): the reconstructions with their faces
coloured by distance to the ground truth (green within the F-score threshold, red where surface was
put that is not there), the ground truth last, in grey, to show what there was to find. The ceiling is
cut away (faces in the top ``ceiling_cut`` of the ground truth's height), so a room is seen from above
like a doll's house.

Rendering uses matplotlib's Agg backend: it is maintained, pip-installable, needs no GPU, display or
OpenGL library (so it runs the same on a CI machine), and its 3D polygons with a painter's sort are
good enough for room-sized meshes once they are decimated by vertex clustering to ``max_faces``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from ..core.metrics import sample_surface
from ..core.types import Mesh
from .atomic import atomic_write

#: (elevation, azimuth) in degrees of the rows' viewpoints: two opposite corners, looking down
VIEWS = ((50.0, -60.0), (50.0, 120.0))
UP_AXES = {"x": 0, "y": 1, "z": 2}


@dataclass(frozen=True)
class Panel:
    """One column: a mesh and the caption over it (name, and its F-score if known)."""

    name: str
    mesh: Mesh
    fscore: float | None = None


def decimate(mesh: Mesh, max_faces: int) -> Mesh:
    """Vertex clustering: merge vertices on a grid coarse enough that at most ``max_faces`` remain."""
    if len(mesh.faces) <= max_faces:
        return mesh
    vertices = mesh.vertices.astype(np.float64)
    extent = float(np.ptp(vertices, axis=0).max()) or 1.0
    cell = extent / 512
    while True:
        keys = np.floor((vertices - vertices.min(0)) / cell).astype(np.int64)
        _, cluster, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
        cluster = cluster.reshape(-1)
        faces = cluster[mesh.faces]
        keep = (faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])
        faces = np.unique(np.sort(faces[keep], axis=1), axis=0)
        if len(faces) <= max_faces:
            break
        cell *= 1.4
    centres = np.zeros((len(counts), 3))
    np.add.at(centres, cluster, vertices)
    centres /= counts[:, None]
    return Mesh(centres.astype(np.float32), faces.astype(np.int64))


def face_distances(mesh: Mesh, reference: Mesh, spacing: float = 0.01) -> np.ndarray:
    """Distance (m) from each face's centroid to ``reference``'s surface (sampled every ``spacing``)."""
    centroids = mesh.vertices[mesh.faces].mean(axis=1)
    if reference.is_empty:
        return np.full(len(centroids), np.inf)
    distance, _ = cKDTree(sample_surface(reference, spacing)).query(centroids)
    return distance


def render_comparison(
    panels: Sequence[Panel],
    ground_truth: Mesh,
    path: str | Path,
    threshold: float = 0.05,
    up_axis: str = "z",
    ceiling_cut: float = 0.2,
    max_faces: int = 40_000,
    title: str | None = None,
) -> Path:
    """Render ``panels`` and the ground truth side by side into the PNG ``path`` (written atomically).

    Colours run from 0 to ``2 * threshold`` (the F-score's distance threshold marked on the colour bar).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib import colormaps
    from matplotlib.colors import Normalize

    if up_axis not in UP_AXES:
        raise ValueError(f"up_axis must be one of {', '.join(UP_AXES)}, got {up_axis!r}")
    if ground_truth.is_empty:
        raise ValueError("the ground truth mesh is empty")
    up = UP_AXES[up_axis]
    order = [a for a in range(3) if a != up] + [up]  # matplotlib's z is up
    low, high = ground_truth.vertices.min(0), ground_truth.vertices.max(0)
    cut = low[up] + (1.0 - ceiling_cut) * (high[up] - low[up]) if ceiling_cut > 0 else np.inf
    # the view spans the ground truth and what was reconstructed around it (far-off debris is left out)
    margin = 0.5 * (high - low)
    for panel in panels:
        if not panel.mesh.is_empty:
            low = np.minimum(low, np.maximum(panel.mesh.vertices.min(0), low - margin))
            high = np.maximum(high, np.minimum(panel.mesh.vertices.max(0), high + margin))
    columns: list[tuple[str, Mesh, np.ndarray | None]] = []
    for panel in panels:
        caption = panel.name if panel.fscore is None else f"{panel.name}\nF@{threshold * 100:g}cm = {panel.fscore:.3f}"
        columns.append((caption, panel.mesh, face_distances(panel.mesh, ground_truth)))
    columns.append(("ground truth", ground_truth, None))

    cmap, norm = colormaps["RdYlGn_r"], Normalize(0.0, 2.0 * threshold)
    light = np.array([0.3, 0.5, 1.0]) / np.linalg.norm([0.3, 0.5, 1.0])
    figure = plt.figure(figsize=(4.8 * len(columns), 3.6 * len(VIEWS) + 1.2), dpi=110)
    figure.subplots_adjust(left=0.0, right=1.0, top=0.88 if title else 0.93, bottom=0.12, wspace=0.0,
                           hspace=0.0)
    for column, (caption, mesh, distance) in enumerate(columns):
        triangles, colours = _shaded_triangles(mesh, distance, up, cut, order, max_faces, cmap, norm, light)
        for row, (elevation, azimuth) in enumerate(VIEWS):
            ax = figure.add_subplot(len(VIEWS), len(columns), row * len(columns) + column + 1, projection="3d")
            _draw(ax, triangles, colours, low[order], high[order], elevation, azimuth)
            if row == 0:
                ax.set_title(caption, fontsize=12)
    bar_axes = figure.add_axes((0.2, 0.06, 0.6, 0.025))
    bar = figure.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), cax=bar_axes, orientation="horizontal")
    bar.set_label(f"distance to the ground truth [m] (black line: the F-score threshold, {threshold:g} m)")
    bar.ax.axvline(threshold, color="black", linewidth=1.5)
    if title:
        figure.suptitle(title, fontsize=14)
    path = Path(path)
    try:
        with atomic_write(path) as handle:
            figure.savefig(handle, format="png")
    finally:
        plt.close(figure)
    return path


def _shaded_triangles(mesh: Mesh, distance: np.ndarray | None, up: int, cut: float, order: list[int], max_faces: int,
                      cmap, norm, light: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Triangles below the cut (in matplotlib's axis order) and their colours (error colours, or grey when
    ``distance`` is None), Lambert-shaded."""
    if mesh.is_empty:
        return np.zeros((0, 3, 3)), np.zeros((0, 4))
    keep = mesh.vertices[mesh.faces][:, :, up].mean(axis=1) <= cut
    faces = mesh.faces[keep]
    distance = None if distance is None else distance[keep]
    if len(faces) > max_faces:  # decimate, carrying each face's error to the cluster faces by nearest centroid
        kept = Mesh(mesh.vertices, faces)
        small = decimate(kept, max_faces)
        _, nearest = cKDTree(kept.vertices[kept.faces].mean(axis=1)).query(small.vertices[small.faces].mean(axis=1))
        vertices, faces = small.vertices, small.faces
        distance = None if distance is None else distance[nearest]
    else:
        vertices = mesh.vertices
    triangles = vertices[faces][:, :, order].astype(np.float64)
    normals = np.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0])
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    shade = 0.45 + 0.55 * np.abs(normals @ light)  # two-sided: reconstructions' winding is not trusted
    if distance is None:
        colours = np.tile([0.72, 0.72, 0.75, 1.0], (len(faces), 1))
    else:
        colours = cmap(norm(np.minimum(distance, 1e3)))
    colours[:, :3] *= shade[:, None]
    return triangles, colours


def _draw(ax, triangles: np.ndarray, colours: np.ndarray, low: np.ndarray, high: np.ndarray, elevation: float,
          azimuth: float) -> None:
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    if len(triangles):
        ax.add_collection3d(Poly3DCollection(triangles, facecolors=colours, linewidths=0.0))
    else:
        ax.text2D(0.5, 0.5, "(empty mesh)", transform=ax.transAxes, ha="center")
    high = np.maximum(high, low + 1e-3)
    ax.set_xlim(low[0], high[0])
    ax.set_ylim(low[1], high[1])
    ax.set_zlim(low[2], high[2])
    ax.set_box_aspect(np.maximum(high - low, 1e-3))
    ax.view_init(elev=elevation, azim=azimuth)
    ax.set_axis_off()
