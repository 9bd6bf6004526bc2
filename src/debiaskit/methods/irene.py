"""IRENE (Tartaglione, BMVC 2022): a privacy head reads the bias at the bottleneck; the encoder is
trained to make the head's output independent of the bias (normalised MI). Uses bias labels.

loss = CE(task) + gamma * sum_a MI(softmax(P_a(z)), b_a). Each privacy head P_a = Linear(d, N_B) is
trained with CE on b_a from ``z.detach()`` (its loss never reaches the encoder); the MI term is computed
with the heads' parameters detached, so its gradient reaches the encoder only, never the heads.

One step: (1) forward the model, keep the bottleneck z; (2) ``head_steps`` updates of the heads on
``z.detach()`` (so the encoder is penalised against a head that has already seen this batch, not one
step behind it); (3) backward CE + gamma * MI into the model and step it.

Under torchrun: the privacy heads' gradients are averaged over ranks (the heads stay identical), and the
MI - a statistic of the whole batch - is computed on every rank from the all-gathered head outputs of
the global batch, with its gradient sent back to each rank's own samples; with DDP's average this is the
gradient of the 1-rank loss. Under ``--amp`` the heads train in float32 on the detached features.

Example::

    method, cfg = build_method("irene", dataset="biased-mnist", gamma=1.0)
    fit(model, splits.train, method=method, config=cfg, head="fc")
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..audit import normalized_mutual_information
from ..data import Batch
from ..errors import ConfigError, DebiaskitError
from ..models import forward_with_bottleneck, head_shape
from ..train import TrainContext, TrainingMethod, make_optimizer
from ._registry import Default, MethodInfo, register_method

HEAD_OPTIMIZERS = ("adam", "sgd")


class IRENE(TrainingMethod):
    """CE + gamma * normalised MI between a privacy head's output and the bias label.

    ``head_optimizer`` / ``head_lr``: how the privacy heads learn. Adam 1e-3 by default: the public
    code's SGD lr 0.1 with momentum diverges on un-normalised bottleneck features (their norm is ~10
    after one epoch, so the effective step lr * |z|^2 / (1 - momentum) is ~100), and a head that swings
    between saturated states gives the encoder no useful MI gradient. ``head_steps``: head updates per
    batch, made before the encoder's step; with one, the head trails the encoder, which then only has to
    move the bias to where the last head does not look (D^u_val task fell below vanilla, bias stayed
    readable by a fresh probe); with five it has to remove it.

    Example::

        method = IRENE(gamma=1.0, head_steps=5)
    """

    def __init__(
        self, *, gamma: float = 1.0, head_lr: float = 1e-3, head_optimizer: str = "adam", head_steps: int = 5
    ) -> None:
        super().__init__()
        if not (gamma >= 0 and head_lr > 0):
            raise ConfigError(f"irene needs gamma >= 0 and head_lr > 0, got {gamma}, {head_lr}")
        if head_optimizer not in HEAD_OPTIMIZERS:
            raise ConfigError(f"irene head_optimizer must be one of {HEAD_OPTIMIZERS}, got {head_optimizer!r}")
        if not (isinstance(head_steps, int) and head_steps >= 1):
            raise ConfigError(f"irene head_steps must be an integer >= 1, got {head_steps!r}")
        self.gamma, self.head_lr, self.head_optimizer_name, self.head_steps = gamma, head_lr, head_optimizer, head_steps

    def setup(self, ctx: TrainContext) -> None:
        data = ctx.train_data
        if getattr(data, "b", "missing") is None:
            raise ConfigError("irene needs bias labels on the training data; this dataset has none")
        d, _ = head_shape(ctx.unwrapped, ctx.head)
        self.num_bias = getattr(data, "num_bias_classes", ctx.num_classes)
        n_attr = 1 if getattr(data, "b", None) is None or data.b.ndim == 1 else data.b.shape[1]
        # one head per attribute, as wide as that attribute has values (a binary one beside one with 5 values)
        self.bias_cardinalities = tuple(getattr(data, "bias_cardinalities", None) or (self.num_bias,) * n_attr)
        self.heads = nn.ModuleList(nn.Linear(d, k) for k in self.bias_cardinalities).to(ctx.device)
        self.optimizer = make_optimizer(ctx.model.parameters(), ctx.config)
        if self.head_optimizer_name == "sgd":  # the public code's optimiser (momentum 0.9, wd 1e-4)
            self.head_optimizer = torch.optim.SGD(
                self.heads.parameters(), lr=self.head_lr, momentum=0.9, weight_decay=1e-4
            )
        else:
            self.head_optimizer = torch.optim.Adam(self.heads.parameters(), lr=self.head_lr)

    def _head_step(self, z: Tensor, b: Tensor, ctx: TrainContext) -> Tensor:
        """One update of every privacy head on detached features (float32, gradients averaged over ranks);
        returns the summed CE before it."""
        with ctx.full_precision():
            self.head_optimizer.zero_grad(set_to_none=True)
            head_loss = sum(F.cross_entropy(h(z.float()), b[:, a]) for a, h in enumerate(self.heads))
            head_loss.backward()
            ctx.sync_grads(self.heads)
            self.head_optimizer.step()
        return head_loss.detach()

    def _mi(self, z: Tensor, b: Tensor, ctx: TrainContext | None = None) -> Tensor:
        """Sum over attributes of MI(softmax(P_a(z)), b_a) on the global batch (``ctx``: the training context
        under torchrun / --amp), with P_a's parameters detached: the MI gradient reaches z (the encoder) and
        nothing else."""
        gather = ctx.gather_with_grad if ctx is not None else (lambda t: t)
        b_all = ctx.gather(b)[0] if ctx is not None else b
        with ctx.full_precision() if ctx is not None else contextlib.nullcontext():  # float32 under --amp
            return sum(
                normalized_mutual_information(
                    gather(F.linear(z.float(), h.weight.detach(), h.bias.detach()).softmax(1)),
                    b_all[:, a],
                    self.bias_cardinalities[a],
                )
                for a, h in enumerate(self.heads)
            )

    def training_step(self, batch: Batch, ctx: TrainContext) -> dict[str, float]:
        if batch.b is None:
            raise ConfigError("irene needs bias labels, but this batch has none")
        b = batch.b if batch.b.ndim == 2 else batch.b[:, None]
        logits, z = forward_with_bottleneck(ctx.model, batch.x, ctx.head)
        zd = z.detach()
        head_loss = self._head_step(zd, b, ctx)  # CE of the heads before this batch's updates (for the log)
        for _ in range(self.head_steps - 1):
            self._head_step(zd, b, ctx)
        ce = F.cross_entropy(logits, batch.y)
        mi = self._mi(z, b, ctx)
        loss = ce + self.gamma * mi
        self.optimizer.zero_grad(set_to_none=True)
        ctx.backward(loss)
        if ctx.precision is None or ctx.precision.scaler is None:  # fp16: the scaler skips non-finite steps
            self._check_finite(ctx, ce, mi, head_loss)
        ctx.step_optimizer(self.optimizer)
        with torch.no_grad():
            head_acc = float((self.heads[0](zd).argmax(1) == b[:, 0]).float().mean())
        return {
            "loss": float(ce.detach()),
            "mi": float(mi.detach()),
            "privacy_ce": float(head_loss),
            "privacy_acc": head_acc,
            "acc": float((logits.argmax(1) == batch.y).float().mean()),
        }

    def _check_finite(self, ctx: TrainContext, ce: Tensor, mi: Tensor, head_loss: Tensor) -> None:
        """Fail fast with the cause, before a non-finite loss or gradient is stepped into the weights (a NaN
        in the last step of the last epoch would otherwise be saved silently)."""
        checks = [torch.isfinite(ce + mi + head_loss)]
        checks += [torch.isfinite(p.grad).all() for p in ctx.model.parameters() if p.grad is not None]
        finite = bool(torch.stack(checks).all())
        if not finite:
            raise DebiaskitError(
                f"irene diverged at step {ctx.step} (CE {float(ce.detach()):.3g}, MI {float(mi.detach()):.3g}, "
                f"privacy CE {float(head_loss):.3g}): non-finite loss or gradient; lower gamma, "
                "head_lr or the learning rate"
            )

    def state(self) -> dict[str, Any]:
        return {
            "gamma": self.gamma,
            "head_lr": self.head_lr,
            "head_optimizer": self.head_optimizer_name,
            "head_steps": self.head_steps,
        }


_TUNED = "ours, tuned on D^u_val only (seed 0, default budgets, single runs; test never read)"
register_method(
    MethodInfo(
        name="irene",
        description="IRENE: privacy head + mutual-information penalty on the trained encoder",
        factory=IRENE,
        uses_bias_labels=True,
        reference="Tartaglione, BMVC 2022",
        defaults={
            "*": {
                "gamma": Default(
                    1.0,
                    f"{_TUNED}: colored-mnist 1% conflicting, head_steps 5: gamma 0.5/1/2 -> D^u_val task "
                    "57.2/62.5/43.5 % (vanilla 51.9); biased-mnist rho 0.99: gamma 1/3 -> 71.3/21.8 % "
                    "(vanilla 53.4). Public code: gamma 0.2 with CE weight 0.5",
                ),
                "head_lr": Default(
                    1e-3,
                    f"{_TUNED}: colored-mnist 1%, gamma 1, head_steps 1: Adam 1e-3/1e-2, SGD 0.1/0.01 -> "
                    "29.5/43.4/36.4/37.5 %; the public code's SGD 0.1 (momentum 0.9) diverges on "
                    "un-normalised bottleneck features (privacy CE ~10^3)",
                ),
                "head_optimizer": Default(
                    "adam", "ours (see head_lr; Adam 1e-3 is also the audit's privacy probe); public code: SGD"
                ),
                "head_steps": Default(
                    5,
                    f"{_TUNED}: colored-mnist 1%, gamma 1: 1/5/10/20 head steps per batch -> "
                    "29.5/62.5/60.2/52.2 % (seed 1: 61.8 vs vanilla 54.8); public code: 1",
                ),
            }
        },
    )
)
