"""Which map blocks a layer stream must send: the blocks changed or removed since the last message.

:class:`LayerChangeTracker` is fed the same :class:`~..reconstructor.MapUpdate` block lists as the
incremental mesher (the pipeline passes every update to both), so it sees every change the map goes
through: integration, the network's fragment writes, clearing-radius drops, cap evictions and restores.
At :meth:`~LayerChangeTracker.take` time a touched block that is still allocated is sent whole, one that
is not was removed. A reset or a map load (:meth:`~LayerChangeTracker.reset`) makes the next take a
*full* one: every block, and a receiver drops whatever it held first.

Tracking starts at the first take (a layer output that is off costs nothing), and that take is full.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .keys import pack_keys, unpack_keys
from .tsdf_map import TSDFMap

#: pending keys are de-duplicated once they exceed twice the distinct count plus this many
_COMPACT_SLACK = 65536


def _no_blocks() -> np.ndarray:
    return np.zeros((0, 3), np.int64)


@dataclass
class LayerChanges:
    """What a layer message carries: ``blocks`` (allocated now: send them whole) and ``removed`` (no longer
    in the map), int64 (N, 3) block coordinates sorted by key; ``full``: ``blocks`` is the whole map and a
    receiver drops everything it holds first."""

    blocks: np.ndarray = field(default_factory=_no_blocks)
    removed: np.ndarray = field(default_factory=_no_blocks)
    full: bool = False

    @property
    def is_empty(self) -> bool:
        return not self.full and len(self.blocks) == 0 and len(self.removed) == 0


class LayerChangeTracker:
    """Accumulates touched blocks between takes (see the module docstring)."""

    def __init__(self) -> None:
        self.tracking = False
        self.reset()

    def reset(self) -> None:
        """The map was replaced (reset, load): the next take is full."""
        self._pending: list[np.ndarray] = []  # packed keys, possibly repeated
        self._pending_rows = 0
        self._distinct_rows = 0
        self._full_pending = True

    def mark(self, touched_blocks: np.ndarray) -> None:
        """Note blocks written to, allocated or removed (a ``MapUpdate.touched_blocks``)."""
        if not self.tracking or self._full_pending:  # a full take sends everything anyway
            return
        blocks = np.asarray(touched_blocks, dtype=np.int64).reshape(-1, 3)
        if len(blocks) == 0:
            return
        self._pending.append(pack_keys(blocks))
        self._pending_rows += len(blocks)
        if self._pending_rows > 2 * self._distinct_rows + _COMPACT_SLACK:  # bounded by the distinct blocks
            keys = np.unique(np.concatenate(self._pending))
            self._pending, self._pending_rows, self._distinct_rows = [keys], len(keys), len(keys)

    def take(self, tsdf_map: TSDFMap, full: bool = False) -> LayerChanges:
        """The changes since the last take (every block when ``full``, after a reset or at the first take),
        then forget them."""
        full = full or self._full_pending or not self.tracking
        self.tracking = True
        keys = np.unique(np.concatenate(self._pending)) if self._pending else np.zeros(0, np.int64)
        self.reset()
        self._full_pending = False
        if full:
            coords = tsdf_map.block_coords()
            return LayerChanges(coords[np.argsort(pack_keys(coords), kind="stable")], full=True)
        touched = unpack_keys(keys)
        present = (tsdf_map.lookup_blocks(touched) >= 0).cpu().numpy()
        return LayerChanges(touched[present], touched[~present])
