"""Map files: bit-exact round trips (map, offloaded blocks, recurrent state, metadata), strict validation
of damaged or foreign files with the running map untouched, and atomic writes."""

from __future__ import annotations

import io
import json
import logging
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from neuralrecon_ros.core.geometry import look_at, make_transform, rotation_about_axis
from neuralrecon_ros.core.keyframes import KeyframeConfig
from neuralrecon_ros.core.mapping.config import MapConfig
from neuralrecon_ros.core.mapping.depth_fusion import DepthFusionReconstructor
from neuralrecon_ros.core.mapping.memory import MemoryBoundsConfig
from neuralrecon_ros.core.mapping.tsdf_map import TSDFMap
from neuralrecon_ros.core.pipeline import ReconstructionPipeline
from neuralrecon_ros.core.types import CameraIntrinsics, Frame
from neuralrecon_ros.io.atomic import OutputError
from neuralrecon_ros.io.map_file import (
    HEADER_MEMBER,
    MAP_FORMAT,
    MapFileError,
    check_compatible,
    load_map,
    load_map_into,
    save_map,
)

K = CameraIntrinsics(30.0, 30.0, 19.5, 14.5, 40, 30)
T_MAP_GLOBAL = make_transform(rotation_about_axis(np.array([0.0, 0.0, 1.0]), 0.4), [0.5, -1.0, 1.2])


class RecurrentFusion(DepthFusionReconstructor):
    """Depth fusion with a stand-in recurrent state (per-level tensors, like NeuralRecon's GRU)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.state: dict[str, Any] = {"levels": [], "steps": 0}

    def on_frame(self, frame: Frame, is_keyframe: bool):
        level = {"coords": torch.randint(-50, 50, (7, 3)), "feats": torch.randn(7, 4, dtype=torch.float32)}
        self.state = {"levels": self.state["levels"] + [level], "steps": self.state["steps"] + 1,
                      "origin": np.array([1.5, -2.0, 0.25]), "tag": "fused", "empty": None, "pair": (3, 0.5)}
        return super().on_frame(frame, is_keyframe)

    def state_dict(self) -> dict[str, Any]:
        return self.state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "levels" not in state:
            raise ValueError("recurrent state lacks 'levels'")
        self.state = state


def make_pipeline(voxel_size: float = 0.04, T_map_global: np.ndarray = T_MAP_GLOBAL, **memory: Any
                  ) -> ReconstructionPipeline:
    tsdf_map = TSDFMap(MapConfig(voxel_size=voxel_size))
    return ReconstructionPipeline(KeyframeConfig(), tsdf_map, RecurrentFusion(tsdf_map), T_map_global,
                                  memory_config=MemoryBoundsConfig(**memory))


def wall_frame(i: int) -> Frame:
    """A camera looking at a wall 1.5 m away (global frame), shifted along the wall per frame."""
    eye = np.array([0.2 * i, 0.0, 1.0])
    T_global_camera = look_at(eye, eye + np.array([0.2, 1.0, -0.3]))
    rng = np.random.default_rng(i)
    depth = (1.5 + 0.05 * rng.random((K.height, K.width))).astype(np.float32)
    image = rng.integers(0, 256, (K.height, K.width, 3), dtype=np.uint8)
    return Frame(float(i), image, K, T_global_camera, depth, "cam", i)


@pytest.fixture
def mapped() -> ReconstructionPipeline:
    pipeline = make_pipeline()
    for i in range(4):
        pipeline.process(wall_frame(i))
    assert pipeline.tsdf_map.num_blocks > 20 and pipeline.tsdf_map.has_color
    return pipeline


def state_of(pipeline: ReconstructionPipeline) -> dict[str, Any]:
    return pipeline.tsdf_map.state_dict()


def assert_states_equal(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        if isinstance(value, torch.Tensor):
            assert value.dtype == b[key].dtype and torch.equal(value, b[key]), key
        else:
            assert value == b[key], key


def assert_trees_equal(a: Any, b: Any) -> None:
    assert type(a) is type(b)
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_trees_equal(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_trees_equal(x, y)
    else:
        assert a == b


@pytest.mark.parametrize("compress", [True, False])
def test_round_trip_is_bit_exact(tmp_path, mapped, compress):
    path = save_map(tmp_path / "map.nrmap", mapped, frame_id="odom", metadata={"robot": "r2", "run": 7},
                    compress=compress)
    snapshot = load_map(path)
    assert_states_equal(snapshot.map_state, state_of(mapped))
    assert np.array_equal(snapshot.T_global_map, mapped.T_global_map)
    assert (snapshot.frame_id, snapshot.reconstructor, snapshot.version) == ("odom", "depth", 1)
    assert snapshot.metadata == {"robot": "r2", "run": 7} and snapshot.created.endswith("+00:00")
    assert_trees_equal(snapshot.reconstructor_state, mapped.reconstructor.state_dict())
    with zipfile.ZipFile(path) as archive:
        header = json.loads(archive.read(HEADER_MEMBER))
    assert header["format"] == MAP_FORMAT and header["num_blocks"] == mapped.tsdf_map.num_blocks

    fresh = make_pipeline()
    load_map_into(fresh, path, frame_id="odom")
    assert_states_equal(state_of(fresh), state_of(mapped))
    assert_trees_equal(fresh.reconstructor.state_dict(), mapped.reconstructor.state_dict())
    original, reloaded = mapped.mesh(), fresh.mesh()
    assert np.array_equal(original.vertices, reloaded.vertices)
    assert np.array_equal(original.faces, reloaded.faces)
    assert fresh.mesh_chunks().full  # a viewer gets the loaded map from scratch
    assert snapshot.to_map().num_blocks == mapped.tsdf_map.num_blocks


def test_continuing_after_a_load_integrates_on_top(tmp_path, mapped):
    path = save_map(tmp_path / "map.nrmap", mapped, frame_id="odom")
    fresh = make_pipeline()
    load_map_into(fresh, path)
    for pipeline in (fresh, mapped):
        pipeline.process(wall_frame(9))
    assert_states_equal(state_of(fresh), state_of(mapped))


def test_offloaded_blocks_are_saved_with_the_map(tmp_path):
    pipeline = make_pipeline(map_clearing_radius_m=1.2, map_clearing_offload=True)
    for i in range(0, 20, 2):
        pipeline.process(wall_frame(i))
    in_map, offloaded = pipeline.tsdf_map.num_blocks, pipeline.memory.num_offloaded
    assert in_map > 0 and offloaded > 0
    snapshot = load_map(save_map(tmp_path / "map.nrmap", pipeline))
    assert snapshot.num_blocks == in_map + offloaded
    stored = pipeline.memory.offloaded(pipeline.tsdf_map.block_size)
    coords = snapshot.map_state["block_coords"].numpy()
    np.testing.assert_array_equal(coords[:in_map], pipeline.tsdf_map.block_coords())
    np.testing.assert_array_equal(coords[in_map:], stored.coords)
    assert torch.equal(snapshot.map_state["tsdf"][in_map:], stored.tsdf)
    assert torch.equal(snapshot.map_state["color"][in_map:], stored.color)


def test_a_bare_map_saves_with_an_identity_transform(tmp_path, mapped):
    snapshot = load_map(save_map(tmp_path / "bare.nrmap", mapped.tsdf_map))
    assert np.array_equal(snapshot.T_global_map, np.eye(4)) and snapshot.reconstructor_state is None
    assert_states_equal(snapshot.map_state, state_of(mapped))


# ------------------------------------------------------------------------------------- bad files


def rewrite(source: Path, target: Path, header: dict[str, Any] | None = None,
            arrays: dict[str, np.ndarray] | None = None, drop: str | None = None) -> Path:
    """Copy a map file, patching header keys and replacing or dropping members."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for name in old.namelist():
            if name == drop:
                continue
            data = old.read(name)
            if name == HEADER_MEMBER and header:
                data = json.dumps({**json.loads(data), **header}).encode()
            elif arrays and name in arrays:
                with new.open(name, "w") as member:
                    np.lib.format.write_array(member, arrays[name])
                continue
            new.writestr(name, data)
    return target


def damaged_files(good: Path, tmp: Path, tsdf: np.ndarray) -> list[tuple[Path, str]]:
    data = good.read_bytes()
    truncated = tmp / "truncated.nrmap"
    truncated.write_bytes(data[: len(data) // 2])
    flipped = tmp / "flipped.nrmap"
    raw = bytearray(data)
    middle = len(raw) // 2
    raw[middle:middle + 8] = bytes(b ^ 0xFF for b in raw[middle:middle + 8])
    flipped.write_bytes(bytes(raw))
    text = tmp / "text.nrmap"
    text.write_text("this is not a map\n")
    empty = tmp / "empty.nrmap"
    empty.write_bytes(b"")
    nan = tsdf.copy()
    nan[0, 0, 0, 0] = np.nan
    return [
        (truncated, "corrupt or truncated"),
        (flipped, "corrupt or truncated|Bad CRC|unreadable|within"),
        (text, "corrupt or truncated"),
        (empty, "corrupt or truncated"),
        (tmp / "missing.nrmap", "does not exist"),
        (rewrite(good, tmp / "v2.nrmap", header={"version": 2}), "version 2 is not supported"),
        (rewrite(good, tmp / "other.nrmap", header={"format": "other map"}), "not a neuralrecon_ros map"),
        (rewrite(good, tmp / "noheader.nrmap", drop=HEADER_MEMBER), "not a neuralrecon_ros map"),
        (rewrite(good, tmp / "noweight.nrmap", drop="map/weight.npy"), "'weight'.*missing"),
        (rewrite(good, tmp / "shape.nrmap", arrays={"map/tsdf.npy": tsdf[:-1]}), "'tsdf' is <f4"),
        (rewrite(good, tmp / "nan.nrmap", arrays={"map/tsdf.npy": nan}), "finite"),
        (rewrite(good, tmp / "nohead.nrmap", header={"T_global_map": [[1, 0], [0, 1]]}), "header is"),
    ]


def test_damaged_or_foreign_files_raise_named_errors_and_leave_the_map_untouched(tmp_path, mapped):
    good = save_map(tmp_path / "good.nrmap", mapped, frame_id="odom")
    target = make_pipeline()
    for i in (5, 6):
        target.process(wall_frame(i))
    before, recurrent = state_of(target), target.reconstructor.state_dict()
    mesh_before = target.mesh()
    for path, message in damaged_files(good, tmp_path, load_map(good).map_state["tsdf"].numpy()):
        with pytest.raises(MapFileError, match=message) as error:
            load_map_into(target, path, frame_id="odom")
        assert path.name in str(error.value)
        assert_states_equal(state_of(target), before)
        assert target.reconstructor.state_dict() is recurrent
    assert np.array_equal(target.mesh().vertices, mesh_before.vertices)


def test_duplicate_blocks_are_rejected(tmp_path, mapped):
    good = save_map(tmp_path / "good.nrmap", mapped)
    coords = load_map(good).map_state["block_coords"].numpy().copy()
    coords[1] = coords[0]
    with pytest.raises(MapFileError, match="more than once"):
        load_map(rewrite(good, tmp_path / "dup.nrmap", arrays={"map/block_coords.npy": coords}))


class _Exploit:
    """Unpickling this writes a marker file: proof that a loader unpickled what it was given."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "unpickled"))


def with_members(source: Path, target: Path, members: dict[str, bytes], header: dict[str, Any] | None = None,
                 method: int = zipfile.ZIP_STORED) -> Path:
    """Copy a zip, patching header keys and adding (or replacing) members."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w", method) as new:
        for name in old.namelist():
            if name in members:
                continue
            data = old.read(name)
            if name == HEADER_MEMBER and header:
                data = json.dumps({**json.loads(data), **header}).encode()
            new.writestr(name, data)
        for name, data in members.items():
            new.writestr(name, data)
    return target


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def test_forged_members_pickles_and_bombs_are_refused_and_the_map_is_untouched(tmp_path, mapped, monkeypatch):
    good = save_map(tmp_path / "good.nrmap", mapped, frame_id="odom")
    arrays = json.loads(zipfile.ZipFile(good).read(HEADER_MEMBER))["arrays"]
    tsdf = zipfile.ZipFile(good).read("map/tsdf.npy")
    marker = tmp_path / "unpickled.txt"
    pickled = np.empty(1, dtype=object)
    pickled[0] = _Exploit(marker)
    absurd = io.BytesIO()
    np.lib.format.write_array_header_1_0(absurd, {"descr": "<f4", "fortran_order": False,
                                                  "shape": (10**12, 8, 8, 8)})
    def listing(member: str) -> dict[str, Any]:
        return {"arrays": {**arrays, "tsdf": {**arrays["tsdf"], "member": member}}}

    cases = [
        (with_members(good, tmp_path / "climb.nrmap", {"../map/tsdf.npy": tsdf}, listing("../map/tsdf.npy")),
         "'../map/tsdf.npy' points outside the archive"),
        (with_members(good, tmp_path / "abs.nrmap", {"/etc/tsdf.npy": tsdf}), "'/etc/tsdf.npy' points outside"),
        (with_members(good, tmp_path / "other.nrmap", {}, listing("map/weight.npy")),
         "names member 'map/weight.npy', which no map file has"),
        (with_members(good, tmp_path / "pickle.nrmap", {"map/tsdf.npy": npy_bytes(pickled)}),
         "holds Python objects .* never unpickle"),
        (with_members(good, tmp_path / "absurd.nrmap", {"map/tsdf.npy": absurd.getvalue() + bytes(64)}),
         r"declares shape \[1000000000000, 8, 8, 8\] \(2048000000000000 bytes\) but its member holds only"),
        # a real decompression bomb: a TSDF of 64 MiB of zeros in a 64 kB member, against a 16 MiB budget
        (with_members(good, tmp_path / "bomb.nrmap", {"map/tsdf.npy": npy_bytes(np.zeros((1 << 15, 8, 8, 8),
                                                                                         np.float32))},
                      method=zipfile.ZIP_DEFLATED), "would unpack to 0.06 GiB, more than the 0.02 GiB"),
    ]
    monkeypatch.setattr("neuralrecon_ros.core.archives.memory_budget_bytes", lambda: 16 << 20)
    target = make_pipeline()
    target.process(wall_frame(5))
    before = state_of(target)
    for path, message in cases:
        assert path.stat().st_size < 1 << 20
        with pytest.raises(MapFileError, match=message) as error:
            load_map_into(target, path, frame_id="odom")
        assert path.name in str(error.value)
        assert_states_equal(state_of(target), before)
    assert not marker.exists()


def test_geometry_transform_and_frame_must_match_the_running_configuration(tmp_path, mapped):
    path = save_map(tmp_path / "map.nrmap", mapped, frame_id="odom")
    snapshot = load_map(path)
    for pipeline, frame_id, message in [
        (make_pipeline(voxel_size=0.05), "odom", r"voxel_size 0.04 \(running: 0.05\)"),
        (make_pipeline(T_map_global=np.eye(4)), "odom", "T_global_map"),
        (make_pipeline(), "map", "frame 'odom' \\(running global_frame: 'map'\\)"),
    ]:
        pipeline.process(wall_frame(3))
        before = state_of(pipeline)
        with pytest.raises(MapFileError, match=message):
            load_map_into(pipeline, path, frame_id=frame_id)
        assert_states_equal(state_of(pipeline), before)
    check_compatible(snapshot, make_pipeline(), frame_id=None)  # no frame named: not checked


def test_rejected_recurrent_state_rolls_back(tmp_path, mapped):
    path = save_map(tmp_path / "map.nrmap", mapped, reconstructor_state={"no_levels": torch.zeros(2)})
    target = make_pipeline()
    target.process(wall_frame(8))
    before, recurrent = state_of(target), target.reconstructor.state_dict()
    with pytest.raises(MapFileError, match="rejected the saved recurrent state.*lacks 'levels'"):
        load_map_into(target, path)
    assert_states_equal(state_of(target), before)
    assert target.reconstructor.state_dict() is recurrent


def test_state_of_another_reconstructor_is_skipped_with_a_warning(tmp_path, mapped, caplog):
    path = save_map(tmp_path / "map.nrmap", mapped)
    tsdf_map = TSDFMap(MapConfig(voxel_size=0.04))
    plain = ReconstructionPipeline(KeyframeConfig(), tsdf_map, DepthFusionReconstructor(tsdf_map),
                                   T_MAP_GLOBAL)
    caplog.set_level(logging.WARNING, logger="neuralrecon_ros")
    load_map_into(plain, path)
    assert plain.tsdf_map.num_blocks == mapped.tsdf_map.num_blocks
    assert any("cannot be restored" in r.message for r in caplog.records)


def test_writes_are_atomic(tmp_path, mapped, monkeypatch):
    path = save_map(tmp_path / "map.nrmap", mapped)
    original = path.read_bytes()

    def broken(*args: Any, **kwargs: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(np.lib.format, "write_array", broken)
    with pytest.raises(OSError, match="disk full"):
        save_map(path, make_pipeline())
    monkeypatch.undo()
    assert path.read_bytes() == original and sorted(p.name for p in tmp_path.iterdir()) == ["map.nrmap"]
    with pytest.raises(OutputError, match="cannot write"):
        save_map(tmp_path / "no" / "such" / "dir.nrmap", mapped)
    with pytest.raises(MapFileError, match="reconstructor_state.bad: values of type set"):
        save_map(tmp_path / "other.nrmap", mapped, reconstructor_state={"bad": {1, 2}})
    assert not (tmp_path / "other.nrmap").exists()
