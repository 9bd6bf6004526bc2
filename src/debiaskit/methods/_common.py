"""Helpers shared by the method modules: fresh model copies, auxiliary training loops, sampling.

Under torchrun the auxiliary loops shard like the main loop (same permutation on every rank, rank r takes
its DistributedSampler share with a per-rank batch of ``batch_size / W``) and whole-training-set passes
are split across ranks and gathered, so their results are identical on every rank.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor, nn

from .._dist import map_shards, shard
from ..data import Batch, iterate_batches
from ..models import collect_outputs, laid_out
from ..train import TrainContext


def fresh_copy(model: nn.Module, *, seed: int) -> nn.Module:
    """A copy of ``model`` with re-initialised parameters (an independent auxiliary model, e.g. LfF's f_B).
    Of the user's module when ``model`` is wrapped in DistributedDataParallel."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    clone = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in clone.modules():
            if hasattr(module, "reset_parameters") and module is not clone:
                module.reset_parameters()
    return clone


def run_epochs(ctx: TrainContext, *, epochs: int, step: Callable[[Batch], None], indices: Tensor | None = None) -> None:
    """Auxiliary epochs over ``ctx.train_data`` (shuffled with the loop's generator), outside the main loop.
    Under torchrun each rank visits its shard; ``step`` must average the gradients of modules that are not
    the DDP-wrapped ``ctx.model`` (``ctx.sync_grads``)."""
    n = len(ctx.train_data)
    for _ in range(epochs):
        order = torch.arange(n) if indices is None else indices
        order = shard(order[torch.randperm(len(order), generator=ctx.generator)], rank=ctx.rank, world=ctx.world_size)
        for batch in iterate_batches(ctx.train_data, batch_size=ctx.batch_size, indices=order, device=ctx.device):
            step(batch._replace(x=laid_out(batch.x, ctx.memory_format)))  # the main loop's layout


@torch.no_grad()
def predict_train(model: nn.Module, ctx: TrainContext) -> tuple[Tensor, Tensor]:
    """(predicted class, true class) for every training sample, in dataset order, eval mode (split across
    ranks and gathered under torchrun: the same on every rank)."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module

    def rows(index: Tensor) -> Tensor:
        if not len(index):
            return torch.zeros(0, 2, dtype=torch.long)
        out = collect_outputs(
            model, ctx.train_data, with_bottleneck=False, batch_size=1024, device=ctx.device, indices=index
        )
        return torch.stack([out.logits.argmax(1), out.y], 1)

    both = map_shards(len(ctx.train_data), rows)
    return both[:, 0], both[:, 1]


def upweighted_indices(weights: Tensor, *, generator: torch.Generator) -> Tensor:
    """One epoch (N draws with replacement) from a sampler proportional to ``weights``."""
    return torch.multinomial(weights.double(), len(weights), replacement=True, generator=generator)


def rho_of(dataset) -> float | None:
    """The dataset's nominal rho (from its recipe params), for rho-indexed paper defaults."""
    params = getattr(dataset, "info", {}).get("params", {})
    return params.get("rho")
