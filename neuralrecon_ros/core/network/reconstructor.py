"""The NeuralRecon reconstructor: one network pass per fragment, direct substitution into the map.

Poses arrive in the map frame, which is the network world (z up, floor near z = 0; the pipeline
converts from the user's ``global_frame`` with :mod:`.world`). Each fragment's keyframes are resized
to 640x480 (intrinsics scaled alike), the network predicts the TSDF of the fragment volume, and the
map's voxels inside that volume are replaced by the prediction exactly as upstream replaces its global
TSDF (facts §1.6): global voxel index = local coordinate + volume origin, position = index * 0.04 m.
The model keeps its own upstream-style global state (GRU hidden states, global TSDF list); the map is
the product-facing copy.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from ..geometry import PoseError, check_rigid
from ..mapping.tsdf_map import TSDFMap
from ..reconstructor import MapUpdate, Reconstructor
from ..timing import StageTimer
from ..types import Fragment, Frame
from .checkpoint import CheckpointError, CheckpointInfo, load_checkpoint
from .config import CHECKPOINT_DOWNLOAD_URL, NeuralReconConfig
from .model import FragmentResult, NeuralRecon
from .projection import IMAGE_SIZE_WH, N_VOX, VOXEL_SIZE, derive_fragment_geometry
from .sparse import set_backend


class CheckpointMissingError(CheckpointError):
    """Mode 'neuralrecon' was selected without a checkpoint."""


class FragmentError(ValueError):
    """A fragment cannot be fed to the network (no keyframes, image/intrinsics mismatch, bad pose)."""


class ReconstructorConfigError(ValueError):
    """The map or device cannot host the NeuralRecon reconstructor."""


def missing_checkpoint_message() -> str:
    return (
        "mode 'neuralrecon' needs the upstream NeuralRecon weights: download model_000047.ckpt "
        f"(the 'pretrained weights' link of github.com/zju3dv/NeuralRecon: {CHECKPOINT_DOWNLOAD_URL}) "
        "and pass its path with --checkpoint PATH (command line) or -p checkpoint:=PATH (ROS parameter "
        "'checkpoint')"
    )


def prepare_images(frames: list[Frame], device: torch.device | str = "cpu") -> tuple[torch.Tensor, np.ndarray]:
    """Keyframe images as (V, 3, 480, 640) float32 RGB 0..255 on ``device`` and their intrinsics (V, 3, 3)
    scaled to 640x480. Other sizes are resized bilinearly with antialiasing (like PIL's BILINEAR)."""
    width, height = IMAGE_SIZE_WH
    images, intrinsics = [], []
    for frame in frames:
        image = np.asarray(frame.image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise FragmentError(f"frame {frame.index}: expected an RGB uint8 (H, W, 3) image, got "
                                f"{image.dtype} {image.shape}")
        if image.shape[:2] != (frame.intrinsics.height, frame.intrinsics.width):
            raise FragmentError(
                f"frame {frame.index}: image is {image.shape[1]}x{image.shape[0]} but its intrinsics are for "
                f"{frame.intrinsics.width}x{frame.intrinsics.height}"
            )
        tensor = torch.tensor(image, device=device).permute(2, 0, 1)[None].float()  # copies (frames may be read-only)
        if image.shape[:2] != (height, width):
            tensor = F.interpolate(tensor, size=(height, width), mode="bilinear", align_corners=False,
                                   antialias=True)
        images.append(tensor)
        intrinsics.append(frame.intrinsics.scaled(width, height).matrix)
    return torch.cat(images), np.stack(intrinsics)


class NeuralReconReconstructor(Reconstructor):
    """Runs NeuralRecon on every closed fragment and substitutes its TSDF into ``tsdf_map``."""

    name = "neuralrecon"

    def __init__(self, tsdf_map: TSDFMap, config: NeuralReconConfig | None = None,
                 device: str | torch.device = "cpu", model: NeuralRecon | None = None) -> None:
        """``model`` (optional) is an already loaded network, e.g. for tests; otherwise the checkpoint
        named by ``config.checkpoint`` is loaded (strictly) and missing one is an error."""
        self.config = config if config is not None else NeuralReconConfig()
        if abs(tsdf_map.voxel_size - VOXEL_SIZE) > 1e-9:
            raise ReconstructorConfigError(
                f"mode 'neuralrecon' predicts {VOXEL_SIZE} m voxels but the map has voxel_size "
                f"{tsdf_map.voxel_size}; set voxel_size to {VOXEL_SIZE}"
            )
        self.tsdf_map = tsdf_map
        self.device = torch.device(device)
        self.backend = set_backend(self.config.sparse_backend)
        self.checkpoint_info: CheckpointInfo | None = None
        if model is None:
            if not self.config.checkpoint:
                raise CheckpointMissingError(missing_checkpoint_message())
            model = NeuralRecon(self.config.gru_reset_gate_quirk)
            self.checkpoint_info = load_checkpoint(model, self.config.checkpoint)
        self.model = model.to(self.device).eval()
        self.half_precision = self.config.half_precision and self.device.type == "cuda"
        #: per-stage timings of the network (backbone2d, backproject, sparse3d_level*, gru_level*, ...)
        self.timer = StageTimer()
        self.last_result: FragmentResult | None = None

    def on_fragment(self, fragment: Fragment) -> MapUpdate | None:
        """Predict the fragment volume's TSDF and write it into the map; None if nothing survived."""
        frames = fragment.keyframes
        if not frames:
            raise FragmentError(f"fragment {fragment.index} has no keyframes")
        try:
            poses = np.stack([check_rigid(f.T_world_camera, f"pose of frame {f.index}") for f in frames])
        except PoseError as exc:
            raise FragmentError(str(exc)) from None
        images, intrinsics = prepare_images(frames, self.device)
        geometry = derive_fragment_geometry(intrinsics, poses).to(self.device)
        with torch.no_grad():
            result = self.model(images, geometry, timer=self.timer, half_precision=self.half_precision)
        self.last_result = result
        if result is None:
            return None
        with self.timer.stage("map_write"):
            lo = result.vol_origin_voxels.cpu().numpy()
            cleared = self.tsdf_map.clear_voxels_in_box(lo, lo + np.asarray(N_VOX) - 1)
            written = self.tsdf_map.set_voxels(result.global_coords, result.global_tsdf)
        blocks = np.concatenate([cleared.touched_blocks, written.touched_blocks])
        touched = np.unique(blocks, axis=0) if len(blocks) else blocks
        return MapUpdate(touched_blocks=touched.astype(np.int64), frames_integrated=len(frames))

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The recurrent state (GRU hidden states, the model's global TSDF), saved with the map."""
        return self.model.recurrent_state()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_recurrent_state(state)

    def reset(self) -> None:
        """Forget the recurrent state (GRU hidden states and the model's global TSDF)."""
        self.model.reset_state()
        self.last_result = None
