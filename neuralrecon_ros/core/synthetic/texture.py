"""Procedural, view-consistent surface textures.

A texture is a function of a surface point's 2D surface coordinates (metres along the surface) and
its :class:`Material`, never of the viewpoint, so every view of a point shows the same albedo and a
monocular network sees consistent structure. Patterns: checker, stripes, tiles (offset bricks with
mortar lines) and fractal value noise, always blended with some noise plus a fine grain so no
surface is featureless.

For speed the procedural albedo is baked once per material into a periodic tile of
``TILE_TEXELS``^2 texels of ``TEXEL_M`` (repeating every 4.1 m, with a seam line where it wraps) and
looked up bilinearly; :func:`albedo` is that lookup, the definition used everywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

PATTERNS = ("checker", "stripes", "tiles", "noise")
TEXEL_M = 0.008
TILE_TEXELS = 512  # power of two: wrapping is a bit mask


@dataclass(frozen=True)
class Material:
    """Texture parameters of one surface (colours are linear RGB in [0, 1])."""

    color_a: tuple[float, float, float]
    color_b: tuple[float, float, float]
    pattern: str
    scale_m: float  # size of a checker square / stripe / tile row
    angle_rad: float  # rotation of the pattern in the surface plane
    noise_amount: float  # 0 = pure pattern, 1 = pure noise
    noise_seed: int

    def __post_init__(self) -> None:
        if self.pattern not in PATTERNS:
            raise ValueError(f"unknown texture pattern {self.pattern!r}; expected one of {PATTERNS}")

    @cached_property
    def tile(self) -> np.ndarray:
        """The baked texture: albedo (TILE_TEXELS^2, 3) float32, texel (i, j) at row i * TILE_TEXELS + j."""
        coords = np.arange(TILE_TEXELS, dtype=np.float32) * np.float32(TEXEL_M)
        U, V = np.meshgrid(coords, coords, indexing="ij")
        return procedural_albedo(self, np.stack([U.ravel(), V.ravel()], axis=-1))


def random_material(
    rng: np.random.Generator, scale_range_m: tuple[float, float], noise_amount: float
) -> Material:
    """A material with two contrasting colours of a random hue, a random pattern and scale."""
    hue = rng.uniform(0.0, 1.0)
    saturation = rng.uniform(0.15, 0.7)
    color_a = _hsv_to_rgb(hue, saturation, rng.uniform(0.55, 0.95))
    color_b = _hsv_to_rgb((hue + rng.uniform(-0.15, 0.15)) % 1.0, saturation, rng.uniform(0.12, 0.45))
    return Material(
        color_a=color_a,
        color_b=color_b,
        pattern=str(rng.choice(PATTERNS)),
        scale_m=float(rng.uniform(*scale_range_m)),
        angle_rad=float(rng.choice([0.0, math.pi / 2, rng.uniform(0.0, math.pi)])),
        noise_amount=float(np.clip(noise_amount * rng.uniform(0.6, 1.4), 0.0, 1.0)),
        noise_seed=int(rng.integers(0, 2**31 - 1)),
    )


def albedo(material: Material, uv: np.ndarray) -> np.ndarray:
    """Albedo (N, 3) float32 in [0, 1] at surface coordinates ``uv`` (N, 2) metres (bilinear in the tile)."""
    x = np.asarray(uv[:, 0], np.float32) * np.float32(1.0 / TEXEL_M)
    y = np.asarray(uv[:, 1], np.float32) * np.float32(1.0 / TEXEL_M)
    x0, y0 = np.floor(x), np.floor(y)
    wx, wy = (x - x0)[:, None], (y - y0)[:, None]
    mask = TILE_TEXELS - 1
    i0, j0 = x0.astype(np.int32) & mask, y0.astype(np.int32) & mask
    i1, j1 = (i0 + 1) & mask, (j0 + 1) & mask
    row0, row1 = i0 * TILE_TEXELS, i1 * TILE_TEXELS
    tile = material.tile
    c00, c10 = tile.take(row0 + j0, axis=0), tile.take(row1 + j0, axis=0)
    c01, c11 = tile.take(row0 + j1, axis=0), tile.take(row1 + j1, axis=0)
    top = c00 + (c10 - c00) * wx
    bottom = c01 + (c11 - c01) * wx
    return top + (bottom - top) * wy


def procedural_albedo(material: Material, uv: np.ndarray) -> np.ndarray:
    """The exact procedural albedo (N, 3) float32 in [0, 1] at surface coordinates ``uv`` (N, 2) metres."""
    uv = np.asarray(uv, dtype=np.float32)
    c, s = math.cos(material.angle_rad), math.sin(material.angle_rad)
    u = (c * uv[:, 0] - s * uv[:, 1]) / material.scale_m
    v = (s * uv[:, 0] + c * uv[:, 1]) / material.scale_m
    pattern = _pattern(material.pattern, u, v, material.noise_seed)
    noise = fractal_noise(uv / material.scale_m, material.noise_seed + 1, octaves=2)
    mix = (1.0 - material.noise_amount) * pattern + material.noise_amount * noise
    a = np.asarray(material.color_a, np.float32)
    b = np.asarray(material.color_b, np.float32)
    rgb = a + (b - a) * mix[:, None]
    grain = value_noise(uv * np.float32(60.0), material.noise_seed + 2)  # ~1.7 cm features
    return np.clip(rgb * (0.82 + 0.36 * grain)[:, None], 0.0, 1.0)


def _pattern(name: str, u: np.ndarray, v: np.ndarray, seed: int) -> np.ndarray:
    if name == "checker":
        return ((np.floor(u) + np.floor(v)) % 2).astype(np.float32)
    if name == "stripes":
        return (np.floor(u) % 2).astype(np.float32)
    if name == "tiles":
        row = np.floor(v)
        x = u * 0.5 + 0.5 * (row % 2)  # tiles twice as wide as tall, alternate rows offset by half
        fx, fy = x - np.floor(x), v - row
        mortar = (fx < 0.04) | (fy < 0.08)
        shade = value_noise(np.stack([np.floor(x), row], -1), seed)  # each tile its own tone
        return np.where(mortar, 1.0, 0.6 * shade).astype(np.float32)
    return fractal_noise(np.stack([u, v], -1), seed, octaves=3)


_LATTICE_BITS = 8
_LATTICE_SIZE = 1 << _LATTICE_BITS
# One small fixed table of lattice values shared by all materials, each seed reading it at its own
# offset: a cache-resident table lookup is much cheaper than hashing every lattice corner. The table
# repeats every 256 cells, beyond the size of a room for all but the finest grain.
_LATTICE = np.random.default_rng(20210619).random(_LATTICE_SIZE * _LATTICE_SIZE, dtype=np.float32)


def value_noise(uv: np.ndarray, seed: int) -> np.ndarray:
    """Smoothly interpolated lattice noise in [0, 1) with unit feature size, at points ``uv`` (N, 2)."""
    x = uv[:, 0] + np.float32((seed * 0.6180339887) % 1.0 * _LATTICE_SIZE)
    y = uv[:, 1] + np.float32((seed * 0.7548776662) % 1.0 * _LATTICE_SIZE)
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = x - x0, y - y0
    wx, wy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)
    mask = _LATTICE_SIZE - 1
    ix, iy = x0.astype(np.int32) & mask, y0.astype(np.int32) & mask
    ix1, iy1 = (ix + 1) & mask, (iy + 1) & mask
    row0, row1 = ix << _LATTICE_BITS, ix1 << _LATTICE_BITS
    n00, n10 = _LATTICE.take(row0 | iy), _LATTICE.take(row1 | iy)
    n01, n11 = _LATTICE.take(row0 | iy1), _LATTICE.take(row1 | iy1)
    top = n00 + (n10 - n00) * wx
    bottom = n01 + (n11 - n01) * wx
    return top + (bottom - top) * wy


def fractal_noise(uv: np.ndarray, seed: int, octaves: int) -> np.ndarray:
    """Sum of ``octaves`` value-noise layers, each twice the frequency and half the weight, in [0, 1)."""
    total = np.zeros(len(uv), np.float32)
    weight, norm = 1.0, 0.0
    for octave in range(octaves):
        total += np.float32(weight) * value_noise(uv * np.float32(2.0**octave), seed + 7919 * octave)
        norm += weight
        weight *= 0.5
    return total / np.float32(norm)


def _hsv_to_rgb(h: float, s: float, v: float) -> tuple[float, float, float]:
    i = int(h * 6.0) % 6
    f = h * 6.0 - math.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    r, g, b = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return float(r), float(g), float(b)
