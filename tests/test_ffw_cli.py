"""`debiaskit ffw RUN_DIR` end to end on toy data: outputs, reload without gates, refusals, pseudo-bias labels."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from debiaskit.cli import app
from debiaskit.ffw import load_ffw_model, load_masks
from debiaskit.runs import load_run
from debiaskit.train import TrainConfig, train_run

runner = CliRunner()
FAST = ["--max-levels", "2", "--max-epochs-per-level", "1", "--no-progress"]


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory, toy_splits):
    out = tmp_path_factory.mktemp("ffwcli") / "run"
    train_run(
        dataset="biased-toy",
        params={"rho": 0.95},
        out=out,
        splits=toy_splits,
        config=TrainConfig(epochs=1, seed=0),
        progress=False,
    )
    return out


def test_ffw_structured_on_a_run_folder(toy_run):
    res = runner.invoke(app, ["ffw", str(toy_run), "--mode", "structured", *FAST])
    assert res.exit_code == 0, res.output
    out = toy_run / "ffw-structured-g10"
    assert "bias extractability" in res.output and "before (vanilla)" in res.output
    info = json.loads((out / "ffw.json").read_text())
    assert info["status"] == "finished" and info["mode"] == "structured"
    assert set(info["before"]) >= {"task_accuracy", "worst_group_accuracy", "bias_extractability"}
    assert info["search"]["selected"]["val_hard"]["task"] >= 0
    # the exported network loads into plain torch modules and reproduces the hard-masked model
    model = load_ffw_model(out)
    x = load_run(toy_run).splits().test.x[:16]
    masks = load_masks(out / "masks.safetensors")
    assert set(masks) == {"extracter.0", "extracter.3", "extracter.6", "extracter.9"}
    widths = [model.extracter[i].out_channels for i in (0, 3, 6, 9)]
    assert widths == [max(int(masks[k].sum()), 1) for k in sorted(masks, key=lambda k: int(k.split(".")[1]))]
    assert model(x).shape == (16, 10)
    assert not list(toy_run.glob(".ffw-structured-g10.partial"))  # the checkpoint is cleaned up
    again = runner.invoke(app, ["ffw", str(toy_run), "--mode", "structured", *FAST])
    assert again.exit_code != 0 and "--force" in str(again.exception or again.output)


def test_ffw_unstructured_bakes_zeros_into_the_plain_model(toy_run, tmp_path):
    out = tmp_path / "u"
    res = runner.invoke(
        app,
        [
            "ffw",
            str(toy_run),
            "--mode",
            "unstructured",
            "--include-head",
            "--erase",
            "none",
            "--out",
            str(out),
            "--tune-epochs",
            "0",
            *FAST,
        ],
    )  # the gates alone: the kept weights are the vanilla's
    assert res.exit_code == 0, res.output
    model = load_ffw_model(out)
    masks = load_masks(out / "masks.safetensors")
    assert "fc" in masks
    for name, mask in masks.items():
        w = model.get_submodule(name).weight
        assert torch.all(w[mask == 0] == 0)
    vanilla = load_run(toy_run).model
    kept = masks["extracter.0"] == 1
    assert torch.equal(model.extracter[0].weight[kept], vanilla.extracter[0].weight[kept])  # kept weights unchanged


def test_discovered_bias_labels(toy_run, tmp_path):
    res = runner.invoke(
        app,
        [
            "ffw",
            str(toy_run),
            "--mode",
            "structured",
            "--bias-labels",
            "discovered",
            "--out",
            str(tmp_path / "d"),
            *FAST,
        ],
    )
    assert res.exit_code != 0 and "debiaskit discover" in str(res.exception)
    splits = load_run(toy_run).splits()
    (toy_run / "discover").mkdir()
    save_file(
        {
            "unbiased_train.pseudo_bias": splits.unbiased_train.b.clone(),
            "unbiased_val.pseudo_bias": splits.unbiased_val.b.clone(),
        },
        str(toy_run / "discover" / "pseudo_bias.safetensors"),
    )
    res = runner.invoke(
        app,
        [
            "ffw",
            str(toy_run),
            "--mode",
            "structured",
            "--bias-labels",
            "discovered",
            "--out",
            str(tmp_path / "d"),
            *FAST,
        ],
    )
    assert res.exit_code == 0, res.output
    info = json.loads((tmp_path / "d" / "ffw.json").read_text())
    assert info["bias_labels"] == "discovered" and "pseudo-bias" in info["bias_labels_note"]


def test_cli_interrupt_keeps_a_partial_folder_and_resume_finishes(toy_run, tmp_path, monkeypatch):
    import debiaskit.ffw._search as search

    out = tmp_path / "i"
    real = search._Search.run_epoch
    calls = {"n": 0}

    def interrupted(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(search._Search, "run_epoch", interrupted)
    res = runner.invoke(app, ["ffw", str(toy_run), "--mode", "structured", "--out", str(out), *FAST])
    assert res.exit_code != 0 and "--resume" in res.output
    partial = tmp_path / ".i.partial"
    assert (partial / "checkpoint.safetensors").is_file() and not out.exists()
    monkeypatch.setattr(search._Search, "run_epoch", real)
    res = runner.invoke(app, ["ffw", str(toy_run), "--mode", "structured", "--out", str(out), *FAST])
    assert res.exit_code != 0 and "--resume" in str(res.exception)
    res = runner.invoke(app, ["ffw", str(toy_run), "--mode", "structured", "--out", str(out), "--resume", *FAST])
    assert res.exit_code == 0, res.output
    info = json.loads((out / "ffw.json").read_text())
    assert info["history"][1]["epoch"] == 1 and not partial.exists()
