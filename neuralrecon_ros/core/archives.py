"""Checks on zip archives that come from outside (map files, checkpoints) before anything in them is read.

A zip names its members and declares their sizes; both are the sender's word. Python's ``zipfile`` never
yields more than a member's declared size, so bounding the declared sizes bounds what reading can unpack
(a decompression bomb declares its real, huge size or fails its CRC). Member names are only ever looked
up, never extracted, but a name that climbs out of the archive (``..``, an absolute path) has no business
in our files and marks the archive as forged.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import PurePosixPath

#: used when the machine's memory cannot be read
_FALLBACK_MEMORY_BYTES = 16 << 30


class ArchiveError(ValueError):
    """A zip archive is refused: a member name climbs out of it, or it would unpack to too much."""


def memory_budget_bytes() -> int:
    """What an archive may unpack to: half of this machine's physical memory."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):  # not POSIX, or not reported
        total = _FALLBACK_MEMORY_BYTES
    return max(total, 1 << 30) // 2


def check_archive(archive: zipfile.ZipFile, what: str, max_bytes: int | None = None) -> None:
    """Raise :class:`ArchiveError` (naming ``what``) unless every member name stays inside the archive, no
    name repeats, and the members' declared sizes add up to at most ``max_bytes`` (default: half the memory)."""
    limit = memory_budget_bytes() if max_bytes is None else max_bytes
    seen: set[str] = set()
    total = 0
    for info in archive.infolist():
        name = info.filename
        parts = PurePosixPath(name.replace("\\", "/")).parts
        if name.startswith(("/", "\\")) or ".." in parts or "\0" in name or (parts and parts[0].endswith(":")):
            raise ArchiveError(f"{what}: member {name!r} points outside the archive; refused")
        if name in seen:
            raise ArchiveError(f"{what}: member {name!r} appears twice; refused")
        seen.add(name)
        total += info.file_size
    if total > limit:
        raise ArchiveError(f"{what}: its members would unpack to {total / 2**30:.2f} GiB, more than the "
                           f"{limit / 2**30:.2f} GiB allowed (half of this machine's memory); a decompression "
                           "bomb? refused")
