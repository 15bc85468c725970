"""Where the upstream-parity fixtures are: the primary one, every folder with the layout under ``../shared/fixtures``,
and extra folders from the environment."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
SHARED_DIR = REPO_ROOT.parent / "shared"


PARITY_FILES = ("inputs.json", "weights.json", "weights_rule.py", "frag0_outputs.npz")


def parity_fixture_dir() -> Path:
    """The primary upstream parity fixture folder (env ``NEURALRECON_PARITY_FIXTURES`` or ``../shared/...``)."""
    return Path(os.environ.get("NEURALRECON_PARITY_FIXTURES", SHARED_DIR / "fixtures" / "upstream_parity"))


def is_parity_fixture(folder: Path) -> bool:
    """Whether ``folder`` has the upstream-parity fixture layout (inputs, weights rule, fragment-0 outputs)."""
    return all((folder / name).is_file() for name in PARITY_FILES)


def parity_fixture_dirs() -> list[Path]:
    """Every upstream parity fixture to check: the primary one, every folder under ``../shared/fixtures``
    with the fixture layout, and the folders listed in env ``NEURALRECON_EXTRA_PARITY_FIXTURES``
    (separated by ``os.pathsep``; a listed folder without the layout is an error, not a silent skip)."""
    candidates = [parity_fixture_dir()]
    shared = SHARED_DIR / "fixtures"
    if shared.is_dir():
        candidates += sorted(p for p in shared.iterdir() if p.is_dir())
    folders = [p for p in candidates if is_parity_fixture(p)]
    for entry in filter(None, os.environ.get("NEURALRECON_EXTRA_PARITY_FIXTURES", "").split(os.pathsep)):
        folder = Path(entry)
        if not is_parity_fixture(folder):
            raise ValueError(f"NEURALRECON_EXTRA_PARITY_FIXTURES lists {folder}, which lacks one of {PARITY_FILES}")
        folders.append(folder)
    unique: dict[Path, Path] = {}
    for folder in folders:
        unique.setdefault(folder.resolve(), folder)
    return list(unique.values())
