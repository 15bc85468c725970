"""Process-wide choice of the sparse backend: 'torch' (ours, pure PyTorch) or 'torchsparse' (v1.4 API)."""

from __future__ import annotations

import importlib
from functools import lru_cache

from .errors import BackendError

BACKENDS = ("torch", "torchsparse")
CHOICES = ("auto", *BACKENDS)

_current = "torch"


@lru_cache(maxsize=1)
def torchsparse_available() -> bool:
    """True when ``torchsparse`` with the v1.4-style API (``torchsparse.nn.functional.conv3d``,
    ``sphash``, ``calc_ti_weights``) can be imported."""
    try:
        functional = importlib.import_module("torchsparse.nn.functional")
    except Exception:  # any import failure (missing, ABI mismatch) means unavailable
        return False
    return all(hasattr(functional, name) for name in ("conv3d", "sphash", "sphashquery", "calc_ti_weights"))


def resolve_backend(name: str) -> str:
    """Map a user choice ('auto' | 'torch' | 'torchsparse') to a usable backend name or raise."""
    if name not in CHOICES:
        raise BackendError(f"unknown sparse backend {name!r}; choose one of {', '.join(CHOICES)}")
    if name == "auto":
        return "torchsparse" if torchsparse_available() else "torch"
    if name == "torchsparse" and not torchsparse_available():
        raise BackendError(
            "sparse backend 'torchsparse' requested but torchsparse (v1.4 API) cannot be imported; "
            "install torchsparse 1.4.0 or use 'torch'"
        )
    return name


def set_backend(name: str) -> str:
    """Select the backend used by every sparse conv and point<->voxel op; returns the resolved name."""
    global _current
    _current = resolve_backend(name)
    return _current


def get_backend() -> str:
    """The backend currently in use ('torch' or 'torchsparse')."""
    return _current
