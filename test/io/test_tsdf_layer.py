"""TsdfLayer messages (quantisation bounds, CDR and bags, malformed input) and the replica's sequence rules."""

from __future__ import annotations

import array
import copy

import numpy as np
import pytest
import torch
from rosbags.typesys import Stores, get_typestore

from neuralrecon_ros.core.geometry import make_transform, rotation_about_axis
from neuralrecon_ros.core.mapping.config import MapConfig
from neuralrecon_ros.core.mapping.layer_changes import LayerChanges
from neuralrecon_ros.core.mapping.tsdf_map import TSDFMap
from neuralrecon_ros.io import messages as m
from neuralrecon_ros.io.bags import BagReader, BagWriter
from neuralrecon_ros.io.interfaces import register_custom_types
from neuralrecon_ros.io.layer_replica import APPLIED, REJECTED, RESYNCED, STALE, WAITING, LayerReplica
from neuralrecon_ros.io.tsdf_layer import (
    TSDF_LAYER_TYPE,
    TSDF_MAX_ERROR,
    TSDF_SCALE,
    TsdfLayerError,
    decode_tsdf_layer,
    decode_weight,
    dequantise_tsdf,
    encode_tsdf_layer,
    encode_weight,
    quantise_tsdf,
)

B = 4
T_FRAME_MAP = make_transform(rotation_about_axis([1.0, 0.0, 0.0], np.pi / 2), [0.5, -1.0, 1.4])


@pytest.fixture(scope="module")
def types():
    typestore = get_typestore(Stores.ROS2_HUMBLE)
    register_custom_types(typestore)
    return m.rosbags_types(typestore)


def random_map(seed: int = 0, n_blocks: int = 5, color: bool = True) -> TSDFMap:
    rng = np.random.default_rng(seed)
    tsdf_map = TSDFMap(MapConfig(voxel_size=0.05, block_size=B, truncation_distance_vox=4.0))
    coords = np.unique(rng.integers(-20, 20, (n_blocks, 3)), axis=0)
    n = len(coords)
    tsdf = rng.uniform(-1, 1, (n, B, B, B)).astype(np.float32)
    weight = rng.integers(0, 101, (n, B, B, B)).astype(np.float32)
    colors = rng.integers(0, 256, (n, B, B, B, 3), dtype=np.uint8) if color else None
    tsdf_map.set_blocks(coords, tsdf, weight, colors)
    return tsdf_map


def encode(types, tsdf_map: TSDFMap, sequence: int, full: bool, blocks=None, removed=()) -> object:
    blocks = tsdf_map.block_coords() if blocks is None else np.asarray(blocks, np.int64).reshape(-1, 3)
    changes = LayerChanges(blocks, np.asarray(removed, np.int64).reshape(-1, 3), full=full)
    return encode_tsdf_layer(types, changes, tsdf_map, sequence, 12.5, "odom", T_FRAME_MAP)


def cdr(types, msg) -> object:
    store = types.typestore
    return store.deserialize_cdr(store.serialize_cdr(msg, TSDF_LAYER_TYPE), TSDF_LAYER_TYPE)


def assert_maps_match(a: TSDFMap, b: TSDFMap) -> None:
    coords = b.block_coords()
    slots_a = a.lookup_blocks(coords)
    assert a.num_blocks == b.num_blocks and bool((slots_a >= 0).all())
    slots_b = b.lookup_blocks(coords)
    error = (a.blocks_tsdf[slots_a] - b.blocks_tsdf[slots_b]).abs().max()
    assert float(error) <= TSDF_MAX_ERROR * (1 + 1e-6)
    assert torch.equal(a.blocks_weight[slots_a], b.blocks_weight[slots_b])
    assert (a.blocks_color is None) == (b.blocks_color is None)
    if b.blocks_color is not None:
        assert torch.equal(a.blocks_color[slots_a], b.blocks_color[slots_b])


# ------------------------------------------------------------------------------------- quantisation


def test_tsdf_quantisation_error_bound():
    values = np.concatenate([np.linspace(-1, 1, 200_001, dtype=np.float32), [-1.0, 0.0, 1.0, 1e-7, -1e-7]])
    decoded = dequantise_tsdf(quantise_tsdf(values))
    assert np.abs(decoded - values).max() <= TSDF_MAX_ERROR * (1 + 1e-6)
    assert TSDF_MAX_ERROR == pytest.approx(1.53e-5, rel=3e-3)
    assert dequantise_tsdf(quantise_tsdf(np.array([-1.0, 0.0, 1.0]))).tolist() == [-1.0, 0.0, 1.0]
    assert quantise_tsdf(np.array([3.0, -3.0])).tolist() == [TSDF_SCALE, -TSDF_SCALE]  # clamped


def test_weight_is_exact_for_integers_up_to_2048_and_saturates():
    integers = np.arange(0, 2049, dtype=np.float32)
    assert np.array_equal(decode_weight(encode_weight(integers)), integers)
    rng = np.random.default_rng(1)
    values = rng.uniform(0.0, 60000.0, 10_000).astype(np.float32)
    relative = np.abs(decode_weight(encode_weight(values)) - values) / values
    assert relative.max() <= 2.0**-11
    assert decode_weight(encode_weight(np.array([1e9], np.float32))).tolist() == [65504.0]


# ------------------------------------------------------------------------------------- messages


def test_round_trip_through_cdr(types):
    tsdf_map = random_map()
    msg = cdr(types, encode(types, tsdf_map, 7, full=False, removed=[[100, 0, -3]]))
    layer = decode_tsdf_layer(msg)
    assert (layer.sequence, layer.full, layer.stamp_ns, layer.frame_id) == (7, False, 12_500_000_000, "odom")
    assert layer.geometry == (0.05, B, 4.0)
    np.testing.assert_allclose(layer.T_frame_grid, T_FRAME_MAP, atol=1e-12)
    assert layer.removed.tolist() == [[100, 0, -3]]
    slots = tsdf_map.lookup_blocks(layer.coords)
    assert np.abs(layer.tsdf - tsdf_map.blocks_tsdf[slots].numpy()).max() <= TSDF_MAX_ERROR * (1 + 1e-6)
    assert np.array_equal(layer.weight, tsdf_map.blocks_weight[slots].numpy())
    assert np.array_equal(layer.color, tsdf_map.blocks_color[slots].numpy())
    # 2 bytes TSDF + 2 bytes weight + 3 bytes colour per voxel, 12 per block index
    assert len(msg.tsdf) == len(msg.weight) == len(layer.coords) * B**3 and len(msg.color) == 3 * len(msg.tsdf)


def test_a_map_without_colour_sends_none(types):
    layer = decode_tsdf_layer(encode(types, random_map(color=False), 0, full=True))
    assert layer.color is None and len(layer.coords) > 0


def test_rclpy_style_sequences_decode(types):
    """rclpy hands sequences as array.array; the decoder takes those as well as numpy arrays."""
    msg = encode(types, random_map(), 3, full=True)
    for field, code in (("block_indices", "i"), ("tsdf", "h"), ("weight", "H"), ("color", "B"),
                        ("removed_block_indices", "i")):
        setattr(msg, field, array.array(code, np.asarray(getattr(msg, field)).tobytes()))
    reference = decode_tsdf_layer(encode(types, random_map(), 3, full=True))
    layer = decode_tsdf_layer(msg)
    assert np.array_equal(layer.tsdf, reference.tsdf) and np.array_equal(layer.color, reference.color)


def test_a_bag_carries_the_layer_stream(types, tmp_path):
    tsdf_map = random_map()
    with BagWriter(tmp_path / "layer.mcap") as writer:
        register_custom_types(writer.typestore)
        writer.add_topic("/neuralrecon_node/tsdf_layer", TSDF_LAYER_TYPE)
        writer.write("/neuralrecon_node/tsdf_layer", 1, encode(writer.types, tsdf_map, 0, full=True))
    with BagReader(tmp_path / "layer.mcap") as reader:  # the definition comes from the bag
        (message,) = list(reader.messages())
    replica = LayerReplica()
    assert replica.apply(message.msg) == RESYNCED
    assert_maps_match(replica.tsdf_map, tsdf_map)


@pytest.mark.parametrize("field, value, problem", [
    ("tsdf", np.zeros(3, np.int16), "TsdfLayer.tsdf has 3 values"),
    ("weight", np.zeros(3, np.uint16), "TsdfLayer.weight has 3 values"),
    ("color", np.zeros(5, np.uint8), "TsdfLayer.color has 5 values"),
    ("block_indices", np.zeros(4, np.int32), "not a multiple of 3"),
    ("block_size", 1, "geometry is invalid"),
    ("voxel_size", float("nan"), "geometry is invalid"),
])
def test_malformed_messages_are_named(types, field, value, problem):
    msg = encode(types, random_map(), 0, full=True)
    setattr(msg, field, value)
    with pytest.raises(TsdfLayerError, match=problem):
        decode_tsdf_layer(msg)


def test_bad_weights_duplicates_and_pose_are_named(types):
    msg = encode(types, random_map(), 0, full=True)
    msg.weight = msg.weight.copy()
    msg.weight[5] = np.array([np.nan], np.float16).view(np.uint16)[0]
    with pytest.raises(TsdfLayerError, match="weight holds negative"):
        decode_tsdf_layer(msg)
    msg = encode(types, random_map(), 0, full=True)
    msg.block_indices = np.tile(msg.block_indices[:3], len(msg.block_indices) // 3)
    with pytest.raises(TsdfLayerError, match="more than once"):
        decode_tsdf_layer(msg)
    msg = encode(types, random_map(), 0, full=True)
    msg.grid_pose.orientation.w = 0.0
    msg.grid_pose.orientation.x = msg.grid_pose.orientation.y = msg.grid_pose.orientation.z = 0.0
    with pytest.raises(TsdfLayerError, match="grid_pose is unusable"):
        decode_tsdf_layer(msg)


# ------------------------------------------------------------------------------------- replica


def stream(types) -> tuple[list[object], TSDFMap]:
    """A map built in steps, and the messages describing each step (sequence 0 full, then deltas)."""
    tsdf_map = random_map(seed=2, n_blocks=3)
    messages = [encode(types, tsdf_map, 0, full=True)]
    rng = np.random.default_rng(3)
    for sequence in range(1, 6):
        coords = np.array([[sequence, 0, 0], [0, sequence, 1]])
        tsdf_map.set_blocks(coords, rng.uniform(-1, 1, (2, B, B, B)), rng.integers(0, 9, (2, B, B, B)),
                            rng.integers(0, 256, (2, B, B, B, 3), dtype=np.uint8))
        removed = tsdf_map.block_coords()[:1]
        tsdf_map.remove_blocks(removed)
        messages.append(encode(types, tsdf_map, sequence, full=False, blocks=coords, removed=removed))
    return messages, tsdf_map


def test_replica_follows_a_stream(types):
    messages, tsdf_map = stream(types)
    replica = LayerReplica()
    assert [replica.apply(msg) for msg in messages] == [RESYNCED] + [APPLIED] * 5
    assert replica.in_sync and replica.sequence == 5 and replica.frame_id == "odom"
    assert_maps_match(replica.tsdf_map, tsdf_map)
    assert replica.apply(messages[3]) == STALE  # a duplicate changes nothing
    assert_maps_match(replica.tsdf_map, tsdf_map)


def test_replica_waits_for_a_full_message_before_the_first_and_after_a_gap(types):
    messages, tsdf_map = stream(types)
    requests: list[str] = []
    replica = LayerReplica(on_resync_needed=requests.append)
    assert replica.apply(messages[1]) == WAITING  # joined late: nothing to apply a delta to
    assert replica.apply(messages[2]) == WAITING
    assert requests == ["no full message yet"]  # asked once
    with pytest.raises(TsdfLayerError, match="no full TsdfLayer message"):
        replica.require_map()
    # a full resend (numbered like the node numbers it) resyncs, the next deltas apply
    resend = encode(types, _map_after(types, 3), 3, full=True)
    assert replica.apply(resend) == RESYNCED
    assert [replica.apply(m) for m in messages[4:]] == [APPLIED, APPLIED]
    assert_maps_match(replica.tsdf_map, tsdf_map)


def _map_after(types, sequence: int) -> TSDFMap:
    messages, _ = stream(types)
    replica = LayerReplica()
    for msg in messages[: sequence + 1]:
        replica.apply(msg)
    return replica.tsdf_map


def test_replica_full_message_rules(types):
    messages, _ = stream(types)
    replica = LayerReplica()
    for msg in messages[:4]:
        replica.apply(msg)
    assert replica.apply(encode(types, random_map(seed=9), 2, full=True)) == STALE  # an old full copy
    assert replica.sequence == 3
    restarted = random_map(seed=8, n_blocks=2)
    assert replica.apply(encode(types, restarted, 0, full=True)) == RESYNCED  # the node restarted
    assert_maps_match(replica.tsdf_map, restarted)
    # a new geometry comes only with a full message
    other = TSDFMap(MapConfig(voxel_size=0.02, block_size=B))
    other.set_voxels(np.array([[1, 2, 3]]), np.array([0.5]))
    delta = encode(types, other, 1, full=False)
    assert replica.apply(delta) == REJECTED and not replica.in_sync
    assert "changes the geometry" in replica.counts.problems[-1]
    assert replica.apply(encode(types, other, 1, full=True)) == RESYNCED
    assert replica.tsdf_map.voxel_size == 0.02 and replica.tsdf_map.num_blocks == 1


def test_replica_rejects_malformed_messages_and_keeps_its_map(types):
    messages, _ = stream(types)
    replica = LayerReplica()
    replica.apply(messages[0])
    before = replica.tsdf_map.state_dict()
    broken = copy.deepcopy(messages[1])
    broken.tsdf = broken.tsdf[:-1]
    assert replica.apply(broken) == REJECTED
    assert not replica.in_sync and replica.counts.rejected == 1 and "TsdfLayer.tsdf" in replica.counts.problems[0]
    assert torch.equal(replica.tsdf_map.state_dict()["tsdf"], before["tsdf"])
    assert replica.apply(messages[1]) == WAITING  # out of sync until a full message


def test_replica_mesh_and_map_file_are_in_the_global_frame(types, tmp_path):
    from neuralrecon_ros.io.map_file import load_map

    tsdf_map = TSDFMap(MapConfig(voxel_size=0.1, block_size=B))
    coords = np.stack(np.meshgrid(np.arange(8), np.arange(8), np.arange(8), indexing="ij"), -1).reshape(-1, 3)
    tsdf_map.set_voxels(coords, np.clip((coords[:, 2] * 0.1 - 0.35) / 0.3, -1, 1))  # a plane at z = 0.35
    replica = LayerReplica()
    replica.apply(encode(types, tsdf_map, 0, full=True))
    mesh = replica.mesh()
    assert len(mesh.faces) > 0
    # the plane z = 0.35 of the grid, rotated +90 deg about x and shifted: y = -0.35 - 1.0 in odom
    np.testing.assert_allclose(mesh.vertices[:, 1], -1.35, atol=TSDF_MAX_ERROR * 0.3 + 1e-6)
    snapshot = load_map(replica.save_map(tmp_path / "replica.nrmap"))
    assert snapshot.frame_id == "odom" and snapshot.metadata["in_sync"]
    np.testing.assert_allclose(snapshot.T_global_map, T_FRAME_MAP, atol=1e-12)
    assert_maps_match(snapshot.to_map(), tsdf_map)
