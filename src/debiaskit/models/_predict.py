"""Batched inference helpers shared by training, audit and the methods."""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..data import iterate_batches
from ._head import tap_bottleneck


class Outputs(NamedTuple):
    logits: Tensor
    z: Tensor | None
    y: Tensor
    b: Tensor | None


@torch.no_grad()
def collect_outputs(model: nn.Module, dataset, *, head: str | None = None, with_bottleneck: bool = True,
                    batch_size: int = 512, device: str | torch.device = "cpu", indices=None) -> Outputs:
    """Run ``model`` in eval mode over ``dataset`` (or its samples ``indices``); return logits, bottleneck z
    (flattened), y and b."""
    was_training = model.training
    model.eval()
    logits, zs, ys, bs = [], [], [], []
    try:
        for batch in iterate_batches(dataset, batch_size=batch_size, device=device, indices=indices):
            if with_bottleneck:
                with tap_bottleneck(model, head) as tap:
                    out = model(batch.x)
                zs.append(tap.z.flatten(1).float().cpu())
            else:
                out = model(batch.x)
            logits.append(out.float().cpu())
            ys.append(batch.y.cpu())
            if batch.b is not None:
                bs.append(batch.b.cpu())
    finally:
        model.train(was_training)
    return Outputs(torch.cat(logits), torch.cat(zs) if zs else None, torch.cat(ys), torch.cat(bs) if bs else None)


def accuracy(model: nn.Module, dataset, *, batch_size: int = 512, device: str | torch.device = "cpu") -> float:
    out = collect_outputs(model, dataset, with_bottleneck=False, batch_size=batch_size, device=device)
    return float((out.logits.argmax(1) == out.y).float().mean())
