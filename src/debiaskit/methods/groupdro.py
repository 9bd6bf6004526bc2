"""GroupDRO (Sagawa et al., ICLR 2020): the supervised reference; it USES bias labels.

Groups are (target, bias) pairs - (y, b) for one bias attribute, (y, aligned-pattern) for several.
Online group weights q (exponentiated gradient, step ``eta``) follow the groups with the largest
loss; the model minimises sum_g q_g L_g. Model selection: worst-group accuracy on D^u_val.

Example::

    method, cfg = build_method("groupdro", dataset="biased-mnist")
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data import Batch
from ..errors import ConfigError
from ..train import TrainContext, TrainingMethod, make_optimizer
from ._registry import Default, MethodInfo, register_method


def group_ids(y: Tensor, b: Tensor, *, num_classes: int, num_bias: int) -> tuple[Tensor, int]:
    """Group index per sample and the number of groups."""
    if b.ndim == 1:
        return y * num_bias + b, num_classes * num_bias
    aligned = (b == (y % num_bias)[:, None]).long()               # (N, A)
    pattern = (aligned * (2 ** torch.arange(b.shape[1], device=b.device))).sum(1)
    return y * 2 ** b.shape[1] + pattern, num_classes * 2 ** b.shape[1]


def update_group_weights(q: Tensor, group_loss: Tensor, *, eta: float) -> Tensor:
    """Exponentiated-gradient ascent on the group weights: q_g <- q_g exp(eta L_g), renormalised.
    Absent groups carry L_g = 0 and keep their relative weight."""
    q = q * torch.exp(eta * group_loss.detach())
    return q / q.sum()


class GroupDRO(TrainingMethod):
    def __init__(self, *, eta: float = 0.01) -> None:
        super().__init__()
        if not eta > 0:
            raise ConfigError(f"groupdro needs eta > 0, got {eta}")
        self.eta = eta
        self.register_buffer("q", None)   # online group weights

    def setup(self, ctx: TrainContext) -> None:
        data = ctx.train_data
        if getattr(data, "b", "missing") is None:
            raise ConfigError("groupdro needs bias labels on the training data (it is the supervised reference); "
                              "this dataset has none - use a label-free method (lff, jtt, dcwp) instead")
        self.num_bias = getattr(data, "num_bias_classes", ctx.num_classes)
        self.num_classes = ctx.num_classes
        n_attr = 1 if getattr(data, "b", None) is None or data.b.ndim == 1 else data.b.shape[1]
        self.num_groups = ctx.num_classes * (self.num_bias if n_attr == 1 else 2 ** n_attr)
        self.q = torch.full((self.num_groups,), 1.0 / self.num_groups, device=ctx.device)
        self.optimizer = make_optimizer(ctx.model.parameters(), ctx.config)

    def training_step(self, batch: Batch, ctx: TrainContext) -> dict[str, float]:
        """One step. Under torchrun the group counts and losses are summed over ranks (the global batch), so
        q is updated identically on every rank, and each rank's loss uses the global counts."""
        if batch.b is None:
            raise ConfigError("groupdro needs bias labels, but this batch has none")
        g, _ = group_ids(batch.y, batch.b, num_classes=self.num_classes, num_bias=self.num_bias)
        logits = ctx.model(batch.x)
        ce = F.cross_entropy(logits, batch.y, reduction="none")
        # group losses of the global batch (summed over ranks under torchrun): q is the same on every rank
        counts = ctx.global_sum(torch.bincount(g, minlength=self.num_groups).float()).clamp(min=1)
        group_sum = torch.zeros(self.num_groups, device=ce.device).index_add(0, g, ce)
        group_loss = ctx.global_sum(group_sum.detach()) / counts
        self.q = update_group_weights(self.q, group_loss, eta=self.eta)
        # sum_g q_g L_g; this rank's share of it times W, so that DDP's average over ranks is its gradient
        loss = ctx.world_size * (group_sum / counts * self.q).sum()
        self.optimizer.zero_grad(set_to_none=True)
        ctx.backward(loss)
        ctx.step_optimizer(self.optimizer)
        return {"loss": float((group_loss * self.q).sum()), "ce": float(ce.mean().detach()), "q_max": float(self.q.max()),
                "acc": float((logits.argmax(1) == batch.y).float().mean())}

    def state(self) -> dict[str, Any]:
        return {"eta": self.eta, "num_groups": getattr(self, "num_groups", None)}


register_method(MethodInfo(
    name="groupdro", description="GroupDRO: online worst-group weights over (target, bias) groups",
    factory=GroupDRO, uses_bias_labels=True, selection="val_worst_group",
    uses_unbiased_data=True,  # only for model selection (worst group on D^u_val)
    reference="Sagawa et al., ICLR 2020",
    defaults={"*": {"eta": Default(0.01, "paper (Sagawa et al., group step size)")}},
))
