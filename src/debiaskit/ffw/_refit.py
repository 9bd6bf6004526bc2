"""Refit the head on D^u_train after the gates and the eraser (``FFWConfig.refit_head``, on by default).

Why: the gates keep the vanilla model's head, which was fitted to the *biased* training features; once the gates
(and the eraser) have changed the bottleneck, that head is no longer the best linear read-out of the task there.
Re-fitting the last layer on a small bias-balanced set is the known cheap repair (DFR, Kirichenko et al., ICLR
2023); D^u_train is such a set and FFW already holds it. Measured (docs/design/ffw-defaults.md): +0.6 to +5 points
of task accuracy for seconds of compute, and the bottleneck - what the probes read - is not touched, so the bias
readability of the exported model is unchanged.

How: the head's parameters minimise the group-balanced cross-entropy on the D^u_train bottleneck plus lam times a
penalty, full batch with L-BFGS in float32, for each lam of a grid: a Linear head as DFR does (logistic regression
on standardised features from zero, ridge on the standardised weights), any other head (an MLP, ...) from where it
was, pulled back there (``lam * ||theta - theta_0||^2``): see :class:`_Problem`. The lam with the best D^u_val
task accuracy is kept, and only if it beats the head as it was on D^u_val (ties keep the original head): no test
data, no threshold. A head the gates pruned (``include_head``) keeps its zeros: ``keep_zeros``.
"""

from __future__ import annotations

import copy
import time
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from ..audit import logits_accuracy

REFIT_GRID = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5)  # strongest regularisation first (ties keep the stronger)
REFIT_MAX_ITER = 100  # converged: the same D^u_val choice as 300 on the Table 2 folders, in half the time


def group_balanced_weights(y: Tensor, b: Tensor) -> Tensor:
    """Per-sample weights that give every (target, bias) group the same total weight (mean weight 1)."""
    keys = torch.cat([y.view(-1, 1), b.view(len(y), -1)], dim=1).long()
    _, group, counts = torch.unique(keys, dim=0, return_inverse=True, return_counts=True)
    weights = 1.0 / counts[group].float()
    return weights * (len(weights) / weights.sum())


class _Problem:
    """How one head is refit: its parameters' start, their fixed zeros, the logits they give, their penalty.

    A Linear head (the common case) is refit as DFR does: a logistic regression on features standardised with
    D^u_train's statistics, started at zero, ridge lam on the standardised weights (every feature on one scale,
    so one lam grid fits any bottleneck). Any other head (an MLP, ...): all its parameters, started where they
    were and pulled back there with lam."""

    def __init__(self, head: nn.Module, z: Tensor, *, keep_zeros: bool) -> None:
        self.head, self.linear = head, isinstance(head, nn.Linear)
        mask = (lambda p: (p != 0).float()) if keep_zeros else (lambda p: torch.ones_like(p, dtype=torch.float))
        if isinstance(head, nn.Linear):  # self.linear
            self.mean, self.std = z.mean(0), z.std(0).clamp_min(1e-8)
            weight = head.weight.detach().float()
            self.start = {"weight": torch.zeros_like(weight), "bias": torch.zeros(weight.shape[0], dtype=torch.float)}
            has_bias = torch.ones if head.bias is not None else torch.zeros  # no bias to fit: it stays 0
            self.keep = {"weight": mask(weight), "bias": has_bias(weight.shape[0], dtype=torch.float)}
        else:
            self.start = {n: p.detach().float() for n, p in head.named_parameters()}
            self.keep = {n: mask(p) for n, p in self.start.items()}

    def inputs(self, z: Tensor) -> Tensor:
        """What :meth:`logits` reads: a Linear head's standardised features (computed once per split, not at
        every L-BFGS evaluation), any other head's own input."""
        return (z - self.mean) / self.std if self.linear else z

    def logits(self, params: dict[str, Tensor], u: Tensor) -> Tensor:
        if self.linear:
            return u @ params["weight"].T + params["bias"]
        return functional_call(self.head, params, (u,))

    def penalty(self, params: dict[str, Tensor]) -> Tensor:
        if self.linear:
            return (params["weight"] ** 2).sum()
        return cast(Tensor, sum(((params[n] - self.start[n]) ** 2).sum() for n in params))

    def head_parameters(self, params: dict[str, Tensor]) -> dict[str, Tensor]:
        """The fitted parameters in the head's own terms (a Linear's standardisation folded into its weights)."""
        if not self.linear:
            return params
        weight = params["weight"] / self.std
        bias = params["bias"] - weight @ self.mean
        return {"weight": weight, "bias": bias} if self.head.bias is not None else {"weight": weight}


def _fit(problem: _Problem, u: Tensor, y: Tensor, weights: Tensor, lam: float) -> dict[str, Tensor]:
    """Parameters after full-batch L-BFGS on the group-balanced cross-entropy + lam * penalty (``u``: the
    problem's :meth:`~_Problem.inputs`)."""
    keep, free = problem.keep, {n: p.clone().requires_grad_(True) for n, p in problem.start.items()}
    opt = torch.optim.LBFGS(
        list(free.values()),
        max_iter=REFIT_MAX_ITER,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
        history_size=20,
    )

    def loss() -> Tensor:
        opt.zero_grad()
        params = {n: free[n] * keep[n] for n in free}
        ce = (F.cross_entropy(problem.logits(params, u), y, reduction="none") * weights).mean()
        value = ce + lam * problem.penalty(params)
        value.backward()
        return value

    opt.step(loss)
    return {n: (free[n] * keep[n]).detach() for n in free}


def refit_head(
    head: nn.Module,
    *,
    train_z: Tensor,
    train_y: Tensor,
    train_b: Tensor,
    val_z: Tensor,
    val_y: Tensor,
    keep_zeros: bool = False,
    grid: tuple[float, ...] = REFIT_GRID,
    fits: dict[float, dict[str, Tensor]] | None = None,
) -> dict[str, Any]:
    """Refit ``head`` (in place) on the D^u_train bottleneck, keep it only if D^u_val task accuracy improves.

    ``train_z`` / ``val_z``: the head's inputs (the bottleneck, after the eraser if any); ``train_b``: the bias
    labels, (N,) or (N, A), for the group balance; ``keep_zeros``: weights that are exactly zero (pruned) stay
    zero. ``fits``: lam -> parameters already fitted to these same inputs and head (reused, not refitted);
    every new fit is added to it. Returns what was done: the D^u_val task accuracy of the
    original head and of every lam, the lam kept (None: the original head kept)."""
    start_time = time.perf_counter()
    first = next(head.parameters(), None)
    if first is None:
        raise ValueError("the head has no parameters to refit")
    device, dtype = first.device, first.dtype
    # the fit in float32 on the CPU: small, deterministic; float64 took twice the time and chose the same lambda on
    # 22 of 24 Table 2 folders, D^u_val within 0.2 points (docs/design/ffw-defaults.md)
    work = copy.deepcopy(head).float().cpu().eval()
    z, zv = train_z.flatten(1).float().cpu(), val_z.flatten(1).float().cpu()
    y, yv = train_y.long().cpu(), val_y.long().cpu()
    weights = group_balanced_weights(y, train_b.cpu())
    problem = _Problem(work, z, keep_zeros=keep_zeros)
    with torch.no_grad():
        before = logits_accuracy(work(zv), yv)
    u, uv = problem.inputs(z), problem.inputs(zv)
    fits = {} if fits is None else fits
    tried, best, best_params, kept = [], before, None, None
    for lam in grid:
        if lam not in fits:
            fits[lam] = _fit(problem, u, y, weights, lam)
        params = fits[lam]
        with torch.no_grad():
            acc = logits_accuracy(problem.logits(params, uv), yv)
            train_acc = logits_accuracy(problem.logits(params, u), y)
        tried.append({"lam": lam, "val_task": acc, "train_task": train_acc})
        if acc > best:  # strictly better on D^u_val, else the stronger regularisation (earlier lam) or the original
            best, best_params, kept = acc, params, lam
    if best_params is not None:
        fitted = problem.head_parameters(best_params)
        with torch.no_grad():
            for name, p in head.named_parameters():
                p.copy_(fitted[name].to(device=device, dtype=dtype))
    return {
        "kind": "linear-dfr" if problem.linear else "pull-to-start",
        "kept_lam": kept,
        "val_task_before": before,
        "val_task_after": best,
        "grid": tried,
        "train_samples": int(len(y)),
        "time_s": time.perf_counter() - start_time,
    }
