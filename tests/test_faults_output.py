"""Fault injection, outputs: a command never replaces anything but a finished folder of its own kind.

Each case ends in exit code 2 with a clear message, no traceback, and every pre-existing file intact byte
for byte (``tree_bytes``). Cases 1-3 and 6 of issue 11 plus the same families (symlinks, foreign files
inside a run folder, the input's parent, stale staging folders, permissions).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys

import pytest

from conftest import tree_bytes
from debiaskit._io import STAGING_MARKER, atomic_folder, check_output, clean_stale, file_mode
from debiaskit.audit import AUDIT_FOLDER
from debiaskit.errors import OutputError, RunExistsError
from debiaskit.runs import RUN_FILE, write_json
from debiaskit.train import RUN_FOLDER

TRAIN = [
    "train",
    "--dataset",
    "biased-toy",
    "--model",
    "mlp",
    "--epochs",
    "1",
    "--unbiased-size",
    "600",
    "--no-progress",
]
NEVER = "debiaskit never replaces it (with or without --force)"


@pytest.fixture
def runs(tmp_path, toy_run_dir):
    """runs/a, runs/b (finished runs) and runs/NOTES.md, a user's file."""
    root = tmp_path / "runs"
    for name in ("a", "b"):
        shutil.copytree(toy_run_dir, root / name)
    (root / "NOTES.md").write_text("my notes")
    return root


@pytest.mark.parametrize(
    "out, message",
    [
        ("{a}", "is (or holds) the input"),  # audit r --out r used to delete the run's weights
        ("{root}", "is (or holds) the input"),  # audit runs/a --out runs used to delete a, b and NOTES.md
        ("{b}", f"is a finished run, not an audit report folder; {NEVER}"),
    ],
)
@pytest.mark.parametrize("force", [False, True])
def test_audit_never_deletes_its_input_or_other_runs(cli, runs, out, message, force):
    before = tree_bytes(runs)
    target = out.format(a=runs / "a", b=runs / "b", root=runs)
    code, err = cli("audit", runs / "a", "--out", target, *(["--force"] if force else []))
    assert code == 2 and err.startswith("error:") and message in err, err
    assert tree_bytes(runs) == before


def test_audit_replaces_only_an_audit_folder_and_only_with_force(cli, runs):
    code, _ = cli("audit", runs / "a", "--out", runs / "report")
    assert code == 0 and (runs / "report" / "audit.json").is_file()
    before = tree_bytes(runs)
    code, err = cli("audit", runs / "a", "--out", runs / "report")
    assert code == 2 and "is an audit report folder; choose another --out or pass --force" in err
    assert tree_bytes(runs) == before
    assert cli("audit", runs / "a", "--out", runs / "report", "--force")[0] == 0


@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda p: (p.mkdir(), (p / "thesis.tex").write_text("chapter 1")),
            f"is an existing folder that is not a finished run (no finished run.json); {NEVER}",
        ),
        (lambda p: p.write_text("a plain file"), "is a file, not a folder; debiaskit never replaces it"),
        (lambda p: p.mkdir(), "is an existing folder that is not a finished run"),  # even empty: not ours
    ],
)
@pytest.mark.parametrize("force", [False, True])
def test_train_refuses_what_is_not_a_finished_run(cli, tmp_path, make, message, force):
    make(tmp_path / "out")
    before = tree_bytes(tmp_path)
    code, err = cli(*TRAIN, "--out", tmp_path / "out", *(["--force"] if force else []))
    assert code == 2 and message in err, err
    assert tree_bytes(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_force_refuses_a_run_folder_holding_a_users_file(cli, tmp_path, toy_run_dir):
    run = tmp_path / "run"
    shutil.copytree(toy_run_dir, run)
    (run / "thesis.tex").write_text("do not lose me")
    before = tree_bytes(tmp_path)
    code, err = cli(*TRAIN, "--out", run, "--force")
    assert code == 2 and "also holds files debiaskit did not write (thesis.tex)" in err, err
    assert tree_bytes(tmp_path) == before


def test_force_replaces_a_finished_run_with_its_derived_folders(cli, tmp_path, toy_run_dir):
    run = tmp_path / "run"
    shutil.copytree(toy_run_dir, run)
    assert cli("audit", run)[0] == 0  # run/audit is debiaskit's: replacing the run may drop it
    code, err = cli(*TRAIN, "--seed", "1", "--out", run, "--force")
    assert code == 0, err
    assert not (run / "audit").exists() and '"seed": 1' in (run / RUN_FILE).read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no staging or lock left behind


@pytest.mark.parametrize("out", [".", "{parent}/x/..", "{parent}"])
def test_out_dot_and_dotdot_are_refused_before_training(cli, tmp_path, toy_run_dir, monkeypatch, out):
    parent = tmp_path / "work"
    shutil.copytree(toy_run_dir, parent / "x")
    monkeypatch.chdir(parent)
    before = tree_bytes(tmp_path)
    code, err = cli(*TRAIN, "--out", out.format(parent=parent), "--force")
    assert code == 2 and ("the current folder" in err or NEVER in err), err
    assert tree_bytes(tmp_path) == before and not list(tmp_path.rglob(".*staging*"))


def test_symlink_out_is_refused(cli, tmp_path, toy_run_dir):
    shutil.copytree(toy_run_dir, tmp_path / "real")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    before = tree_bytes(tmp_path / "real")
    code, err = cli(*TRAIN, "--out", tmp_path / "link", "--force")
    assert code == 2 and "is a symbolic link" in err
    assert tree_bytes(tmp_path / "real") == before


def test_parent_that_is_a_file_is_refused_before_compute(cli, tmp_path):
    (tmp_path / "file").write_text("x")
    code, err = cli(*TRAIN, "--out", tmp_path / "file" / "run")
    assert code == 2 and f"{tmp_path / 'file'} is a file, not a folder" in err and "Traceback" not in err, err
    assert (tmp_path / "file").read_text() == "x"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_parent_is_refused_before_compute(cli, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        code, err = cli("audit", tmp_path / "missing")  # input checked first
        assert code == 2
        code, err = cli(*TRAIN, "--out", ro / "run")
        assert code == 2 and "permission denied" in err, err
    finally:
        ro.chmod(0o755)


def test_failed_write_leaves_nothing_and_removes_created_parents(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_folder(tmp_path / "new" / "deeper" / "run", kind=RUN_FOLDER) as staging:
            (staging / "x").write_text("half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_files_get_the_usual_permissions(tmp_path, toy_run_dir):
    old = os.umask(0o022)
    try:
        out = tmp_path / "run"
        with atomic_folder(out, kind=RUN_FOLDER) as staging:
            write_json(staging / RUN_FILE, {"kind": "train", "status": "finished"})
    finally:
        os.umask(old)
    assert stat.S_IMODE((out / RUN_FILE).stat().st_mode) == 0o644
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    for f in toy_run_dir.iterdir():  # written by train_run under the test runner's umask (was 0600)
        assert stat.S_IMODE(f.stat().st_mode) == file_mode(), f


def test_stale_staging_of_a_dead_process_is_removed(tmp_path):
    out = tmp_path / "run"
    dead = tmp_path / ".run.staging-999999999-abcd"  # no such pid
    old_style = tmp_path / ".run.staging-k2j3h4"  # debiaskit 0.1.0's name: reported, kept
    unmarked = tmp_path / ".run.staging-999999999-ef01"  # a dead pid, but no debiaskit marker: not ours, kept
    for d in (dead, old_style, unmarked):
        d.mkdir()
        (d / "model.safetensors").write_text("half")
    (dead / STAGING_MARKER).write_text('{"kind": "run", "pid": 999999999}')  # what debiaskit's staging carries
    assert clean_stale(out) == [old_style, unmarked]
    assert not dead.exists() and old_style.exists() and unmarked.exists()
    with atomic_folder(out, kind=RUN_FOLDER) as staging:
        (staging / "run.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".run.staging-999999999-ef01", ".run.staging-k2j3h4", "run"]


def test_check_output_rules_from_python(tmp_path):
    (tmp_path / "audit").mkdir()
    write_json(tmp_path / "audit" / "audit.json", {"kind": "audit", "attributes": [], "task_accuracy": 1.0})
    assert check_output(tmp_path / "audit", kind=AUDIT_FOLDER, force=True) == tmp_path / "audit"
    with pytest.raises(RunExistsError, match="is an audit report folder, not a finished run"):
        check_output(tmp_path / "audit", kind=RUN_FOLDER, force=True)
    with pytest.raises(OutputError, match="file system root"):
        check_output("/", kind=RUN_FOLDER, force=True)


def _fails_if_computing(monkeypatch):
    """Make any training or audit compute fail loudly: a refusal must come before it."""
    import debiaskit.audit._run as audit_run
    import debiaskit.train._run as train_run

    def boom(*a, **k):
        raise AssertionError("compute started before the output was checked")

    monkeypatch.setattr(train_run, "fit", boom)
    monkeypatch.setattr(audit_run, "audit_model", boom)


def test_unwritable_parent_is_refused_before_compute(cli, tmp_path, toy_run_dir, monkeypatch):
    """A read-only --out parent (simulated: the tests may run as root, who writes anywhere)."""
    import errno

    ro = tmp_path / "ro"
    ro.mkdir()
    real_mkdir = os.mkdir

    def mkdir(path, *a, **k):
        if str(path).startswith(str(ro)):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_mkdir(path, *a, **k)

    monkeypatch.setattr(os, "mkdir", mkdir)
    _fails_if_computing(monkeypatch)
    for args in (TRAIN + ["--out", ro / "run"], ["audit", toy_run_dir, "--out", ro / "audit"]):
        code, err = cli(*args)
        assert code == 2 and "Permission denied; permission denied; choose a folder you can write to" in err, err
    assert list(ro.iterdir()) == []


def test_file_too_large_is_a_clear_error_and_leaves_nothing(tmp_path):
    """A disk that fills up (here: `ulimit -f` at 200 kB, the weights are 1 MB) mid-write."""
    import resource
    import subprocess
    import sys
    from pathlib import Path

    script = Path(sys.executable).with_name("debiaskit")
    if not script.is_file():
        pytest.skip("the debiaskit console script is not installed next to this python")

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    proc = subprocess.run(
        [str(script), *TRAIN, "--out", str(tmp_path / "run")],
        preexec_fn=limit,
        text=True,
        capture_output=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "1000"},
    )
    err = " ".join(proc.stderr.split())
    assert proc.returncode == 2 and "Traceback" not in err, err
    # the first large write is the checkpoint of the prepared run (train --resume), in the hidden .run.partial
    assert f"cannot write {tmp_path / '.run.partial'}/checkpoint.safetensors: File too large" in err, err
    assert list(tmp_path.iterdir()) == []


def test_data_prepare_replaces_only_its_own_cache(cli, tmp_path, monkeypatch):
    """DEBIASKIT_DATA pointed at a folder of the user's: `data prepare mnist --force` must not delete ~/mnist."""
    import gzip

    import numpy as np

    from debiaskit.data import get_source
    from debiaskit.data._idx import md5, write_idx

    monkeypatch.setenv("DEBIASKIT_DATA", str(tmp_path / "home"))
    raw = tmp_path / "download"
    raw.mkdir()
    rng = np.random.default_rng(0)
    for key, stem, shape in (
        ("train_images", "train-images-idx3-ubyte", (60, 28, 28)),
        ("train_labels", "train-labels-idx1-ubyte", (60,)),
        ("test_images", "t10k-images-idx3-ubyte", (20, 28, 28)),
        ("test_labels", "t10k-labels-idx1-ubyte", (20,)),
    ):
        write_idx(raw / f"{stem}.gz", rng.integers(0, 10, shape, dtype=np.uint8), compress=True)
        monkeypatch.setitem(get_source("mnist").md5, key, md5(gzip.decompress((raw / f"{stem}.gz").read_bytes())))
    mine = tmp_path / "home" / "mnist"
    mine.mkdir(parents=True)
    (mine / "my-notes.txt").write_text("mine")
    before = tree_bytes(mine)
    code, err = cli("data", "prepare", "mnist", "--from", raw, "--force")
    assert code == 2 and "is an existing folder that is not a debiaskit data cache" in err, err
    assert tree_bytes(mine) == before
    (mine / "my-notes.txt").unlink()
    mine.rmdir()
    assert cli("data", "prepare", "mnist", "--from", raw)[0] == 0
    assert cli("data", "prepare", "mnist", "--from", raw, "--force")[0] == 0  # its own cache: replaced
    assert sorted(p.name for p in (tmp_path / "home").iterdir()) == ["mnist"]


def test_a_ctrl_c_right_after_the_temporary_file_is_made_leaves_nothing(tmp_path, monkeypatch):
    import debiaskit._io as io_mod

    real_close = io_mod.os.close

    def interrupted_close(fd):
        real_close(fd)
        raise KeyboardInterrupt  # what a SIGINT between mkstemp and the write looks like

    monkeypatch.setattr(io_mod.os, "close", interrupted_close)
    with pytest.raises(KeyboardInterrupt):
        with io_mod.atomic_file(tmp_path / "checkpoint.safetensors"):
            pass
    assert list(tmp_path.iterdir()) == []


def test_writing_tensors_creates_no_file_but_its_own_temporary_name(tmp_path):
    """safetensors' save_file writes a .tmpXXXXXX of its own beside the target and renames it: a SIGKILL in
    between left that file in a training run's checkpoint folder, which then could never be cleared (it is not
    a name debiaskit writes, so no cleanup may remove it). Every name that appears during our writes must be ours."""
    import threading

    import torch

    from debiaskit._io import save_tensors

    seen: set[str] = set()
    done = threading.Event()

    def watch():
        while not done.is_set():
            seen.update(os.listdir(tmp_path))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        x = {"a": torch.randn(4_000_000)}
        for _ in range(15):
            save_tensors(tmp_path / "checkpoint.safetensors", x)
    finally:
        done.set()
        watcher.join()
    assert "checkpoint.safetensors" in seen
    assert all(
        n == "checkpoint.safetensors" or (n.startswith(".checkpoint.safetensors.") and n.endswith(".tmp")) for n in seen
    ), sorted(seen)


FRESH = """
import json, sys
from pathlib import Path
from debiaskit._io import FOLDER_KINDS, check_output
from debiaskit.data import DATA_CACHE
from debiaskit.errors import RunExistsError
from debiaskit.train import RUN_FOLDER
assert "debiaskit.ffw" not in sys.modules and "ffw" not in FOLDER_KINDS   # nothing imported the FFW package
folder = Path(sys.argv[1])
for kind in (RUN_FOLDER, DATA_CACHE):
    try:
        check_output(folder, kind=kind, force=True)
    except RunExistsError as exc:
        print(exc)
"""


def test_a_process_that_never_imported_ffw_still_refuses_to_replace_an_ffw_folder(tmp_path):
    """Each package registers its folder kinds; the first check loads them all, whatever the caller imported."""
    ffw = tmp_path / "pruned"
    ffw.mkdir()
    (ffw / "ffw.json").write_text('{"kind": "ffw", "status": "finished"}')
    (ffw / "model.safetensors").write_text("w")
    before = tree_bytes(tmp_path)
    out = subprocess.run([sys.executable, "-c", FRESH, str(ffw)], capture_output=True, text=True, check=True).stdout
    assert out.count(f"{ffw} is a finished FFW folder, not ") == 2, out
    assert tree_bytes(tmp_path) == before
