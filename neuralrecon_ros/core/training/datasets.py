"""Training scenes from recordings: synthetic rooms, ScanNet-layout folders and (via the node) bags.

Every source is a stream of posed RGB-D :class:`~..types.Frame` s fed through the product's
:class:`~..pipeline.ReconstructionPipeline` with a :class:`.targets.GroundTruthRecorder`: keyframes and
fragments follow the product's rules (``KeyframeConfig``), every frame's depth is fused into the
scene TSDF. The result, a :class:`PreparedScene`, is what the trainer consumes and what
:mod:`neuralrecon_ros.io.training_cache` stores. Bags are turned into frames by the node logic's replay
(``neuralrecon_ros.io.training_cache.prepare_bag_scene``), never by a second bag reader.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..geometry import invert
from ..keyframes import KeyframeConfig
from ..mapping.config import MeshingConfig
from ..mapping.meshing import extract_mesh
from ..mapping.tsdf_map import TSDFMap
from ..network.projection import IMAGE_SIZE_WH, FragmentGeometry, derive_fragment_geometry
from ..network.reconstructor import prepare_images
from ..pipeline import ReconstructionPipeline
from ..types import CameraIntrinsics, Frame, Mesh
from .augment import transform_frames
from .targets import FragmentTargets, GroundTruthRecorder, SceneTSDF, fragment_targets

#: synthetic trajectory styles, alternated by seed for variety
SYNTHETIC_STYLES = ("handheld", "robot")


class DatasetError(ValueError):
    """A training source is unusable (missing folder/files, no complete fragment, unreadable data)."""


class RecordingPipeline(ReconstructionPipeline):
    """The product pipeline driving a :class:`GroundTruthRecorder`; asks the transport for depth."""

    @property
    def needs_depth(self) -> bool:
        return True


def recording_pipeline(
    keyframe_config: KeyframeConfig | None = None, T_map_global: np.ndarray | None = None
) -> tuple[RecordingPipeline, GroundTruthRecorder]:
    """A pipeline whose reconstructor records ground truth (poses mapped by ``T_map_global``: the
    network world, z up and floor at 0)."""
    recorder = GroundTruthRecorder()
    pipeline = RecordingPipeline(keyframe_config or KeyframeConfig(), TSDFMap(), recorder, T_map_global)
    return pipeline, recorder


@dataclass
class PreparedScene:
    """Everything training needs from one recording."""

    name: str
    source: str  # e.g. 'synthetic:seed=3', 'scannet:/data/scene0000_00', 'bag:/data/run.mcap'
    scene_tsdf: SceneTSDF
    fragments: list[list[Frame]]  # keyframes of each complete fragment, network world
    gt_mesh: Mesh | None = None  # evaluation ground truth; None: the depth-fusion mesh of the scene
    targets: list[FragmentTargets | None] = field(default_factory=list)  # un-augmented, filled lazily

    def fragment_targets(self, index: int) -> FragmentTargets:
        """Un-augmented targets of fragment ``index`` (computed once)."""
        if len(self.targets) != len(self.fragments):
            self.targets = [None] * len(self.fragments)
        cached = self.targets[index]
        if cached is None:
            keyframes = self.fragments[index]
            intrinsics = network_intrinsics(keyframes)
            geometry = derive_fragment_geometry(intrinsics, np.stack([f.T_world_camera for f in keyframes]))
            cached = fragment_targets(self.scene_tsdf, keyframes, geometry.vol_origin_voxels.numpy())
            self.targets[index] = cached
        return cached

    def evaluation_mesh(self) -> Mesh:
        """Ground truth for validation: ``gt_mesh``, else the depth-fusion mesh of the 4 cm scene TSDF."""
        return self.gt_mesh if self.gt_mesh is not None else depth_fusion_mesh(self.scene_tsdf)


def depth_fusion_mesh(scene_tsdf: SceneTSDF) -> Mesh:
    """Marching-cubes mesh of the finest (0.04 m) scene TSDF: what depth mode reconstructs."""
    return extract_mesh(scene_tsdf.maps[-1], MeshingConfig(mesh_color_mode="none"))


def network_intrinsics(keyframes: list[Frame]) -> np.ndarray:
    """Intrinsics (V, 3, 3) of the keyframes scaled to the network's 640x480 (as :func:`prepare_images`)."""
    width, height = IMAGE_SIZE_WH
    return np.stack([f.intrinsics.scaled(width, height).matrix for f in keyframes])


def prepare_scene(
    frames: Iterable[Frame],
    name: str,
    source: str,
    keyframe_config: KeyframeConfig | None = None,
    T_map_global: np.ndarray | None = None,
    gt_mesh: Mesh | None = None,
) -> PreparedScene:
    """Fuse ``frames`` (RGB-D, posed in the global frame) into a :class:`PreparedScene`."""
    pipeline, recorder = recording_pipeline(keyframe_config, T_map_global)
    for frame in frames:
        pipeline.process(frame)
    return scene_from_recorder(recorder, name, source, gt_mesh)


def scene_from_recorder(
    recorder: GroundTruthRecorder, name: str, source: str, gt_mesh: Mesh | None = None
) -> PreparedScene:
    if not recorder.fragments:
        raise DatasetError(
            f"{source}: no complete fragment ({recorder.scene.frames_integrated} frames with depth): the "
            "camera must move enough for a fragment of keyframes (keyframe_min_translation_m / "
            "keyframe_min_rotation_deg)"
        )
    return PreparedScene(
        name, source, recorder.scene, [list(f.keyframes) for f in recorder.fragments], gt_mesh
    )


def synthetic_scene(
    seed: int,
    n_frames: int = 240,
    width: int = 320,
    height: int = 240,
    style: str | None = None,
    keyframe_config: KeyframeConfig | None = None,
) -> PreparedScene:
    """A procedural room (layout, textures and lights from ``seed``) rendered along a trajectory.

    The evaluation mesh is the exact surface the camera observed (``observed_mesh``).
    """
    from ..synthetic import make_sequence, observed_mesh

    style = style or SYNTHETIC_STYLES[seed % len(SYNTHETIC_STYLES)]
    sequence = make_sequence(seed, n_frames=n_frames, width=width, height=height, style=style)
    gt = observed_mesh(sequence.scene.gt_mesh(), sequence)
    return prepare_scene(
        sequence,
        f"synthetic_{seed:05d}",
        f"synthetic:seed={seed},style={style},frames={n_frames},size={width}x{height}",
        keyframe_config,
        gt_mesh=gt,
    )


# ------------------------------------------------------------------------------ ScanNet-layout folders

_NUMBER = re.compile(r"(\d+)")


def _numbered(folder: Path, suffixes: tuple[str, ...]) -> dict[int, Path]:
    files = {}
    for path in folder.iterdir():
        match = _NUMBER.fullmatch(path.stem)
        if match and path.suffix.lower() in suffixes:
            files[int(match.group(1))] = path
    return files


def _read_matrix(path: Path, what: str) -> np.ndarray:
    try:
        matrix = np.loadtxt(path, dtype=np.float64)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read {what} {path}: {exc}") from None
    if matrix.shape != (4, 4) and matrix.shape != (3, 3):
        raise DatasetError(f"{what} {path} must hold a 3x3 or 4x4 matrix, got shape {matrix.shape}")
    return matrix


def reproject_depth(depth: np.ndarray, K_depth: np.ndarray, K_target: np.ndarray) -> np.ndarray:
    """Depth of a camera with intrinsics ``K_depth`` resampled (nearest) onto intrinsics ``K_target`` of the
    same size and optical centre (ScanNet's depth and colour cameras share poses, not intrinsics)."""
    h, w = depth.shape
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    us = (u - K_target[0, 2]) * K_depth[0, 0] / K_target[0, 0] + K_depth[0, 2]
    vs = (v - K_target[1, 2]) * K_depth[1, 1] / K_target[1, 1] + K_depth[1, 2]
    ui, vi = np.rint(us).astype(np.int64), np.rint(vs).astype(np.int64)
    inside = (ui >= 0) & (ui < w) & (vi >= 0) & (vi < h)
    out = np.zeros_like(depth)
    out[inside] = depth[vi[inside], ui[inside]]
    return out


def scannet_frames(
    folder: str | Path, frame_step: int = 1, depth_scale: float = 1000.0, stamp_period_s: float = 1.0 / 30.0
) -> Iterator[Frame]:
    """Frames of a ScanNet-layout folder: ``color/<n>.jpg``, ``depth/<n>.png`` (uint16, ``depth_scale``
    units per metre), ``pose/<n>.txt`` (4x4 T_world_camera, optical frame), ``intrinsic/intrinsic_color.txt``
    (and ``intrinsic_depth.txt`` if the depth camera differs). Frames with a non-finite pose are skipped,
    as upstream does."""
    import skimage.io

    root = Path(folder)
    for sub in ("color", "depth", "pose", "intrinsic"):
        if not (root / sub).is_dir():
            raise DatasetError(
                f"{root} is not a ScanNet-layout folder: it lacks {sub}/ "
                "(expected color/, depth/, pose/, intrinsic/)"
            )
    colors = _numbered(root / "color", (".jpg", ".jpeg", ".png"))
    depths = _numbered(root / "depth", (".png",))
    poses = _numbered(root / "pose", (".txt",))
    indices = sorted(set(colors) & set(depths) & set(poses))[:: max(1, frame_step)]
    if not indices:
        raise DatasetError(f"{root}: no frame number has a colour image, a depth image and a pose")
    K_color = _read_matrix(root / "intrinsic" / "intrinsic_color.txt", "colour intrinsics")[:3, :3]
    depth_path = root / "intrinsic" / "intrinsic_depth.txt"
    K_depth = _read_matrix(depth_path, "depth intrinsics")[:3, :3] if depth_path.is_file() else None
    for n in indices:
        T = _read_matrix(poses[n], "pose")
        if T.shape != (4, 4) or not np.isfinite(T).all():
            continue
        try:
            image = skimage.io.imread(colors[n])
            raw = skimage.io.imread(depths[n])
        except (OSError, ValueError) as exc:
            raise DatasetError(f"{root}: cannot read frame {n}: {exc}") from None
        if image.ndim != 3 or image.shape[2] < 3:
            raise DatasetError(f"{colors[n]}: expected an RGB image, got shape {image.shape}")
        image = np.ascontiguousarray(image[..., :3].astype(np.uint8))
        depth = raw.astype(np.float32) / depth_scale
        intrinsics = CameraIntrinsics.from_matrix(K_color, image.shape[1], image.shape[0])
        if K_depth is not None:
            scaled = intrinsics.scaled(depth.shape[1], depth.shape[0]).matrix
            depth = reproject_depth(depth, K_depth, scaled)
        yield Frame(n * stamp_period_s, image, intrinsics, T, depth, "camera", n)


def scannet_scene(
    folder: str | Path,
    keyframe_config: KeyframeConfig | None = None,
    frame_step: int = 1,
    T_map_global: np.ndarray | None = None,
) -> PreparedScene:
    root = Path(folder)
    return prepare_scene(
        scannet_frames(root, frame_step), root.name, f"scannet:{root}", keyframe_config, T_map_global
    )


# ------------------------------------------------------------------------------ samples


@dataclass
class TrainingSample:
    images: torch.Tensor  # (V, 3, 480, 640) float32 RGB 0..255
    geometry: FragmentGeometry
    targets: FragmentTargets
    scene: str
    fragment: int


def make_sample(
    scene: PreparedScene, index: int, T_aug: np.ndarray | None = None, device: str | torch.device = "cpu"
) -> TrainingSample:
    """Network inputs and targets of fragment ``index``, the world moved by ``T_aug`` (None: as recorded)."""
    keyframes = scene.fragments[index]
    if T_aug is not None:
        keyframes = transform_frames(keyframes, T_aug)
    images, intrinsics = prepare_images(keyframes, device)
    geometry = derive_fragment_geometry(intrinsics, np.stack([f.T_world_camera for f in keyframes]))
    if T_aug is None:
        targets = scene.fragment_targets(index)
    else:
        targets = fragment_targets(
            scene.scene_tsdf, keyframes, geometry.vol_origin_voxels.numpy(), invert(T_aug)
        )
    return TrainingSample(images, geometry.to(device), targets, scene.name, index)
