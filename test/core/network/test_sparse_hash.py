"""torchsparse voxel hash (exact, vs a Python-int FNV-1a) and the packed-key coordinate index."""

from __future__ import annotations

import pytest
import torch
from sparse_reference import reference_hash

from neuralrecon_ros.core.network.sparse import CoordinateError, torchsparse_hash
from neuralrecon_ros.core.network.sparse.hashing import CoordinateIndex, CoordinatePacker

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])




def test_hash_known_values() -> None:
    rows = [(0, 0, 0, 0), (1, 2, 3, 0), (-1, -2, -3, 1), (95, 95, 95, 0), (-(2**31), 2**31 - 1, 7, 3)]
    got = torchsparse_hash(torch.tensor(rows, dtype=torch.int32)).tolist()
    assert got == [reference_hash(*r) for r in rows]
    # Pinned values (from the reference above): guard against both implementations drifting together.
    assert got[0] == 947293587111810033
    assert got[1] == 1043245732202901914
    assert got[2] == 222038148732125612


@pytest.mark.parametrize("device", DEVICES)
def test_hash_random_matches_python_ints(device: str) -> None:
    gen = torch.Generator().manual_seed(3)
    coords = torch.randint(-(2**31), 2**31 - 1, (2000, 4), generator=gen, dtype=torch.int64).to(torch.int32)
    coords[:1000] = torch.randint(-200, 200, (1000, 4), generator=gen).to(torch.int32)
    got = torchsparse_hash(coords.to(device)).cpu()
    assert got.dtype == torch.int64
    assert got.tolist() == [reference_hash(*row) for row in coords.tolist()]
    assert bool((got >= 0).all()) and bool((got < 2**60).all())


def test_hash_rejects_bad_input() -> None:
    with pytest.raises(CoordinateError, match="int32"):
        torchsparse_hash(torch.zeros((3, 4), dtype=torch.int64))
    with pytest.raises(CoordinateError, match="shape"):
        torchsparse_hash(torch.zeros((3, 3), dtype=torch.int32))


def test_packer_roundtrip_and_lexicographic_order() -> None:
    gen = torch.Generator().manual_seed(0)
    coords = torch.randint(-50, 50, (500, 4), generator=gen).to(torch.int32)
    coords[:, 3] = torch.randint(0, 3, (500,), generator=gen).to(torch.int32)
    packer = CoordinatePacker.around(coords, margin=2)
    keys = packer.pack(coords)
    assert torch.equal(packer.unpack(keys), coords)
    order = torch.argsort(keys)
    expected = sorted(range(500), key=lambda i: (coords[i, 3].item(), *coords[i, :3].tolist()))
    ordered = coords[order].tolist()
    assert ordered == [coords[i].tolist() for i in expected]
    # key(c + d) == key(c) + delta(d) inside the margin
    d = torch.tensor([[-2, 1, 2]], dtype=torch.int32)
    shifted = coords.clone()
    shifted[:, :3] += d
    assert torch.equal(packer.pack(shifted), keys + packer.offset_delta(d))


def test_packer_rejects_huge_range() -> None:
    coords = torch.tensor([[-(2**30), -(2**30), -(2**30), 0], [2**30, 2**30, 2**30, 5]], dtype=torch.int32)
    with pytest.raises(CoordinateError, match="62 bits"):
        CoordinatePacker.around(coords)


def test_index_find_and_duplicates() -> None:
    coords = torch.tensor([[0, 0, 0, 0], [5, -3, 2, 0], [5, -3, 2, 1], [-7, 8, 9, 0]], dtype=torch.int32)
    index = CoordinateIndex(coords)
    queries = torch.tensor(
        [[5, -3, 2, 1], [-7, 8, 9, 0], [0, 0, 0, 0], [0, 0, 0, 2], [1000, 0, 0, 0], [5, -3, 2, 0]],
        dtype=torch.int32,
    )
    assert index.find(queries).tolist() == [2, 3, 0, -1, -1, 1]
    with pytest.raises(CoordinateError, match="duplicate"):
        CoordinateIndex(torch.cat([coords, coords[1:2]]))
