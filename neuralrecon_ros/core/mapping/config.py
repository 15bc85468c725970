"""Configuration of the global sparse TSDF map and of depth fusion."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import param


@dataclass
class MapConfig:
    voxel_size: float = param(0.04, "Edge length of a TSDF voxel (upstream NeuralRecon: 0.04).",
                              minimum=0.005, maximum=1.0, unit="m")
    block_size: int = param(8, "Voxels per side of a map block (blocks are allocated sparsely).",
                            minimum=2, maximum=32)
    truncation_distance_vox: float = param(
        3.0, "TSDF truncation distance in voxels (upstream: 3 voxels).", minimum=1.0, maximum=20.0)


@dataclass
class DepthFusionConfig:
    max_integration_distance_m: float = param(
        5.0, "Depth readings farther than this are ignored by depth fusion.", minimum=0.1, unit="m")
    min_integration_distance_m: float = param(
        0.1, "Depth readings nearer than this are ignored by depth fusion.", minimum=0.0, unit="m")
    max_weight: float = param(
        100.0, "Cap on the running-average weight of a voxel (lets the map adapt).", minimum=1.0)
    integrate_all_frames: bool = param(
        True, "Depth mode: integrate every frame that has depth, not only keyframes.")
    integrate_color: bool = param(
        True, "Depth mode: fuse the image colours into the map (mesh vertex colours).")


@dataclass
class MeshingConfig:
    mesh_color_mode: str = param(
        "auto", "Mesh vertex colours: 'image' (fused RGB), 'height' (colour map of z), 'none', or 'auto' "
        "(image colours when the map has them, else height).", choices=("auto", "image", "height", "none"))
    mesh_height_min_m: float = param(0.0, "Height (map z) shown with the first colour of the height map.",
                                     unit="m")
    mesh_height_max_m: float = param(3.0, "Height (map z) shown with the last colour of the height map.",
                                     unit="m")
    mesh_min_weight: float = param(
        0.0, "Voxels with weight at or below this count as unobserved when meshing.", minimum=0.0)
