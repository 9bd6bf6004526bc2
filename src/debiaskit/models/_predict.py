"""Batched inference helpers shared by training, audit and the methods."""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..data import Batch, iterate_batches
from ..errors import DataError
from ._head import forward_with_bottleneck
from ._layout import batch_memory_format, laid_out


class Outputs(NamedTuple):
    logits: Tensor
    z: Tensor | None
    y: Tensor | None  # None for raw input tensors
    b: Tensor | None


@torch.no_grad()
def collect_outputs(
    model: nn.Module,
    dataset,
    *,
    head: str | None = None,
    with_bottleneck: bool = True,
    batch_size: int = 512,
    device: str | torch.device = "cpu",
    indices: Tensor | None = None,
) -> Outputs:
    """Run ``model`` in eval mode over ``dataset`` (or the samples ``indices`` of it, in that order); return
    logits, bottleneck z (flattened, float32) and y and b, on the CPU; the model's training mode is restored.
    ``dataset`` may also be a tensor of model inputs (then y and b are None). The one batched feature
    collection of debiaskit: the audit, the harnesses and the methods (JTT, DCWP, CALM, FMD) use it.

    Example::

        out = collect_outputs(model, splits.unbiased_val, head="fc")
        out.z.shape, (out.logits.argmax(1) == out.y).float().mean()
    """
    was_training = model.training
    model.eval()
    logits: list[Tensor] = []
    zs: list[Tensor] = []
    ys: list[Tensor] = []
    bs: list[Tensor] = []
    batches: Iterable[Batch | _Inputs]
    if isinstance(dataset, Tensor):
        inputs = dataset if indices is None else dataset[indices]
        batches = (_Inputs(inputs[i : i + batch_size].to(device)) for i in range(0, len(inputs), batch_size))
    else:
        batches = iterate_batches(dataset, batch_size=batch_size, device=device, indices=indices)
    layout = None  # decided on the first batch (models/_layout.py): channels-last image batches on a CPU
    try:
        for batch in batches:
            if layout is None:
                layout = batch_memory_format(model, batch.x[:2], device=device)
            x = laid_out(batch.x, layout)
            if with_bottleneck:
                out, z = forward_with_bottleneck(model, x, head)
                zs.append(z.float().cpu())
            else:
                out = model(x)
            logits.append(out.float().cpu())
            if batch.y is not None:
                ys.append(batch.y.cpu())
            if batch.b is not None:
                bs.append(batch.b.cpu())
    finally:
        model.train(was_training)
    return Outputs(
        torch.cat(logits), torch.cat(zs) if zs else None, torch.cat(ys) if ys else None, torch.cat(bs) if bs else None
    )


class _Inputs(NamedTuple):
    x: Tensor
    y: None = None
    b: None = None


def accuracy(model: nn.Module, dataset, *, batch_size: int = 512, device: str | torch.device = "cpu") -> float:
    out = collect_outputs(model, dataset, with_bottleneck=False, batch_size=batch_size, device=device)
    if out.y is None:
        raise DataError("accuracy needs targets: pass a dataset, not a tensor of inputs")
    return float((out.logits.argmax(1) == out.y).float().mean())


def pool_features(t: Tensor) -> Tensor:
    """(N, d) features of a layer's output, as debiaskit reads layers (``discover``'s layer choice, the audit's
    per-block probes): an image map (N, C, H, W) averaged over its positions, a token sequence (N, L, C) over its
    tokens, anything else flattened."""
    t = t.detach().float()
    if t.ndim == 4:
        return t.mean((2, 3))
    if t.ndim == 3:
        return t.mean(1)
    return t.flatten(1)
