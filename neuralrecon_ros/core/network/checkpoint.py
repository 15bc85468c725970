"""Reading and writing checkpoints in upstream NeuralRecon's format (facts §3.1).

Upstream saves ``torch.save({'epoch': int, 'model': state_dict, 'optimizer': optimizer_state})`` from
a DataParallel wrapper, so every model key starts with ``module.``. Files are read with
``torch.load(weights_only=True)``: tensors and plain containers only, no arbitrary unpickling; a zip-format
file's member names and declared sizes are checked first (:mod:`..archives`: no decompression bombs).
Every failure becomes a :class:`CheckpointError` whose message names the file and the problem.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..archives import ArchiveError, check_archive

#: key prefix of upstream checkpoints (DataParallel)
PREFIX = "module."
_MAX_LISTED = 8


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, or does not fit the model."""


@dataclass
class CheckpointInfo:
    path: str
    epoch: int | None
    missing: list[str] = field(default_factory=list)  # model keys the file lacked (strict=False only)
    unexpected: list[str] = field(default_factory=list)  # file keys the model ignored (strict=False only)


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    return shown + (f", ... ({len(names) - _MAX_LISTED} more)" if len(names) > _MAX_LISTED else "")


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], int | None]:
    """The model state dict of a checkpoint file with the ``module.`` prefix removed, and its epoch.

    Accepts the upstream container ``{'model': ..., 'epoch': ...}`` or a bare state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist or is not a file")
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                check_archive(archive, f"checkpoint {str(path)!r}")
    except ArchiveError as exc:
        raise CheckpointError(str(exc)) from None
    except (zipfile.BadZipFile, OSError) as exc:
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be read (corrupt zip): {exc}") from None
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is not a plain torch checkpoint (it needs unpickling of arbitrary "
            f"Python objects, which is refused) or is corrupt: {str(exc).splitlines()[0]}"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise CheckpointError(
            f"checkpoint {str(path)!r} cannot be read (truncated, corrupt or not a torch file): "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from None
    epoch = None
    if isinstance(content, Mapping) and "model" in content:
        epoch = content.get("epoch")
        epoch = int(epoch) if isinstance(epoch, int) else None
        content = content["model"]
    if not isinstance(content, Mapping) or not content or not all(
        isinstance(k, str) and torch.is_tensor(v) for k, v in content.items()
    ):
        raise CheckpointError(
            f"checkpoint {str(path)!r} holds no model state dict (expected a dict with a 'model' entry "
            "mapping parameter names to tensors, as upstream NeuralRecon saves)"
        )
    state = {k[len(PREFIX):] if k.startswith(PREFIX) else k: v for k, v in content.items()}
    return state, epoch


def check_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], strict: bool = True,
                     source: str = "checkpoint") -> tuple[list[str], list[str]]:
    """Compare ``state`` (no prefix) with ``model``; raise :class:`CheckpointError` listing problems.

    Misshaped entries are always an error; missing and unexpected keys only when ``strict``.
    Returns (missing, unexpected).
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    misshaped = [
        f"{PREFIX}{k} (file {tuple(state[k].shape)}, model {tuple(v.shape)})"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    problems = []
    if strict and missing:
        problems.append(f"{len(missing)} missing keys: {_listing([PREFIX + k for k in missing])}")
    if strict and unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {_listing([PREFIX + k for k in unexpected])}")
    if misshaped:
        problems.append(f"{len(misshaped)} misshaped keys: {_listing(misshaped)}")
    if problems:
        raise CheckpointError(f"{source} does not fit the NeuralRecon model: " + "; ".join(problems))
    return missing, unexpected


def load_checkpoint(model: nn.Module, path: str | os.PathLike, strict: bool = True) -> CheckpointInfo:
    """Load an upstream-format checkpoint into ``model`` (strict by default, like upstream's test)."""
    state, epoch = read_checkpoint(path)
    missing, unexpected = check_state_dict(model, state, strict, source=f"checkpoint {str(path)!r}")
    model.load_state_dict({k: v for k, v in state.items() if k not in unexpected}, strict=False)
    return CheckpointInfo(str(path), epoch, missing, unexpected)


def save_checkpoint(model: nn.Module, path: str | os.PathLike, epoch: int = 0,
                    optimizer_state: Mapping | None = None) -> None:
    """Write ``model`` in upstream's format (``module.`` keys), atomically (temp file + rename)."""
    path = Path(path)
    content = {
        "epoch": int(epoch),
        "model": {PREFIX + k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": dict(optimizer_state or {}),
    }
    atomic_torch_save(content, path)


def atomic_torch_save(content: dict[str, Any], path: str | Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename (never a half-written checkpoint)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(content, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
