"""Build the reconstruction pipeline that the parameters ask for (mode, device, map, checkpoint)."""

from __future__ import annotations

import dataclasses

import numpy as np

from ..core.keyframes import KeyframeConfig
from ..core.mapping.config import DepthFusionConfig, MapConfig, MeshingConfig
from ..core.mapping.depth_fusion import DepthFusionReconstructor
from ..core.mapping.memory import MemoryBoundsConfig
from ..core.mapping.mesh_chunks import MeshChunkConfig
from ..core.mapping.tsdf_map import TSDFMap
from ..core.pipeline import ReconstructionPipeline
from ..core.reconstructor import Reconstructor, resolve_device
from ..core.threads import apply_thread_settings
from .parameters import NodeParameters


def build_pipeline(params: NodeParameters) -> ReconstructionPipeline:
    """A fresh pipeline with an empty map, configured by ``params``.

    Depth mode maps in ``global_frame`` itself; NeuralRecon mode maps in the network world (z up,
    floor at z = 0) related to ``global_frame`` by the world-convention parameters. Applies the CPU
    thread settings (``num_threads``, :mod:`..core.threads`) for the whole process.
    """
    device = resolve_device(params.device)
    apply_thread_settings(params.num_threads, params.mode, device)
    tsdf_map = TSDFMap(params.group(MapConfig), device=device)
    reconstructor: Reconstructor
    T_map_global = np.eye(4)
    if params.mode == "depth":
        reconstructor = DepthFusionReconstructor(tsdf_map, params.group(DepthFusionConfig))
    else:
        # imported here: the network (and its checkpoint) is only loaded when asked for
        from ..core.network.config import NeuralReconConfig
        from ..core.network.reconstructor import NeuralReconReconstructor
        from ..core.network.world import network_from_global_config
        from ..core.training.weights import apply_weights_options, default_checkpoint, demo_weights_info

        config = params.group(NeuralReconConfig)
        shipped = default_checkpoint()
        if not config.checkpoint and shipped is not None:  # the demo weights, when the package ships them
            # with the inference options their record asks for, where the user left the default
            config = apply_weights_options(dataclasses.replace(config, checkpoint=str(shipped)),
                                           demo_weights_info(shipped))
        reconstructor = NeuralReconReconstructor(tsdf_map, config, device=device)
        T_map_global = network_from_global_config(config)
    return ReconstructionPipeline(
        params.group(KeyframeConfig),
        tsdf_map,
        reconstructor,
        T_map_global=T_map_global,
        meshing_config=params.group(MeshingConfig),
        memory_config=params.group(MemoryBoundsConfig),
        chunk_config=params.group(MeshChunkConfig),
    )
