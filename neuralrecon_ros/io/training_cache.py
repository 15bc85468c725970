"""On-disk cache of prepared training scenes (ground truth + keyframes), and preparing scenes from sources.

Layout: one folder per scene, ``<cache_dir>/<scene name>/``, written file by file atomically with
``scene.json`` last (a folder without it is incomplete and is rebuilt):

``scene.json``
    ``{"format": "neuralrecon_ros.training_cache", "version": 1, "name", "source", "level_voxel_sizes":
    [0.16, 0.08, 0.04], "truncation_voxels": 3.0, "max_depth_m", "min_depth_m", "n_fragments",
    "keyframes": {KeyframeConfig fields}}``. ``source`` identifies the recording and its settings; a cache
    entry is reused only when it matches.
``scene_tsdf.npz``
    The full-scene TSDF of each level ``i`` (0 = 0.16 m, 1 = 0.08 m, 2 = 0.04 m), observed voxels only:
    ``coords_<i>`` int32 (M, 3) world voxel indices (position = index * voxel size, z up, floor at 0),
    ``tsdf_<i>`` float32 (M,) signed distance / truncation in [-1, 1], ``weight_<i>`` float32 (M,).
``fragment_<k:04d>.npz``
    Keyframes of fragment ``k`` (V of them): ``images`` uint8 (V, H, W, 3) RGB, ``depths`` float32 (V, Hd, Wd)
    metres (0 = invalid), ``intrinsics`` float64 (V, 6) = fx, fy, cx, cy, width, height of the colour
    image, ``poses`` float64 (V, 4, 4) T_world_camera (optical frame), ``stamps`` float64 (V,), ``indices``
    int64 (V,) frame numbers; and its un-augmented targets: ``vol_origin_voxels`` int64 (3,) (world index
    at 0.04 m of the volume's voxel (0, 0, 0)), ``target_tsdf_<i>`` float16 (n, n, n) and
    ``target_occupancy_<i>`` bool (n, n, n), n = 24, 48, 96, indexed [x, y, z].
``gt_mesh.npz`` (optional)
    Evaluation mesh: ``vertices`` float32 (V, 3), ``faces`` int64 (F, 3). Without it the depth-fusion
    mesh of the 0.04 m scene TSDF is the reference.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ..core.keyframes import KeyframeConfig
from ..core.network.projection import N_LEVELS
from ..core.training.datasets import PreparedScene, recording_pipeline, scene_from_recorder
from ..core.training.targets import LEVEL_VOXEL_SIZES, TRUNCATION_VOXELS, FragmentTargets, SceneTSDF
from ..core.types import CameraIntrinsics, Frame, Mesh
from .atomic import atomic_write, atomic_write_text

log = logging.getLogger("neuralrecon_ros")

FORMAT = "neuralrecon_ros.training_cache"
VERSION = 1
SCENE_FILE = "scene.json"


class TrainingCacheError(ValueError):
    """A cache entry is unreadable or of another format/version."""


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    with atomic_write(path) as handle:
        np.savez_compressed(handle, **arrays)


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise TrainingCacheError(f"training cache file {path} is unreadable: {exc}") from None


def save_scene(
    scene: PreparedScene, folder: str | os.PathLike, keyframe_config: KeyframeConfig | None = None
) -> Path:
    """Write ``scene`` into ``folder`` (created); computes missing fragment targets."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SCENE_FILE).unlink(missing_ok=True)  # incomplete until rewritten
    levels: dict[str, np.ndarray] = {}
    for i in range(N_LEVELS):
        coords, tsdf, weight = scene.scene_tsdf.arrays(i)
        levels.update({f"coords_{i}": coords.astype(np.int32), f"tsdf_{i}": tsdf, f"weight_{i}": weight})
    _save_npz(folder / "scene_tsdf.npz", **levels)
    for k, keyframes in enumerate(scene.fragments):
        targets = scene.fragment_targets(k)
        arrays = {
            "images": np.stack([f.image for f in keyframes]),
            "depths": np.stack([np.nan_to_num(np.asarray(f.depth, np.float32), nan=0.0) for f in keyframes]),
            "intrinsics": np.array(
                [
                    [
                        f.intrinsics.fx,
                        f.intrinsics.fy,
                        f.intrinsics.cx,
                        f.intrinsics.cy,
                        f.intrinsics.width,
                        f.intrinsics.height,
                    ]
                    for f in keyframes
                ]
            ),
            "poses": np.stack([f.T_world_camera for f in keyframes]),
            "stamps": np.array([f.stamp for f in keyframes]),
            "indices": np.array([f.index for f in keyframes], dtype=np.int64),
            "vol_origin_voxels": targets.vol_origin_voxels,
        }
        for i in range(N_LEVELS):
            arrays[f"target_tsdf_{i}"] = targets.tsdf[i].astype(np.float16)
            arrays[f"target_occupancy_{i}"] = targets.occupancy[i]
        _save_npz(folder / f"fragment_{k:04d}.npz", **arrays)
    if scene.gt_mesh is not None:
        _save_npz(
            folder / "gt_mesh.npz",
            vertices=scene.gt_mesh.vertices.astype(np.float32),
            faces=scene.gt_mesh.faces.astype(np.int64),
        )
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "name": scene.name,
        "source": scene.source,
        "level_voxel_sizes": list(LEVEL_VOXEL_SIZES),
        "truncation_voxels": TRUNCATION_VOXELS,
        "max_depth_m": scene.scene_tsdf.max_depth_m,
        "min_depth_m": scene.scene_tsdf.min_depth_m,
        "n_fragments": len(scene.fragments),
        "keyframes": dataclasses.asdict(keyframe_config) if keyframe_config is not None else None,
    }
    atomic_write_text(folder / SCENE_FILE, json.dumps(meta, indent=2) + "\n")
    return folder


def read_scene_meta(folder: str | os.PathLike) -> dict[str, Any] | None:
    """``scene.json`` of a complete cache entry, or None when there is none."""
    path = Path(folder) / SCENE_FILE
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise TrainingCacheError(f"training cache file {path} is unreadable: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise TrainingCacheError(f"{path} is not a {FORMAT} version {VERSION} entry")
    return meta


def load_scene(folder: str | os.PathLike) -> PreparedScene:
    """Read a cache entry written by :func:`save_scene`."""
    folder = Path(folder)
    meta = read_scene_meta(folder)
    if meta is None:
        raise TrainingCacheError(f"{folder} holds no complete training cache entry ({SCENE_FILE} missing)")
    levels = _load_npz(folder / "scene_tsdf.npz")
    scene_tsdf = SceneTSDF.from_arrays(
        [(levels[f"coords_{i}"], levels[f"tsdf_{i}"], levels[f"weight_{i}"]) for i in range(N_LEVELS)]
    )
    scene_tsdf.max_depth_m, scene_tsdf.min_depth_m = float(meta["max_depth_m"]), float(meta["min_depth_m"])
    fragments, targets = [], []
    for k in range(int(meta["n_fragments"])):
        data = _load_npz(folder / f"fragment_{k:04d}.npz")
        frames = []
        for v in range(len(data["poses"])):
            fx, fy, cx, cy, w, h = data["intrinsics"][v]
            frames.append(
                Frame(
                    float(data["stamps"][v]),
                    data["images"][v],
                    CameraIntrinsics(fx, fy, cx, cy, int(w), int(h)),
                    data["poses"][v],
                    data["depths"][v],
                    "camera",
                    int(data["indices"][v]),
                )
            )
        fragments.append(frames)
        targets.append(
            FragmentTargets(
                [data[f"target_tsdf_{i}"].astype(np.float32) for i in range(N_LEVELS)],
                [data[f"target_occupancy_{i}"] for i in range(N_LEVELS)],
                data["vol_origin_voxels"].astype(np.int64),
            )
        )
    gt_mesh = None
    if (folder / "gt_mesh.npz").is_file():
        mesh = _load_npz(folder / "gt_mesh.npz")
        gt_mesh = Mesh(mesh["vertices"], mesh["faces"])
    return PreparedScene(meta["name"], meta["source"], scene_tsdf, fragments, gt_mesh, targets)


def cached_scene(
    cache_dir: str | os.PathLike,
    name: str,
    source: str,
    prepare: Any,
    keyframe_config: KeyframeConfig | None = None,
) -> PreparedScene:
    """The cache entry ``cache_dir/name`` if it was made from ``source``; else ``prepare()`` and save it."""
    folder = Path(cache_dir) / name
    meta = read_scene_meta(folder)
    if meta is not None and meta.get("source") == source:
        return load_scene(folder)
    log.info("preparing training scene %s (%s)", name, source)
    scene = dataclasses.replace(prepare(), name=name, source=source)
    save_scene(scene, folder, keyframe_config)
    return scene


def prepare_bag_scene(bag: str | os.PathLike, params: Any, progress: bool = False) -> PreparedScene:
    """Ground truth from an RGB-D bag, read exactly as ``replay`` reads it (node logic, TF, sync).

    ``params`` (``NodeParameters``) name the topics and frames; its keyframe settings and world
    convention (``global_frame_up_axis``, ``floor_height_m``) apply.
    """
    from ..core.network.config import NeuralReconConfig
    from ..core.network.world import network_from_global_config
    from ..node.bag_transport import replay_bag

    keyframes = params.group(KeyframeConfig)
    pipeline, recorder = recording_pipeline(
        keyframes, network_from_global_config(params.group(NeuralReconConfig))
    )
    with tempfile.TemporaryDirectory(prefix="neuralrecon_gt_") as scratch:
        replay_bag(bag, scratch, params, pipeline, progress=progress)
    path = Path(bag)
    return scene_from_recorder(recorder, path.stem if path.is_file() else path.name, f"bag:{path.resolve()}")


#: validation seeds are offset so they never coincide with training seeds
VALIDATION_SEED_OFFSET = 500_000


def training_scenes(
    config: Any, cache_dir: str | os.PathLike, progress: bool = False
) -> tuple[list[PreparedScene], list[PreparedScene]]:
    """The (training, validation) scenes a ``TrainingConfig`` names, prepared once and cached."""
    from ..core.training.datasets import scannet_scene, synthetic_scene
    from ..node.parameters import NODE_NAME, NodeParameters
    from .params_file import load_parameter_file

    keyframes = KeyframeConfig()
    size = (config.synthetic_width, config.synthetic_height)

    def synthetic(seed: int) -> PreparedScene:
        source = f"synthetic:seed={seed},frames={config.synthetic_frames},size={size[0]}x{size[1]}"
        return cached_scene(
            cache_dir,
            f"synthetic_{seed:06d}",
            source,
            lambda: synthetic_scene(seed, config.synthetic_frames, *size, keyframe_config=keyframes),
            keyframes,
        )

    def scannet(folder: str) -> PreparedScene:
        path = Path(folder).resolve()
        source = f"scannet:{path},step={config.scannet_frame_step}"
        return cached_scene(
            cache_dir,
            f"scannet_{path.name}",
            source,
            lambda: scannet_scene(path, keyframes, config.scannet_frame_step),
            keyframes,
        )

    bag_params = NodeParameters(
        load_parameter_file(config.bag_parameters, NODE_NAME) if config.bag_parameters else {}
    )

    def bag(path_text: str) -> PreparedScene:
        path = Path(path_text).resolve()
        return cached_scene(
            cache_dir,
            f"bag_{path.stem}",
            f"bag:{path},params={config.bag_parameters}",
            lambda: prepare_bag_scene(path, bag_params, progress),
            bag_params.group(KeyframeConfig),
        )

    train = [synthetic(config.synthetic_seed + i) for i in range(config.synthetic_train_scenes)]
    train += [scannet(f) for f in config.scannet_train] + [bag(b) for b in config.bag_train]
    val = [
        synthetic(config.synthetic_seed + VALIDATION_SEED_OFFSET + i)
        for i in range(config.synthetic_val_scenes)
    ]
    val += [scannet(f) for f in config.scannet_val] + [bag(b) for b in config.bag_val]
    return train, val
