"""``neuralrecon_ros_interfaces/msg/TsdfLayer``: the sparse TSDF layer stream of ``~/tsdf_layer``.

The message (``msg/TsdfLayer.msg``) carries whole blocks in the map's storage order. Two fields are
compressed, with these bounds:

- **TSDF**: int16 fixed point, ``q = round(tsdf * 32767)`` of the normalised TSDF in [-1, 1]. The decoded
  value ``q / 32767`` differs from the map's float32 value by at most :data:`TSDF_MAX_ERROR` = 0.5 / 32767
  plus float32 rounding (1.53e-5 of the truncation distance: 1.8 micrometres with 4 cm voxels and 3-voxel
  truncation); -1, 0 and 1 (free / unobserved) are exact. Over [-1, 1] this is uniform and finer than
  float16 everywhere except within 0.03 of the surface.
- **weight**: IEEE 754 binary16 bits. Exact for every integer up to 2048 (depth fusion's counts under any
  ``max_weight`` up to 1024, also after offloaded copies are merged; NeuralRecon's weight 1); other values
  are rounded to 11 significant bits (relative error at most 2**-11), values above 65504 are sent as 65504.

Colour is sent as is (uint8 RGB) when the map has colour. So a replica holds the same blocks with the same
colours and, for this package's integer weights, the same weights; only the TSDF differs, within
:data:`TSDF_MAX_ERROR`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core.geometry import PoseError
from ..core.mapping.layer_changes import LayerChanges
from ..core.mapping.tsdf_map import TSDFMap
from .messages import MessageError, MessageTypes, _make, _pose, _sequence, make_header, pose_to_matrix

TSDF_LAYER_TYPE = "neuralrecon_ros_interfaces/msg/TsdfLayer"
#: normalised TSDF = int16 value / TSDF_SCALE (the message's TSDF_SCALE constant)
TSDF_SCALE = 32767
#: largest difference between a map's normalised TSDF and its value decoded from the stream: half a step,
#: plus the float32 rounding of the decoded value
TSDF_MAX_ERROR = 0.5 / TSDF_SCALE + 2.0**-25
#: largest weight binary16 holds; larger weights are sent as this
WEIGHT_MAX = float(np.finfo(np.float16).max)


class TsdfLayerError(MessageError):
    """A TsdfLayer message is malformed (array lengths, geometry); the message names the field."""


@dataclass
class DecodedLayer:
    """A decoded TsdfLayer message: the blocks (``coords`` int64 (N, 3); ``tsdf``, ``weight`` float32
    (N, B, B, B); ``color`` uint8 (N, B, B, B, 3) or None) and the blocks removed (int64 (R, 3))."""

    sequence: int
    full: bool
    stamp_ns: int
    frame_id: str
    voxel_size: float
    block_size: int
    truncation_distance_vox: float
    T_frame_grid: np.ndarray  # pose of the grid (map) frame in frame_id, 4x4
    coords: np.ndarray
    tsdf: np.ndarray
    weight: np.ndarray
    color: np.ndarray | None
    removed: np.ndarray

    @property
    def geometry(self) -> tuple[float, int, float]:
        return self.voxel_size, self.block_size, self.truncation_distance_vox


def quantise_tsdf(tsdf: np.ndarray) -> np.ndarray:
    """int16 fixed point of normalised TSDF values (clamped to [-1, 1])."""
    return np.round(np.clip(np.asarray(tsdf, np.float64), -1.0, 1.0) * TSDF_SCALE).astype(np.int16)


def dequantise_tsdf(values: np.ndarray) -> np.ndarray:
    return (np.asarray(values, np.int16) / TSDF_SCALE).astype(np.float32)


def encode_weight(weight: np.ndarray) -> np.ndarray:
    """uint16 binary16 bit patterns of weights (>= 0; above :data:`WEIGHT_MAX` saturated)."""
    return np.minimum(np.asarray(weight, np.float32), WEIGHT_MAX).astype(np.float16).view(np.uint16)


def decode_weight(bits: np.ndarray) -> np.ndarray:
    return np.asarray(bits, np.uint16).view(np.float16).astype(np.float32)


def encode_tsdf_layer(
    types: MessageTypes,
    changes: LayerChanges,
    tsdf_map: TSDFMap,
    sequence: int,
    stamp: float,
    frame_id: str,
    T_frame_map: np.ndarray,
) -> Any:
    """The TsdfLayer message of ``changes`` (from ``ReconstructionPipeline.layer_changes``) read from
    ``tsdf_map``; ``T_frame_map`` places the map's grid in ``frame_id``."""
    coords = np.asarray(changes.blocks, np.int64).reshape(-1, 3)
    slots = tsdf_map.lookup_blocks(coords)
    if bool((slots < 0).any()):
        raise TsdfLayerError("encode_tsdf_layer was given blocks that are not in the map")
    tsdf = tsdf_map.blocks_tsdf[slots].cpu().numpy()
    weight = tsdf_map.blocks_weight[slots].cpu().numpy()
    color = tsdf_map.blocks_color
    color_bytes = np.zeros(0, np.uint8) if color is None else color[slots].cpu().numpy().reshape(-1)
    return _make(
        types, TSDF_LAYER_TYPE,
        header=make_header(types, stamp, frame_id),
        sequence=int(sequence),
        full=bool(changes.full),
        voxel_size=float(tsdf_map.voxel_size),
        block_size=int(tsdf_map.block_size),
        truncation_distance_vox=float(tsdf_map.config.truncation_distance_vox),
        grid_pose=_pose(types, np.asarray(T_frame_map, np.float64)),
        block_indices=_sequence(types, coords.astype(np.int32).reshape(-1)),
        tsdf=_sequence(types, quantise_tsdf(tsdf).reshape(-1)),
        weight=_sequence(types, encode_weight(weight).reshape(-1)),
        color=_sequence(types, color_bytes),
        removed_block_indices=_sequence(
            types, np.asarray(changes.removed, np.int64).astype(np.int32).reshape(-1)),
    )


def _array(values: Any, dtype: type) -> np.ndarray:
    """A numpy view/copy of a sequence field (numpy array from rosbags, array.array or list from rclpy)."""
    if isinstance(values, np.ndarray):
        return values.astype(dtype, copy=False).reshape(-1)
    if isinstance(values, (bytes, bytearray, memoryview)):
        return np.frombuffer(values, dtype=dtype)
    return np.asarray(values, dtype=dtype).reshape(-1)


def _coords(values: Any, field: str) -> np.ndarray:
    flat = _array(values, np.int32)
    if len(flat) % 3:
        raise TsdfLayerError(f"TsdfLayer.{field} has {len(flat)} values, not a multiple of 3")
    return flat.astype(np.int64).reshape(-1, 3)


def decode_tsdf_layer(msg: Any) -> DecodedLayer:
    """Check and decode a TsdfLayer message (rosbags or rclpy); raises :class:`TsdfLayerError`."""
    B = int(msg.block_size)
    voxel_size = float(msg.voxel_size)
    truncation = float(msg.truncation_distance_vox)
    if B < 2 or not (np.isfinite(voxel_size) and voxel_size > 0) or not truncation >= 1:
        raise TsdfLayerError(f"TsdfLayer geometry is invalid: voxel_size {voxel_size}, block_size {B}, "
                             f"truncation_distance_vox {truncation}")
    coords = _coords(msg.block_indices, "block_indices")
    n = len(coords)
    per_block = B**3
    tsdf = _array(msg.tsdf, np.int16)
    weight = _array(msg.weight, np.uint16)
    color = _array(msg.color, np.uint8)
    for field, values, expected in (("tsdf", tsdf, n * per_block), ("weight", weight, n * per_block)):
        if len(values) != expected:
            raise TsdfLayerError(f"TsdfLayer.{field} has {len(values)} values; {n} blocks of {B}^3 voxels "
                                 f"need {expected}")
    if len(color) not in (0, 3 * n * per_block):
        raise TsdfLayerError(f"TsdfLayer.color has {len(color)} values; {n} blocks need {3 * n * per_block} "
                             "(or none)")
    weights = decode_weight(weight).reshape(n, B, B, B)
    if not bool(np.isfinite(weights).all()) or bool((weights < 0).any()):
        raise TsdfLayerError("TsdfLayer.weight holds negative, infinite or NaN values")
    if len(np.unique(coords, axis=0)) != n:
        raise TsdfLayerError("TsdfLayer.block_indices lists a block more than once")
    try:
        T_frame_grid = pose_to_matrix(msg.grid_pose)
    except PoseError as exc:
        raise TsdfLayerError(f"TsdfLayer.grid_pose is unusable: {exc}") from None
    stamp = msg.header.stamp
    return DecodedLayer(
        sequence=int(msg.sequence), full=bool(msg.full),
        stamp_ns=int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec), frame_id=str(msg.header.frame_id),
        voxel_size=voxel_size, block_size=B, truncation_distance_vox=truncation,
        T_frame_grid=T_frame_grid,
        coords=coords,
        tsdf=np.clip(dequantise_tsdf(tsdf), -1.0, 1.0).reshape(n, B, B, B),
        weight=weights,
        color=color.reshape(n, B, B, B, 3).copy() if len(color) else None,  # writable, own memory
        removed=_coords(msg.removed_block_indices, "removed_block_indices"),
    )
