"""`debiaskit discover`: pseudo-bias files, quality report, refusal to overwrite, pseudo-labelled audit."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from debiaskit.audit import audit_model
from debiaskit.cli import app
from debiaskit.discover import discover_pseudo_bias, discovery_quality, load_pseudo_bias, with_pseudo_bias
from debiaskit.errors import DataError, RunExistsError
from debiaskit.runs import load_run
from debiaskit.train import TrainConfig, train_run

runner = CliRunner()


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("discover") / "run"
    train_run(
        dataset="biased-toy",
        params={"rho": 0.95},
        out=out,
        unbiased_size=600,
        config=TrainConfig(epochs=2, seed=0),
        progress=False,
    )
    return out


def test_discover_cli_writes_pseudo_bias_and_report(toy_run):
    res = runner.invoke(app, ["discover", str(toy_run)])
    assert res.exit_code == 0, res.output
    tensors = load_file(str(toy_run / "discover" / "pseudo_bias.safetensors"))
    splits = load_run(toy_run).splits()
    for split in ("train", "unbiased_train", "unbiased_val"):
        n = len(getattr(splits, split))
        assert tensors[f"{split}.pseudo_bias"].dtype == torch.int64 and tensors[f"{split}.pseudo_bias"].shape == (n,)
        assert tensors[f"{split}.conflict_score"].dtype == torch.float32
        assert tensors[f"{split}.confidence"].shape == (n,) and (tensors[f"{split}.confidence"] >= 0).all()
        assert int(tensors[f"{split}.pseudo_bias"].max()) < splits.num_classes
    report = json.loads((toy_run / "discover" / "report.json").read_text())
    q = report["quality"]["train"]
    assert q["samples"] == len(splits.train) and 0 <= q["pseudo_bias_accuracy"] <= 1
    assert (toy_run / "discover" / "report.md").read_text().startswith("# Pseudo-bias discovery")
    assert torch.equal(load_pseudo_bias(toy_run, "unbiased_val"), tensors["unbiased_val.pseudo_bias"])

    again = runner.invoke(app, ["discover", str(toy_run)])
    assert again.exit_code != 0 and isinstance(again.exception, RunExistsError)
    forced = runner.invoke(app, ["discover", str(toy_run), "--force"])
    assert forced.exit_code == 0, forced.output


def test_discovery_reads_no_bias_labels_and_quality_needs_them(toy_run):
    run = load_run(toy_run)
    splits = run.splits()
    a = discover_pseudo_bias(run.model, train=splits.train, head=run.head)["train"]
    b = discover_pseudo_bias(run.model, train=splits.train.without_bias_labels(), head=run.head)["train"]
    assert torch.equal(a.pseudo_bias, b.pseudo_bias) and torch.equal(a.conflict_score, b.conflict_score)
    assert discovery_quality(a, splits.train.without_bias_labels()) is None
    q = discovery_quality(a, splits.train)
    assert q["flagged"] == int((a.conflict_score > 0).sum())


def test_audit_on_pseudo_groups_is_marked(toy_run):
    run = load_run(toy_run)
    splits = run.splits()
    found = discover_pseudo_bias(run.model, train=splits.train, others={"test": splits.test}, head=run.head)
    unlabeled = splits.test.without_bias_labels()
    pseudo_test = with_pseudo_bias(unlabeled, found["test"].pseudo_bias)
    assert pseudo_test.info["pseudo_bias"] is True and torch.equal(pseudo_test.aligned, pseudo_test.b == pseudo_test.y)
    report = audit_model(run.model, test=pseudo_test, head=run.head, counterfactual=False)
    assert report.attributes[0].pseudo_labels is True
    with pytest.raises(DataError):
        with_pseudo_bias(unlabeled, found["test"].pseudo_bias[:-1])
    with pytest.raises(DataError):
        load_pseudo_bias(toy_run.parent / "nothing", "train")
