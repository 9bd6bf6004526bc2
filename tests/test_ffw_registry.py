"""FFW in the method registry: post-hoc flags, defaults with sources, the harness entry, refusal to train."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from debiaskit.bench._compare import available_methods
from debiaskit.cli import main
from debiaskit.errors import ConfigError
from debiaskit.ffw import FFWConfig
from debiaskit.methods import METHODS, build_method, method_defaults
from debiaskit.models import build_model


def test_ffw_is_registered_as_a_post_hoc_method():
    info = METHODS["ffw"]
    assert (info.uses_bias_labels, info.uses_unbiased_data, info.retrains, info.post_hoc) == (True, True, False, True)
    assert info.apply is not None and available_methods()["ffw"] is info
    defaults = method_defaults("ffw", "biased-mnist")
    assert defaults["mode"].value == "unstructured" and defaults["gamma"].value == 10.0
    assert all(d.source for d in defaults.values())
    assert set(info.budget("full")) <= set(defaults)  # --full overrides reach FFW (the harness drops unknown keys)
    assert info.budget("full")["head_pretrain_epochs"] > defaults["head_pretrain_epochs"].value
    # no epochs-per-level cap of its own: FFWConfig's 10-epoch budget over 10 tau levels gives every level 1 epoch
    # (a cap of 3, or the paper's 10 under --full, changed nothing and was removed)
    assert "max_epochs_per_level" not in defaults and "max_epochs_per_level" not in info.budget("full")
    config = FFWConfig(**{k: d.value for k, d in defaults.items()})
    assert config.level_cap() == 1 == FFWConfig(max_epochs_per_level=3).level_cap()
    assert "hard-masked" in info.selection_rule and "D^u_val" in info.selection_rule


def test_training_with_ffw_is_refused_with_a_pointer_to_the_ffw_command(tmp_path, monkeypatch, capsys):
    with pytest.raises(ConfigError, match=r"post-hoc.*debiaskit ffw RUN_DIR"):
        build_method("ffw", dataset="biased-toy")
    args = [
        "train",
        "--dataset",
        "biased-toy",
        "--rho",
        "0.95",
        "--epochs",
        "1",
        "--model",
        "mlp",
        "--unbiased-size",
        "600",
        "--method",
        "ffw",
        "--out",
        str(tmp_path / "r"),
        "--no-progress",
    ]
    monkeypatch.setattr(sys, "argv", ["debiaskit", *args])
    monkeypatch.setenv("COLUMNS", "1000")
    with pytest.raises(SystemExit) as exc:
        main()  # the console script: a DebiaskitError becomes "error: ..." and exit code 2
    err = " ".join(capsys.readouterr().err.split())
    assert exc.value.code == 2 and "post-hoc" in err and "debiaskit ffw RUN_DIR" in err
    assert not (tmp_path / "r").exists()


def test_apply_prunes_a_copy_and_returns_json_able_diagnostics(toy_splits):
    torch.manual_seed(0)
    model = build_model("mlp", num_classes=10, input_shape=toy_splits.train.input_shape).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = {k: d.value for k, d in method_defaults("ffw", "biased-toy").items()}
    config.update(max_levels=1, max_epochs_per_level=1, head_pretrain_epochs=1)
    pruned, info = METHODS["ffw"].apply(model, splits=toy_splits, head="fc", seed=0, **config)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the vanilla model is untouched
    assert pruned.state_dict().keys() == model.state_dict().keys()  # unstructured: same architecture
    assert info["selected"]["val_hard"]["task"] >= 0 and 0 <= info["sparsity"]["overall"] <= 1
    json.dumps(info)
