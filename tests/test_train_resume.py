"""`train --resume`: a run interrupted by Ctrl-C (SIGINT) or killed (SIGKILL) resumes from its last
checkpoint to weights bit-identical to an uninterrupted run, for every registered training method."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from conftest import interruptible
from debiaskit.cli import app
from debiaskit.data import make_splits
from debiaskit.errors import ConfigError, RunExistsError
from debiaskit.methods import METHODS, build_method
from debiaskit.models import build_model
from debiaskit.train import DynamicsRecorder, TrainConfig, fit, partial_dir, train_run

# small budgets: every method, every phase (JTT's identification, DCWP's mask search, CALM's warm-up and
# discovery, VCBA's stage switch) falls inside the first of three epochs or at an epoch boundary
FAST = {
    "jtt": {"id_epochs": 1, "lambda_up": 3},
    "dcwp": {"erm_epochs": 1, "mask_iters": 3},
    "fmd": {"pool_size": 200, "n_bias_pairs": 100, "n_val": 100, "top_k": 50},
    "vcba": {"stage1_epochs": 1},
    "calm": {"warmup_epochs": 1},
}
TRAINABLE = sorted(n for n, info in METHODS.items() if isinstance(info.factory, type))
CONFIG = TrainConfig(epochs=3, batch_size=128, seed=0)
TOY = [
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
]


@pytest.fixture(scope="module")
def splits():
    return make_splits("biased-toy", seed=0, unbiased_size=300, train_size=384, test_size=64)


def _fit(name, splits, *, checkpoint=None, resume=False, interrupt_in_epoch=None, **kwargs):
    torch.manual_seed(0)
    model = build_model("mlp", num_classes=10, input_shape=splits.train.input_shape)
    method, _ = build_method(name, dataset="biased-toy", **FAST.get(name, {}))
    if interrupt_in_epoch is not None:  # Ctrl-C at the second batch of that epoch (0-based)
        step, seen = method.training_step, []

        def training_step(batch, ctx):
            seen.append(ctx.epoch)
            if seen.count(interrupt_in_epoch) == 2:
                raise KeyboardInterrupt
            return step(batch, ctx)

        method.training_step = training_step
    return fit(
        model,
        splits.train,
        method=kwargs.pop("wrap", lambda m: m)(method),
        config=CONFIG,
        head="fc",
        progress=False,
        checkpoint=checkpoint,
        resume=resume,
        **kwargs,
    )


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _without_time(history):
    return [{k: v for k, v in record.items() if k != "time_s"} for record in history]


@pytest.mark.parametrize("name", TRAINABLE)
def test_interrupted_twice_then_resumed_equals_an_uninterrupted_run(name, splits, tmp_path):
    reference = _fit(name, splits)
    checkpoint = tmp_path / "checkpoint.safetensors"
    with pytest.raises(KeyboardInterrupt):  # in the first epoch, before any epoch finished
        _fit(name, splits, checkpoint=checkpoint, interrupt_in_epoch=0)
    with pytest.raises(KeyboardInterrupt):  # resumed from the preparation's checkpoint, interrupted in epoch 2
        _fit(name, splits, checkpoint=checkpoint, resume=True, interrupt_in_epoch=1)
    resumed = _fit(name, splits, checkpoint=checkpoint, resume=True)
    assert resumed.resumed_from_epoch == 1
    assert _same_weights(reference.model.state_dict(), resumed.model.state_dict())
    assert _without_time(resumed.history) == _without_time(reference.history)
    assert resumed.selected_epoch == reference.selected_epoch


def test_resume_keeps_validation_selection_and_recorded_dynamics(splits, tmp_path):
    scores = {"first": [], "again": []}

    def select(tag):
        def score(model):  # a deterministic score of the model (the harness uses D^u_val's worst group)
            with torch.no_grad():
                value = float(model(splits.unbiased_val.x[:64]).softmax(1)[:, 0].mean())
            scores[tag].append(value)
            return -value if len(scores[tag]) != 2 else 1.0  # epoch 2 wins

        return score

    wrap = DynamicsRecorder
    reference = _fit("vanilla", splits, select=select("first"), wrap=wrap)
    checkpoint = tmp_path / "checkpoint.safetensors"
    recorders = []

    def recorded(method):
        recorders.append(DynamicsRecorder(method))
        return recorders[-1]

    with pytest.raises(KeyboardInterrupt):
        _fit("vanilla", splits, checkpoint=checkpoint, interrupt_in_epoch=2, select=select("again"), wrap=recorded)
    resumed = _fit("vanilla", splits, checkpoint=checkpoint, resume=True, select=select("again"), wrap=recorded)
    assert resumed.selected_epoch == reference.selected_epoch == 2
    assert _same_weights(reference.model.state_dict(), resumed.model.state_dict())
    fresh = DynamicsRecorder(build_method("vanilla", dataset="biased-toy")[0])
    _fit("vanilla", splits, wrap=lambda m: fresh)
    assert all(torch.equal(a, b) for a, b in zip(fresh.dynamics().values(), recorders[-1].dynamics().values()))


def test_resume_refuses_another_configuration_before_training(splits, tmp_path):
    checkpoint = tmp_path / "checkpoint.safetensors"
    with pytest.raises(KeyboardInterrupt):
        _fit("groupdro", splits, checkpoint=checkpoint, interrupt_in_epoch=1)
    torch.manual_seed(0)
    model = build_model("mlp", num_classes=10, input_shape=splits.train.input_shape)
    with pytest.raises(ConfigError, match="another run: config differ"):
        fit(
            model,
            splits.train,
            method=build_method("groupdro", dataset="biased-toy")[0],
            progress=False,
            config=TrainConfig(epochs=3, batch_size=128, seed=1),
            head="fc",
            checkpoint=checkpoint,
            resume=True,
        )
    with pytest.raises(ConfigError, match="method differ"):
        fit(
            model,
            splits.train,
            method=build_method("lff", dataset="biased-toy")[0],
            progress=False,
            config=CONFIG,
            head="fc",
            checkpoint=checkpoint,
            resume=True,
        )
    with pytest.raises(ConfigError, match="nothing to resume"):
        fit(model, splits.train, config=CONFIG, checkpoint=tmp_path / "none.safetensors", resume=True, progress=False)


def test_setup_is_timed_with_the_method(splits, monkeypatch):
    """The clock starts before setup: JTT's identification model and DCWP's mining count in its time."""
    from debiaskit.methods.jtt import JTT

    prepare = JTT.prepare

    def slow_prepare(self, ctx):
        time.sleep(0.5)
        prepare(self, ctx)

    monkeypatch.setattr(JTT, "prepare", slow_prepare)
    result = _fit("jtt", splits)
    assert result.wall_time_s >= 0.5 and result.history[0]["time_s"] >= 0.5


def _cli_train(out: Path, method: str, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    code = "import torch; torch.set_num_threads(1); from debiaskit.cli import main; main()"
    return subprocess.Popen(
        [sys.executable, "-c", code, "train", *TOY, "--method", method, "--out", str(out), *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=interruptible,
    )


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.is_file():
        if proc.poll() is not None:
            raise AssertionError(f"training ended before its first checkpoint: {proc.communicate()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("no checkpoint within the timeout")
        time.sleep(0.05)


# a kill is method-independent (the checkpoint of every method is tested in-process above): by default one
# method with the most state (DCWP: mined set, masks, upweighted sampling), every method under `-m slow`
@pytest.mark.parametrize("name", [n if n == "dcwp" else pytest.param(n, marks=pytest.mark.slow) for n in TRAINABLE])
def test_sigkill_after_the_first_checkpoint_then_resume(name, tmp_path):
    out = tmp_path / "run"
    proc = _cli_train(out, name, *(f"--method-param={k}={v}" for k, v in FAST.get(name, {}).items()))
    _wait_for(partial_dir(out) / "checkpoint.safetensors", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "run.json").exists()
    res = CliRunner().invoke(
        app,
        [
            "train",
            *TOY,
            "--method",
            name,
            "--out",
            str(out),
            "--resume",
            *(f"--method-param={k}={v}" for k, v in FAST.get(name, {}).items()),
        ],
    )
    assert res.exit_code == 0, res.output
    assert not partial_dir(out).exists(), sorted(
        p.name for p in partial_dir(out).iterdir()
    )  # the finished run supersedes its checkpoint
    ref = tmp_path / "reference"
    res = CliRunner().invoke(
        app,
        [
            "train",
            *TOY,
            "--method",
            name,
            "--out",
            str(ref),
            *(f"--method-param={k}={v}" for k, v in FAST.get(name, {}).items()),
        ],
    )
    assert res.exit_code == 0, res.output
    assert _same_weights(load_file(str(ref / "model.safetensors")), load_file(str(out / "model.safetensors")))


def test_ctrl_c_keeps_the_checkpoint_and_says_how_to_resume(tmp_path):
    out = tmp_path / "run"
    proc = _cli_train(out, "vanilla", "--epochs", "40")
    _wait_for(partial_dir(out) / "checkpoint.safetensors", proc)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in stdout and "--resume" in stdout, (stdout, stderr)
    assert (partial_dir(out) / "checkpoint.safetensors").is_file() and not out.exists()
    # a fresh start must be explicit: the checkpoint is not silently thrown away
    with pytest.raises(RunExistsError, match="--resume"):
        train_run(dataset="biased-toy", params={"rho": 0.95}, out=out, model="mlp", unbiased_size=300, progress=False)
    with pytest.raises(ConfigError, match="nothing to resume"):
        train_run(dataset="biased-toy", out=tmp_path / "other", model="mlp", unbiased_size=300, resume=True)


def test_a_damaged_checkpoint_is_a_clear_error_not_a_wrong_resume(splits, tmp_path):
    from debiaskit.errors import DebiaskitError

    checkpoint = tmp_path / "checkpoint.safetensors"
    with pytest.raises(KeyboardInterrupt):
        _fit("lff", splits, checkpoint=checkpoint, interrupt_in_epoch=1)
    data = checkpoint.read_bytes()
    checkpoint.write_bytes(data[: len(data) // 2])  # a torn write (the helper's own writes are atomic)
    with pytest.raises(DebiaskitError, match="damaged"):
        _fit("lff", splits, checkpoint=checkpoint, resume=True)
