"""ROS 2 messages of the planner products (:mod:`neuralrecon_ros.core.mapping.products`).

Same conventions as :mod:`.messages`: encoders take a ``types`` callable and work with rosbags and
rclpy message classes alike.

- TSDF voxel cloud -> ``sensor_msgs/PointCloud2``: float32 fields ``x, y, z, tsdf, weight`` (point_step
  20), one row (height 1), little endian, dense; ``frame_id`` names the frame the points are in (the
  map frame, or the frame given to ``tsdf_voxel_cloud(..., T_frame_map=...)``).
- Occupancy grid -> ``nav_msgs/OccupancyGrid`` as Nav2 reads it: ``info.origin`` is the outer corner
  of cell (0, 0) with identity orientation, ``data`` int8 row-major with x fastest (cell (ix, iy) at
  ``data[iy * width + ix]``), -1 unknown, 0 free, 100 occupied.
- ESDF slice -> ``sensor_msgs/PointCloud2``: float32 fields ``x, y, z, distance`` with one point per
  *known* cell at the cell centre and ``z = ESDFSlice.z_m`` (RViz colours it by ``distance``; nvblox
  publishes its distance slice the same way). Where a dense image is wanted instead,
  ``messages.encode_image(types, esdf.masked_distance(), "32FC1", ...)`` gives a 32FC1 image with NaN at
  unknown cells, image row iy / column ix (so +y points down the image), with the grid geometry taken
  from the occupancy grid of the same stamp.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..core.mapping.products import ESDFSlice, GridGeometry, OccupancyGrid2D, TSDFCloud
from .messages import MessageError, MessageTypes, _as_bytes, _make, _pose, _sequence, make_header, make_time

#: sensor_msgs/PointField datatype constants -> numpy dtype (little endian; byte order applied on decode)
POINT_FIELD_DTYPES: dict[int, str] = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 8: "f8"}
FLOAT32 = 7  # sensor_msgs/PointField.FLOAT32

TSDF_CLOUD_FIELDS = ("x", "y", "z", "tsdf", "weight")
ESDF_CLOUD_FIELDS = ("x", "y", "z", "distance")


# --------------------------------------------------------------------------------------------
# point clouds


def encode_float32_cloud(
    types: MessageTypes, columns: Mapping[str, np.ndarray], stamp: float, frame_id: str
) -> Any:
    """``sensor_msgs/PointCloud2`` with one float32 field per entry of ``columns`` (name -> (N,) values).

    Fields are packed in the given order without padding; the cloud is unorganised (height 1), little
    endian and dense, so every value must be finite.
    """
    names = list(columns)
    arrays = [np.asarray(columns[name], dtype=np.float64).reshape(-1) for name in names]
    n = len(arrays[0]) if arrays else 0
    for name, values in zip(names, arrays):
        if len(values) != n:
            raise MessageError(f"point cloud field '{name}' has {len(values)} values, '{names[0]}' has {n}")
        if not np.all(np.isfinite(values)):
            raise MessageError(f"point cloud field '{name}' contains NaN or infinite values (cloud is dense)")
    record = np.dtype([(name, "<f4") for name in names])
    packed = np.empty(n, dtype=record)
    for name, values in zip(names, arrays):
        packed[name] = values
    PointField = types("sensor_msgs/msg/PointField")  # not _make: its 'name' field clashes with _make's
    fields = [PointField(name=name, offset=4 * i, datatype=FLOAT32, count=1) for i, name in enumerate(names)]
    return _make(
        types,
        "sensor_msgs/msg/PointCloud2",
        header=make_header(types, stamp, frame_id),
        height=1,
        width=n,
        fields=fields,
        is_bigendian=False,
        point_step=record.itemsize,
        row_step=record.itemsize * n,
        data=_sequence(types, packed.view(np.uint8).reshape(-1)),
        is_dense=True,
    )


def decode_point_cloud(msg: Any) -> dict[str, np.ndarray]:
    """``sensor_msgs/PointCloud2`` -> {field name: (height * width,) array in the field's numpy dtype}.

    Honours offsets, point_step, row_step padding and byte order. Fields with ``count != 1`` are not
    supported.
    """
    height, width = int(msg.height), int(msg.width)
    point_step, row_step = int(msg.point_step), int(msg.row_step)
    byteorder = ">" if bool(msg.is_bigendian) else "<"
    names, formats, offsets = [], [], []
    for field in msg.fields:
        datatype, count = int(field.datatype), int(field.count)
        if datatype not in POINT_FIELD_DTYPES:
            raise MessageError(f"point cloud field '{field.name}' has unknown datatype {datatype}")
        if count != 1:
            raise MessageError(f"point cloud field '{field.name}' has count {count}; only 1 is supported")
        names.append(str(field.name))
        formats.append(byteorder + POINT_FIELD_DTYPES[datatype])
        offsets.append(int(field.offset))
    needed = max((o + np.dtype(f).itemsize for o, f in zip(offsets, formats)), default=0)
    if point_step < needed or row_step < point_step * width:
        raise MessageError(
            f"point cloud point_step {point_step} / row_step {row_step} too small for {width} points "
            f"of fields {names} ({needed} bytes each)"
        )
    record = np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": point_step})
    data = _as_bytes(msg.data)
    if data.size != row_step * height:
        raise MessageError(
            f"point cloud has {data.size} data bytes, expected row_step*height = {row_step * height}"
        )
    rows = np.ascontiguousarray(data.reshape(height, row_step)[:, : point_step * width])
    points = rows.reshape(-1).view(record)
    return {name: points[name].astype(points.dtype[name].newbyteorder("=")) for name in names}


def encode_tsdf_cloud(types: MessageTypes, cloud: TSDFCloud, stamp: float, frame_id: str) -> Any:
    """TSDF voxel cloud -> ``sensor_msgs/PointCloud2`` (x, y, z, tsdf, weight) in frame ``frame_id``."""
    points = np.asarray(cloud.points).reshape(-1, 3)
    columns = dict(zip(("x", "y", "z"), points.T))
    columns.update(tsdf=cloud.tsdf, weight=cloud.weight)
    return encode_float32_cloud(types, columns, stamp, frame_id)


def encode_esdf_slice(types: MessageTypes, esdf: ESDFSlice, stamp: float, frame_id: str) -> Any:
    """ESDF slice -> ``sensor_msgs/PointCloud2`` (x, y, z, distance) of its known cells (global frame)."""
    x, y = esdf.geometry.cell_centres()
    known = np.asarray(esdf.known, dtype=bool)
    if known.shape != x.shape or np.shape(esdf.distance) != x.shape:
        raise MessageError(
            f"ESDF slice arrays {np.shape(esdf.distance)} / {known.shape} do not match its "
            f"{esdf.height} x {esdf.width} grid"
        )
    columns = {
        "x": x[known],
        "y": y[known],
        "z": np.full(int(known.sum()), esdf.z_m),
        "distance": np.asarray(esdf.distance)[known],
    }
    return encode_float32_cloud(types, columns, stamp, frame_id)


# --------------------------------------------------------------------------------------------
# occupancy grid


def encode_occupancy_grid(
    types: MessageTypes, grid: OccupancyGrid2D, stamp: float, frame_id: str, origin_z: float = 0.0
) -> Any:
    """Occupancy grid -> ``nav_msgs/OccupancyGrid``; ``map_load_time`` = ``stamp``, origin at ``origin_z``."""
    data = np.asarray(grid.data)
    if data.shape != (grid.height, grid.width):
        raise MessageError(f"occupancy data has shape {data.shape}, the grid is {grid.height} x {grid.width}")
    if not np.all((data == -1) | ((data >= 0) & (data <= 100))):
        raise MessageError("occupancy values must be -1 (unknown) or 0..100")
    values = data.astype(np.int8).reshape(-1)  # row-major (iy, ix): x fastest, as Nav2 reads it
    T_frame_origin = np.eye(4)
    T_frame_origin[:3, 3] = (grid.origin_xy[0], grid.origin_xy[1], origin_z)
    info = _make(
        types,
        "nav_msgs/msg/MapMetaData",
        map_load_time=make_time(types, stamp),
        resolution=float(grid.resolution),
        width=int(grid.width),
        height=int(grid.height),
        origin=_pose(types, T_frame_origin),
    )
    return _make(
        types,
        "nav_msgs/msg/OccupancyGrid",
        header=make_header(types, stamp, frame_id),
        info=info,
        data=_sequence(types, values),
    )


def decode_occupancy_grid(msg: Any) -> OccupancyGrid2D:
    """``nav_msgs/OccupancyGrid`` -> :class:`OccupancyGrid2D` (the origin must not be rotated)."""
    info = msg.info
    q = info.origin.orientation
    if abs(float(q.x)) > 1e-9 or abs(float(q.y)) > 1e-9 or abs(float(q.z)) > 1e-9:
        raise MessageError("occupancy grid origin is rotated; only axis-aligned grids are supported")
    width, height = int(info.width), int(info.height)
    values = _int8_values(msg.data)
    if values.size != width * height:
        raise MessageError(
            f"occupancy grid has {values.size} cells, expected width*height = {width * height}"
        )
    origin = info.origin.position
    geometry = GridGeometry(float(info.resolution), (float(origin.x), float(origin.y)), width, height)
    return OccupancyGrid2D(geometry, values.reshape(height, width).copy())


def _int8_values(data: Any) -> np.ndarray:
    """An int8 view of an ``int8[]`` field (numpy array, bytes-like, array.array or list of ints)."""
    if isinstance(data, np.ndarray):
        return np.ascontiguousarray(data).reshape(-1).view(np.int8)
    try:
        return np.frombuffer(data, dtype=np.int8)
    except TypeError:
        return np.asarray(data, dtype=np.int8)
