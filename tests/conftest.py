"""Shared fixtures: tiny procedural data so every test runs in seconds on CPU."""
from __future__ import annotations

import os

import pytest
import torch

from debiaskit.data import make_splits

# Two pytest-xdist workers on two cores: one thread each avoids oversubscription.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_data_root(tmp_path_factory, monkeypatch):
    """Tests never read or write the user's data cache."""
    monkeypatch.setenv("DEBIASKIT_DATA", str(tmp_path_factory.getbasetemp() / "data-cache"))


@pytest.fixture(scope="session")
def toy_splits():
    """Biased toy digits (rho 0.95): 1400 biased training samples, D^u 600, test 500."""
    return make_splits("biased-toy", params={"rho": 0.95}, seed=0, unbiased_size=600)


@pytest.fixture(scope="session")
def multicolor_toy_splits():
    return make_splits("multicolor-toy", params={"rho": 0.95, "rho_right": 0.9}, seed=0, unbiased_size=600)


def randomise_batchnorm(model):
    """Non-trivial frozen BatchNorm statistics (so eval-mode BN is really exercised and a pruned unit's
    BN shift cannot leak into an export); returns the model in eval mode."""
    import torch.nn as nn
    for mod in model.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.5, 0.5)
    return model.eval()
