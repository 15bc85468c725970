"""The global sparse TSDF map and what works on it.

- :mod:`.tsdf_map`: ``TSDFMap``, block storage, depth integration, direct voxel access, raw state.
- :mod:`.allocation`: which blocks a depth image's truncation band touches.
- :mod:`.meshing`: seamless per-block marching cubes, ``IncrementalMesher``, ``extract_mesh``.
- :mod:`.mesh_chunks`: ``MeshChunker``, per-block meshes grouped into chunks with stable marker ids.
- :mod:`.memory`: ``MapMemoryManager``, clearing radius / block cap / host offload (``MemoryBoundsConfig``).
- :mod:`.depth_fusion`: ``DepthFusionReconstructor`` (RGB-D / ground-truth depth mode).
- :mod:`.keys`: packing block coordinates into int64 keys.
- :mod:`.config`: the public parameters (``MapConfig``, ``DepthFusionConfig``, ``MeshingConfig``).

Nothing is imported here, so reading the configs does not load torch or scikit-image.
"""
