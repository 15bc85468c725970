"""Paths to the shared reference material beside the repository (``../shared``), skipping when absent."""

from __future__ import annotations

from pathlib import Path

import pytest
from parity_fixtures import SHARED_DIR, parity_fixture_dir


@pytest.fixture(scope="session")
def expected_state_dict_tsv() -> Path:
    path = SHARED_DIR / "reference" / "neuralrecon_expected_state_dict.tsv"
    if not path.is_file():
        pytest.skip(f"expected state-dict listing not found at {path} (the shared folder beside the repo)")
    return path


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    path = parity_fixture_dir()
    if not (path / "inputs.json").is_file():
        pytest.skip(f"upstream parity fixture not found at {path}; set NEURALRECON_PARITY_FIXTURES")
    return path


@pytest.fixture
def torch_backend():
    """Run a test on our pure-PyTorch sparse backend, whatever ``auto`` would pick."""
    from neuralrecon_ros.core.network import sparse

    previous = sparse.get_backend()
    sparse.set_backend("torch")
    yield
    sparse.set_backend(previous)
