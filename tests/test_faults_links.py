"""Fault injection, hidden working folders and commit identity: debiaskit never follows a link it did not make,
never deletes a folder it did not make, gives each command's output a kind of its own, and never writes into a
folder that was moved or replaced while it ran.

Every refusal: exit code 2, a message naming the path and what to do, no traceback, and every pre-existing
file intact byte for byte (``tree_bytes``), a link's target included.
"""

from __future__ import annotations

import json
import re
import shutil

import pytest

from conftest import tree_bytes
from debiaskit._io import STAGING_MARKER, atomic_folder, check_output, recognise
from debiaskit.audit import AUDIT_FOLDER
from debiaskit.bench import BENCH_CELL
from debiaskit.data import DATA_CACHE
from debiaskit.discover import DISCOVER_FOLDER
from debiaskit.errors import OutputError, RunExistsError
from debiaskit.ffw import FFW_FOLDER
from debiaskit.methods import UNLEARN_FOLDER
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
FFW = ["--mode", "structured", "--max-levels", "2", "--max-epochs-per-level", "1", "--no-progress"]
UNLEARN = ["--pool-size", "300", "--top-k", "50"]
NEVER = "debiaskit never replaces it (with or without --force)"
LINK = "is a symbolic link where debiaskit keeps"


def _no_compute(monkeypatch):
    """A refusal must come before any compute: training, FFW's search or an audit fails loudly here."""
    import debiaskit.audit._run as audit_run
    import debiaskit.ffw._run as ffw_run
    import debiaskit.train._run as train_run

    def boom(*a, **k):
        raise AssertionError("compute started before the refusal")

    monkeypatch.setattr(train_run, "fit", boom)
    monkeypatch.setattr(ffw_run, "_search_and_audit", boom)
    monkeypatch.setattr(audit_run, "audit_model", boom)


@pytest.fixture
def victim(tmp_path):
    """Another folder of the user's, holding a file named like a checkpoint: what a planted link points at."""
    folder = tmp_path / "victim"
    folder.mkdir()
    (folder / "checkpoint.safetensors").write_bytes(b"the user's own file")
    return folder


# -- planted links in place of the partial (checkpoint) folder ----------------------------------------------------


@pytest.mark.parametrize("flags", [[], ["--force"], ["--resume"]])
def test_train_never_follows_a_linked_partial_folder(cli, tmp_path, victim, monkeypatch, flags):
    """`.OUT.partial -> victim`: train --force used to delete victim/checkpoint.safetensors (then fail with a raw
    NotADirectoryError); --resume would have read and written checkpoints through the link."""
    link = tmp_path / ".run.partial"
    link.symlink_to(victim)
    before = tree_bytes(victim)
    _no_compute(monkeypatch)
    code, err = cli(*TRAIN, "--out", tmp_path / "run", *flags)
    assert code == 2 and f"{link} {LINK} an interrupted run's checkpoint" in err, err
    assert f"Remove the link (`rm {link}`)" in err and "Traceback" not in err, err
    assert tree_bytes(victim) == before and link.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".run.partial", "victim"]  # no run, staging or lock


def test_train_never_follows_a_dangling_partial_link(cli, tmp_path, monkeypatch):
    link = tmp_path / ".run.partial"
    link.symlink_to(tmp_path / "nowhere")
    _no_compute(monkeypatch)
    code, err = cli(*TRAIN, "--out", tmp_path / "run", "--force")
    assert code == 2 and LINK in err and not (tmp_path / "nowhere").exists(), err


@pytest.mark.parametrize("flags", [["--force"], ["--resume"], []])
def test_ffw_never_follows_a_linked_partial_folder(cli, tmp_path, toy_run_dir, victim, monkeypatch, flags):
    out = tmp_path / "ffw"
    link = tmp_path / ".ffw.partial"
    link.symlink_to(victim)
    before = tree_bytes(victim)
    _no_compute(monkeypatch)
    code, err = cli("ffw", toy_run_dir, "--out", out, *FFW, *flags)
    assert code == 2 and f"{link} {LINK} an interrupted FFW search's checkpoint" in err, err
    assert "Remove the link" in err and "Traceback" not in err, err
    assert tree_bytes(victim) == before and link.is_symlink() and not out.exists()


def test_partial_folder_holding_a_users_file_is_never_emptied(cli, tmp_path, monkeypatch):
    partial = tmp_path / ".run.partial"
    partial.mkdir()
    (partial / "checkpoint.safetensors").write_bytes(b"old checkpoint")
    (partial / "notes.txt").write_text("mine")
    _no_compute(monkeypatch)
    code, err = cli(*TRAIN, "--out", tmp_path / "run", "--force")
    assert code == 2 and "holds files train did not write (notes.txt)" in err, err
    assert (partial / "notes.txt").read_text() == "mine"


# -- staging folders, old copies and locks named like debiaskit's -------------------------------------------------


def test_a_linked_staging_name_is_refused_and_its_target_untouched(cli, tmp_path, victim, monkeypatch):
    link = tmp_path / ".run.staging-999999999-abcd"  # a dead pid: the cleanup would have removed it
    link.symlink_to(victim)
    before = tree_bytes(victim)
    _no_compute(monkeypatch)
    code, err = cli(*TRAIN, "--out", tmp_path / "run")
    assert code == 2 and f"{link} {LINK} a staging folder" in err and "Traceback" not in err, err
    assert tree_bytes(victim) == before and link.is_symlink()


def test_a_linked_lock_is_refused_and_its_target_not_truncated(cli, tmp_path, monkeypatch):
    """Opening `.OUT.lock -> file` to lock it would have created or truncated the file."""
    target = tmp_path / "thesis.tex"
    target.write_text("chapter 1")
    (tmp_path / ".run.lock").symlink_to(target)
    _no_compute(monkeypatch)
    code, err = cli(*TRAIN, "--out", tmp_path / "run")
    assert code == 2 and f"{tmp_path / '.run.lock'} {LINK} a lock file" in err, err
    assert target.read_text() == "chapter 1"


def test_a_staging_named_sibling_holding_a_users_file_is_reported_not_deleted(tmp_path, caplog, monkeypatch):
    import logging

    monkeypatch.setattr(logging.getLogger("debiaskit"), "disabled", False)  # a logging.config elsewhere may disable it
    caplog.set_level(logging.WARNING, logger="debiaskit")
    mine = tmp_path / ".run.staging-999999999-abcd"  # a dead pid, but no debiaskit marker
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    marked = tmp_path / ".run.staging-999999999-ef01"  # debiaskit's marker, plus a file its kind never writes
    marked.mkdir()
    (marked / STAGING_MARKER).write_text('{"kind": "run", "pid": 999999999}')
    (marked / "thesis.tex").write_text("mine too")
    with atomic_folder(tmp_path / "run", kind=RUN_FOLDER) as staging:
        (staging / "run.json").write_text("{}")
    assert (mine / "notes.txt").read_text() == "mine" and (marked / "thesis.tex").read_text() == "mine too"
    said = caplog.text
    assert (
        f"{mine} is named like a debiaskit working folder but holds files debiaskit did not write (notes.txt)" in said
    )
    assert f"{marked} is named like a debiaskit working folder" in said and "(thesis.tex)" in said


def test_force_never_deletes_a_users_file_inside_a_staging_named_subfolder(cli, tmp_path, toy_run_dir, monkeypatch):
    """`RUN/.audit.staging-1-abc/notes.txt`: a staging-named folder was taken for debiaskit's own and deleted
    with the run it was in."""
    run = tmp_path / "run"
    shutil.copytree(toy_run_dir, run)
    (run / ".audit.staging-1-abc").mkdir()
    (run / ".audit.staging-1-abc" / "notes.txt").write_text("mine")
    before = tree_bytes(tmp_path)
    _no_compute(monkeypatch)
    code, err = cli(*TRAIN, "--out", run, "--force")
    assert code == 2 and "also holds files debiaskit did not write (.audit.staging-1-abc/notes.txt)" in err, err
    assert tree_bytes(tmp_path) == before


def test_force_still_replaces_a_run_holding_debiaskits_own_leftovers(cli, tmp_path, toy_run_dir):
    """The other side: a killed audit's staging (with its marker) and lock inside a run are debiaskit's."""
    run = tmp_path / "run"
    shutil.copytree(toy_run_dir, run)
    staging = run / ".audit.staging-999999999-abcd"
    staging.mkdir()
    (staging / STAGING_MARKER).write_text('{"kind": "audit", "pid": 999999999}')
    (staging / "audit.json").write_text("{}")
    (run / ".audit.lock").write_text("999999999")
    code, err = cli(*TRAIN, "--seed", "1", "--out", run, "--force")
    assert code == 0, err
    assert sorted(p.name for p in run.iterdir()) == ["model.safetensors", "run.json", "train_log.jsonl"]


def test_a_published_folder_carries_no_staging_marker(tmp_path):
    with atomic_folder(tmp_path / "a", kind=AUDIT_FOLDER) as staging:
        assert (staging / STAGING_MARKER).is_file()  # while it is built
        (staging / "audit.json").write_text('{"kind": "audit"}')
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["audit.json"]


# -- one kind per folder --------------------------------------------------------------------------------------------


def _folder(path, files: dict[str, object]):
    path.mkdir(parents=True)
    for name, content in files.items():
        (path / name).write_text(json.dumps(content) if isinstance(content, dict) else content)
    return path


FINISHED = {  # one finished folder of every kind a command writes, as that command marks it
    "train": (RUN_FOLDER, {"run.json": {"kind": "train", "status": "finished", "model": {}}, "model.safetensors": "w"}),
    "unlearn": (
        UNLEARN_FOLDER,
        {"run.json": {"kind": "unlearn", "status": "finished", "model": {}}, "model.safetensors": "w"},
    ),
    "ffw": (FFW_FOLDER, {"ffw.json": {"kind": "ffw", "status": "finished"}, "model.safetensors": "w"}),
    "audit": (AUDIT_FOLDER, {"audit.json": {"kind": "audit"}, "report.md": "r"}),
    "discover": (DISCOVER_FOLDER, {"report.json": {"kind": "discover"}, "pseudo_bias.safetensors": "p"}),
    "compare-cell": (
        BENCH_CELL,
        {
            "result.json": {"method_state": {}},
            "model.safetensors": "w",
            "run.json": {"kind": "compare-cell", "status": "finished", "model": {}},
        },
    ),
    "data-cache": (DATA_CACHE, {"source.json": {"kind": "data-cache"}, "train-images-idx3-ubyte": "x"}),
}


@pytest.mark.parametrize("found", sorted(FINISHED))
@pytest.mark.parametrize("writer", sorted(FINISHED))
def test_force_replaces_only_a_folder_of_the_writers_own_kind(tmp_path, found, writer):
    kind, files = FINISHED[found]
    folder = _folder(tmp_path / "out", files)
    assert recognise(folder) is kind
    writer_kind = FINISHED[writer][0]
    if writer_kind is kind:
        assert check_output(folder, kind=writer_kind, force=True) == folder
    else:
        with pytest.raises(RunExistsError, match=re.escape(f"is {kind.describe}, not {writer_kind.describe}; {NEVER}")):
            check_output(folder, kind=writer_kind, force=True)


@pytest.fixture(scope="module")
def unlearn_run(toy_run_dir, tmp_path_factory):
    from debiaskit.methods.fmd import unlearn_run as unlearn

    out = tmp_path_factory.mktemp("links") / "unlearned"
    unlearn(toy_run_dir, out=out, pool_size=300, top_k=50)
    return out


def test_unlearn_never_replaces_a_training_run_nor_train_an_unlearn_run(
    cli, tmp_path, toy_run_dir, unlearn_run, monkeypatch
):
    trained, unlearned = tmp_path / "trained", tmp_path / "unlearned"
    shutil.copytree(toy_run_dir, trained)
    shutil.copytree(unlearn_run, unlearned)
    before = tree_bytes(tmp_path)
    code, err = cli("unlearn", toy_run_dir, "--out", trained, "--force", *UNLEARN)
    assert (
        code == 2 and f"{trained} is a finished run, not a finished unlearn run (`debiaskit unlearn`); {NEVER}" in err
    ), err
    _no_compute(monkeypatch)
    code, err = cli(*TRAIN, "--out", unlearned, "--force")
    assert (
        code == 2 and f"{unlearned} is a finished unlearn run (`debiaskit unlearn`), not a finished run; {NEVER}" in err
    ), err
    code, err = cli("ffw", toy_run_dir, "--out", unlearned, "--force", *FFW)
    assert code == 2 and "is a finished unlearn run (`debiaskit unlearn`), not a finished FFW folder" in err, err
    code, err = cli("audit", toy_run_dir, "--out", unlearned, "--force")
    assert code == 2 and "is a finished unlearn run (`debiaskit unlearn`), not an audit report folder" in err, err
    assert tree_bytes(tmp_path) == before


def test_unlearn_force_replaces_its_own_kind(cli, tmp_path, toy_run_dir, unlearn_run):
    out = tmp_path / "unlearned"
    shutil.copytree(unlearn_run, out)
    code, err = cli("unlearn", toy_run_dir, "--out", out, "--force", "--seed", "1", *UNLEARN)
    assert code == 0, err
    assert json.loads((out / "run.json").read_text())["method"]["config"]["seed"] == 1


# -- commit identity: an input moved or replaced while the command runs -------------------------------------------


def _move_after(monkeypatch, module, name, action):
    """Run ``action`` right after ``module.name`` (a step of the command before its commit)."""
    real = getattr(module, name)

    def wrapped(*a, **k):
        result = real(*a, **k)
        action()
        return result

    monkeypatch.setattr(module, name, wrapped)


@pytest.mark.parametrize("step", ["write_report_files", "audit_model"])  # after the writes / before them
def test_audit_never_writes_into_a_moved_run_nor_recreates_it(cli, tmp_path, toy_run_dir, monkeypatch, step):
    import debiaskit.audit._run as audit_run

    run, moved = tmp_path / "run", tmp_path / "moved"
    shutil.copytree(toy_run_dir, run)
    before = tree_bytes(run)
    _move_after(monkeypatch, audit_run, step, lambda: run.rename(moved))
    code, err = cli("audit", run)
    assert code == 2 and f"{run} was moved or replaced while debiaskit was running; nothing was written" in err, err
    assert "Traceback" not in err and not run.exists()  # the old path is not recreated
    assert tree_bytes(moved) == before and sorted(p.name for p in moved.iterdir()) == sorted(before)


@pytest.mark.parametrize("step", ["write_report_files", "audit_model"])
def test_audit_never_writes_into_a_run_put_in_place_of_its_input(cli, tmp_path, toy_run_dir, monkeypatch, step):
    import debiaskit.audit._run as audit_run

    run, old, other = tmp_path / "run", tmp_path / "old", tmp_path / "other"
    shutil.copytree(toy_run_dir, run)
    shutil.copytree(toy_run_dir, other)
    (other / "run.json").write_text((other / "run.json").read_text().replace('"seed": 0', '"seed": 7'))
    before, theirs = tree_bytes(run), tree_bytes(other)

    def replace():
        run.rename(old)
        shutil.copytree(other, run)

    _move_after(monkeypatch, audit_run, step, replace)
    code, err = cli("audit", run)
    assert code == 2 and f"{run} was moved or replaced while debiaskit was running; nothing was written" in err, err
    assert tree_bytes(run) == theirs and sorted(p.name for p in run.iterdir()) == sorted(theirs)  # not written into
    assert tree_bytes(old) == before and sorted(p.name for p in old.iterdir()) == sorted(before)  # no staging, lock


def test_unlearn_never_publishes_from_a_replaced_input(cli, tmp_path, toy_run_dir, monkeypatch):
    import debiaskit.methods.fmd as fmd

    run, old = tmp_path / "run", tmp_path / "old"
    shutil.copytree(toy_run_dir, run)

    def replace():
        run.rename(old)
        shutil.copytree(old, run)  # the same bytes, but another folder: not the run that was read

    _move_after(monkeypatch, fmd, "fmd_unlearn", replace)
    code, err = cli("unlearn", run, "--out", tmp_path / "unl", *UNLEARN)
    assert code == 2 and f"{run} was moved or replaced while debiaskit was running" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old", "run"]  # no output, staging or lock


def test_a_run_edited_while_it_is_read_is_refused(tmp_path, toy_run_dir, monkeypatch):
    import debiaskit.runs as runs
    from debiaskit.errors import DataError

    run = tmp_path / "run"
    shutil.copytree(toy_run_dir, run)
    _move_after(
        monkeypatch,
        runs,
        "read_run_record",
        lambda: (run / "run.json").write_text((run / "run.json").read_text() + " "),
    )
    with pytest.raises(DataError, match="was moved or replaced while debiaskit was reading it"):
        runs.load_run(run)


# -- over-long names ------------------------------------------------------------------------------------------------


def test_an_out_name_too_long_for_its_hidden_siblings_is_refused_before_compute(cli, tmp_path, monkeypatch):
    _no_compute(monkeypatch)
    out = tmp_path / ("r" * 250)
    code, err = cli(*TRAIN, "--out", out)
    assert code == 2 and "its name is 250 bytes long" in err and "choose a name of at most 226 bytes" in err, err
    assert "Traceback" not in err and list(tmp_path.iterdir()) == []


def test_the_longest_name_allowed_works(tmp_path):
    with atomic_folder(tmp_path / ("r" * 226), kind=AUDIT_FOLDER) as staging:
        (staging / "audit.json").write_text('{"kind": "audit"}')
    assert (tmp_path / ("r" * 226) / "audit.json").is_file()
    with pytest.raises(OutputError, match="at most 226 bytes"):
        check_output(tmp_path / ("r" * 227), kind=AUDIT_FOLDER)
