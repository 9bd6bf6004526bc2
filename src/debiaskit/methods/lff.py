"""LfF - Learning from Failure (Nam et al., NeurIPS 2020).

Two models trained together on D^b, no bias labels: a biased model f_B trained with generalised
cross-entropy (it latches onto the easy shortcut) and the debiased model f_D trained with a
per-sample weight W(x) = L_B / (L_B + L_D + 1e-8), where L_B, L_D are per-sample exponential
moving averages (alpha) of each model's cross-entropy, normalised by the per-class maximum.
Samples the biased model fails on (bias-conflicting ones) get W close to 1, aligned ones close to 0.

Under torchrun: both EMAs and the label table are updated on every rank from the global batch (the
per-sample losses and indices are all-gathered), so W is the same everywhere; f_D is DDP-wrapped and
f_B's gradients are averaged over ranks before its step.

Example::

    from debiaskit.methods import build_method
    method, cfg = build_method("lff", dataset="colored-mnist")
    result = fit(model, splits.train, method=method, config=TrainConfig(epochs=10))
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data import Batch
from ..errors import ConfigError
from ..train import TrainContext, TrainingMethod, make_optimizer
from ._common import fresh_copy
from ._gce import gce_loss
from ._registry import Default, MethodInfo, register_method


class SampleEMA(nn.Module):
    """Per-sample exponential moving average of a loss (LfF's ``EMA`` class, seeded by the first value);
    its values are buffers, so they are part of the method's ``state_dict``."""

    def __init__(self, n: int, *, alpha: float) -> None:
        super().__init__()
        self.alpha = alpha
        self.register_buffer("value", torch.zeros(n))
        self.register_buffer("seen", torch.zeros(n, dtype=torch.bool))

    def update(self, index: Tensor, loss: Tensor) -> None:
        index, loss = index.cpu(), loss.detach().float().cpu()
        old = self.value[index]
        self.value[index] = torch.where(self.seen[index], self.alpha * old + (1 - self.alpha) * loss, loss)
        self.seen[index] = True

    def class_max(self, labels: Tensor, num_classes: int) -> Tensor:
        """Max EMA among seen samples of each class (1 for classes not seen yet)."""
        out = torch.ones(num_classes)
        vals = torch.where(self.seen, self.value, torch.zeros_like(self.value))
        out = out.scatter_reduce(0, labels, vals, reduce="amax", include_self=False)
        return out.clamp(min=1e-8)


def relative_difficulty(loss_b: Tensor, loss_d: Tensor) -> Tensor:
    """LfF's weight W = L_B / (L_B + L_D + 1e-8), in [0, 1]."""
    return loss_b / (loss_b + loss_d + 1e-8)


class LfF(TrainingMethod):
    def __init__(self, *, q: float = 0.7, ema_alpha: float = 0.7) -> None:
        super().__init__()
        if not 0 < q <= 1 or not 0 <= ema_alpha < 1:
            raise ConfigError(f"lff needs q in (0, 1] and ema_alpha in [0, 1), got q={q}, ema_alpha={ema_alpha}")
        self.q, self.ema_alpha = q, ema_alpha
        self.register_buffer("labels", None)  # the target of every training sample seen so far

    def setup(self, ctx: TrainContext) -> None:
        self.biased = fresh_copy(ctx.unwrapped, seed=ctx.config.seed + 1).to(ctx.device).train()
        self.optimizer = make_optimizer(ctx.model.parameters(), ctx.config)
        self.optimizer_b = make_optimizer(self.biased.parameters(), ctx.config)
        n = len(ctx.train_data)
        self.ema_b = SampleEMA(n, alpha=self.ema_alpha)
        self.ema_d = SampleEMA(n, alpha=self.ema_alpha)
        self.labels = torch.zeros(n, dtype=torch.long)
        self.num_classes = ctx.num_classes

    def weights(self, index: Tensor | None = None) -> Tensor:
        """Current W of the samples ``index`` (all seen samples by default)."""
        lb_max = self.ema_b.class_max(self.labels, self.num_classes)
        ld_max = self.ema_d.class_max(self.labels, self.num_classes)
        index = torch.arange(len(self.labels)) if index is None else index.cpu()
        lab = self.labels[index]
        return relative_difficulty(self.ema_b.value[index] / lb_max[lab], self.ema_d.value[index] / ld_max[lab])

    def training_step(self, batch: Batch, ctx: TrainContext) -> dict[str, float]:
        logits_d = ctx.model(batch.x)
        logits_b = self.biased(batch.x)
        ce_d = F.cross_entropy(logits_d, batch.y, reduction="none")
        ce_b = F.cross_entropy(logits_b, batch.y, reduction="none")
        index, y, seen_b, seen_d = ctx.gather(batch.index.to(batch.y.device), batch.y, ce_b.detach(), ce_d.detach())
        self.labels[index.cpu()] = y.cpu()  # the global batch: the same state on every rank
        self.ema_b.update(index, seen_b)
        self.ema_d.update(index, seen_d)
        w = self.weights(batch.index).to(ctx.device)
        loss_d = (ce_d * w).mean()
        loss_b = gce_loss(logits_b, batch.y, q=self.q)
        self.optimizer.zero_grad(set_to_none=True)
        self.optimizer_b.zero_grad(set_to_none=True)
        ctx.backward(loss_d + loss_b)  # the two models share no parameters: one backward updates both
        ctx.sync_grads(self.biased)
        ctx.step_optimizer(self.optimizer)
        ctx.step_optimizer(self.optimizer_b)
        return {
            "loss": float(loss_d.detach()),
            "loss_biased": float(loss_b.detach()),
            "weight_mean": float(w.mean()),
            "acc": float((logits_d.argmax(1) == batch.y).float().mean()),
            "acc_biased": float((logits_b.argmax(1) == batch.y).float().mean()),
        }

    def state(self) -> dict[str, Any]:
        return {"q": self.q, "ema_alpha": self.ema_alpha}


_PAPER = "paper (Nam et al. 2020) and its public code"
register_method(
    MethodInfo(
        name="lff",
        description="Learning from Failure: GCE-biased model + relative-difficulty weights",
        factory=LfF,
        reference="Nam et al., NeurIPS 2020",
        defaults={"*": {"q": Default(0.7, _PAPER), "ema_alpha": Default(0.7, _PAPER)}},
    )
)
