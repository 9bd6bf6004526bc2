"""Run folders: atomic writes, overwrite protection, NaN-safe weights, load_run round trip."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from debiaskit._io import check_output
from debiaskit.errors import DataError, ModelError, RunExistsError
from debiaskit.models import build_model
from debiaskit.runs import RUN_FILE, WEIGHTS_FILE, load_run, load_weights, read_json, save_weights, write_json
from debiaskit.runs import atomic_folder as _atomic_folder
from debiaskit.train import RUN_FOLDER


def atomic_folder(out, **kw):
    return _atomic_folder(out, kind=RUN_FOLDER, **kw)


def _finished_run(folder, *, marker="old"):
    folder.mkdir(parents=True)
    write_json(folder / RUN_FILE, {"kind": "train", "status": "finished", "marker": marker})
    (folder / "result.json").write_text(marker)


def _leftovers(parent, name):
    return [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.")]


def test_atomic_folder_leaves_nothing_on_failure(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_folder(out) as staging:
            (staging / "half.txt").write_text("partial")
            raise RuntimeError("boom")
    assert not out.exists() and _leftovers(tmp_path, "run") == []


def test_atomic_folder_success_renames_into_place(tmp_path):
    out = tmp_path / "deep" / "run"
    with atomic_folder(out) as staging:
        assert staging != out and not out.exists()  # nothing visible while writing
        (staging / "a.txt").write_text("x")
    assert (out / "a.txt").read_text() == "x" and _leftovers(out.parent, "run") == []


def test_refuses_finished_run_without_force(tmp_path):
    out = tmp_path / "run"
    _finished_run(out)
    with pytest.raises(RunExistsError, match="is a finished run; choose another --out or pass --force"):
        with atomic_folder(out) as staging:
            (staging / "new.txt").write_text("new")
    assert (out / "result.json").read_text() == "old" and not (out / "new.txt").exists()
    assert _leftovers(tmp_path, "run") == []
    (tmp_path / "plain").mkdir()
    with pytest.raises(RunExistsError, match="an existing folder that is not a finished run"):
        check_output(tmp_path / "plain", kind=RUN_FOLDER, force=True)


def test_force_replaces_and_failure_with_force_keeps_old(tmp_path):
    out = tmp_path / "run"
    _finished_run(out)
    with pytest.raises(ValueError):
        with atomic_folder(out, force=True) as staging:
            (staging / "result.json").write_text("new")
            raise ValueError("fail midway")
    assert (out / "result.json").read_text() == "old"  # a failed forced run keeps the old one
    with atomic_folder(out, force=True) as staging:
        (staging / "result.json").write_text("new")
    assert (out / "result.json").read_text() == "new" and not (out / RUN_FILE).exists()
    assert _leftovers(tmp_path, "run") == []


def test_nan_weights_rejected_on_save_and_load(tmp_path):
    model = build_model("mlp", num_classes=3, input_shape=(1, 4, 4))
    with torch.no_grad():
        model.fc.weight[0, 0] = float("nan")
    with pytest.raises(ModelError, match="NaN/inf values in 'fc.weight'"):
        save_weights(model, tmp_path / "w.safetensors")
    assert not (tmp_path / "w.safetensors").exists()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp_path / "w.safetensors"))  # written behind debiaskit's back
    fresh = build_model("mlp", num_classes=3, input_shape=(1, 4, 4))
    with pytest.raises(ModelError, match="NaN/inf"):
        load_weights(fresh, tmp_path / "w.safetensors")


def test_load_weights_errors(tmp_path):
    model = build_model("mlp", num_classes=3, input_shape=(1, 4, 4))
    with pytest.raises(ModelError, match="is missing"):
        load_weights(model, tmp_path / "none.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ModelError, match="cannot read"):
        load_weights(model, tmp_path / "junk.safetensors")
    save_weights(model, tmp_path / "w.safetensors")
    other = build_model("mlp", num_classes=4, input_shape=(1, 4, 4))
    with pytest.raises(ModelError, match="does not match the model"):
        load_weights(other, tmp_path / "w.safetensors")


def test_load_run_round_trip(tmp_path, toy_splits):
    torch.manual_seed(0)
    shape = toy_splits.train.input_shape
    model = build_model("simple-conv-small", num_classes=10, input_shape=shape)
    model.train()
    model(toy_splits.train.x[:64])  # move BatchNorm running stats off their defaults
    model.eval()
    out = tmp_path / "run"
    with atomic_folder(out) as staging:
        save_weights(model, staging / WEIGHTS_FILE)
        write_json(
            staging / RUN_FILE,
            {
                "kind": "train",
                "status": "finished",
                "weights": WEIGHTS_FILE,
                "data": toy_splits.spec,
                "model": {"name": "simple-conv-small", "num_classes": 10, "input_shape": list(shape), "head": "fc"},
            },
        )
    run = load_run(out)
    assert run.head == "fc" and not run.model.training
    x = toy_splits.test.x[:16]
    with torch.no_grad():
        assert torch.equal(run.model(x), model(x))
    assert torch.equal(run.splits().test.images, toy_splits.test.images)


def test_load_run_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_run(tmp_path / "missing")
    (tmp_path / "unfinished").mkdir()
    write_json(tmp_path / "unfinished" / RUN_FILE, {"status": "running"})
    with pytest.raises(DataError, match="not a finished debiaskit folder"):
        load_run(tmp_path / "unfinished")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(DataError, match="is damaged \\(not valid JSON"):
        read_json(tmp_path / "bad.json")


def test_write_json_nan_becomes_null(tmp_path):
    write_json(tmp_path / "x.json", {"a": float("nan"), "b": [1.5, float("inf")], "t": torch.tensor([1, 2])})
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": None, "b": [1.5, None], "t": [1, 2]}
