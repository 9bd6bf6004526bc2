"""Shared fixtures: tiny procedural data so every test runs in seconds on CPU."""

from __future__ import annotations

import signal

import pytest
import torch

from debiaskit.data import make_splits


def interruptible() -> None:
    """`preexec_fn` for a child that a test interrupts with SIGINT: a shell running `make test` in the
    background (`&`) starts it with SIGINT ignored, an ignore inherited across exec, so Ctrl-C would not reach it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


# Two pytest-xdist workers on two cores: one thread each avoids oversubscription.
torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def _isolated_config_dir(tmp_path_factory):
    """Tests never read or write the user's configuration (their signing key): one key per test session (and
    xdist worker), set before any session fixture writes a run, inherited by the CLI subprocesses."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DEBIASKIT_CONFIG_DIR", str(tmp_path_factory.mktemp("config")))
        yield


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


# -- fault-injection helpers (tests/test_faults_*.py) ----------------------------------------------------------------


def tree_bytes(root):
    """Every file under ``root`` (hidden ones included) -> its bytes: 'nothing lost' means this is unchanged."""
    from pathlib import Path

    root = Path(root)
    if root.is_file():
        return {".": root.read_bytes()}
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def cli(monkeypatch, capsys):
    """Run the console entry point in-process: returns (exit code, stdout+stderr on one line)."""
    import sys

    from debiaskit.cli import main

    def invoke(*args):
        monkeypatch.setattr(sys, "argv", ["debiaskit", *map(str, args)])
        monkeypatch.setenv("COLUMNS", "1000")  # rich would otherwise wrap long paths
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code
        out = capsys.readouterr()
        return code, " ".join((out.out + out.err).split())

    return invoke


@pytest.fixture(scope="session")
def toy_run_dir(tmp_path_factory, toy_splits):
    """A finished 1-epoch MLP run on the toy data (read-only: copy it before changing anything)."""
    from debiaskit.train import TrainConfig, train_run

    out = tmp_path_factory.mktemp("faults") / "run"
    train_run(
        dataset="biased-toy",
        params={"rho": 0.95},
        out=out,
        splits=toy_splits,
        model="mlp",
        config=TrainConfig(epochs=1, seed=0),
        progress=False,
    )
    return out


@pytest.fixture
def allow_harm(monkeypatch):
    """FFW's do-no-harm verdict recorded but not enforced (``no_harm=False`` for the CLI): for tests of a stage's
    mechanics on the 1-epoch toy models, which are near chance themselves, so the guard would refuse their output.
    The guard itself is tested in tests/test_ffw_no_harm.py."""
    from debiaskit.ffw import _pipeline

    monkeypatch.setattr(_pipeline, "enforce", lambda record, result: None)
