"""End-to-end: train + audit through the CLI on toy data."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from debiaskit.cli import app

runner = CliRunner()


def test_train_then_audit_through_cli(tmp_path):
    run = tmp_path / "run"
    res = runner.invoke(
        app,
        [
            "train",
            "--dataset",
            "biased-toy",
            "--rho",
            "0.95",
            "--epochs",
            "2",
            "--unbiased-size",
            "600",
            "--out",
            str(run),
            "--no-progress",
        ],
    )
    assert res.exit_code == 0, res.output
    meta = json.loads((run / "run.json").read_text())
    assert meta["status"] == "finished" and meta["data"]["params"]["rho"] == 0.95
    assert (run / "model.safetensors").is_file() and (run / "train_log.jsonl").is_file()
    res = runner.invoke(app, ["audit", str(run)])
    assert res.exit_code == 0, res.output
    audit = json.loads((run / "audit" / "audit.json").read_text())
    assert 0.0 <= audit["task_accuracy"] <= 1.0
    assert (run / "audit" / "group_accuracy.png").is_file() and (run / "audit" / "bottleneck.png").is_file()
