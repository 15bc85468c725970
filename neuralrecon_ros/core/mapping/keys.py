"""Packing of integer block coordinates into single int64 keys (works on numpy arrays and torch tensors).

Each axis gets 21 bits (coordinates in ``[-2**20, 2**20)``, i.e. ±335 km of 0.32 m blocks), biased to be
non-negative, so keys sort in (x, y, z) lexicographic order and fit in a signed int64.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

KEY_BITS = 21
KEY_OFFSET = 1 << (KEY_BITS - 1)
KEY_MASK = (1 << KEY_BITS) - 1
MIN_BLOCK_COORD = -KEY_OFFSET
MAX_BLOCK_COORD = KEY_OFFSET - 1

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


class BlockRangeError(ValueError):
    """A block coordinate lies outside the range that block keys can represent."""


def check_block_range(coords: ArrayT) -> None:
    """Raise :class:`BlockRangeError` if any coordinate of ``coords`` (int64 (N, 3)) is out of range."""
    if len(coords) == 0:
        return
    low, high = int(coords.min()), int(coords.max())
    if low < MIN_BLOCK_COORD or high > MAX_BLOCK_COORD:
        raise BlockRangeError(
            f"block coordinates span [{low}, {high}], outside the representable range "
            f"[{MIN_BLOCK_COORD}, {MAX_BLOCK_COORD}] (is a pose or depth value absurdly large?)"
        )


def pack_keys(coords: ArrayT) -> ArrayT:
    """int64 (N, 3) block coordinates -> int64 (N,) keys. Call :func:`check_block_range` first."""
    biased = coords + KEY_OFFSET
    return (biased[:, 0] << (2 * KEY_BITS)) | (biased[:, 1] << KEY_BITS) | biased[:, 2]


def unpack_keys(keys: ArrayT) -> ArrayT:
    """int64 (N,) keys -> int64 (N, 3) block coordinates."""
    parts = [(keys >> (2 * KEY_BITS)) & KEY_MASK, (keys >> KEY_BITS) & KEY_MASK, keys & KEY_MASK]
    if isinstance(keys, torch.Tensor):
        return torch.stack(parts, dim=1) - KEY_OFFSET
    return np.stack(parts, axis=1) - KEY_OFFSET
