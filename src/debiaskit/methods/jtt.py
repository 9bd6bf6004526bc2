"""JTT - Just Train Twice (Liu et al., ICML 2021).

Train an identification model with ERM for T epochs (``id_epochs``), take its error set on D^b
(misclassified training samples: a label-free proxy of the bias-conflicting ones), then train the
final model with the error set upsampled ``lambda_up`` times. No bias labels; the error set is
exposed through :meth:`JTT.conflict_flags` so that reports holding the true labels can score it.

Under torchrun: the identification model trains on each rank's shard with its gradients averaged over
ranks, and its predictions on D^b are split across ranks and all-gathered, so the error set (and the
upsampled epoch) is the same on every rank.

Example::

    method, cfg = build_method("jtt", dataset="colored-mnist", id_epochs=2, lambda_up=50)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data import Batch
from ..errors import ConfigError
from ..train import ConflictFlags, TrainContext, TrainingMethod, make_optimizer
from ._common import fresh_copy, predict_train, run_epochs
from ._registry import Default, MethodInfo, register_method


class JTT(TrainingMethod):
    def __init__(self, *, id_epochs: int = 1, lambda_up: float = 50) -> None:
        super().__init__()
        if id_epochs < 1 or lambda_up < 1:
            raise ConfigError(f"jtt needs id_epochs >= 1 and lambda_up >= 1, got {id_epochs}, {lambda_up}")
        self.id_epochs, self.lambda_up = int(id_epochs), float(lambda_up)
        self.register_buffer("error_set", None)  # misclassified by the identification model
        self.register_buffer("indices", None)  # one epoch: every sample once, the error set lambda_up times

    def prepare(self, ctx: TrainContext) -> None:
        ident = fresh_copy(ctx.unwrapped, seed=ctx.config.seed + 1).to(ctx.device).train()
        opt = make_optimizer(ident.parameters(), ctx.config)

        def step(batch: Batch) -> None:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(ident(batch.x), batch.y).backward()
            ctx.sync_grads(ident)
            opt.step()

        run_epochs(ctx, epochs=self.id_epochs, step=step)
        pred, y = predict_train(ident, ctx)
        self.error_set = pred != y
        # upsampling by repetition: every sample once, error-set samples lambda_up times in total
        extra = torch.nonzero(self.error_set).flatten().repeat(max(int(round(self.lambda_up)) - 1, 0))
        self.indices = torch.cat([torch.arange(len(y)), extra])

    def epoch_indices(self, ctx: TrainContext) -> Tensor | None:
        return self.indices

    def conflict_flags(self, *, online: bool = False) -> ConflictFlags | None:
        """The error set of the identification model (every training sample is scored once, in setup)."""
        if online or self.error_set is None:
            return None
        return ConflictFlags(torch.arange(len(self.error_set)), self.error_set)

    def state(self) -> dict[str, Any]:
        return {"id_epochs": self.id_epochs, "lambda_up": self.lambda_up}


register_method(
    MethodInfo(
        name="jtt",
        description="Just Train Twice: ERM error set upsampled, then retrain",
        factory=JTT,
        reference="Liu et al., ICML 2021",
        defaults={
            "*": {
                "id_epochs": Default(1, "ours (short ERM: the error set must be taken before f memorises D^b)"),
                "lambda_up": Default(50, "ours (in the range of the paper's 20-100; not tuned)"),
            }
        },
    )
)
