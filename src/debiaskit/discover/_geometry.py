"""Attractor geometry at the bottleneck (VCBA, Nahon et al. ICCV 2023).

The centroids of correctly classified samples carry the dominant (bias) component of the features
and act as attractors: a bias-conflicting sample falls into the Voronoi cell of the class whose bias
it carries. For a sample z with target y and a centroid pair (c_y, c_j), the bisecting hyperplane
is ``w.z + off = 0`` with ``w = c_j - c_y`` and ``off = (|c_y|^2 - |c_j|^2) / 2``; its signed,
normalised distance

    d_j(z) = (w.z + off) / (|w|^2 / 2)

is -1 at c_y, 0 on the hyperplane and +1 at c_j (positive: z is nearer to c_j than to c_y).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..errors import ConfigError


class Attraction(NamedTuple):
    """Per-sample output of the attractor rule.

    ``pseudo_bias``: the attracting class b^ (nearest centroid); ``conflict_score``: d_{b^}(z) > 0 for
    a sample pulled out of its own class's cell, ``-margin`` (<= 0) for a sample inside it;
    ``confidence``: |conflict_score| (normalised distance to the deciding hyperplane).
    """

    pseudo_bias: Tensor
    conflict_score: Tensor
    confidence: Tensor

    @property
    def conflicting(self) -> Tensor:
        return self.conflict_score > 0


def class_centroids(z: Tensor, y: Tensor, *, num_classes: int, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Mean bottleneck vector per class over the samples in ``mask`` (e.g. correctly classified).

    Returns ``(centroids (K, d), present (K,) bool)``; absent classes get a zero row.

    Example::

        c, present = class_centroids(z, y, num_classes=10, mask=pred == y)
    """
    z = z.detach().float()
    keep = torch.ones(len(y), dtype=torch.bool, device=z.device) if mask is None else mask.bool()
    onehot = torch.nn.functional.one_hot(y[keep].long(), num_classes).to(z.dtype)
    counts = onehot.sum(0)
    sums = onehot.T @ z[keep]
    present = counts > 0
    return sums / counts.clamp(min=1)[:, None], present


def attractor_rule(z: Tensor, y: Tensor, centroids: Tensor, *, present: Tensor | None = None) -> Attraction:
    """Apply the attractor rule to samples ``z`` (N, d) with targets ``y`` given class ``centroids``.

    Classes without a centroid (``present`` False) attract nothing. A sample whose own class has no
    centroid gets conflict score 0 and its nearest present centroid as b^.

    Example::

        att = attractor_rule(z, y, c)
        att.pseudo_bias[att.conflicting]   # the class each flagged sample is pulled towards
    """
    if z.ndim != 2 or centroids.ndim != 2 or z.shape[1] != centroids.shape[1]:
        raise ConfigError(
            f"z (N, d) and centroids (K, d) must share d, got {tuple(z.shape)} and {tuple(centroids.shape)}"
        )
    z, c = z.detach().float(), centroids.detach().float()
    k = c.shape[0]
    present = torch.ones(k, dtype=torch.bool, device=z.device) if present is None else present.bool()
    if not present.any():
        raise ConfigError("no class has a centroid yet (no correctly classified sample)")
    y = y.long()
    # d_j for every class j against the sample's own class y
    # w.z + off = c_j.z - c_y.z + (|c_y|^2 - |c_j|^2)/2, computed from Gram matrices (no (N, K, d) tensor)
    g = z @ c.T  # (N, K)
    sq = c.pow(2).sum(1)  # |c_k|^2
    cc = c @ c.T
    num = g - g.gather(1, y[:, None]) + (sq[y][:, None] - sq[None, :]) / 2
    half_sq = (sq[None, :] + sq[y][:, None] - 2 * cc[y]) / 2  # |c_j - c_y|^2 / 2
    d = num / half_sq.clamp(min=1e-12)
    own = torch.nn.functional.one_hot(y, k).bool()
    d = d.masked_fill(own | ~present[None, :], float("-inf"))
    dist = torch.cdist(z, c).masked_fill(~present[None, :], float("inf"))
    pseudo = dist.argmin(1)
    own_present = present[y]
    # pulled out: the score against the attracting class; inside: minus the margin to the nearest foreign cell
    pulled = pseudo != y
    score_out = d.gather(1, pseudo[:, None])[:, 0]
    score_in = d.max(1).values
    score = torch.where(pulled, score_out, score_in)
    score = torch.where(own_present, score, torch.zeros_like(score))
    score = torch.nan_to_num(score, neginf=-1.0, posinf=1.0)
    return Attraction(pseudo_bias=pseudo, conflict_score=score, confidence=score.abs())


class RunningCentroids(nn.Module):
    """EMA class centroids of correctly classified samples, updated batch by batch.

    ``c_k <- m c_k + (1 - m) mean(z_i : y_i = k, pred_i = k)``; the first batch that has class k sets c_k.

    Example::

        rc = RunningCentroids(num_classes=10, momentum=0.9)
        rc.update(z, y, correct=logits.argmax(1) == y)
        att = attractor_rule(z, y, rc.centroids, present=rc.present)
    """

    centroids: Tensor | None  # buffers (registered below): None until the first update
    present: Tensor

    def __init__(self, *, num_classes: int, momentum: float = 0.9) -> None:
        super().__init__()  # a module: its centroids are buffers of the method that holds it (checkpoints)
        if not 0 <= momentum < 1:
            raise ConfigError(f"centroid momentum must lie in [0, 1), got {momentum}")
        self.num_classes, self.momentum = num_classes, momentum
        self.register_buffer("centroids", None)
        self.register_buffer("present", torch.zeros(num_classes, dtype=torch.bool))

    @torch.no_grad()
    def update(self, z: Tensor, y: Tensor, *, correct: Tensor) -> None:
        means, has = class_centroids(z, y, num_classes=self.num_classes, mask=correct)
        if self.centroids is None:
            self.centroids = torch.zeros_like(means)
            self.present = self.present.to(means.device)
        fresh = has & ~self.present
        blend = has & self.present
        self.centroids[fresh] = means[fresh]
        self.centroids[blend] = self.momentum * self.centroids[blend] + (1 - self.momentum) * means[blend]
        self.present |= has

    @property
    def ready(self) -> bool:
        return self.centroids is not None and bool(self.present.any())
