"""Independent reference values for the sparse-backend tests."""

from __future__ import annotations


def reference_hash(x: int, y: int, z: int, b: int) -> int:
    """torchsparse v1.x hash written independently with Python ints (facts §2.6)."""
    h = 14695981039346656037
    for v in (x, y, z, b):
        h ^= v & 0xFFFFFFFF
        h = (h * 1099511628211) % 2**64
    return (h >> 60) ^ (h & 0x0FFFFFFFFFFFFFFF)
