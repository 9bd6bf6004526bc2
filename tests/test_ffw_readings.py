"""The input model's audit and probe readings, recorded by training and reused by FFW (the `ffw` command's cost):
reused only when they equal what recomputation gives - from a run.json signed with the user's key, for the same
weights, data and settings - and computed again otherwise (a tampered record is never read)."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch

from debiaskit._io import json_safe
from debiaskit.errors import DataError
from debiaskit.ffw import _run, ffw_run, vanilla_readings
from debiaskit.runs import load_run
from debiaskit.train import TrainConfig, train_run

FAST = dict(max_epochs=2, head_pretrain_epochs=1, tune_epochs=0, erase="none", refit_head=False, no_harm=False)
SETTINGS = dict(seed=0, device="cpu", counterfactual=True, probes=_run.STRONG_PROBES)


def _train(out, splits, **kwargs):
    train_run(
        dataset="biased-toy",
        params={"rho": 0.95},
        out=out,
        splits=splits,
        config=TrainConfig(epochs=1, seed=0),
        progress=False,
        **kwargs,
    )
    return out


@pytest.fixture(scope="module")
def recorded_run(tmp_path_factory, toy_splits):
    """A toy run that recorded its readings (as `debiaskit train` does); read-only: copy it to change it."""
    return _train(tmp_path_factory.mktemp("readings") / "run", toy_splits, readings=vanilla_readings)


def _untimed(obj):
    """``obj`` without its wall times (an epoch's ``time_s``, ``wall_time_s``): what FFW computes, not how long."""
    if isinstance(obj, dict):
        return {k: _untimed(v) for k, v in obj.items() if not k.endswith("time_s")}
    if isinstance(obj, list):
        return [_untimed(v) for v in obj]
    return obj


def _as_written(report, probes):
    """What ffw.json holds of the input model's readings."""
    return json_safe({"headline": report.headline(), "all": report.as_dict(), "probes": probes})


def test_recorded_readings_equal_recomputation(recorded_run):
    run = load_run(recorded_run)
    assert run.signed and run.record.readings["key"]["weights"]
    reused = _run._recorded_readings(run, run.splits(), **SETTINGS)
    assert reused is not None
    fresh = _run._audit_and_probe(run.model, run.splits(), head=run.head, **SETTINGS)
    got, expected = _as_written(*reused[:2]), _as_written(*fresh[:2])
    got["all"].pop("wall_time_s"), expected["all"].pop("wall_time_s")
    assert got == expected
    assert all(torch.equal(reused[2][k], fresh[2][k]) for k in fresh[2])  # the random state the search starts from
    assert set(reused[1]) == {"sgd5", "mlp", "linear"}
    # the probes read the audit's outputs; collecting them again gives the same readings
    assert fresh[1] == _run.probe_readings(run.model, run.splits(), head=run.head, seed=0)


def test_ffw_reuses_them_and_outputs_the_same_numbers(recorded_run, tmp_path):
    plain = _train(tmp_path / "plain", load_run(recorded_run).splits())  # the same weights, nothing recorded
    assert load_run(plain).weights_sha256 == load_run(recorded_run).weights_sha256
    # the probes' readings are compared with recomputation above; here the audit's and the search's
    a = ffw_run(recorded_run, out=tmp_path / "reused", strong_probes=False, **FAST).info
    b = ffw_run(plain, out=tmp_path / "computed", strong_probes=False, **FAST).info
    assert a["before_readings"].startswith("reused") and b["before_readings"] == "computed"
    for key in ("before", "after", "probes", "history", "search", "diagnosis", "parameters"):
        assert _untimed(json_safe(a[key])) == _untimed(json_safe(b[key])), key
    assert (tmp_path / "reused/model.safetensors").read_bytes() == (
        tmp_path / "computed/model.safetensors"
    ).read_bytes()
    assert not (recorded_run / "ffw-unstructured-g10").exists()  # the input run is never written into


@pytest.mark.parametrize("change", ["tampered", "unsigned"])
def test_a_tampered_or_unsigned_record_is_not_trusted(recorded_run, tmp_path, caplog, change, monkeypatch):
    monkeypatch.setattr(logging.getLogger("debiaskit"), "disabled", False)  # a logging.config elsewhere may disable it
    run_dir = tmp_path / "run"
    shutil.copytree(recorded_run, run_dir)
    record = json.loads((run_dir / "run.json").read_text())
    true = record["readings"]["audit"]["task_accuracy"]
    if change == "tampered":  # a better-looking input model, the signature left as it was
        record["readings"]["audit"]["task_accuracy"] = 0.999
        record["readings"]["probes"]["mlp"] = 0.1
    else:  # e.g. a colleague's run: not signed with this user's key
        del record["signature"]
    (run_dir / "run.json").write_text(json.dumps(record))
    run = load_run(run_dir)
    assert not run.signed
    with caplog.at_level(logging.WARNING, logger="debiaskit"):
        report, probes, reused = _run._input_readings(run, run.splits(), **SETTINGS)
    assert not reused and "not signed with your key or was changed" in caplog.text
    assert report.task_accuracy == true and probes == load_run(recorded_run).record.readings["probes"]


@pytest.mark.parametrize("setting", [dict(seed=1), dict(counterfactual=False)])
def test_readings_recorded_for_other_settings_are_computed_again(recorded_run, setting):
    run = load_run(recorded_run)
    assert _run._recorded_readings(run, run.splits(), **{**SETTINGS, **setting}) is None


def test_readings_of_other_weights_are_computed_again(recorded_run, tmp_path):
    """A run whose weights were replaced (and re-signed by its user, e.g. `debiaskit trust`) still records the old
    model's readings: the key's weight digest no longer matches."""
    run = load_run(recorded_run)
    with torch.no_grad():
        next(run.model.parameters()).add_(0.01)
    assert _run._recorded_readings(run, run.splits(), **SETTINGS) is None


def test_training_is_written_when_the_readings_refuse_the_data(tmp_path, toy_splits, caplog, monkeypatch):
    monkeypatch.setattr(logging.getLogger("debiaskit"), "disabled", False)  # a logging.config elsewhere may disable it

    def refuse(model, splits, *, head):
        raise DataError("the test split has no bias labels")

    with caplog.at_level(logging.WARNING, logger="debiaskit"):
        out = _train(tmp_path / "run", toy_splits, readings=refuse)
    assert load_run(out).record.readings is None and "readings were not recorded" in caplog.text


def test_debiaskit_train_records_them_by_default(cli, tmp_path):
    args = ["train", "--dataset", "biased-toy", "--rho", "0.95", "--epochs", "1", "--train-size", "300"]
    args += ["--unbiased-size", "300", "--test-size", "200", "--no-progress"]
    assert cli(*args, "--out", tmp_path / "a")[0] == 0
    assert cli(*args, "--out", tmp_path / "b", "--no-record-readings")[0] == 0
    assert set(load_run(tmp_path / "a").record.readings) >= {"key", "audit", "probes"}
    assert load_run(tmp_path / "b").record.readings is None
