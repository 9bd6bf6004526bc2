"""The training loop: determinism, selection on validation, divergence, distributed readiness."""

from __future__ import annotations

import socket

import pytest
import torch

from debiaskit.errors import DebiaskitError
from debiaskit.models import accuracy, build_model
from debiaskit.train import TrainConfig, TrainingMethod, fit


def _model():
    torch.manual_seed(0)
    return build_model("mlp", num_classes=10, input_shape=(3, 28, 28))


def test_same_seed_gives_identical_weights(toy_splits):
    cfg = TrainConfig(epochs=1, batch_size=128, seed=3)
    a = fit(_model(), toy_splits.train, config=cfg, progress=False).model
    b = fit(_model(), toy_splits.train, config=cfg, progress=False).model
    for (ka, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(va, vb), ka


def test_training_learns_the_toy_task(toy_splits):
    model = fit(_model(), toy_splits.train, config=TrainConfig(epochs=3, batch_size=64), progress=False).model
    assert accuracy(model, toy_splits.train) > 0.8


def test_selection_keeps_the_best_validation_epoch(toy_splits):
    scores = iter([0.5, 0.9, 0.1])
    result = fit(
        _model(),
        toy_splits.train,
        config=TrainConfig(epochs=3, batch_size=256),
        select=lambda m: next(scores),
        progress=False,
    )
    assert result.selected_epoch == 2
    assert [h["selection_score"] for h in result.history] == [0.5, 0.9, 0.1]


def test_divergence_is_a_clear_error(toy_splits):
    class Exploding(TrainingMethod):
        def training_step(self, batch, ctx):
            return {"loss": float("nan")}

    with pytest.raises(DebiaskitError, match="diverged"):
        fit(_model(), toy_splits.train, method=Exploding(), config=TrainConfig(epochs=1), progress=False)


def test_method_needing_bias_labels_refuses_unlabelled_data(toy_splits):
    class NeedsBias(TrainingMethod):
        uses_bias_labels = True

    with pytest.raises(DebiaskitError, match="needs bias labels"):
        fit(
            _model(),
            toy_splits.train.without_bias_labels(),
            method=NeedsBias(),
            config=TrainConfig(epochs=1),
            progress=False,
        )


def test_runs_under_torch_distributed(toy_splits):
    """A one-process gloo group: the loop runs as on one process (no DDP wrapper, no-op collectives at world size 1)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        result = fit(_model(), toy_splits.train, config=TrainConfig(epochs=1, batch_size=256), progress=False)
    finally:
        torch.distributed.destroy_process_group()
    assert isinstance(result.model, torch.nn.Module) and not hasattr(result.model, "module")
    assert result.history[0]["loss"] > 0
