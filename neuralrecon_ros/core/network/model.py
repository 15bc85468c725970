"""The NeuralRecon model: 2D backbone, coarse-to-fine sparse network and global TSDF substitution.

``NeuralRecon().state_dict()`` has exactly the entries of upstream's checkpoint (names, shapes,
parameters vs buffers, order) once ``module.`` is prefixed. Recurrent state (GRU hidden states and
the global TSDF) lives on the module, carried from fragment to fragment until :meth:`reset_state`.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..timing import StageTimer
from .backbone import MnasMulti
from .gru_fusion import CHANNELS, SparseStore, TSDFSubstitution
from .neucon_net import NeuConNet, stage
from .projection import IMAGE_SIZE_WH, FragmentGeometry

#: per-channel values subtracted from RGB input in 0..255 (upstream's BGR-ordered ImageNet means, applied
#: to RGB as the checkpoint was trained; facts §2.1); the std is 1
PIXEL_MEAN = (103.53, 116.28, 123.675)


class InputError(ValueError):
    """Images or geometry handed to the model have the wrong shape, type or size."""


@dataclass
class FragmentResult:
    """Network output of one fragment."""

    coords: torch.Tensor  # (N, 3) int64 local finest-voxel coordinates of the predicted voxels
    tsdf: torch.Tensor  # (N,) raw TSDF prediction (normalised by the truncation, not squashed)
    global_coords: torch.Tensor  # (K, 3) int64 world voxel indices written into the fragment volume
    global_tsdf: torch.Tensor  # (K,) values written there (direct substitution; 1.0 = cleared)
    vol_origin_voxels: torch.Tensor  # (3,) int64 world voxel index of the fragment volume's corner


class NeuralRecon(nn.Module):
    """Upstream NeuralRecon at inference (batch size 1, FUSION_ON and FULL, 3 levels, 96^3 volume)."""

    def __init__(self, gru_reset_gate_quirk: bool = True) -> None:
        super().__init__()
        self.backbone2d = MnasMulti()
        self.neucon_net = NeuConNet(gru_reset_gate_quirk)
        self.fuse_to_global = TSDFSubstitution()
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1), persistent=False)

    def reset_state(self) -> None:
        """Forget the GRU hidden states and the global TSDF (a new scene)."""
        self.neucon_net.gru_fusion.reset_state()
        self.fuse_to_global.reset_state()

    def recurrent_state(self) -> dict[str, torch.Tensor]:
        """What carries over between fragments, as CPU tensors: each level's GRU hidden state
        (``gru{i}_coords`` int64 (M, 3), ``gru{i}_feats`` (M, C_i)) and the global TSDF
        (``tsdf_coords``, ``tsdf_values``); absent entries were never written."""
        state: dict[str, torch.Tensor] = {}
        for level, store in enumerate(self.neucon_net.gru_fusion.hidden):
            if store is not None:
                state[f"gru{level}_coords"], state[f"gru{level}_feats"] = store.coords.cpu(), store.values.cpu()
        if self.fuse_to_global.volume is not None:
            state["tsdf_coords"] = self.fuse_to_global.volume.coords.cpu()
            state["tsdf_values"] = self.fuse_to_global.volume.values.cpu()
        return state

    def load_recurrent_state(self, state: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`recurrent_state`; raises ``ValueError`` naming a bad entry (nothing changes then)."""
        expected = {"tsdf": 0} | {f"gru{level}": width for level, width in enumerate(CHANNELS)}
        unknown = set(state) - {f"{name}_{part}" for name in expected
                                for part in (("coords", "values") if name == "tsdf" else ("coords", "feats"))}
        if unknown:
            raise ValueError(f"unexpected recurrent-state entries: {sorted(unknown)}")
        device = self.pixel_mean.device
        stores: dict[str, SparseStore | None] = {}
        for name, width in expected.items():
            coords = state.get(f"{name}_coords")
            values = state.get(f"{name}_values" if name == "tsdf" else f"{name}_feats")
            if coords is None and values is None:
                stores[name] = None
                continue
            coords, values = torch.as_tensor(coords), torch.as_tensor(values)
            rows = coords.shape[0] if coords.dim() == 2 else -1
            good_values = values.shape == ((rows,) if name == "tsdf" else (rows, width))
            if coords.dim() != 2 or coords.shape[1] != 3 or not good_values or values.is_complex():
                wanted = "(M,)" if name == "tsdf" else f"(M, {width})"
                raise ValueError(f"recurrent-state entry '{name}' has shapes {tuple(coords.shape)} / "
                                 f"{tuple(values.shape)}, expected (M, 3) / {wanted}")
            stores[name] = SparseStore(coords.to(device, torch.int64), values.to(device, torch.float32))
        self.neucon_net.gru_fusion.hidden = [stores[f"gru{level}"] for level in range(len(CHANNELS))]
        self.fuse_to_global.volume = stores["tsdf"]

    @property
    def global_tsdf(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole global TSDF: world voxel indices (M, 3) int64 and values (M,), upstream order."""
        volume = self.fuse_to_global.volume
        if volume is None:
            device = self.pixel_mean.device
            return torch.zeros((0, 3), dtype=torch.int64, device=device), torch.zeros(0, device=device)
        return volume.coords, volume.values

    def extract_features(self, images: torch.Tensor, half_precision: bool = False) -> list[torch.Tensor]:
        """Backbone maps of each view, stacked per stride: [(V, 24, H/4, W/4), (V, 40, H/8, W/8), (V, 80, ...)].

        Views run one at a time, as upstream does; ``half_precision`` autocasts on CUDA only.
        """
        use_autocast = half_precision and images.device.type == "cuda"
        per_view = []
        for view in images:
            with torch.autocast("cuda", dtype=torch.float16) if use_autocast else nullcontext():
                per_view.append(self.backbone2d(view[None] - self.pixel_mean))
        return [torch.cat([maps[s] for maps in per_view]).float() for s in range(3)]

    def forward(self, images: torch.Tensor, geometry: FragmentGeometry, trace: dict[str, Any] | None = None,
                timer: StageTimer | None = None, half_precision: bool = False) -> FragmentResult | None:
        """Run one fragment and update the recurrent state.

        ``images``: (V, 3, 480, 640) float32 RGB in 0..255 on the model's device; ``geometry`` from
        :func:`.projection.derive_fragment_geometry` (moved to the same device). ``trace``, when given,
        receives intermediate tensors (backbone maps, per-level sets and values) for inspection.
        Returns None when a level keeps no voxel (the global TSDF is then unchanged, as upstream).
        """
        self._check_inputs(images, geometry)
        with stage(timer, "backbone2d"):
            features = self.extract_features(images, half_precision)
        if trace is not None:
            trace["features"] = features
        prediction = self.neucon_net(features, geometry, trace, timer)
        if prediction is None:
            return None
        with stage(timer, "substitution"):
            global_coords, global_tsdf = self.fuse_to_global(prediction.coords, prediction.tsdf,
                                                             geometry.vol_origin_voxels)
        return FragmentResult(prediction.coords, prediction.tsdf, global_coords, global_tsdf,
                              geometry.vol_origin_voxels)

    def _check_inputs(self, images: torch.Tensor, geometry: FragmentGeometry) -> None:
        w, h = IMAGE_SIZE_WH
        if not torch.is_tensor(images) or images.ndim != 4 or tuple(images.shape[1:]) != (3, h, w):
            shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
            raise InputError(f"images must be a (V, 3, {h}, {w}) tensor (RGB, 0..255), got {shape}")
        if images.dtype != torch.float32:
            raise InputError(f"images must be float32 in 0..255, got {images.dtype}")
        n_views = images.shape[0]
        if tuple(geometry.proj_matrices.shape) != (n_views, 3, 4, 4):
            raise InputError(
                f"geometry.proj_matrices must be ({n_views}, 3, 4, 4) for {n_views} views, "
                f"got {tuple(geometry.proj_matrices.shape)}"
            )
        if images.device != self.pixel_mean.device or geometry.proj_matrices.device != images.device:
            raise InputError(
                f"model on {self.pixel_mean.device}, images on {images.device}, geometry on "
                f"{geometry.proj_matrices.device}: move them to one device"
            )
