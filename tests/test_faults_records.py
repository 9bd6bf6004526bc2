"""Fault injection, records: every bad ``run.json`` / ``ffw.json`` field is one clear error (file, field,
found, expected), a damaged file is called damaged, paths stay inside their folder, and folders written
by debiaskit 0.1.0 (schema version 0) still load (issue 11, case 5)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import tree_bytes
from debiaskit._schema import SCHEMA_VERSION, FFWRecord, RunRecord, SchemaError
from debiaskit.errors import DamagedError, DataError
from debiaskit.ffw import load_ffw_model
from debiaskit.models import build_model
from debiaskit.runs import RUN_FILE, load_run, read_run_record, save_weights

FIXTURES = Path(__file__).parent / "fixtures" / "v0"


def _edit(run: Path, change) -> None:
    meta = json.loads((run / RUN_FILE).read_text())
    meta = change(meta)
    (run / RUN_FILE).write_text(json.dumps(meta))


@pytest.fixture
def run(tmp_path, toy_run_dir):
    shutil.copytree(toy_run_dir, tmp_path / "run")
    return tmp_path / "run"


def _set(path: str, value):
    def change(meta):
        *parents, last = path.split(".")
        node = meta
        for key in parents:
            node = node[key]
        if value is KeyError:
            del node[last]
        else:
            node[last] = value
        return meta

    return change


BAD_FIELDS = [
    (lambda m: [1, 2, 3], "run.json: the file is [1, 2, 3], expected an object"),
    (_set("model", KeyError), "run.json: model is missing, expected an object"),
    (_set("data", KeyError), "run.json: data is missing, expected an object"),
    (_set("data", "biased-toy"), 'run.json: data is "biased-toy", expected an object'),
    (_set("model.num_classes", "ten"), 'run.json: model.num_classes is "ten", expected a positive integer'),
    (_set("model.num_classes", -3), "run.json: model.num_classes is -3, expected a positive integer"),
    (
        _set("model.input_shape", [3, 0, 28]),
        "model.input_shape is [3, 0, 28], expected a non-empty list of positive integers",
    ),
    (_set("model.head", None), "run.json: model.head is null, expected a non-empty string"),
    (_set("model.source", "pip"), 'model.source is "pip", expected one of "zoo", "import", "python"'),
    (_set("data.seed", -1), "run.json: data.seed is -1, expected an integer in [0, 9007199254740991]"),
    (_set("data.seed", 2**64), "data.seed is 18446744073709551616, expected an integer in [0, 9007199254740991]"),
    (_set("data.params", [0.99]), "run.json: data.params is [0.99], expected an object"),
    (
        _set("data.unbiased_fractions", [0.5, 0.5]),
        "data.unbiased_fractions is [0.5, 0.5], expected a list of 3 positive numbers summing to 1",
    ),
    (_set("train.epochs", 1.5), "run.json: train.epochs is 1.5, expected an integer >= 0"),
    (_set("train.lr", "fast"), 'run.json: train.lr is "fast", expected a finite number >= 0'),
    (_set("kind", "experiment"), 'run.json: kind is "experiment", expected one of "train", "unlearn", "compare-cell"'),
    (_set("weights", "/etc/passwd"), 'run.json: weights is "/etc/passwd", expected a relative path inside the folder'),
    (
        _set("weights", "../other/model.safetensors"),
        'run.json: weights is "../other/model.safetensors", expected a relative path inside the folder',
    ),
    (_set("weights", 7), "run.json: weights is 7, expected a relative path inside the folder"),
    (
        _set("schema_version", 99),
        "was written by a newer debiaskit (schema version 99; this one reads up to 1); upgrade debiaskit",
    ),
    (_set("schema_version", "1"), 'run.json: schema_version is "1", expected an integer >= 0'),
]


@pytest.mark.parametrize("change, message", BAD_FIELDS)
def test_every_bad_field_is_named_with_what_was_found_and_expected(run, change, message):
    _edit(run, change)
    with pytest.raises(DamagedError) as exc:
        load_run(run)
    assert message in str(exc.value) and str(run / RUN_FILE) in str(exc.value), exc.value


@pytest.mark.parametrize("change, message", BAD_FIELDS[::4])
def test_bad_records_through_the_cli_exit_2_and_change_nothing(cli, run, change, message):
    _edit(run, change)
    before = tree_bytes(run.parent)
    for args in (["audit", run], ["ffw", run, "--mode", "structured"], ["discover", run], ["unlearn", run]):
        code, err = cli(*args)
        assert code == 2 and message in err and "Traceback" not in err, (args, err)
    assert tree_bytes(run.parent) == before


def test_rho_of_the_wrong_type_in_a_record_is_a_clear_error(run):
    _edit(run, _set("data.params.rho", "high"))
    with pytest.raises(Exception) as exc:
        load_run(run).splits()
    assert type(exc.value).__name__ == "ConfigError" and "rho is 'high', expected a number in [0, 1]" in str(exc.value)


@pytest.mark.parametrize("damage", [lambda b: b[: len(b) // 2], lambda b: b"", lambda b: b"\xff\xfe{"])
def test_a_truncated_run_json_is_reported_as_damaged(run, damage):
    (run / RUN_FILE).write_bytes(damage((run / RUN_FILE).read_bytes()))
    with pytest.raises(DamagedError, match="is damaged \\(not valid JSON"):
        load_run(run)


def test_an_unfinished_run_is_not_called_damaged(run):
    _edit(run, _set("status", "running"))
    with pytest.raises(DataError, match="is not a finished debiaskit folder \\(run.json says status 'running'\\)"):
        load_run(run)


def test_weights_through_a_symlink_leaving_the_folder_are_refused(run, tmp_path):
    (tmp_path / "elsewhere.safetensors").write_bytes((run / "model.safetensors").read_bytes())
    (run / "model.safetensors").unlink()
    (run / "model.safetensors").symlink_to(tmp_path / "elsewhere.safetensors")
    with pytest.raises(SchemaError, match="expected a path inside .* \\(it leads outside\\)"):
        load_run(run)


def test_a_run_of_debiaskit_0_1_0_loads_and_migrates(tmp_path):
    run = tmp_path / "v0"
    run.mkdir()
    shutil.copy(FIXTURES / "run.json", run / RUN_FILE)
    assert "schema_version" not in json.loads((run / RUN_FILE).read_text())
    torch.manual_seed(0)
    save_weights(build_model("mlp", num_classes=10, input_shape=(3, 28, 28)), run / "model.safetensors")
    loaded = load_run(run)
    assert loaded.record.schema_version == SCHEMA_VERSION and loaded.record.kind == "train"
    assert loaded.record.data.spec()["unbiased_size"] == 600 and loaded.meta["train"]["epochs"] == 1
    assert loaded.splits().train.summary()["size"] == 1400


def test_an_ffw_folder_of_debiaskit_0_1_0_loads(tmp_path):
    folder = tmp_path / "ffw"
    folder.mkdir()
    shutil.copy(FIXTURES / "ffw.json", folder / "ffw.json")
    save_weights(build_model("mlp", num_classes=10, input_shape=(3, 28, 28)), folder / "model.safetensors")
    assert isinstance(load_ffw_model(folder), torch.nn.Module)
    info = json.loads((folder / "ffw.json").read_text())
    info["weights"] = "../../etc/passwd"
    (folder / "ffw.json").write_text(json.dumps(info))
    with pytest.raises(SchemaError, match='ffw.json: weights is "../../etc/passwd", expected a relative path'):
        load_ffw_model(folder)


def test_records_round_trip_unchanged(toy_run_dir):
    raw = json.loads((toy_run_dir / RUN_FILE).read_text())
    assert read_run_record(toy_run_dir).to_dict() == raw
    assert raw["schema_version"] == SCHEMA_VERSION
    ffw = json.loads((FIXTURES / "ffw.json").read_text())
    out = FFWRecord.from_dict(ffw).to_dict()
    assert out["schema_version"] == SCHEMA_VERSION and out["model"].pop("source") == "zoo"  # defaults are added
    assert {k: out[k] for k in ffw} == ffw  # nothing else changes


def test_unknown_keys_are_kept_and_a_record_built_in_code_is_validated_before_writing():
    rec = RunRecord.from_dict(
        {
            "kind": "train",
            "model": {"name": "mlp", "num_classes": 2, "input_shape": [4], "head": "fc"},
            "data": {"dataset": "x"},
            "future_field": 4,
        }
    )
    assert rec.other == {"future_field": 4} and rec.to_dict()["future_field"] == 4
    rec.model.num_classes = 0
    with pytest.raises(SchemaError, match="model.num_classes is 0, expected a positive integer"):
        rec.validate(file="run.json")
