"""GroupDRO (Sagawa et al., ICLR 2020): the supervised reference; it USES bias labels.

Groups are (target, bias) pairs - (y, b) for one bias attribute, (y, aligned-pattern) for several -
and only those present in the training set count: a group with no training sample has no loss to
follow, and giving it weight would only shrink the step on the real ones (Biased MNIST rho 0.99 on
20000 digits leaves 17 of the 100 (digit, colour) groups empty). Online group weights q
(exponentiated gradient, step ``eta``) follow the groups with the largest loss; the model minimises
sum_g q_g L_g. ``group_balanced=True`` also draws each epoch's samples with probability inversely
proportional to their group's size (every group equally often in expectation), as the original
commands do (``--reweight_groups``) and SpuCo does by default. Model selection: worst-group accuracy
on D^u_val.

Example::

    method, cfg = build_method("groupdro", dataset="biased-mnist", group_balanced=False)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data import Batch
from ..errors import ConfigError
from ..train import TrainContext, TrainingMethod, make_optimizer
from ._common import upweighted_indices
from ._registry import Default, MethodInfo, register_method


def group_ids(y: Tensor, b: Tensor, *, num_classes: int, num_bias: int) -> tuple[Tensor, int]:
    """Group index per sample and the number of groups."""
    if b.ndim == 1:
        return y * num_bias + b, num_classes * num_bias
    aligned = (b == (y % num_bias)[:, None]).long()  # (N, A)
    pattern = (aligned * (2 ** torch.arange(b.shape[1], device=b.device))).sum(1)
    return y * 2 ** b.shape[1] + pattern, num_classes * 2 ** b.shape[1]


def update_group_weights(q: Tensor, group_loss: Tensor, *, eta: float) -> Tensor:
    """Exponentiated-gradient ascent on the group weights: q_g <- q_g exp(eta L_g), renormalised.
    Absent groups carry L_g = 0 and keep their relative weight."""
    q = q * torch.exp(eta * group_loss.detach())
    return q / q.sum()


class GroupDRO(TrainingMethod):
    """Online worst-group weights over the non-empty (target, bias) groups of the training set."""

    def __init__(self, *, eta: float = 0.01, group_balanced: bool = True) -> None:
        super().__init__()
        if not eta > 0:
            raise ConfigError(f"groupdro needs eta > 0, got {eta}")
        self.eta, self.group_balanced = eta, bool(group_balanced)
        self.register_buffer("q", None)  # online group weights (0 for groups absent from D^b)
        self.register_buffer("group_counts", None)  # training samples per group
        self.register_buffer("sample_weights", None)  # group_balanced: 1 / size of the sample's group

    def setup(self, ctx: TrainContext) -> None:
        data = ctx.train_data
        if getattr(data, "b", None) is None:
            raise ConfigError(
                "groupdro needs bias labels on the training data (it is the supervised reference); "
                "this dataset has none - use a label-free method (lff, jtt, dcwp) instead"
            )
        self.num_bias = getattr(data, "num_bias_classes", ctx.num_classes)
        self.num_classes = ctx.num_classes
        g, self.num_groups = group_ids(
            torch.as_tensor(data.y).long().cpu(),
            torch.as_tensor(data.b).long().cpu(),
            num_classes=ctx.num_classes,
            num_bias=self.num_bias,
        )
        self.group_counts = torch.bincount(g, minlength=self.num_groups)
        present = (self.group_counts > 0).float()
        self.present_groups = int(present.sum())
        self.q = (present / present.sum()).to(ctx.device)
        self.sample_weights = 1.0 / self.group_counts[g].double()
        self.optimizer = make_optimizer(ctx.model.parameters(), ctx.config)

    def epoch_indices(self, ctx: TrainContext) -> Tensor | None:
        if not self.group_balanced:
            return None
        return upweighted_indices(self.sample_weights, generator=ctx.generator)

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
        return {
            "loss": float((group_loss * self.q).sum()),
            "ce": float(ce.mean().detach()),
            "q_max": float(self.q.max()),
            "acc": float((logits.argmax(1) == batch.y).float().mean()),
        }

    def state(self) -> dict[str, Any]:
        return {
            "eta": self.eta,
            "group_balanced": self.group_balanced,
            "num_groups": getattr(self, "num_groups", None),
            "non_empty_groups": getattr(self, "present_groups", None),
        }


register_method(
    MethodInfo(
        name="groupdro",
        description="GroupDRO: online worst-group weights over (target, bias) groups",
        factory=GroupDRO,
        uses_bias_labels=True,
        selection="val_worst_group",
        uses_unbiased_data=True,  # only for model selection (worst group on D^u_val)
        reference="Sagawa et al., ICLR 2020",
        defaults={
            "*": {
                "eta": Default(0.01, "paper (Sagawa et al., group step size)"),
                "group_balanced": Default(
                    True,
                    "paper's commands (--reweight_groups) and SpuCo's default: "
                    "rare groups are seen every epoch, not once in a few batches",
                ),
            }
        },
    )
)
