"""PLY mesh files: atomic writing of our meshes, reading of ours and of common PLY files from elsewhere.

Written: ``binary_little_endian`` (default) or ``ascii``; vertex ``x y z`` float, optional ``nx ny nz``
float and ``red green blue`` uchar; faces as ``list uchar int vertex_indices``.

Read: ``ascii``, ``binary_little_endian`` and ``binary_big_endian``; any scalar types (float/double
vertices, ...); face lists of any integer types named ``vertex_indices`` or ``vertex_index``; polygons
are fan-triangulated; other elements and properties are skipped. Colours may be ``red/green/blue``
(or ``r/g/b``, ``diffuse_*``), uchar or float in [0, 1].

Hand-written (numpy structured arrays) rather than a dependency: the format subset is small and tested.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.types import Mesh
from .atomic import atomic_write

_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}
_FORMATS = {"ascii": None, "binary_little_endian": "<", "binary_big_endian": ">"}
_COLOR_NAMES = (("red", "green", "blue"), ("r", "g", "b"), ("diffuse_red", "diffuse_green", "diffuse_blue"))
_FACE_LIST_NAMES = ("vertex_indices", "vertex_index")


class PlyError(ValueError):
    """A PLY file is malformed or unsupported, or a mesh cannot be written as PLY; names the file."""


@dataclass
class _Property:
    name: str
    dtype: str  # numpy type code without byte order, e.g. 'f4'
    count_dtype: str | None = None  # set for list properties


@dataclass
class _Element:
    name: str
    count: int
    properties: list[_Property] = field(default_factory=list)

    @property
    def has_lists(self) -> bool:
        return any(p.count_dtype is not None for p in self.properties)


# ---------------------------------------------------------------------------------------------- writing


def write_ply(path: str | os.PathLike, mesh: Mesh, binary: bool = True) -> None:
    """Write ``mesh`` to ``path`` atomically (temporary file in the same directory, fsync, rename).

    Raises :class:`PlyError` for an invalid mesh and ``OutputError`` (an ``OSError`` naming the path)
    when the file cannot be written.
    """
    vertices, faces, colors, normals = _checked_arrays(mesh, path)
    header = ["ply", f"format {'binary_little_endian' if binary else 'ascii'} 1.0",
              "comment written by neuralrecon_ros", f"element vertex {len(vertices)}",
              "property float x", "property float y", "property float z"]
    fields: list[tuple[str, str]] = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if normals is not None:
        header += ["property float nx", "property float ny", "property float nz"]
        fields += [("nx", "<f4"), ("ny", "<f4"), ("nz", "<f4")]
    if colors is not None:
        header += ["property uchar red", "property uchar green", "property uchar blue"]
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    header += [f"element face {len(faces)}", "property list uchar int vertex_indices", "end_header"]
    records = np.empty(len(vertices), dtype=fields)
    records["x"], records["y"], records["z"] = vertices.T
    if normals is not None:
        records["nx"], records["ny"], records["nz"] = normals.T
    if colors is not None:
        records["red"], records["green"], records["blue"] = colors.T
    face_records = np.empty(len(faces), dtype=[("n", "u1"), ("i", "<i4", (3,))])
    face_records["n"] = 3
    face_records["i"] = faces
    with atomic_write(path, "wb") as handle:
        handle.write(("\n".join(header) + "\n").encode("ascii"))
        if binary:
            handle.write(records.tobytes())
            handle.write(face_records.tobytes())
        else:
            n_floats = 6 if normals is not None else 3
            vertex_format = " ".join(["%.9g"] * n_floats + ["%d"] * (3 if colors is not None else 0))
            columns = [vertices] + [a for a in (normals, colors) if a is not None]
            np.savetxt(handle, np.hstack([c.astype(np.float64) for c in columns]), fmt=vertex_format)
            np.savetxt(handle, np.hstack([np.full((len(faces), 1), 3), faces]), fmt="%d")


def _checked_arrays(
    mesh: Mesh, path: str | os.PathLike
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    def fail(message: str) -> PlyError:
        return PlyError(f"cannot write {path}: {message}")

    vertices = np.asarray(mesh.vertices, dtype=np.float32)
    faces = np.asarray(mesh.faces)
    if vertices.ndim != 2 or vertices.shape[1] != 3:
        raise fail(f"vertices must be (V, 3), got {vertices.shape}")
    if not np.isfinite(vertices).all():
        raise fail("vertices contain NaN or infinite values")
    if len(faces) == 0:
        faces = np.zeros((0, 3), np.int64)
    if faces.ndim != 2 or faces.shape[1] != 3 or not np.issubdtype(faces.dtype, np.integer):
        raise fail(f"faces must be integer (F, 3), got {faces.dtype} {faces.shape}")
    if len(faces) and (faces.min() < 0 or faces.max() >= len(vertices)):
        raise fail(f"face indices span [{faces.min()}, {faces.max()}] but there are {len(vertices)} vertices")
    if len(vertices) >= 2**31:
        raise fail("more than 2^31 vertices")
    colors = mesh.vertex_colors
    if colors is not None:
        colors = np.asarray(colors)
        if colors.shape != vertices.shape or colors.dtype != np.uint8:
            raise fail(f"vertex_colors must be uint8 {vertices.shape}, got {colors.dtype} {colors.shape}")
    normals = mesh.vertex_normals
    if normals is not None:
        normals = np.asarray(normals, dtype=np.float32)
        if normals.shape != vertices.shape:
            raise fail(f"vertex_normals must be {vertices.shape}, got {normals.shape}")
    return vertices, faces, colors, normals


# ---------------------------------------------------------------------------------------------- reading


def read_ply(path: str | os.PathLike) -> Mesh:
    """Read a triangle mesh (or a point cloud: no faces) from a PLY file."""
    path = Path(path)
    data = path.read_bytes()
    elements, byte_order, body_start = _parse_header(data, path)
    values: dict[str, dict[str, np.ndarray | list[np.ndarray]]] = {}
    if byte_order is None:
        lines = data[body_start:].decode("ascii", errors="replace").split("\n")
        lines = [line for line in lines if line.strip()]
        cursor = 0
        for element in elements:
            chunk = lines[cursor:cursor + element.count]
            if len(chunk) < element.count:
                raise PlyError(f"{path}: file ends inside element '{element.name}' "
                               f"({len(chunk)} of {element.count} lines)")
            values[element.name] = _read_ascii_element(element, chunk, path)
            cursor += element.count
    else:
        offset = body_start
        for element in elements:
            values[element.name], offset = _read_binary_element(element, data, offset, byte_order, path)
    return _to_mesh(values, path)


def _parse_header(data: bytes, path: Path) -> tuple[list[_Element], str | None, int]:
    if not data.startswith(b"ply"):
        raise PlyError(f"{path}: not a PLY file (does not start with 'ply')")
    end = data.find(b"end_header")
    if end < 0:
        raise PlyError(f"{path}: PLY header has no 'end_header'")
    newline = data.find(b"\n", end)
    body_start = len(data) if newline < 0 else newline + 1
    lines = data[:end].decode("ascii", errors="replace").replace("\r", "").split("\n")
    elements: list[_Element] = []
    byte_order: str | None = None
    seen_format = False
    for number, line in enumerate(lines[1:], start=2):
        words = line.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        where = f"{path}: header line {number} ({line.strip()!r})"
        if words[0] == "format":
            if len(words) < 2 or words[1] not in _FORMATS:
                raise PlyError(f"{where}: unsupported format; expected one of {sorted(_FORMATS)}")
            byte_order, seen_format = _FORMATS[words[1]], True
        elif words[0] == "element":
            if len(words) != 3 or not words[2].isdigit():
                raise PlyError(f"{where}: expected 'element <name> <count>'")
            elements.append(_Element(words[1], int(words[2])))
        elif words[0] == "property":
            if not elements:
                raise PlyError(f"{where}: property before any element")
            if len(words) == 5 and words[1] == "list" and words[2] in _TYPES and words[3] in _TYPES:
                elements[-1].properties.append(_Property(words[4], _TYPES[words[3]], _TYPES[words[2]]))
            elif len(words) == 3 and words[1] in _TYPES:
                elements[-1].properties.append(_Property(words[2], _TYPES[words[1]]))
            else:
                raise PlyError(f"{where}: cannot parse property (unknown type?)")
        else:
            raise PlyError(f"{where}: unknown header keyword {words[0]!r}")
    if not seen_format:
        raise PlyError(f"{path}: PLY header has no 'format' line")
    return elements, byte_order, body_start


def _read_binary_element(
    element: _Element, data: bytes, offset: int, byte_order: str, path: Path
) -> tuple[dict[str, np.ndarray | list[np.ndarray]], int]:
    def ends_early() -> PlyError:
        return PlyError(f"{path}: file ends inside element '{element.name}'")

    if not element.has_lists:
        dtype = np.dtype([(p.name, byte_order + p.dtype) for p in element.properties])
        if offset + dtype.itemsize * element.count > len(data):
            raise ends_early()
        records = np.frombuffer(data, dtype=dtype, count=element.count, offset=offset)
        return {p.name: records[p.name] for p in element.properties}, offset + dtype.itemsize * element.count
    if element.count == 0:
        return {p.name: np.zeros((0, 0)) for p in element.properties}, offset
    # fast path: every list has the length found in the first record (e.g. all triangles)
    fields, cursor = [], offset
    for p in element.properties:
        if p.count_dtype is None:
            fields.append((p.name, byte_order + p.dtype))
            cursor += np.dtype(p.dtype).itemsize
            continue
        if cursor + np.dtype(p.count_dtype).itemsize > len(data):
            raise ends_early()
        n = int(np.frombuffer(data, byte_order + p.count_dtype, count=1, offset=cursor)[0])
        fields += [(p.name + "#n", byte_order + p.count_dtype), (p.name, byte_order + p.dtype, (n,))]
        cursor += np.dtype(p.count_dtype).itemsize + n * np.dtype(p.dtype).itemsize
    dtype = np.dtype(fields)
    if offset + dtype.itemsize * element.count <= len(data):
        records = np.frombuffer(data, dtype=dtype, count=element.count, offset=offset)
        lists = [p for p in element.properties if p.count_dtype is not None]
        if all((records[p.name + "#n"] == records[p.name].shape[1]).all() for p in lists):
            end = offset + dtype.itemsize * element.count
            return {p.name: records[p.name] for p in element.properties}, end
    # general path: variable-length lists, record by record
    out: dict[str, list] = {p.name: [] for p in element.properties}
    for _ in range(element.count):
        for p in element.properties:
            if p.count_dtype is None:
                size = np.dtype(p.dtype).itemsize
                if offset + size > len(data):
                    raise ends_early()
                out[p.name].append(np.frombuffer(data, byte_order + p.dtype, count=1, offset=offset)[0])
                offset += size
            else:
                size = np.dtype(p.count_dtype).itemsize
                if offset + size > len(data):
                    raise ends_early()
                n = int(np.frombuffer(data, byte_order + p.count_dtype, count=1, offset=offset)[0])
                offset += size
                if offset + n * np.dtype(p.dtype).itemsize > len(data):
                    raise ends_early()
                out[p.name].append(np.frombuffer(data, byte_order + p.dtype, count=n, offset=offset))
                offset += n * np.dtype(p.dtype).itemsize
    return {name: (v if element.properties[i].count_dtype is not None else np.array(v))
            for i, (name, v) in enumerate(out.items())}, offset


def _read_ascii_element(
    element: _Element, lines: list[str], path: Path
) -> dict[str, np.ndarray | list[np.ndarray]]:
    rows = [line.split() for line in lines]
    try:
        if rows and len({len(r) for r in rows}) == 1:
            table = np.array(rows, dtype=np.float64)
            columns, ok = {}, True
            col = 0
            for p in element.properties:
                if p.count_dtype is None:
                    columns[p.name] = table[:, col].astype(p.dtype)
                    col += 1
                else:
                    n = int(table[0, col])
                    if not (table[:, col] == n).all():
                        ok = False
                        break
                    columns[p.name] = table[:, col + 1:col + 1 + n].astype(np.int64)
                    col += 1 + n
            if ok and col == table.shape[1]:
                return columns
        out: dict[str, list] = {p.name: [] for p in element.properties}
        for number, row in enumerate(rows):
            col = 0
            for p in element.properties:
                if p.count_dtype is None:
                    out[p.name].append(float(row[col]))
                    col += 1
                else:
                    n = int(row[col])
                    out[p.name].append(np.array(row[col + 1:col + 1 + n], dtype=np.int64))
                    col += 1 + n
            if col != len(row):
                raise PlyError(f"{path}: element '{element.name}' line {number}: expected {col} values, "
                               f"got {len(row)}")
        return {p.name: (out[p.name] if p.count_dtype is not None else np.array(out[p.name], dtype=p.dtype))
                for p in element.properties}
    except (ValueError, IndexError) as exc:
        if isinstance(exc, PlyError):
            raise
        raise PlyError(f"{path}: cannot parse element '{element.name}': {exc}") from exc


def _to_mesh(values: dict[str, dict[str, np.ndarray | list[np.ndarray]]], path: Path) -> Mesh:
    vertex = values.get("vertex")
    if vertex is None:
        raise PlyError(f"{path}: no 'vertex' element")
    if not all(name in vertex for name in "xyz"):
        raise PlyError(f"{path}: vertex element lacks x, y or z")
    vertices = np.stack([np.asarray(vertex[c], dtype=np.float32) for c in "xyz"], axis=1)
    normals = None
    if all(name in vertex for name in ("nx", "ny", "nz")):
        normals = np.stack([np.asarray(vertex[c], dtype=np.float32) for c in ("nx", "ny", "nz")], axis=1)
    colors = None
    for names in _COLOR_NAMES:
        if all(name in vertex for name in names):
            raw = np.stack([np.asarray(vertex[c]) for c in names], axis=1)
            if np.issubdtype(raw.dtype, np.floating) and (len(raw) == 0 or raw.max() <= 1.0):
                raw = raw * 255.0
            colors = np.clip(np.round(raw), 0, 255).astype(np.uint8)
            break
    faces = np.zeros((0, 3), np.int64)
    face = values.get("face")
    if face is not None:
        name = next((n for n in _FACE_LIST_NAMES if n in face), None)
        if name is None:
            raise PlyError(f"{path}: face element has no list named {' or '.join(_FACE_LIST_NAMES)}")
        faces = _triangulate(face[name])
    if len(faces) and (faces.min() < 0 or faces.max() >= len(vertices)):
        raise PlyError(f"{path}: face indices span [{faces.min()}, {faces.max()}] but there are "
                       f"{len(vertices)} vertices")
    return Mesh(vertices, faces, colors, normals)


def _triangulate(polygons: np.ndarray | list[np.ndarray]) -> np.ndarray:
    """int64 (F, 3) triangles from a (F, n) array or a list of index arrays (fan triangulation)."""
    if isinstance(polygons, np.ndarray) and polygons.ndim == 2:
        n = polygons.shape[1]
        if n < 3:
            return np.zeros((0, 3), np.int64)
        polygons = polygons.astype(np.int64)
        return np.concatenate([polygons[:, [0, i, i + 1]] for i in range(1, n - 1)]) if n > 3 else polygons
    triangles = [np.asarray(p, dtype=np.int64)[[0, i, i + 1]] for p in polygons for i in range(1, len(p) - 1)]
    return np.array(triangles, dtype=np.int64).reshape(-1, 3)
