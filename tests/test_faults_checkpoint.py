"""Fault injection, checkpoints: one file per checkpoint (tensors + JSON meta + checksum), so a truncated,
torn, mixed or foreign checkpoint is detected; FFW's interrupted search says the truth about what can be
resumed, and an empty ``.partial/`` blocks nothing (issue 11, case 4)."""

from __future__ import annotations

import errno
import shutil

import pytest
import torch
from safetensors.torch import save_file

from conftest import tree_bytes
from debiaskit._io import load_checkpoint, save_checkpoint
from debiaskit.errors import DamagedError, OutputError

FAST = ["--max-levels", "1", "--max-epochs-per-level", "1", "--no-progress"]
# FFW's mechanics on 1-epoch / untrained models, near chance themselves: the do-no-harm guard (test_ffw_no_harm.py)
# would refuse their output; recorded here, not enforced
pytestmark = pytest.mark.usefixtures("allow_harm")
TENSORS = {"w": torch.arange(6.0).reshape(2, 3), "step": torch.tensor([3]), "mask": torch.tensor([True, False])}


def test_round_trip_and_permissions(tmp_path):
    save_checkpoint(tmp_path / "c.safetensors", TENSORS, {"epoch": 3, "loss": float("nan")}, kind="train")
    tensors, meta = load_checkpoint(tmp_path / "c.safetensors", kind="train")
    assert meta == {"epoch": 3, "loss": None} and all(torch.equal(tensors[k], v) for k, v in TENSORS.items())
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]  # no temporary file left


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda b: b[: len(b) - 7], "is damaged"),  # truncated
        (lambda b: b[:-1] + bytes([b[-1] ^ 0xFF]), "do not match their recorded checksum"),  # a flipped byte
        (lambda b: b"", "is damaged"),
    ],
)
def test_a_damaged_checkpoint_is_detected(tmp_path, damage, message):
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, TENSORS, {"epoch": 1}, kind="train")
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(DamagedError, match=message):
        load_checkpoint(path, kind="train")


def test_a_mixed_checkpoint_is_detected(tmp_path):
    """Tensors of one epoch with the header of another: the checksum in the header no longer fits."""
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_checkpoint(a, TENSORS, {"epoch": 1}, kind="train")
    save_checkpoint(b, {**TENSORS, "w": TENSORS["w"] + 1}, {"epoch": 2}, kind="train")
    from safetensors import safe_open

    with safe_open(str(a), framework="pt") as f:
        header = f.metadata()
    with safe_open(str(b), framework="pt") as f:
        save_file({k: f.get_tensor(k) for k in f.keys()}, str(tmp_path / "mixed.safetensors"), metadata=header)
    with pytest.raises(DamagedError, match="torn or mixed"):
        load_checkpoint(tmp_path / "mixed.safetensors", kind="train")


@pytest.mark.parametrize(
    "metadata, message",
    [
        (None, "is not a debiaskit checkpoint"),
        ({"debiaskit": "{not json"}, "metadata is not JSON"),
        (
            {"debiaskit": '{"kind": "ffw-search", "schema_version": 1}'},
            "is a 'ffw-search' checkpoint, expected a 'train' one",
        ),
        ({"debiaskit": '{"kind": "train", "schema_version": 7}'}, "checkpoint schema version 7"),
    ],
)
def test_foreign_or_newer_checkpoints_are_refused(tmp_path, metadata, message):
    save_file(TENSORS, str(tmp_path / "c.safetensors"), metadata=metadata)
    with pytest.raises(DamagedError, match=message):
        load_checkpoint(tmp_path / "c.safetensors", kind="train")


def test_a_full_disk_leaves_no_checkpoint_and_no_temporary_file(tmp_path, monkeypatch):
    from pathlib import Path

    def full(self, data):  # the serialised tensors are written with Path.write_bytes (debiaskit._io.save_tensors)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(OutputError, match="No space left on device; the disk is full"):
        save_checkpoint(tmp_path / "c.safetensors", TENSORS, {}, kind="train")
    assert list(tmp_path.iterdir()) == []


# -- FFW's interrupted search ------------------------------------------------------------------------------------


@pytest.fixture
def run(tmp_path, toy_run_dir):
    shutil.copytree(toy_run_dir, tmp_path / "run")
    return tmp_path / "run"


def _interrupt_at_epoch(monkeypatch, n: int) -> None:
    import debiaskit.ffw._search as search

    real, calls = search._Search.run_epoch, {"n": 0}

    def run_epoch(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(search._Search, "run_epoch", run_epoch)


def test_interruption_before_the_first_checkpoint_does_not_promise_a_resume(cli, run, monkeypatch):
    out = run.parent / "f"
    _interrupt_at_epoch(monkeypatch, 1)
    code, err = cli("ffw", run, "--mode", "structured", "--out", out, *FAST)
    assert code == 130 and "nothing to resume; rerun the same command" in err and "--resume" not in err, err
    assert sorted(p.name for p in run.parent.iterdir()) == ["run"]  # no partial, staging or lock left
    monkeypatch.undo()
    code, err = cli("ffw", run, "--mode", "structured", "--out", out, *FAST)
    assert code == 0, err


@pytest.mark.parametrize("resume", [False, True])
def test_an_empty_partial_folder_blocks_neither_a_rerun_nor_resume(cli, run, resume):
    out = run.parent / "f"
    (run.parent / ".f.partial").mkdir()  # what a disk error at the first checkpoint used to leave
    code, err = cli("ffw", run, "--mode", "structured", "--out", out, *FAST, *(["--resume"] if resume else []))
    assert code == 0, err
    assert (out / "ffw.json").is_file() and not (run.parent / ".f.partial").exists()


def test_a_torn_ffw_checkpoint_is_refused_on_resume_and_kept(cli, run, monkeypatch):
    out = run.parent / "f"
    _interrupt_at_epoch(monkeypatch, 2)
    code, err = cli("ffw", run, "--mode", "structured", "--out", out, "--max-levels", "2", *FAST[2:])
    assert code == 130 and "continue with the same command plus --resume" in err, err
    ckpt = run.parent / ".f.partial" / "checkpoint.safetensors"
    ckpt.write_bytes(ckpt.read_bytes()[:-100])
    before = tree_bytes(run.parent)
    monkeypatch.undo()
    code, err = cli("ffw", run, "--mode", "structured", "--out", out, "--max-levels", "2", "--resume", *FAST[2:])
    assert code == 2 and "is damaged" in err and "start afresh (--force)" in err, err
    assert tree_bytes(run.parent) == before
    code, err = cli("ffw", run, "--mode", "structured", "--out", out, "--max-levels", "2", "--force", *FAST[2:])
    assert code == 0, err


def test_a_full_disk_during_the_search_leaves_no_empty_partial(cli, run, monkeypatch):
    from pathlib import Path

    real = Path.write_bytes

    def full(self, data):  # the checkpoint's bytes go through Path.write_bytes (debiaskit._io.save_tensors)
        if ".partial" in str(self):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", full)
    code, err = cli("ffw", run, "--mode", "structured", "--out", run.parent / "f", *FAST)
    assert code == 2 and "No space left on device; the disk is full" in err, err
    assert sorted(p.name for p in run.parent.iterdir()) == ["run"]
