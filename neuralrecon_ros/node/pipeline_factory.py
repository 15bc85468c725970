"""Build the reconstruction pipeline that the parameters ask for (mode, device, map, checkpoint)."""

from __future__ import annotations

from ..core.keyframes import KeyframeConfig
from ..core.mapping.config import DepthFusionConfig, MapConfig, MeshingConfig
from ..core.mapping.depth_fusion import DepthFusionReconstructor
from ..core.mapping.tsdf_map import TSDFMap
from ..core.pipeline import ReconstructionPipeline
from ..core.reconstructor import resolve_device
from .parameters import NodeParameters


def build_pipeline(params: NodeParameters) -> ReconstructionPipeline:
    """A fresh pipeline with an empty map, configured by ``params``."""
    device = resolve_device(params.device)
    tsdf_map = TSDFMap(params.group(MapConfig), device=device)
    keyframes = params.group(KeyframeConfig)
    if params.mode == "depth":
        reconstructor = DepthFusionReconstructor(tsdf_map, params.group(DepthFusionConfig))
        return ReconstructionPipeline(keyframes, tsdf_map, reconstructor, meshing_config=params.group(MeshingConfig))
    raise NotImplementedError("mode 'neuralrecon' is wired in by the network issue")
