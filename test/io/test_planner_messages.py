"""Planner product messages, round-tripped through CDR with rosbags classes (ROS 2 Humble)."""

from __future__ import annotations

import numpy as np
import pytest
from rosbags.typesys import Stores, get_typestore

from neuralrecon_ros.core.mapping.config import MapConfig
from neuralrecon_ros.core.mapping.products import (
    FREE,
    OCCUPIED,
    UNKNOWN,
    ESDFSlice,
    GridGeometry,
    OccupancyGrid2D,
    TSDFCloud,
    esdf_slice,
    tsdf_voxel_cloud,
)
from neuralrecon_ros.core.mapping.tsdf_map import TSDFMap
from neuralrecon_ros.io import messages as m
from neuralrecon_ros.io import planner_messages as pm

TYPESTORE = get_typestore(Stores.ROS2_HUMBLE)
TYPES = m.rosbags_types(TYPESTORE)
STAMP = 1_700_000_123.25


def cdr_round_trip(msg):
    msgtype = msg.__msgtype__
    return TYPESTORE.deserialize_cdr(TYPESTORE.serialize_cdr(msg, msgtype), msgtype)


def field_layout(msg) -> list[tuple[str, int, int, int]]:
    return [(f.name, f.offset, f.datatype, f.count) for f in msg.fields]


def random_cloud(n: int, seed: int = 0) -> TSDFCloud:
    rng = np.random.default_rng(seed)
    return TSDFCloud(
        rng.normal(size=(n, 3)).astype(np.float32),
        rng.uniform(-1, 1, n).astype(np.float32),
        rng.uniform(0, 50, n).astype(np.float32),
    )


# ------------------------------------------------------------------------------- TSDF cloud


def test_tsdf_cloud_message_layout_and_bytes():
    cloud = random_cloud(257)
    msg = cdr_round_trip(pm.encode_tsdf_cloud(TYPES, cloud, STAMP, "map"))
    assert msg.__msgtype__ == "sensor_msgs/msg/PointCloud2"
    assert msg.header.frame_id == "map" and m.header_stamp(msg) == pytest.approx(STAMP, abs=1e-6)
    assert field_layout(msg) == [("x", 0, 7, 1), ("y", 4, 7, 1), ("z", 8, 7, 1), ("tsdf", 12, 7, 1),
                                 ("weight", 16, 7, 1)]
    assert (msg.height, msg.width, msg.point_step, msg.row_step) == (1, 257, 20, 20 * 257)
    assert msg.is_bigendian is False and msg.is_dense is True
    # the payload, read with a plain little-endian record, is the input
    records = np.frombuffer(msg.data.tobytes(), dtype=np.dtype([(n, "<f4") for n in pm.TSDF_CLOUD_FIELDS]))
    np.testing.assert_array_equal(np.stack([records["x"], records["y"], records["z"]], axis=1), cloud.points)
    np.testing.assert_array_equal(records["tsdf"], cloud.tsdf)
    np.testing.assert_array_equal(records["weight"], cloud.weight)
    decoded = pm.decode_point_cloud(msg)
    assert list(decoded) == list(pm.TSDF_CLOUD_FIELDS)
    np.testing.assert_array_equal(decoded["weight"], cloud.weight)


def test_tsdf_cloud_of_a_map_round_trips():
    tsdf_map = TSDFMap(MapConfig(voxel_size=0.05))
    coords = np.array([[0, 0, 0], [1, -2, 3], [7, 8, 9], [-4, 0, 2]])
    tsdf_map.set_voxels(coords, np.array([0.1, -0.3, 0.9, 0.0]), np.array([1.0, 2.0, 3.0, 4.0]))
    cloud = tsdf_voxel_cloud(tsdf_map, max_abs_tsdf=0.5)
    decoded = pm.decode_point_cloud(cdr_round_trip(pm.encode_tsdf_cloud(TYPES, cloud, STAMP, "map")))
    points = np.stack([decoded["x"], decoded["y"], decoded["z"]], axis=1)
    order = np.argsort(decoded["weight"])
    np.testing.assert_array_equal(points[order], (coords[[0, 1, 3]] * 0.05).astype(np.float32))
    np.testing.assert_array_equal(decoded["tsdf"][order], np.float32([0.1, -0.3, 0.0]))


def test_empty_and_bad_clouds():
    msg = cdr_round_trip(pm.encode_tsdf_cloud(TYPES, random_cloud(0), STAMP, "map"))
    assert (msg.width, msg.row_step, len(msg.data)) == (0, 0, 0)
    assert all(len(v) == 0 for v in pm.decode_point_cloud(msg).values())
    bad = random_cloud(3)
    bad.tsdf[1] = np.nan
    with pytest.raises(m.MessageError, match="'tsdf' contains NaN"):
        pm.encode_tsdf_cloud(TYPES, bad, STAMP, "map")
    short = random_cloud(3)
    short.weight = short.weight[:2]
    with pytest.raises(m.MessageError, match="'weight' has 2 values"):
        pm.encode_tsdf_cloud(TYPES, short, STAMP, "map")


def test_decode_point_cloud_honours_layout_padding_and_byte_order():
    # big-endian, a uint8 and a float64 field, 3 bytes of padding per point and 8 per row, 2 x 3 points
    record = np.dtype({"names": ["a", "b", "c"], "formats": [">f4", "u1", ">f8"], "offsets": [0, 4, 8],
                       "itemsize": 19})
    values = np.zeros(6, record)
    values["a"], values["b"], values["c"] = np.arange(6) * 1.5, np.arange(6) + 250, -np.arange(6) / 3
    rows = np.zeros((2, 19 * 3 + 8), np.uint8)
    rows[:, : 19 * 3] = values.view(np.uint8).reshape(2, -1)
    Field = TYPES("sensor_msgs/msg/PointField")
    msg = TYPES("sensor_msgs/msg/PointCloud2")(
        header=m.make_header(TYPES, STAMP, "x"), height=2, width=3,
        fields=[Field(name=name, offset=offset, datatype=datatype, count=1)
                for name, offset, datatype in (("a", 0, 7), ("b", 4, 2), ("c", 8, 8))],
        is_bigendian=True, point_step=19, row_step=19 * 3 + 8, data=rows.reshape(-1), is_dense=True,
    )
    decoded = pm.decode_point_cloud(cdr_round_trip(msg))
    np.testing.assert_array_equal(decoded["a"], np.arange(6) * 1.5)
    np.testing.assert_array_equal(decoded["b"], np.arange(6) + 250)
    np.testing.assert_array_equal(decoded["c"], -np.arange(6) / 3)
    assert decoded["c"].dtype == np.float64 and decoded["b"].dtype == np.uint8
    msg.point_step = 12
    with pytest.raises(m.MessageError, match="too small"):
        pm.decode_point_cloud(msg)


# ------------------------------------------------------------------------------- occupancy grid


def test_occupancy_grid_message_is_row_major_with_x_fastest():
    data = np.full((3, 5), FREE, np.int8)  # height 3 (y), width 5 (x)
    data[1, 3] = OCCUPIED  # cell (ix=3, iy=1)
    data[2, 0] = UNKNOWN  # cell (ix=0, iy=2)
    data[0, 4] = 37
    grid = OccupancyGrid2D(GridGeometry(0.05, (-1.25, 2.5), 5, 3), data)
    msg = cdr_round_trip(pm.encode_occupancy_grid(TYPES, grid, STAMP, "odom", origin_z=0.1))
    assert msg.__msgtype__ == "nav_msgs/msg/OccupancyGrid"
    assert msg.header.frame_id == "odom" and m.header_stamp(msg) == pytest.approx(STAMP, abs=1e-6)
    info = msg.info
    assert m.stamp_to_ns(info.map_load_time) == m.stamp_to_ns(msg.header.stamp)
    assert (info.width, info.height) == (5, 3)
    assert info.resolution == np.float32(0.05)
    origin = info.origin
    assert (origin.position.x, origin.position.y, origin.position.z) == (-1.25, 2.5, 0.1)
    assert (origin.orientation.x, origin.orientation.y, origin.orientation.z, origin.orientation.w) == (
        0.0, 0.0, 0.0, 1.0)
    assert msg.data.dtype == np.int8 and len(msg.data) == 15
    assert msg.data[1 * 5 + 3] == 100 and msg.data[2 * 5 + 0] == -1 and msg.data[0 * 5 + 4] == 37
    assert (np.delete(msg.data, [8, 10, 4]) == 0).all()
    decoded = pm.decode_occupancy_grid(msg)
    np.testing.assert_array_equal(decoded.data, data)
    assert decoded.origin_xy == (-1.25, 2.5) and decoded.resolution == pytest.approx(0.05)


def test_occupancy_grid_rejects_bad_grids():
    geometry = GridGeometry(0.1, (0.0, 0.0), 4, 2)
    with pytest.raises(m.MessageError, match="-1 \\(unknown\\) or 0..100"):
        pm.encode_occupancy_grid(TYPES, OccupancyGrid2D(geometry, np.full((2, 4), 101)), STAMP, "odom")
    with pytest.raises(m.MessageError, match="shape \\(4, 2\\)"):
        pm.encode_occupancy_grid(TYPES, OccupancyGrid2D(geometry, np.zeros((4, 2), np.int8)), STAMP, "odom")
    msg = pm.encode_occupancy_grid(TYPES, OccupancyGrid2D(geometry, np.zeros((2, 4), np.int8)), STAMP, "odom")
    msg.data = msg.data[:7]
    with pytest.raises(m.MessageError, match="7 cells, expected width\\*height = 8"):
        pm.decode_occupancy_grid(msg)


# ------------------------------------------------------------------------------- ESDF slice


def small_esdf() -> ESDFSlice:
    data = np.array([[FREE, FREE, OCCUPIED, UNKNOWN], [FREE, OCCUPIED, OCCUPIED, UNKNOWN],
                     [FREE, FREE, FREE, FREE]], np.int8)
    return esdf_slice(OccupancyGrid2D(GridGeometry(0.2, (1.0, -0.4), 4, 3), data), 1.0, z_m=0.75)


def test_esdf_slice_cloud_holds_known_cells_at_their_centres():
    esdf = small_esdf()
    msg = cdr_round_trip(pm.encode_esdf_slice(TYPES, esdf, STAMP, "odom"))
    assert field_layout(msg) == [("x", 0, 7, 1), ("y", 4, 7, 1), ("z", 8, 7, 1), ("distance", 12, 7, 1)]
    assert (msg.height, msg.width, msg.point_step, msg.row_step) == (1, 10, 16, 160)
    assert msg.header.frame_id == "odom" and msg.is_dense is True
    records = np.frombuffer(msg.data.tobytes(), dtype=np.dtype([(n, "<f4") for n in pm.ESDF_CLOUD_FIELDS]))
    iy, ix = np.nonzero(esdf.known)  # row-major order, like the points
    np.testing.assert_allclose(records["x"], 1.0 + (ix + 0.5) * 0.2, atol=1e-6)
    np.testing.assert_allclose(records["y"], -0.4 + (iy + 0.5) * 0.2, atol=1e-6)
    assert (records["z"] == np.float32(0.75)).all()
    np.testing.assert_array_equal(records["distance"], esdf.distance[esdf.known])
    # cell (0, 0): nearest occupied cell (1, 1) is one diagonal away
    assert records["distance"][0] == pytest.approx(0.2 * np.sqrt(2), abs=1e-6)


def test_esdf_slice_as_32fc1_image_keeps_unknown_as_nan():
    esdf = small_esdf()
    msg = cdr_round_trip(m.encode_image(TYPES, esdf.masked_distance(), "32FC1", STAMP, "odom"))
    image = m.decode_image(msg)
    assert image.shape == (3, 4)
    np.testing.assert_array_equal(np.isnan(image), ~esdf.known)
    np.testing.assert_array_equal(image[esdf.known], esdf.distance[esdf.known])
