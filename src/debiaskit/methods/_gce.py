"""Generalised cross-entropy (Zhang & Sabuncu 2018), the loss of LfF's and DCWP's biased models."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def gce_loss(logits: Tensor, y: Tensor, *, q: float = 0.7, reduction: str = "mean") -> Tensor:
    """GCE written as ``CE * p_y^q`` with ``p_y^q`` detached.

    Its gradient is ``-p_y^(q-1) grad p_y``, exactly the gradient of ``(1 - p_y^q) / q``, but the
    value stays that of a (re-weighted) cross-entropy, which is numerically tamer for p_y -> 0. The
    LfF public code multiplies by an extra ``q`` (a rescaled learning rate); we follow the formula.
    Samples the model already finds easy (large p_y) weigh more: the model latches onto the bias.

    Example::

        loss = gce_loss(biased_model(x), y, q=0.7)
    """
    if not 0 < q <= 1:
        raise ValueError(f"GCE needs q in (0, 1], got {q}")
    ce = F.cross_entropy(logits, y, reduction="none")
    p_y = logits.softmax(1).gather(1, y[:, None]).squeeze(1)
    loss = ce * p_y.detach().pow(q)
    if reduction == "none":
        return loss
    return loss.mean() if reduction == "mean" else loss.sum()


def gce_reference(logits: Tensor, y: Tensor, *, q: float = 0.7) -> Tensor:
    """The textbook GCE value ``mean((1 - p_y^q) / q)`` (used to check :func:`gce_loss`'s gradient)."""
    p_y = logits.softmax(1).gather(1, y[:, None]).squeeze(1)
    return ((1 - p_y.pow(q)) / q).mean()
