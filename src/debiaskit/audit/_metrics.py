"""Bias metrics: group accuracies, both averaging conventions, and normalised empirical MI."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


def normalized_mutual_information(probs: Tensor, b: Tensor, num_bias: int, *, eps: float = 1e-15) -> Tensor:
    """Normalised empirical MI between bias labels ``b`` and soft predictions ``probs`` (N x N_B).

    joint = clamp(onehot(b)^T probs, eps) / N, r / c its row / column sums;
    MI = sum(joint * log(joint / outer(r, c))) / log(N_B), in [0, 1]. Differentiable in ``probs`` (FFW's
    information term, eq. 7 of Nahon et al.; IRENE's and VCBA's too).

    Evaluated as ``joint * (log joint - log r - log c)``: the literal ``log(joint / outer(r, c))`` has the
    backward factor joint / marg**2, and marg underflows in float32 when a bias class is missing from a
    batch and a confident head leaves a column near the clamp floor - inf * 0 = NaN gradients (seen in FFW
    on colored-mnist and in IRENE on biased-mnist). In log space every gradient is bounded by |log eps| + 1.
    """
    if num_bias < 2:
        raise ValueError("mutual information needs at least two bias classes")
    onehot = torch.nn.functional.one_hot(b.long(), num_bias).to(probs.dtype)
    joint = torch.clamp(onehot.T @ probs, min=eps) / probs.shape[0]
    log_ratio = joint.log() - joint.sum(1, keepdim=True).log() - joint.sum(0, keepdim=True).log()
    return (joint * log_ratio).sum() / math.log(num_bias)


@dataclass
class GroupMetrics:
    """Accuracy of predictions broken down by target x bias group (one bias attribute)."""

    accuracy: float  # sample-weighted (plain accuracy)
    group_accuracy: list[list[float]]  # [y][b], NaN for empty groups
    group_counts: list[list[int]]
    worst_group_accuracy: float  # min over non-empty groups
    worst_group: tuple[int, int]
    mean_group_accuracy: float  # unweighted mean over non-empty groups
    aligned_accuracy: float | None = None
    conflicting_accuracy: float | None = None
    aligned_count: int = 0
    conflicting_count: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def group_metrics(
    pred: Tensor, y: Tensor, b: Tensor, *, num_classes: int, num_bias: int, aligned: Tensor | None = None
) -> GroupMetrics:
    """Group accuracies of predictions ``pred`` against targets ``y`` with bias labels ``b``.

    Conventions: ``accuracy`` weights samples equally; ``mean_group_accuracy`` weights the non-empty
    (y, b) groups equally; ``worst_group_accuracy`` is the minimum over non-empty groups.
    """
    correct = (pred == y).float()
    flat = y.long() * num_bias + b.long()
    counts = torch.bincount(flat, minlength=num_classes * num_bias).view(num_classes, num_bias)
    hits = torch.bincount(flat, weights=correct, minlength=num_classes * num_bias).view(num_classes, num_bias)
    acc = torch.where(counts > 0, hits / counts.clamp(min=1), torch.full_like(hits, float("nan")))
    nonempty = counts > 0
    if not nonempty.any():
        raise ValueError("no samples to evaluate")
    masked = torch.where(nonempty, acc, torch.full_like(acc, float("inf")))
    worst = int(masked.argmin())
    out = GroupMetrics(
        accuracy=float(correct.mean()),
        group_accuracy=acc.tolist(),
        group_counts=counts.tolist(),
        worst_group_accuracy=float(masked.min()),
        worst_group=(worst // num_bias, worst % num_bias),
        mean_group_accuracy=float(acc[nonempty].mean()),
    )
    if aligned is not None:
        aligned = aligned.bool()
        out.aligned_count, out.conflicting_count = int(aligned.sum()), int((~aligned).sum())
        out.aligned_accuracy = float(correct[aligned].mean()) if out.aligned_count else float("nan")
        out.conflicting_accuracy = float(correct[~aligned].mean()) if out.conflicting_count else float("nan")
    return out


CHANCE_MARGIN = 0.02  # the near-chance floor's smallest margin above max(chance, majority rate): 2 points


def chance_floor(y: Tensor, num_classes: int, *, margin: float = CHANCE_MARGIN) -> dict[str, float]:
    """The accuracy a model must clear on labels ``y`` to read more than a constant answer does:
    ``floor = base + max(margin, 2 * sqrt(base * (1 - base) / n))`` with ``base = max(1 / C, majority-class rate)``
    (the second term: two standard errors of a constant predictor's accuracy on n samples). Used by FFW's do-no-harm
    rule (on D^u_val) and CALM's guard (on held-out D^b), so that neither hands back a collapsed model.

    Example:
        >>> chance_floor(torch.tensor([0, 0, 0, 1]), 2)["floor"] > 0.75
        True
    """
    rate = float(torch.bincount(y.long().cpu(), minlength=num_classes).max()) / len(y)
    base = max(1.0 / num_classes, rate)
    extra = max(margin, 2 * math.sqrt(base * (1 - base) / len(y)))
    return {"chance": 1.0 / num_classes, "majority_rate": rate, "base": base, "margin": extra, "floor": base + extra}
