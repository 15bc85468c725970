"""Map files: the whole TSDF map (plus the reconstructor's recurrent state) in one versioned file.

The format is documented in ``docs/map_format.md``: a zip container holding ``header.json`` (format name,
version, geometry, frames, the list of arrays) and ``.npy`` arrays (block coordinates, TSDF, weights,
colours, recurrent-state tensors). Files are written atomically (:mod:`.atomic`); reading validates
everything (format, version, integrity, shapes, value ranges, duplicate blocks) before a map is touched,
and every problem raises :class:`MapFileError` naming it.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import re
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..core.archives import ArchiveError, check_archive
from ..core.geometry import PoseError, check_rigid
from ..core.mapping.keys import BlockRangeError, check_block_range, pack_keys
from ..core.mapping.memory import BlockData, union_blocks
from ..core.mapping.tsdf_map import MapInputError, TSDFMap
from ..core.pipeline import ReconstructionPipeline
from .atomic import atomic_write

log = logging.getLogger("neuralrecon_ros")

MAP_FORMAT = "neuralrecon_ros map"
MAP_FORMAT_VERSION = 1
HEADER_MEMBER = "header.json"
#: map arrays: name -> (numpy dtype, shape after the block count M; "B" = block_size)
MAP_ARRAYS: dict[str, tuple[str, tuple[Any, ...]]] = {
    "block_coords": ("<i8", (3,)),
    "tsdf": ("<f4", ("B", "B", "B")),
    "weight": ("<f4", ("B", "B", "B")),
    "color": ("|u1", ("B", "B", "B", 3)),
}
_ZIP64_THRESHOLD = 1 << 30


class MapFileError(ValueError):
    """A map file cannot be written, read or used here; the message names the file and the problem."""


@dataclass
class MapSnapshot:
    """A map file's contents. ``map_state`` is in ``TSDFMap.state_dict()`` form (CPU tensors)."""

    map_state: dict[str, Any]
    T_global_map: np.ndarray
    frame_id: str = ""
    reconstructor: str = ""
    reconstructor_state: dict[str, Any] | None = None
    created: str = ""
    version: int = MAP_FORMAT_VERSION
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def num_blocks(self) -> int:
        return len(self.map_state["block_coords"])

    @property
    def voxel_size(self) -> float:
        return float(self.map_state["voxel_size"])

    @property
    def block_size(self) -> int:
        return int(self.map_state["block_size"])

    @property
    def truncation_distance_vox(self) -> float:
        return float(self.map_state["truncation_distance_vox"])

    def to_map(self, device: str | torch.device = "cpu") -> TSDFMap:
        """A new :class:`TSDFMap` holding this snapshot."""
        return TSDFMap.from_state_dict(self.map_state, device=device)


# ------------------------------------------------------------------------------------------ saving


def save_map(
    path: str | os.PathLike,
    source: ReconstructionPipeline | TSDFMap,
    frame_id: str = "",
    T_global_map: np.ndarray | None = None,
    reconstructor_state: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
    compress: bool = True,
) -> Path:
    """Write the map of ``source`` to ``path`` atomically; returns the path.

    From a pipeline: its map plus the blocks it offloaded to host memory, its ``T_global_map``, its
    reconstructor's name and, if the reconstructor has ``state_dict()``, its recurrent state (arguments
    given explicitly override these). ``frame_id`` names the frame the map is expressed in through
    ``T_global_map`` (the node's ``global_frame``). ``metadata``: extra JSON values kept in the header.
    ``compress`` deflates the arrays (level 1: fast, TSDF blocks shrink several-fold).
    """
    path = Path(path)
    reconstructor = ""
    if isinstance(source, ReconstructionPipeline):
        tsdf_map = source.tsdf_map
        state = _with_offloaded(tsdf_map.state_dict(), source.memory.offloaded(tsdf_map.block_size))
        T = source.T_global_map if T_global_map is None else T_global_map
        reconstructor = source.reconstructor.name
        if reconstructor_state is None and callable(getattr(source.reconstructor, "state_dict", None)):
            reconstructor_state = source.reconstructor.state_dict()  # type: ignore[attr-defined]
        offloaded = source.memory.num_offloaded
    elif isinstance(source, TSDFMap):
        state, T, offloaded = source.state_dict(), T_global_map, 0
    else:
        raise MapFileError(f"save_map needs a pipeline or a TSDFMap, got {type(source).__name__}")
    try:
        T = check_rigid(np.eye(4) if T is None else T, "T_global_map")
    except PoseError as exc:
        raise MapFileError(f"cannot save {path}: {exc}") from None
    arrays = {name: state[name].numpy() for name in MAP_ARRAYS if state.get(name) is not None}
    state_tree = None
    if reconstructor_state is not None:
        state_tree = _encode_tree(reconstructor_state, "reconstructor_state", arrays)
    header = {
        "format": MAP_FORMAT,
        "version": MAP_FORMAT_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "software": f"neuralrecon_ros {__version__}",
        "frame_id": str(frame_id),
        "T_global_map": T.tolist(),
        "voxel_size": float(state["voxel_size"]),
        "block_size": int(state["block_size"]),
        "truncation_distance_vox": float(state["truncation_distance_vox"]),
        "num_blocks": len(state["block_coords"]),
        "offloaded_blocks_included": int(offloaded),
        "reconstructor": reconstructor,
        "reconstructor_state": state_tree,
        "arrays": {name: {"member": _member(name), "dtype": a.dtype.str, "shape": list(a.shape)}
                   for name, a in arrays.items()},
        "metadata": dict(metadata or {}),
    }
    try:
        header_bytes = json.dumps(header, indent=1, allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise MapFileError(f"cannot save {path}: metadata is not plain JSON ({exc})") from None
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with atomic_write(path, "wb") as handle, zipfile.ZipFile(handle, "w", method, compresslevel=1) as archive:
        archive.writestr(HEADER_MEMBER, header_bytes)
        for name, array in arrays.items():
            with archive.open(_member(name), "w", force_zip64=array.nbytes > _ZIP64_THRESHOLD) as member:
                np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
    return path


def _member(name: str) -> str:
    return name if name.startswith("reconstructor/") else f"map/{name}.npy"


def _with_offloaded(state: dict[str, Any], offloaded: BlockData) -> dict[str, Any]:
    """The map state plus offloaded blocks (a block in both is merged, as restoring it would do)."""
    if len(offloaded) == 0:
        return state
    in_map = BlockData(state["block_coords"].numpy(), state["tsdf"], state["weight"], state["color"])
    blocks = union_blocks(in_map, offloaded)
    return {**state, "block_coords": torch.from_numpy(blocks.coords), "tsdf": blocks.tsdf,
            "weight": blocks.weight, "color": blocks.color}


def _encode_tree(value: Any, where: str, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """JSON description of a nested state (dict / list / tuple of tensors, arrays and plain values);
    tensors and arrays go into ``arrays`` under ``reconstructor/NNNN.npy``."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        name = f"reconstructor/{len(arrays):04d}.npy"
        try:
            array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        except TypeError as exc:  # e.g. bfloat16 has no numpy dtype
            raise MapFileError(f"cannot save {where}: {exc}") from None
        if array.dtype.hasobject:
            raise MapFileError(f"cannot save {where}: object arrays are not supported")
        arrays[name] = array
        return {"tensor" if isinstance(value, torch.Tensor) else "ndarray": name}
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise MapFileError(f"cannot save {where}: dictionary keys must be strings")
        return {"dict": {k: _encode_tree(v, f"{where}.{k}", arrays) for k, v in value.items()}}
    if isinstance(value, (list, tuple)):
        kind = "list" if isinstance(value, list) else "tuple"
        return {kind: [_encode_tree(v, f"{where}[{i}]", arrays) for i, v in enumerate(value)]}
    if value is None or isinstance(value, (bool, int, float, str)):
        if isinstance(value, float) and not math.isfinite(value):
            raise MapFileError(f"cannot save {where}: {value} is not finite")
        return {"value": value}
    raise MapFileError(f"cannot save {where}: values of type {type(value).__name__} are not supported "
                       "(tensors, arrays, dicts, lists, tuples, numbers, strings, None)")


# ------------------------------------------------------------------------------------------ loading


def load_map(path: str | os.PathLike) -> MapSnapshot:
    """Read and validate a map file; raises :class:`MapFileError` naming the problem."""
    path = Path(path)
    if not path.is_file():
        raise MapFileError(f"map file {path} does not exist" if not path.exists() else f"{path} is no file")
    try:
        with zipfile.ZipFile(path) as archive:
            check_archive(archive, f"map file {path}")
            return _read(archive, path)
    except ArchiveError as exc:
        raise MapFileError(str(exc)) from None
    except zipfile.BadZipFile as exc:
        raise MapFileError(
            f"{path} is no neuralrecon_ros map file, or it is corrupt or truncated ({exc})") from None
    except (zlib.error, EOFError, OSError) as exc:
        raise MapFileError(f"{path} is corrupt or truncated ({type(exc).__name__}: {exc})") from None


def _read(archive: zipfile.ZipFile, path: Path) -> MapSnapshot:
    def fail(problem: str) -> MapFileError:
        return MapFileError(f"map file {path}: {problem}")

    if HEADER_MEMBER not in archive.namelist():
        raise fail(f"not a neuralrecon_ros map (no {HEADER_MEMBER})")
    try:
        header = json.loads(archive.read(HEADER_MEMBER))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise fail(f"{HEADER_MEMBER} is not valid JSON ({exc})") from None
    if not isinstance(header, dict) or header.get("format") != MAP_FORMAT:
        found = header.get("format") if isinstance(header, dict) else None
        raise fail(f"not a neuralrecon_ros map (format {found!r}, expected {MAP_FORMAT!r})")
    version = header.get("version")
    if version != MAP_FORMAT_VERSION:
        raise fail(f"format version {version!r} is not supported: this neuralrecon_ros {__version__} reads "
                   f"version {MAP_FORMAT_VERSION}")
    try:
        voxel_size = float(header["voxel_size"])
        block_size = int(header["block_size"])
        truncation = float(header["truncation_distance_vox"])
        num_blocks = int(header["num_blocks"])
        listed = dict(header["arrays"])
        T = check_rigid(np.asarray(header["T_global_map"], dtype=np.float64), "T_global_map")
    except (KeyError, TypeError, ValueError) as exc:  # PoseError is a ValueError
        raise fail(f"header is incomplete or malformed ({type(exc).__name__}: {exc})") from None
    if not (math.isfinite(voxel_size) and voxel_size > 0 and block_size >= 2 and truncation >= 1
            and num_blocks >= 0):
        raise fail(f"invalid geometry: voxel_size {voxel_size}, block_size {block_size}, "
                   f"truncation_distance_vox {truncation}, num_blocks {num_blocks}")

    def read_array(name: str) -> np.ndarray:
        entry = listed.get(name)
        if not isinstance(entry, dict) or "member" not in entry:
            raise fail(f"header does not list array {name!r}")
        member_name = str(entry["member"])
        if not _MEMBER_NAME.fullmatch(member_name) or (name in MAP_ARRAYS and member_name != _member(name)):
            raise fail(f"array {name!r} names member {member_name!r}, which no map file has")
        try:
            with archive.open(member_name) as member:
                _check_npy_header(member, archive.getinfo(member_name).file_size, name, fail)
            with archive.open(member_name) as member:
                array = np.lib.format.read_array(member, allow_pickle=False)
                if member.read(1):
                    raise fail(f"array {name!r} has trailing bytes")
        except KeyError:
            raise fail(f"array {name!r} (member {member_name!r}) is missing") from None
        except MapFileError:
            raise
        except ValueError as exc:
            raise fail(f"array {name!r} is unreadable ({exc})") from None
        if array.dtype.str != entry.get("dtype") or list(array.shape) != entry.get("shape"):
            raise fail(f"array {name!r} is {array.dtype.str} {list(array.shape)}, the header says "
                       f"{entry.get('dtype')} {entry.get('shape')}")
        return array

    state: dict[str, Any] = {"voxel_size": voxel_size, "block_size": block_size,
                             "truncation_distance_vox": truncation}
    for name, (dtype, tail) in MAP_ARRAYS.items():
        if name == "color" and name not in listed:
            state[name] = None
            continue
        array = read_array(name)
        shape = (num_blocks, *(block_size if d == "B" else d for d in tail))
        if array.dtype.str != dtype or array.shape != shape:
            raise fail(f"array {name!r} is {array.dtype.str} {array.shape}, expected {dtype} {shape}")
        state[name] = torch.from_numpy(array)
    _check_values(state, fail)
    tree = header.get("reconstructor_state")
    recurrent = None if tree is None else _decode_tree(tree, read_array, fail)
    if recurrent is not None and not isinstance(recurrent, dict):
        raise fail("reconstructor_state is not a dictionary")
    metadata = header.get("metadata") or {}
    return MapSnapshot(
        map_state=state, T_global_map=T, frame_id=str(header.get("frame_id", "")),
        reconstructor=str(header.get("reconstructor", "")), reconstructor_state=recurrent,
        created=str(header.get("created", "")), version=version,
        metadata=metadata if isinstance(metadata, dict) else {"value": metadata},
    )


#: the members a map file may name: its map arrays and the reconstructor state's arrays
_MEMBER_NAME = re.compile(r"map/[a-z_]+\.npy|reconstructor/\d{4,}\.npy")


def _check_npy_header(member: Any, member_bytes: int, name: str, fail: Callable[[str], MapFileError]) -> None:
    """Read a ``.npy`` member's header and refuse it before any array is allocated: a dtype holding Python
    objects (pickles), or a shape needing more bytes than the member holds (numpy would allocate it first)."""
    read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    try:
        version = np.lib.format.read_magic(member)
        if version not in read_header:
            raise ValueError(f".npy format version {version}, which map files do not use")
        shape, _, dtype = read_header[version](member)
    except ValueError as exc:
        raise fail(f"array {name!r} is unreadable ({exc})") from None
    if dtype.hasobject:
        raise fail(f"array {name!r} holds Python objects (dtype {dtype}); map files never unpickle: refused")
    needed = math.prod(shape) * dtype.itemsize
    if needed > member_bytes:
        raise fail(f"array {name!r} declares shape {list(shape)} ({needed} bytes) but its member holds only "
                   f"{member_bytes} bytes")


def _check_values(state: dict[str, Any], fail: Callable[[str], MapFileError]) -> None:
    tsdf, weight, coords = state["tsdf"], state["weight"], state["block_coords"]
    if not bool(torch.isfinite(tsdf).all()) or bool((tsdf.abs() > 1).any()):
        raise fail("TSDF values are not all finite and within [-1, 1]")
    if not bool(torch.isfinite(weight).all()) or bool((weight < 0).any()):
        raise fail("weights are not all finite and >= 0")
    try:
        check_block_range(coords)
    except BlockRangeError as exc:
        raise fail(str(exc)) from None
    if len(torch.unique(pack_keys(coords))) != len(coords):
        raise fail("a block coordinate is listed more than once")


def _decode_tree(
    node: Any, read_array: Callable[[str], np.ndarray], fail: Callable[[str], MapFileError]
) -> Any:
    if not isinstance(node, dict) or len(node) != 1:
        raise fail(f"malformed reconstructor_state entry {node!r}")
    kind, value = next(iter(node.items()))
    if kind == "tensor":
        return torch.from_numpy(read_array(value))
    if kind == "ndarray":
        return read_array(value)
    if kind == "dict" and isinstance(value, dict):
        return {k: _decode_tree(v, read_array, fail) for k, v in value.items()}
    if kind in ("list", "tuple") and isinstance(value, list):
        items = [_decode_tree(v, read_array, fail) for v in value]
        return items if kind == "list" else tuple(items)
    if kind == "value":
        return value
    raise fail(f"malformed reconstructor_state entry of kind {kind!r}")


# ------------------------------------------------------------------------------------------ using


def check_compatible(
    snapshot: MapSnapshot, pipeline: ReconstructionPipeline, frame_id: str | None = None
) -> None:
    """Raise :class:`MapFileError` unless ``snapshot`` can continue in ``pipeline``: same voxel size, block
    size and truncation, same ``T_global_map`` (world-convention parameters) and, when both name one, the
    same frame."""
    config = pipeline.tsdf_map.config
    problems = []
    if not math.isclose(snapshot.voxel_size, float(config.voxel_size), rel_tol=1e-9):
        problems.append(f"voxel_size {snapshot.voxel_size} (running: {config.voxel_size})")
    if snapshot.block_size != int(config.block_size):
        problems.append(f"block_size {snapshot.block_size} (running: {config.block_size})")
    truncation = float(config.truncation_distance_vox)
    if not math.isclose(snapshot.truncation_distance_vox, truncation, rel_tol=1e-9):
        problems.append(f"truncation_distance_vox {snapshot.truncation_distance_vox} "
                        f"(running: {config.truncation_distance_vox})")
    if not np.allclose(snapshot.T_global_map, pipeline.T_global_map, rtol=0.0, atol=1e-9):
        problems.append(f"T_global_map {np.round(snapshot.T_global_map, 6).tolist()} (running: "
                        f"{np.round(pipeline.T_global_map, 6).tolist()}; world-convention parameters differ)")
    if frame_id and snapshot.frame_id and frame_id != snapshot.frame_id:
        problems.append(f"frame '{snapshot.frame_id}' (running global_frame: '{frame_id}')")
    if problems:
        raise MapFileError("the map file does not match this configuration: it has " + "; ".join(problems))


def load_map_into(
    pipeline: ReconstructionPipeline, path: str | os.PathLike, frame_id: str | None = None
) -> MapSnapshot:
    """Read ``path``, check it against ``pipeline`` (:func:`check_compatible`) and swap it in; on any
    error (:class:`MapFileError`) the pipeline's map is untouched.

    The recurrent state is restored when the file has one, it was saved by a reconstructor of the same
    name and the running one has ``load_state_dict``; otherwise the map alone is loaded (logged).
    """
    snapshot = load_map(path)
    check_compatible(snapshot, pipeline, frame_id)
    recurrent = snapshot.reconstructor_state
    reconstructor = pipeline.reconstructor
    if recurrent is not None and (snapshot.reconstructor != reconstructor.name
                                  or not callable(getattr(reconstructor, "load_state_dict", None))):
        log.warning("map file %s: the recurrent state saved by reconstructor '%s' cannot be restored into "
                    "'%s'; loading the map alone", path, snapshot.reconstructor, reconstructor.name)
        recurrent = None
    try:
        pipeline.load_map_state(snapshot.map_state, recurrent)
    except MapInputError as exc:
        raise MapFileError(f"map file {path}: {exc}") from None
    except Exception as exc:  # the reconstructor rejected its state; load_map_state rolled back
        raise MapFileError(f"map file {path}: the {reconstructor.name} reconstructor rejected the saved "
                           f"recurrent state ({type(exc).__name__}: {exc})") from exc
    log.info("loaded map %s: %d blocks (saved %s)", path, snapshot.num_blocks, snapshot.created or "?")
    return snapshot
