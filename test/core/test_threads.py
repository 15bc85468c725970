"""CPU thread settings: the automatic count per mode, applied by the pipeline factory for the node and
replay (also on threads started later, like the worker), and the OpenMP wait policy set at import."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest
import torch

from neuralrecon_ros.core.config import ParameterError
from neuralrecon_ros.core.threads import (
    MAX_AUTOMATIC_NETWORK_THREADS,
    apply_thread_settings,
    automatic_thread_count,
)
from neuralrecon_ros.node.parameters import NodeParameters
from neuralrecon_ros.node.pipeline_factory import build_pipeline


@pytest.fixture(autouse=True)
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def threads_seen_by_a_new_thread() -> int:
    """What a thread started now (the node's reconstruction worker) runs its torch operations with."""
    seen: list[int] = []
    worker = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    worker.start()
    worker.join()
    return seen[0]


def test_automatic_count_per_mode_and_device() -> None:
    assert automatic_thread_count("depth", "cpu", cores=16) == 1
    assert automatic_thread_count("depth", "cuda", cores=16) == 1
    assert automatic_thread_count("neuralrecon", "cuda", cores=16) == 1
    assert automatic_thread_count("neuralrecon", "cpu", cores=2) == 2
    assert automatic_thread_count("neuralrecon", "cpu", cores=1) == 1
    assert automatic_thread_count("neuralrecon", "cpu", cores=64) == MAX_AUTOMATIC_NETWORK_THREADS


def test_apply_sets_torch_threads_for_this_and_later_threads() -> None:
    settings = apply_thread_settings(0, "depth", "cpu")
    assert settings.num_threads == torch.get_num_threads() == 1 and settings.requested == 0
    assert threads_seen_by_a_new_thread() == 1
    settings = apply_thread_settings(3, "depth", "cpu")
    assert torch.get_num_threads() == 3 and threads_seen_by_a_new_thread() == 3
    assert "torch CPU threads: 3 (num_threads)" in settings.describe()
    with pytest.raises(ValueError, match="num_threads"):
        apply_thread_settings(-1, "depth", "cpu")


def test_build_pipeline_applies_the_parameter() -> None:
    torch.set_num_threads(2)
    build_pipeline(NodeParameters({"mode": "depth"}))  # default: automatic, 1 in depth mode
    assert torch.get_num_threads() == 1
    build_pipeline(NodeParameters({"mode": "depth", "num_threads": 2}))
    assert torch.get_num_threads() == 2 and threads_seen_by_a_new_thread() == 2
    with pytest.raises(ParameterError, match="num_threads"):
        NodeParameters({"num_threads": -1})


def _policy_after_import(env_policy: str | None, torch_first: bool) -> str:
    """OMP_WAIT_POLICY as a fresh interpreter sees it after importing neuralrecon_ros (and what it reports)."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if env_policy is not None:
        env["OMP_WAIT_POLICY"] = env_policy
    code = ("import torch\n" if torch_first else "") + (
        "import os, neuralrecon_ros\n"
        "from neuralrecon_ros.core.threads import prefer_passive_wait\n"
        "print(os.environ.get('OMP_WAIT_POLICY'), '|', prefer_passive_wait())\n")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def test_importing_the_package_makes_openmp_threads_sleep_unless_the_user_chose() -> None:
    assert _policy_after_import(None, torch_first=False) == "PASSIVE | PASSIVE"
    assert _policy_after_import("ACTIVE", torch_first=False) == "ACTIVE | ACTIVE"
    # torch loaded first: its OpenMP runtime has read its settings; nothing is changed, and it says so
    assert _policy_after_import(None, torch_first=True) == "None | unchanged (torch imported first)"
