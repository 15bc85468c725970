"""Depth fusion: classic projective TSDF integration of depth images (RGB-D cameras, ground truth)."""

from __future__ import annotations

import numpy as np

from ..reconstructor import MapUpdate, Reconstructor
from ..types import Fragment, Frame
from .config import DepthFusionConfig
from .tsdf_map import TSDFMap


class DepthFusionReconstructor(Reconstructor):
    """Integrates each frame's depth image into the map (all frames, or keyframes only).

    The depth image must be registered to the colour camera (same optical frame); when its size differs
    from the intrinsics' image size the intrinsics are rescaled to it, and the colour image is resampled
    (nearest pixel) to the depth size before its colours are fused.
    """

    name = "depth"

    def __init__(self, tsdf_map: TSDFMap, config: DepthFusionConfig | None = None) -> None:
        self.tsdf_map = tsdf_map
        self.config = config if config is not None else DepthFusionConfig()

    def on_frame(self, frame: Frame, is_keyframe: bool) -> MapUpdate | None:
        if frame.depth is None or not (self.config.integrate_all_frames or is_keyframe):
            return None
        depth = frame.depth
        if depth.ndim != 2:
            raise ValueError(f"frame {frame.index}: depth must be a (H, W) image, got shape {depth.shape}")
        height, width = depth.shape
        intrinsics = frame.intrinsics
        if (intrinsics.width, intrinsics.height) != (width, height):
            intrinsics = intrinsics.scaled(width, height)
        color = _resample_nearest(frame.image, height, width) if self.config.integrate_color else None
        return self.tsdf_map.integrate_depth(
            depth,
            intrinsics,
            frame.T_world_camera,
            color,
            max_depth_m=self.config.max_integration_distance_m,
            min_depth_m=self.config.min_integration_distance_m,
            max_weight=self.config.max_weight,
        )

    def on_fragment(self, fragment: Fragment) -> MapUpdate | None:
        return None


def _resample_nearest(image: np.ndarray | None, height: int, width: int) -> np.ndarray | None:
    """``image`` (H', W', 3) uint8 at ``height`` x ``width`` by nearest pixel; None if it is not RGB uint8."""
    if image is None or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        return None
    if image.shape[:2] == (height, width):
        return image
    rows = ((np.arange(height) + 0.5) * image.shape[0] / height).astype(np.int64)
    cols = ((np.arange(width) + 0.5) * image.shape[1] / width).astype(np.int64)
    return image[np.minimum(rows, image.shape[0] - 1)[:, None], np.minimum(cols, image.shape[1] - 1)[None, :]]
