"""One FFW step (the gates' and privacy heads' gradients on a batch), its MI term and the logit temperature fit."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import _dist
from ..audit import normalized_mutual_information
from ..models import forward_with_bottleneck
from ._adversary import (
    bias_columns,
)

# FFW's information term (eq. 7): the audit's normalised empirical MI, computed in log space so that its
# gradient stays finite (a NaN at tau 1 on colored-mnist came from the literal formula). One implementation
# for FFW, IRENE, VCBA and the audit.
mutual_information = normalized_mutual_information


def _per_attribute(num_bias: int | Sequence[int], n_attr: int) -> tuple[int, ...]:
    """One number of bias classes per attribute (an int: the same for all)."""
    cards = tuple(int(k) for k in num_bias) if isinstance(num_bias, Sequence) else (int(num_bias),) * n_attr
    if len(cards) != n_attr:
        raise ValueError(f"one number of bias classes per attribute: {n_attr} attributes, got {len(cards)}")
    return cards


def fit_log_temperature(logits: Tensor, y: Tensor) -> Tensor:
    """log T minimising CE(logits / T, y) (a 1-D convex problem; a grid over T in [0.1, 100], then its best
    neighbourhood): the calibration the gates would otherwise learn by shrinking every unit."""

    def ce(log_t: Tensor) -> Tensor:
        return torch.stack([F.cross_entropy(logits / t.exp(), y) for t in log_t])

    grid = torch.linspace(math.log(0.1), math.log(100.0), 61, device=logits.device)
    best = grid[int(ce(grid).argmin())]
    fine = best + torch.linspace(-0.12, 0.12, 25, device=logits.device)
    return fine[int(ce(fine).argmin())]


def ffw_step(
    model: nn.Module,
    head: str,
    gate_params: Sequence[Tensor],
    privacy_heads: list[nn.Module],
    x: Tensor,
    y: Tensor,
    b: Tensor,
    *,
    gamma: float,
    num_bias: int | Sequence[int],
    dependence: Callable[[Tensor, list[Tensor], Tensor], Tensor] | None = None,
    order: Tensor | None = None,
    log_temperature: Tensor | None = None,
    scale_free: bool = False,
) -> dict[str, Any]:
    """Gradients of one FFW step, written into ``.grad`` (the caller steps the optimisers).

    Gates get dJ/dm with J = CE(f(x), y) + gamma * D(z, b); D defaults to the paper's sum_a MI(P_a(z), b_a)
    over the privacy heads (``num_bias``: one number of classes for every attribute, or one per attribute: each
    MI is normalised by its own attribute's log K), ``dependence(z, bias_columns, y)`` replaces it.
    ``torch.autograd.grad`` with the gates as the only inputs: J's gradient on the heads is never computed
    (discarded). Each head P_a gets the gradient of CE(P_a(z.detach()), b_a) (head i reads attribute i % A):
    nothing flows back into the encoder or the gates. Frozen weights receive no gradient at all. The detached bottleneck comes back as ``"z"``.

    Under torchrun D is computed on the all-gathered global batch (``order``: where each gathered row goes, so
    that the rows are in the 1-rank batch's order; see :func:`debiaskit._dist.global_batch_order`).
    """
    logits, z = forward_with_bottleneck(model, x, head)
    if log_temperature is not None:  # CE of the calibrated logits (a learnt scale that no argmax sees)
        logits = logits / log_temperature.exp()
    ce = F.cross_entropy(logits, y)
    cols = bias_columns(b)
    cards = _per_attribute(num_bias, len(cols))
    zd = z.detach()
    if scale_free:  # same value; no gradient along a feature's own scale (a probe undoes any rescaling)
        scale = z.std(0, keepdim=True).clamp_min(1e-6)
        z = z / scale * scale.detach()
    # D is a statistic of the whole batch: under torchrun, of the all-gathered global batch (gradient back to each
    # rank's own samples; identity on one process)
    if dependence is None:
        mi = cast(  # a sum of tensors (one head per attribute at least)
            Tensor,
            sum(
                mutual_information(_dist.all_gather_with_grad(h(z).softmax(1)), _dist.all_gather(col), k)
                for h, col, k in zip(privacy_heads, cols, cards)
            ),
        )
    else:
        z_all, cols_all, y_all = _dist.all_gather_with_grad(z), [_dist.all_gather(c) for c in cols], _dist.all_gather(y)
        if order is not None:
            z_all, cols_all = z_all[order.to(z_all.device)], [c[order.to(c.device)] for c in cols_all]
            y_all = y_all[order.to(y_all.device)]
        mi = dependence(z_all, cols_all, y_all)
    loss = ce + gamma * mi
    grads = torch.autograd.grad(loss, gate_params)
    for p, g in zip(gate_params, grads):
        p.grad = g
    head_loss = 0.0
    for i, h in enumerate(privacy_heads):  # head i reads attribute i % A (several heads per attribute allowed)
        col = cols[i % len(cols)]
        for p in h.parameters():
            p.grad = None
        hl = F.cross_entropy(h(zd), col)
        hl.backward()
        head_loss += float(hl.detach())
    return {
        "loss": float(loss.detach()),
        "ce": float(ce.detach()),
        "mi": float(mi.detach()),
        "head_loss": head_loss,
        "z": zd,
    }
