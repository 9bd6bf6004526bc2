"""Helpers shared by the method modules: fresh model copies, auxiliary training loops, sampling."""
from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import Tensor, nn

from ..data import Batch, iterate_batches
from ..train import TrainContext


def fresh_copy(model: nn.Module, *, seed: int) -> nn.Module:
    """A copy of ``model`` with re-initialised parameters (an independent auxiliary model, e.g. LfF's f_B)."""
    clone = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in clone.modules():
            if hasattr(module, "reset_parameters") and module is not clone:
                module.reset_parameters()
    return clone


def run_epochs(ctx: TrainContext, *, epochs: int, step: Callable[[Batch], None], indices: Tensor | None = None) -> None:
    """Auxiliary epochs over ``ctx.train_data`` (shuffled with the loop's generator), outside the main loop."""
    n = len(ctx.train_data)
    for _ in range(epochs):
        order = torch.arange(n) if indices is None else indices
        order = order[torch.randperm(len(order), generator=ctx.generator)]
        for batch in iterate_batches(ctx.train_data, batch_size=ctx.config.batch_size, indices=order, device=ctx.device):
            step(batch)


@torch.no_grad()
def predict_train(model: nn.Module, ctx: TrainContext) -> tuple[Tensor, Tensor]:
    """(predicted class, true class) for every training sample, in dataset order, eval mode."""
    was = model.training
    model.eval()
    preds, ys = [], []
    for batch in iterate_batches(ctx.train_data, batch_size=1024, device=ctx.device):
        preds.append(model(batch.x).argmax(1).cpu())
        ys.append(batch.y.cpu())
    model.train(was)
    return torch.cat(preds), torch.cat(ys)


def upweighted_indices(weights: Tensor, *, generator: torch.Generator) -> Tensor:
    """One epoch (N draws with replacement) from a sampler proportional to ``weights``."""
    return torch.multinomial(weights.double(), len(weights), replacement=True, generator=generator)


def rho_of(dataset) -> float | None:
    """The dataset's nominal rho (from its recipe params), for rho-indexed paper defaults."""
    params = getattr(dataset, "info", {}).get("params", {})
    return params.get("rho")
