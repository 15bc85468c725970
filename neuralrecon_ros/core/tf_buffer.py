"""A ROS-free transform buffer with tf2 semantics (pure numpy).

Frames form a tree: every child frame has one parent. Each edge holds either one static transform
(valid at all times) or a time-sorted history of ``T_parent_child`` samples covering the last
``cache_time_s`` seconds. :meth:`TransformBuffer.lookup` walks from both frames up to their
common ancestor and interpolates every dynamic edge between the two samples bracketing the stamp
(linear translation, slerp rotation). It never extrapolates: a stamp outside an edge's history by
more than ``tolerance_s`` raises :class:`ExtrapolationError` saying by how much.

Like tf2, the buffer never decides from stamps that time went backwards: a dynamic sample older than
the history it would join (more than ``cache_time_s`` before the newest stamp) is stale and refused with
:class:`StaleTransformError`, and everything already stored stays. Whoever owns the clock (the node
logic, on its transport's clock going back) calls :meth:`clear` on a real time jump.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import numpy as np

from .geometry import check_rigid, interpolate_transform, invert


class TransformLookupError(LookupError):
    """A transform cannot be looked up."""


class ConnectivityError(TransformLookupError):
    """The two frames are not connected in the tree (or one is unknown)."""


class ExtrapolationError(TransformLookupError):
    """The stamp lies outside the history of a dynamic transform on the path."""

    def __init__(self, message: str, *, future: bool, seconds: float) -> None:
        super().__init__(message)
        #: True when the stamp is newer than the newest sample (waiting for data may help)
        self.future = future
        #: how far outside the history the stamp is
        self.seconds = seconds


class TransformTreeError(ValueError):
    """A transform was rejected: it would make a loop, or names no frames."""


class StaleTransformError(ValueError):
    """A dynamic transform is older than the history kept (``cache_time_s`` before the newest stamp)."""


@dataclass
class _Edge:
    parent: str
    static: bool
    stamps: list[float] = field(default_factory=list)
    transforms: list[np.ndarray] = field(default_factory=list)

    def at(self, child: str, stamp: float, tolerance: float) -> np.ndarray:
        if self.static:
            return self.transforms[0]
        stamps = self.stamps
        if stamp < stamps[0] - tolerance:
            gap = stamps[0] - stamp
            raise ExtrapolationError(
                f"transform '{self.parent}' <- '{child}' at t={stamp:.6f} is {gap:.6f} s before its oldest "
                f"sample (t={stamps[0]:.6f})",
                future=False,
                seconds=gap,
            )
        if stamp > stamps[-1] + tolerance:
            gap = stamp - stamps[-1]
            raise ExtrapolationError(
                f"transform '{self.parent}' <- '{child}' at t={stamp:.6f} is {gap:.6f} s after its newest "
                f"sample (t={stamps[-1]:.6f})",
                future=True,
                seconds=gap,
            )
        i = bisect.bisect_left(stamps, stamp)
        if i == 0:
            return self.transforms[0]
        if i == len(stamps):
            return self.transforms[-1]
        t0, t1 = stamps[i - 1], stamps[i]
        if t1 - stamp <= tolerance:
            return self.transforms[i]
        if stamp - t0 <= tolerance:
            return self.transforms[i - 1]
        return interpolate_transform(self.transforms[i - 1], self.transforms[i], (stamp - t0) / (t1 - t0))


def _frame(name: str) -> str:
    """tf2 frame ids carry no leading slash; accept one for robustness."""
    return name[1:] if name.startswith("/") else name


class TransformBuffer:
    """Stores ``T_parent_child`` transforms over time and answers ``T_target_source`` lookups."""

    def __init__(self, cache_time_s: float = 10.0, tolerance_s: float = 1e-6) -> None:
        if cache_time_s <= 0:
            raise ValueError(f"cache_time_s must be positive, got {cache_time_s}")
        self.cache_time_s = float(cache_time_s)
        self.tolerance_s = float(tolerance_s)
        self._edges: dict[str, _Edge] = {}
        self._newest = -np.inf

    # --- writing ----------------------------------------------------------------------------

    def set_transform(
        self, parent: str, child: str, T_parent_child: np.ndarray, stamp: float, static: bool = False
    ) -> None:
        """Add ``T_parent_child`` at ``stamp``; a static transform replaces the edge for all times.

        Raises PoseError for a non-rigid transform, TransformTreeError for an edge that would close a
        loop and StaleTransformError for a dynamic sample older than the kept history; the buffer is
        unchanged then.
        """
        parent, child = _frame(parent), _frame(child)
        if not parent or not child or parent == child:
            raise TransformTreeError(
                f"transform needs two different, non-empty frames, got '{parent}' <- '{child}'"
            )
        T = check_rigid(T_parent_child, f"transform '{parent}' <- '{child}'")
        if self._is_ancestor(child, of=parent):
            raise TransformTreeError(
                f"transform '{parent}' <- '{child}' would make a loop: '{child}' is already above '{parent}'"
            )
        edge = self._edges.get(child)
        if static:
            self._edges[child] = _Edge(parent, True, [float(stamp)], [T])
            return
        stamp = float(stamp)
        if not np.isfinite(stamp):
            raise StaleTransformError(f"transform '{parent}' <- '{child}' has no finite stamp ({stamp})")
        if stamp < self._newest - self.cache_time_s:
            raise StaleTransformError(
                f"transform '{parent}' <- '{child}' at t={stamp:.6f} is {self._newest - stamp:.3f} s older than "
                f"the newest one (t={self._newest:.6f}), beyond the {self.cache_time_s:g} s of history kept"
            )
        if edge is None or edge.static or edge.parent != parent:
            edge = self._edges[child] = _Edge(parent, False)
        i = bisect.bisect_right(edge.stamps, stamp)
        if i > 0 and abs(edge.stamps[i - 1] - stamp) <= self.tolerance_s:
            edge.transforms[i - 1] = T  # same stamp again: the newer message wins
        else:
            edge.stamps.insert(i, stamp)
            edge.transforms.insert(i, T)
        self._newest = max(self._newest, stamp)
        self._prune(edge)

    def _prune(self, edge: _Edge) -> None:
        cutoff = self._newest - self.cache_time_s
        keep = bisect.bisect_left(edge.stamps, cutoff)
        keep = min(keep, len(edge.stamps) - 1)  # an edge keeps at least its newest sample
        if keep > 0:
            del edge.stamps[:keep]
            del edge.transforms[:keep]

    def clear(self, static: bool = True) -> None:
        """Forget all transforms (``static=False``: keep the static ones)."""
        self._edges = {} if static else {c: e for c, e in self._edges.items() if e.static}
        self._newest = -np.inf

    # --- reading ----------------------------------------------------------------------------

    @property
    def frames(self) -> list[str]:
        names = set(self._edges) | {e.parent for e in self._edges.values()}
        return sorted(names)

    @property
    def newest_stamp(self) -> float | None:
        """Newest dynamic stamp seen since the last clear, or None."""
        return None if self._newest == -np.inf else self._newest

    def _chain(self, frame: str) -> list[str]:
        """``frame`` and its ancestors up to the root."""
        chain = [frame]
        while (edge := self._edges.get(chain[-1])) is not None:
            chain.append(edge.parent)
        return chain

    def _is_ancestor(self, frame: str, of: str) -> bool:
        return frame in self._chain(of)

    def lookup(self, target_frame: str, source_frame: str, stamp: float | None) -> np.ndarray:
        """``T_target_source`` at ``stamp`` (None: the latest time all dynamic edges on the path share)."""
        target, source = _frame(target_frame), _frame(source_frame)
        if target == source:
            return np.eye(4)
        known = set(self.frames)
        if unknown := [f for f in (target, source) if f not in known]:
            raise ConnectivityError(
                f"frame(s) {', '.join(repr(f) for f in unknown)} unknown; known frames: "
                f"{', '.join(sorted(known)) or '(none)'}"
            )
        up_source, up_target = self._chain(source), self._chain(target)
        common = next((f for f in up_source if f in set(up_target)), None)
        if common is None:
            raise ConnectivityError(
                f"frames '{target}' and '{source}' are not connected: '{target}' is under root "
                f"'{up_target[-1]}', '{source}' under root '{up_source[-1]}'; "
                f"known frames: {', '.join(sorted(known))}"
            )
        path_source = up_source[: up_source.index(common)]
        path_target = up_target[: up_target.index(common)]
        if stamp is None:
            stamp = self._latest_common_stamp(path_source + path_target)
        T_common_source = self._compose(path_source, stamp)
        T_common_target = self._compose(path_target, stamp)
        return invert(T_common_target) @ T_common_source

    def _compose(self, children: list[str], stamp: float) -> np.ndarray:
        """``T_top_child0`` along ``children`` (each the child of the next one's edge)."""
        T = np.eye(4)
        for child in children:
            T = self._edges[child].at(child, stamp, self.tolerance_s) @ T
        return T

    def _latest_common_stamp(self, children: list[str]) -> float:
        newest = [self._edges[c].stamps[-1] for c in children if not self._edges[c].static]
        return min(newest) if newest else 0.0

    def can_transform(self, target_frame: str, source_frame: str, stamp: float | None) -> bool:
        try:
            self.lookup(target_frame, source_frame, stamp)
        except TransformLookupError:
            return False
        return True

    def describe(self) -> str:
        """One line per edge: ``parent <- child (static | N samples t0..t1)``."""
        lines = []
        for child, edge in sorted(self._edges.items()):
            if edge.static:
                lines.append(f"{edge.parent} <- {child} (static)")
            else:
                lines.append(
                    f"{edge.parent} <- {child} ({len(edge.stamps)} samples, "
                    f"t={edge.stamps[0]:.3f}..{edge.stamps[-1]:.3f})"
                )
        return "\n".join(lines)
