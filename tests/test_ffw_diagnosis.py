"""FFW says when it cannot help: a texture bias the vanilla model learnt almost exclusively (no debiased
sub-network), and stronger probes that still read the bias."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from debiaskit.cli import app
from debiaskit.data import make_splits
from debiaskit.ffw._run import diagnose, probe_verdict
from debiaskit.train import TrainConfig, train_run

runner = CliRunner()


@pytest.fixture(scope="module")
def texture_splits():
    return make_splits("texture-toy", params={"rho": 0.995}, seed=0, unbiased_size=600)


def test_the_texture_recipe_renders_the_bias_as_stripes(texture_splits):
    train = texture_splits.train
    assert train.images.shape[1:] == (1, 28, 28) and train.images.dtype == torch.uint8
    assert float(train.aligned.float().mean()) == pytest.approx(0.995, abs=0.003)
    assert float(texture_splits.test.aligned.float().mean()) == pytest.approx(0.1, abs=0.03)
    # the same digit with another texture: a different image (counterfactual pairs for the audit)
    idx = torch.arange(8)
    other = (train.b[idx] + 1) % 10
    assert not torch.equal(train.counterfactual(idx, other), train.to_float(train.images[idx]))


def test_diagnose_names_each_case():
    hist = [{"val_hard": {"task": 0.30}}]
    same = {"val_hard": {"task": 0.305}}
    assert (
        "No debiased sub-network"
        in diagnose(hist, same, {"bias_extractability": 0.99}, {"bias_extractability": 0.2})[0]
    )
    assert (
        "no better sub-network" in diagnose(hist, same, {"bias_extractability": 0.99}, {"bias_extractability": 0.95})[0]
    )
    assert (
        diagnose(hist, {"val_hard": {"task": 0.6}}, {"bias_extractability": 0.99}, {"bias_extractability": 0.2}) == []
    )
    # structured: the frozen model may hold a sub-network that whole units cannot isolate - unstructured first
    unit_note = diagnose(hist, same, {"bias_extractability": 0.99}, {"bias_extractability": 0.2}, mode="structured")
    assert "unit granularity" in unit_note[0] and "--mode unstructured" in unit_note[0]
    assert "nothing but the bias" not in unit_note[0]
    # the claim needs the task kept (a table's task accuracy before -> after); without it, it is not made
    assert probe_verdict({"mlp": 0.12, "linear": 0.15}, num_bias=10, task=(0.3, 0.6))["bias_unreadable"]
    assert not probe_verdict({"mlp": 0.12, "linear": 0.15}, num_bias=10)["bias_unreadable"]
    v = probe_verdict({"mlp": 0.45, "linear": 0.15}, num_bias=10, task=(0.3, 0.6))
    assert not v["bias_unreadable"] and v["readable_by"] == ["mlp"] and "still read the bias" in v["text"]


def test_ffw_on_a_texture_biased_model_says_there_is_no_debiased_sub_network(texture_splits, tmp_path):
    run = tmp_path / "vanilla"
    train_run(
        dataset="texture-toy",
        params={"rho": 0.995},
        out=run,
        splits=texture_splits,
        config=TrainConfig(epochs=2, seed=0),
        progress=False,
    )
    out = tmp_path / "ffw"
    # the gates alone (no head refit): what the search itself can do with the frozen model
    res = runner.invoke(
        app,
        [
            "ffw",
            str(run),
            "--mode",
            "unstructured",
            "--adversary",
            "mmd",
            "--max-epochs",
            "4",
            "--no-refit-head",
            "--tune-epochs",
            "0",
            "--out",
            str(out),
            "--no-progress",
        ],
    )
    # no better model than the vanilla one (do no harm, test_ffw_no_harm.py): nothing written, exit 3, and the
    # refusal carries the diagnosis
    assert res.exit_code == 3, res.output
    assert not out.exists()
    flat = " ".join(res.output.split())
    assert "No debiased sub-network" in flat and "--method calm" in flat and "--method groupdro" in flat
    assert "--no-refit-head" in flat  # which it suggests first
    # the default (head refit on): here the bottleneck holds the shape and only the vanilla head read the texture,
    # so the refit head recovers the task; the exported model is judged on D^u_val, and the note says where the gain
    # came from (not the gates) and where to go next
    refit = tmp_path / "ffw-refit"
    res = runner.invoke(
        app,
        [
            "ffw",
            str(run),
            "--mode",
            "unstructured",
            "--adversary",
            "mmd",
            "--max-epochs",
            "4",
            "--tune-epochs",
            "0",
            "--out",
            str(refit),
            "--no-progress",
        ],
    )
    assert res.exit_code == 0, res.output
    info = json.loads((refit / "ffw.json").read_text())
    assert info["before"]["task_accuracy"] < 0.2 and info["before"]["bias_extractability"] > 0.9  # texture only
    assert set(info["probes"]["after"]) == {"audit", "sgd5", "mlp", "linear"}
    assert info["probes"]["verdict"]["text"] in " ".join((refit / "report.md").read_text().split())
    assert info["search"]["head_refit"]["val_task_after"] > info["history"][0]["val_hard"]["task"] + 0.2
    assert info["after"]["task_accuracy"] > info["before"]["task_accuracy"] + 0.2
    assert info["diagnosis"][0].startswith("Only the head refit helped")  # said, with where to go next


def test_the_rule_reads_both_halves_on_d_u_val_not_on_the_test_set():
    vanilla = {"epoch": 0, "val_hard": {"task": 0.10, "lda_bias": 0.99}}
    selected = {"epoch": 5, "val_hard": {"task": 0.105, "lda_bias": 0.12}}
    # the test-set audit says nothing fell; D^u_val says the bias fell: the D^u_val reading decides
    notes = diagnose([vanilla, selected], selected, {"bias_extractability": 0.99}, {"bias_extractability": 0.99})
    assert len(notes) == 1 and notes[0].startswith("No debiased sub-network:") and "99.0 -> 12.0 %" in notes[0]
    assert "train it longer" in notes[0] and "--method calm" in notes[0]
    # and the other way round: a test-set drop alone does not make the note
    kept = {"epoch": 5, "val_hard": {"task": 0.105, "lda_bias": 0.98}}
    notes = diagnose([vanilla, kept], kept, {"bias_extractability": 0.99}, {"bias_extractability": 0.10})
    assert len(notes) == 1 and notes[0].startswith("FFW found no better sub-network")


def test_the_rule_judges_the_exported_model_after_the_eraser_and_the_head_refit():
    vanilla = {"epoch": 0, "val_hard": {"task": 0.10, "lda_bias": 0.99}}
    selected = {"epoch": 5, "val_hard": {"task": 0.105, "lda_bias": 0.12}}
    audits = ({"bias_extractability": 0.99}, {"bias_extractability": 0.12})
    assert diagnose([vanilla, selected], selected, *audits, final_val_task=0.105)[0].startswith("No debiased")
    # the refit head lifted the exported model on D^u_val: the gates' record alone no longer decides
    note = diagnose([vanilla, selected], selected, *audits, final_val_task=0.60)
    assert len(note) == 1 and note[0].startswith("Only the head refit helped") and "--method calm" in note[0]
    # the weight tuning lifted it first: the credit (and the warning) goes to the tuning, not to the head refit
    tuned = diagnose([vanilla, selected], selected, *audits, final_val_task=0.60, tuned_val_task=0.58)
    assert len(tuned) == 1 and tuned[0].startswith("Only the weight tuning helped") and "--method calm" in tuned[0]
    assert diagnose([vanilla, selected], selected, *audits, final_val_task=0.60, tuned_val_task=0.11)[0].startswith(
        "Only the head refit helped"
    )
    better = {"epoch": 5, "val_hard": {"task": 0.55, "lda_bias": 0.12}}  # the gates themselves found one
    assert diagnose([vanilla, better], better, *audits, final_val_task=0.60) == []
