"""Upstream-format checkpoints: round trip, and named errors for doctored or foreign files."""

from __future__ import annotations

import argparse
import zipfile

import pytest
import torch

from neuralrecon_ros.core.archives import memory_budget_bytes
from neuralrecon_ros.core.network.checkpoint import (
    CheckpointError,
    check_state_dict,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from neuralrecon_ros.core.network.model import NeuralRecon


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    model = NeuralRecon()
    path = tmp_path_factory.mktemp("ckpt") / "model_000047.ckpt"
    save_checkpoint(model, path, epoch=47, optimizer_state={"state": {}, "param_groups": []})
    return model, path


def _doctored(saved, tmp_path, edit) -> str:
    content = torch.load(saved[1], weights_only=True)
    edit(content["model"])
    path = tmp_path / "doctored.ckpt"
    torch.save(content, path)
    return str(path)


def test_round_trip_in_upstream_format(saved):
    model, path = saved
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"epoch", "model", "optimizer"} and raw["epoch"] == 47
    assert all(k.startswith("module.") for k in raw["model"]) and len(raw["model"]) == 718
    fresh = NeuralRecon()
    info = load_checkpoint(fresh, path)
    assert info.epoch == 47 and info.missing == [] and info.unexpected == []
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), name


def test_bare_state_dict_without_prefix_is_accepted(saved, tmp_path):
    model, _ = saved
    path = tmp_path / "bare.pth"
    torch.save(model.state_dict(), path)
    state, epoch = read_checkpoint(path)
    assert epoch is None and len(state) == 718


def test_missing_key_is_named(saved, tmp_path):
    path = _doctored(saved, tmp_path, lambda sd: sd.pop("module.neucon_net.occ_preds.2.bias"))
    with pytest.raises(CheckpointError, match=r"1 missing keys: module\.neucon_net\.occ_preds\.2\.bias"):
        load_checkpoint(NeuralRecon(), path)
    # non-strict loading (upstream's demo) tolerates it and reports it
    info = load_checkpoint(NeuralRecon(), path, strict=False)
    assert info.missing == ["neucon_net.occ_preds.2.bias"]


def test_unexpected_key_is_named(saved, tmp_path):
    path = _doctored(saved, tmp_path, lambda sd: sd.__setitem__("module.extra.weight", torch.zeros(3)))
    with pytest.raises(CheckpointError, match=r"1 unexpected keys: module\.extra\.weight"):
        load_checkpoint(NeuralRecon(), path)


def test_wrong_shape_is_named_with_both_shapes(saved, tmp_path):
    name = "module.neucon_net.sp_convs.0.stem.0.kernel"
    path = _doctored(saved, tmp_path, lambda sd: sd.__setitem__(name, torch.zeros(27, 80, 32)))
    expected = "1 misshaped keys: " + name + " (file (27, 80, 32), model (27, 81, 32))"
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(NeuralRecon(), path, strict=False)
    assert expected in str(err.value)


def test_truncated_file(saved, tmp_path):
    data = saved[1].read_bytes()
    path = tmp_path / "truncated.ckpt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(NeuralRecon(), path)


def test_foreign_files(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n")
    with pytest.raises(CheckpointError, match="notes.txt"):
        load_checkpoint(NeuralRecon(), text)
    other = tmp_path / "other.pt"
    torch.save({"weights": [1, 2, 3]}, other)
    with pytest.raises(CheckpointError, match="holds no model state dict"):
        load_checkpoint(NeuralRecon(), other)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(NeuralRecon(), tmp_path / "absent.ckpt")


def test_pickled_objects_are_refused(tmp_path):
    # e.g. training scripts that store their argparse arguments: never unpickled blindly
    path = tmp_path / "pickled.ckpt"
    torch.save({"model": {"a": torch.zeros(1)}, "args": argparse.Namespace(lr=1e-3)}, path)
    with pytest.raises(CheckpointError, match="refused"):
        read_checkpoint(path)


def _with_member(source, target, name: str, data: bytes, method: int = zipfile.ZIP_STORED):
    """Copy a zip-format checkpoint with one more member."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for info in old.infolist():
            new.writestr(info, old.read(info.filename))
        new.writestr(zipfile.ZipInfo(name), data, compress_type=method)
    return target


def test_zip_members_climbing_out_and_decompression_bombs_are_refused(saved, tmp_path, monkeypatch):
    _, path = saved
    prefix = zipfile.ZipFile(path).namelist()[0].split("/")[0]
    climbing = _with_member(path, tmp_path / "climb.ckpt", f"{prefix}/../../../tmp/evil.pkl", b"x")
    with pytest.raises(CheckpointError, match="climb.ckpt.*points outside the archive"):
        read_checkpoint(climbing)
    # 64 MiB of zeros deflated into a 64 kB member, against a 16 MiB budget (half the memory, in reality)
    bomb = _with_member(path, tmp_path / "bomb.ckpt", f"{prefix}/data/bomb", bytes(64 << 20), zipfile.ZIP_DEFLATED)
    assert bomb.stat().st_size < path.stat().st_size + (1 << 20)
    monkeypatch.setattr("neuralrecon_ros.core.archives.memory_budget_bytes", lambda: 16 << 20)
    with pytest.raises(CheckpointError, match="bomb.ckpt.*would unpack to .* a decompression bomb"):
        read_checkpoint(bomb)


def test_memory_budget_is_half_the_physical_memory():
    with open("/proc/meminfo") as meminfo:  # an independent reader of the machine's memory
        total_kib = next(int(line.split()[1]) for line in meminfo if line.startswith("MemTotal:"))
    assert memory_budget_bytes() == pytest.approx(total_kib * 1024 / 2, rel=0.01)


def test_check_state_dict_lists_every_problem_kind():
    model = NeuralRecon()
    state = dict(model.state_dict())
    state.pop("backbone2d.out1.weight")
    state["backbone2d.out3.weight"] = torch.zeros(1)
    state["bogus"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as err:
        check_state_dict(model, state)
    message = str(err.value)
    assert "1 missing keys: module.backbone2d.out1.weight" in message
    assert "1 unexpected keys: module.bogus" in message
    assert "1 misshaped keys: module.backbone2d.out3.weight (file (1,), model (24, 80, 3, 3))" in message
