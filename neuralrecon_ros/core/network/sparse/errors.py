"""Exceptions raised by the sparse backend (all are ``ValueError``/``RuntimeError`` subclasses)."""

from __future__ import annotations


class SparseError(ValueError):
    """Base class of every error raised by :mod:`neuralrecon_ros.core.network.sparse`."""


class CoordinateError(SparseError):
    """Coordinates have the wrong dtype, shape, device or range, are duplicated or off the stride lattice."""


class FeatureError(SparseError):
    """Features have the wrong dtype, shape, device or number of channels."""


class KernelMapError(SparseError):
    """A kernel map cannot be built or reused (e.g. a transposed conv without its down conv)."""


class UnsupportedConvError(SparseError):
    """The requested kernel size / stride / transposed combination is not implemented."""


class BackendError(SparseError, RuntimeError):
    """An unknown backend name, or a backend whose library cannot be imported."""
