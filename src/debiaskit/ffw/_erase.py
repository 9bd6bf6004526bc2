"""Closed-form linear erasure of the bias at the bottleneck, after the gates (``FFWConfig.erase="linear"``).

Measured (docs/design/ffw-defaults.md): FFW's gates remove most of what an MLP probe reads, but the bias-class means
of the bottleneck features still differ along low-variance directions, and a linear probe trained to convergence
reads them (37-49 % on Biased MNIST, chance 10 %). The gates fit these means on D^u_train only approximately; a
closed-form map does it exactly. LEACE (least-squares concept erasure, Belrose et al., NeurIPS 2023):

    r(z) = z - W^+ P W (z - mu),   W = Sigma^-1/2,   P = orthogonal projection onto the column space of W Sigma_zb

(Sigma the covariance of z, Sigma_zb its cross-covariance with onehot(b), on D^u_train). After r every bias class has
the same mean on D^u_train, so no linear classifier reads b better than a constant there (linear guardedness), and
r is the smallest such affine change in the Mahalanobis metric: directions that do not covary with b are left alone,
so the task usually loses (almost) nothing. It has rank <= K - 1 per attribute and is fitted in one pass, no
training. It is inserted in front of the head as a module (:class:`ErasedHead`): the exported network's bottleneck
(the input of ``<head>.head``) is the erased one, which is what the audit and the probes read.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._adversary import bias_columns

ERASERS = {
    "linear": "closed-form linear concept erasure (LEACE) of the bias at the bottleneck, fitted on D^u_train after "
    "the gates (a module in front of the head)",
    "conditional": "'linear', plus the strongest directions along which the bias classes' means still differ within "
    "a target class (what a non-linear probe reads): as many as D^u_val task accuracy allows "
    "(one-standard-error rule)",
    "none": "no eraser: the exported network is the pruned sub-network alone",
}
INNER_HEAD = "head"  # the original head inside ErasedHead: the exported model's head is f"{head}.{INNER_HEAD}"


class LinearEraser(nn.Module):
    """z -> z - (z - mean) P^T on the flattened features (buffers only: nothing to train)."""

    mean: Tensor  # buffers (registered below): typed here, nn.Module's attribute lookup is not
    proj: Tensor

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("proj", torch.zeros(dim, dim))

    def forward(self, z: Tensor) -> Tensor:
        flat = z.flatten(1)
        return (flat - (flat - self.mean) @ self.proj.T).view_as(z)


class ErasedHead(nn.Module):
    """The original head behind a :class:`LinearEraser`; the bottleneck is the input of ``.head``."""

    def __init__(self, eraser: LinearEraser, head: nn.Module) -> None:
        super().__init__()
        self.eraser = eraser
        self.head = head

    def forward(self, z: Tensor) -> Tensor:
        return self.head(self.eraser(z))


def _bias_onehot(b: Tensor, num_bias: int | Sequence[int]) -> Tensor:
    """onehot(b) of every attribute side by side, each with its own number of classes."""
    cols = bias_columns(b)
    cards = [int(k) for k in num_bias] if isinstance(num_bias, Sequence) else [int(num_bias)] * len(cols)
    if len(cards) != len(cols):
        raise ValueError(f"one number of bias classes per attribute: {len(cols)} attributes, got {len(cards)}")
    return torch.cat([F.one_hot(c.long(), k).double() for c, k in zip(cols, cards)], dim=1)


def _leace_basis(xc: Tensor, onehot: Tensor, rel_eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """Whitening W, its inverse, and the orthonormal basis of W Sigma_zb (columns by decreasing singular value)
    for centred features ``xc`` and label columns ``onehot`` (float64)."""
    cov = xc.T @ xc / len(xc)
    cross = xc.T @ (onehot - onehot.mean(0)) / len(xc)
    evals, evecs = torch.linalg.eigh(cov)
    keep = evals > rel_eps * evals.max().clamp_min(1e-300)
    u, ev = evecs[:, keep], evals[keep]
    whiten, unwhiten = u @ torch.diag(ev.rsqrt()) @ u.T, u @ torch.diag(ev.sqrt()) @ u.T
    basis, sing, _ = torch.linalg.svd(whiten @ cross, full_matrices=False)
    return whiten, unwhiten, basis[:, sing > 1e-10 * sing.max().clamp_min(1e-300)]


def _eraser(mean: Tensor, proj: Tensor, xc: Tensor) -> tuple[LinearEraser, float]:
    """The module for r(z) = z - (z - mean) proj^T, and the share of the variance of ``xc`` it removes."""
    eraser = LinearEraser(len(mean))
    eraser.mean.copy_(mean.float())
    eraser.proj.copy_(proj.float())
    return eraser, float((xc @ proj.T).pow(2).sum() / xc.pow(2).sum().clamp_min(1e-300))


@torch.no_grad()
def fit_linear_eraser(
    z: Tensor, b: Tensor, num_bias: int | Sequence[int], *, rel_eps: float = 1e-6
) -> tuple[LinearEraser, dict[str, Any]]:
    """LEACE fitted on (z, b) (float64): the eraser and what it did (rank, share of the variance it removed).

    ``b``: (N,) or (N, A) bias labels (every attribute is erased); ``num_bias``: one number of classes for
    every attribute, or one per attribute (the data's ``bias_cardinalities``). Directions of z with variance
    below ``rel_eps`` x the largest are treated as constant (pseudo-inverse square root)."""
    x = z.flatten(1).double()
    mean = x.mean(0)
    xc = x - mean
    whiten, unwhiten, basis = _leace_basis(xc, _bias_onehot(b, num_bias), rel_eps)
    eraser, removed = _eraser(mean, unwhiten @ basis @ basis.T @ whiten, xc)
    return eraser, {"rank": int(basis.shape[1]), "variance_removed": removed}


def _within_target_onehot(y: Tensor, b: Tensor, num_bias: int | Sequence[int]) -> Tensor:
    """onehot(b) centred within each target class, one block of columns per class: its cross-covariance with z is
    how far each bias class's mean lies from its target class's mean."""
    onehot = _bias_onehot(b, num_bias)
    classes = torch.unique(y)
    cols = torch.zeros(len(y), len(classes) * onehot.shape[1], dtype=torch.double)
    for i, c in enumerate(classes):
        rows = y == c
        block = onehot[rows]
        cols[rows, i * onehot.shape[1] : (i + 1) * onehot.shape[1]] = block - block.mean(0)
    return cols


@torch.no_grad()
def conditional_erasers(
    z: Tensor, y: Tensor, b: Tensor, num_bias: int | Sequence[int], *, ranks: Sequence[int], rel_eps: float = 1e-6
) -> list[tuple[LinearEraser, dict[str, Any]]]:
    """The linear eraser followed by the ``k`` strongest within-target bias directions, for every ``k`` of
    ``ranks`` (clipped to how many there are; k = 0 is the linear eraser alone): candidates, erasing more and more.

    After the linear eraser every bias class has the same mean, but within a target class the bias classes' means
    can still differ - a non-linear probe reads the bias there (find the class, then look along that class's bias
    direction). LEACE of the within-target-centred one-hot removes those directions; all of them (up to
    classes x (K - 1)) can take much of the task with them, hence ranked candidates, chosen on D^u_val by the
    caller. The composed map is still an affine eraser r(z) = z - (z - mean) P^T (P = P1 + P2 - P2 P1), so every
    bias class keeps the same mean on D^u_train (linear guardedness)."""
    x = z.flatten(1).double()
    mean = x.mean(0)
    xc = x - mean
    whiten, unwhiten, basis = _leace_basis(xc, _bias_onehot(b, num_bias), rel_eps)
    p1 = unwhiten @ basis @ basis.T @ whiten
    x1 = xc - xc @ p1.T  # after the linear eraser (its mean is still ``mean``)
    w2, u2, basis2 = _leace_basis(x1, _within_target_onehot(y.long(), b, num_bias), rel_eps)
    out = []
    for k in sorted({min(int(k), basis2.shape[1]) for k in ranks}):
        p2 = u2 @ basis2[:, :k] @ basis2[:, :k].T @ w2
        eraser, removed = _eraser(mean, p1 + p2 - p2 @ p1, xc)
        out.append(
            (
                eraser,
                {
                    "rank": int(basis.shape[1]) + k,
                    "within_target_rank": k,
                    "within_target_available": int(basis2.shape[1]),
                    "variance_removed": removed,
                },
            )
        )
    return out


def attach_eraser(model: nn.Module, head: str, eraser: LinearEraser) -> str:
    """Put ``eraser`` in front of the module ``head`` of ``model`` (in place); returns the new head name."""
    model.set_submodule(head, ErasedHead(eraser, model.get_submodule(head)))
    new = f"{head}.{INNER_HEAD}"
    if isinstance(getattr(model, "head_name", None), str):  # zoo models name their head: keep it pointing right
        setattr(model, "head_name", new)  # noqa: B010 - a plain attribute (nn.Module's __setattr__ types tensors)
    return new


def attach_empty_eraser(model: nn.Module, record: dict[str, Any]) -> str:
    """Rebuild the eraser slot recorded in an FFW folder (``record``: ffw.json's ``model.eraser``) before its
    weights are loaded into ``model``."""
    return attach_eraser(model, record["head"], LinearEraser(int(record["dim"])))
