"""VCBA-style two-stage label-free baseline (after Nahon et al., ICCV 2023).

Stage 1 (``stage1_epochs`` of ERM): after each epoch, the attractor rule on the whole training set
(centroids of correctly classified samples at the bottleneck) gives pseudo-bias labels b^ and
confidences; the epoch with the largest mean confidence (distance to the separating hyperplanes) is kept.
Stage 2: the network is re-initialised and retrained on the same data with per-sample weights
1 / rho^ (pseudo-aligned, b^ = y) and 1 / (1 - rho^) (pseudo-conflicting), rho^ = share of pseudo-aligned
samples, plus an IRENE-style term ``gamma * MI(softmax(P(z)), b^)`` where the privacy head P is trained on
``z.detach()`` to predict b^. Two trainings; last epoch returned (no bias labels, no D^u).

Under torchrun: stage 1's pseudo-bias comes from the same whole-set pass on every rank (identical); in
stage 2 the weighted CE is normalised by the global sum of weights, the MI is computed on the all-gathered
privacy outputs of the global batch (gradient back to each rank's samples) and the privacy head's
gradients are averaged over ranks.

Example::

    method, cfg = build_method("vcba", dataset="biased-mnist")
    fit(model, splits.train.without_bias_labels(), method=method, config=TrainConfig(epochs=12))
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..audit import normalized_mutual_information
from ..data import Batch
from ..discover import discover_pseudo_bias
from ..errors import ConfigError
from ..models import forward_with_bottleneck, head_shape
from ..train import ConflictFlags, TrainContext, TrainingMethod, make_optimizer
from ._registry import Default, MethodInfo, register_method
from .calm import _targets


class VCBA(TrainingMethod):
    def __init__(self, *, stage1_epochs: int = 2, gamma: float = 1.0, privacy_lr: float = 1e-3) -> None:
        super().__init__()
        if stage1_epochs < 1 or gamma < 0:
            raise ConfigError(f"stage1_epochs must be >= 1 and gamma >= 0, got {stage1_epochs}, {gamma}")
        self.stage1_epochs, self.gamma, self.privacy_lr = stage1_epochs, gamma, privacy_lr
        self.diagnostics: dict[str, Any] = {}
        self.register_buffer("pseudo", None)  # b^ of the most confident stage-1 epoch
        self.register_buffer("weight", None)  # stage 2: 1 / rho^ (pseudo-aligned), 1 / (1 - rho^) otherwise
        self.register_buffer("pseudo_aligned", None)  # b^ == y, frozen at the start of stage 2

    def setup(self, ctx: TrainContext) -> None:
        if ctx.config.epochs <= self.stage1_epochs:
            raise ConfigError(f"vcba needs more epochs ({ctx.config.epochs}) than its stage 1 ({self.stage1_epochs})")
        self.optimizer = make_optimizer(ctx.model.parameters(), ctx.config)
        self.best_conf = -math.inf
        self.stage = 1
        with torch.random.fork_rng():  # created now (so a checkpoint can be loaded), initialised in stage 2
            d, _ = head_shape(ctx.unwrapped, ctx.head)
            self.privacy = nn.Linear(d, ctx.num_classes).to(ctx.device)
        self.privacy_opt = torch.optim.Adam(self.privacy.parameters(), lr=self.privacy_lr)

    def training_step(self, batch: Batch, ctx: TrainContext) -> dict[str, float]:
        if self.stage == 1:
            return super().training_step(batch, ctx)
        logits, z = forward_with_bottleneck(ctx.model, batch.x, ctx.head)
        idx = batch.index.cpu()
        pseudo = self.pseudo[idx].to(z.device)
        w = self.weight[idx].to(z.device)
        # global normaliser and global-batch MI; x W on the CE so that DDP's average over ranks is the gradient
        ce = ctx.world_size * (w * F.cross_entropy(logits, batch.y, reduction="none")).sum() / ctx.global_sum(w.sum())
        (pseudo_all,) = ctx.gather(pseudo)
        with ctx.full_precision():  # a batch statistic of small probabilities: float32 under --amp
            mi = normalized_mutual_information(
                ctx.gather_with_grad(self.privacy(z.float()).softmax(1)), pseudo_all, ctx.num_classes
            )
        self.optimizer.zero_grad(set_to_none=True)
        ctx.backward(ce + self.gamma * mi)
        ctx.step_optimizer(self.optimizer)
        # the privacy head learns on detached features: its loss never reaches the encoder
        with ctx.full_precision():
            self.privacy_opt.zero_grad(set_to_none=True)
            F.cross_entropy(self.privacy(z.detach().float()), pseudo).backward()
            ctx.sync_grads(self.privacy)
            self.privacy_opt.step()
        return {
            "loss": float(ce.detach()),
            "mi": float(mi.detach()),
            "acc": float((logits.argmax(1) == batch.y).float().mean()),
        }

    def end_epoch(self, ctx: TrainContext) -> dict[str, float]:
        if self.stage != 1:
            return {}
        found = discover_pseudo_bias(ctx.unwrapped, train=ctx.train_data, head=ctx.head, device=ctx.device)["train"]
        ctx.model.train()
        conf = float(found.confidence.mean())
        out = {"mean_confidence": conf, "flagged": float(found.conflicting.sum())}
        if conf > self.best_conf:
            self.best_conf, self.pseudo = conf, found.pseudo_bias
            self.diagnostics.update(pseudo_epoch=ctx.epoch + 1, flagged=int(found.conflicting.sum()))
        if ctx.epoch + 1 == self.stage1_epochs:
            self._start_stage2(ctx)
        return out

    def _start_stage2(self, ctx: TrainContext) -> None:
        aligned = self.pseudo == _targets(ctx.train_data)
        rho = min(float(aligned.float().mean()), 1 - 1e-6)
        self.weight = torch.where(aligned, torch.tensor(1 / rho), torch.tensor(1 / max(1 - rho, 1e-6)))
        self.pseudo_aligned = aligned
        self.diagnostics["rho_hat"] = rho
        with torch.random.fork_rng():
            torch.manual_seed(ctx.config.seed + 1)
            for m in ctx.model.modules():
                if hasattr(m, "reset_parameters") and m is not ctx.model:
                    m.reset_parameters()
            self.privacy.reset_parameters()  # the same draws as a new nn.Linear here
        self.optimizer = make_optimizer(ctx.model.parameters(), ctx.config)
        self.privacy_opt = torch.optim.Adam(self.privacy.parameters(), lr=self.privacy_lr)
        self.stage = 2

    def conflict_flags(self, *, online: bool = False) -> ConflictFlags | None:
        """Samples whose pseudo-bias differs from their class (b^ != y), frozen at the start of stage 2."""
        if online or self.pseudo_aligned is None:
            return None
        return ConflictFlags(torch.arange(len(self.pseudo)), ~self.pseudo_aligned, self.pseudo)

    def state(self) -> dict[str, Any]:
        return {"stage1_epochs": self.stage1_epochs, "gamma": self.gamma, **self.diagnostics}


register_method(
    MethodInfo(
        name="vcba",
        description="VCBA-style two-stage label-free baseline: attractor pseudo-bias from an ERM stage, then a "
        "re-initialised, re-weighted training with an MI penalty on the pseudo-bias",
        factory=VCBA,
        uses_bias_labels=False,
        uses_unbiased_data=False,
        reference="after Nahon et al., ICCV 2023",
        extra_epochs=lambda config: config["stage1_epochs"],  # stage 2 re-initialises the network
        defaults={
            "*": {
                "stage1_epochs": Default(2, "ours (bias is learnt in 1-2 epochs)"),
                "gamma": Default(1.0, "ours (IRENE uses an MI weight of order 1)"),
                "privacy_lr": Default(1e-3, "ours"),
            }
        },
    )
)
