"""DEVELOPERS.md, "Add a method": its snippet (one file's worth of code) registers a method that `train`,
`bench compare` and `train --resume` run with no other change."""

from __future__ import annotations

import re
import types
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from debiaskit.bench import SUITES, run_compare
from debiaskit.cli import app
from debiaskit.methods import METHODS
from debiaskit.train import partial_dir

DEVELOPERS = Path(__file__).resolve().parents[1] / "DEVELOPERS.md"
TRAIN = [
    "train",
    "--dataset",
    "biased-toy",
    "--rho",
    "0.95",
    "--model",
    "mlp",
    "--unbiased-size",
    "300",
    "--train-size",
    "384",
    "--test-size",
    "64",
    "--epochs",
    "3",
    "--batch-size",
    "128",
    "--no-progress",
    "--method",
    "focal",
]


@pytest.fixture(scope="module")
def focal():
    text = DEVELOPERS.read_text()
    section = text[text.index("## Add a method") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    module = types.ModuleType("focal_from_developers_md")
    exec(compile(code, str(DEVELOPERS), "exec"), module.__dict__)  # noqa: S102 - our own documentation
    yield module
    METHODS.pop("focal", None)


def test_the_new_method_trains_through_the_cli(focal, tmp_path):
    res = CliRunner().invoke(app, [*TRAIN, "--out", str(tmp_path / "run"), "--method-param", "gamma=1.0"])
    assert res.exit_code == 0, res.output
    import json

    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert meta["method"]["name"] == "focal" and meta["method"]["config"] == {"gamma": 1.0}


def test_the_new_method_joins_the_comparison_harness(focal, tmp_path):
    suite = replace(SUITES["toy"], unbiased_size=300, train_size=500)
    cells = run_compare(suite=suite, root=tmp_path, seeds=(0,), methods=["focal"], echo=lambda s: None)
    assert [c["method"] for c in cells] == ["focal"] and 0 <= cells[0]["task_accuracy"] <= 1
    assert cells[0]["selection"] == "last epoch (label-free)" and cells[0]["method_config"] == {"gamma": 2.0}


def test_the_new_method_resumes_bit_identically(focal, tmp_path, monkeypatch):
    reference = tmp_path / "reference"
    assert CliRunner().invoke(app, [*TRAIN, "--out", str(reference)]).exit_code == 0
    out = tmp_path / "run"
    step = focal.Focal.training_step

    def interrupted(self, batch, ctx):  # Ctrl-C in the middle of the second epoch
        if ctx.epoch == 1:
            raise KeyboardInterrupt
        return step(self, batch, ctx)

    monkeypatch.setattr(focal.Focal, "training_step", interrupted)
    res = CliRunner().invoke(app, [*TRAIN, "--out", str(out)])
    assert res.exit_code != 0 and (partial_dir(out) / "checkpoint.safetensors").is_file()
    monkeypatch.setattr(focal.Focal, "training_step", step)
    res = CliRunner().invoke(app, [*TRAIN, "--out", str(out), "--resume"])
    assert res.exit_code == 0, res.output
    a, b = load_file(str(reference / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
