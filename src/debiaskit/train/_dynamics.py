"""Opt-in per-sample training dynamics (``debiaskit train --record-dynamics``).

A finished model has often memorised its few bias-conflicting training samples, so its final
geometry no longer shows them; *when* and *how* each sample was learned does. The recorder wraps any
:class:`TrainingMethod` and, at every visit of a training sample (training mode, the method's own
forward pass, no extra compute beyond a (B x K) distance), stores per epoch:

* ``loss``: the sample's cross-entropy with the model's logits at the visit (float16; NaN: not visited);
* ``correct``: whether the visit's prediction was right (uint8; 255: not visited);
* ``attractor``: the attractor class b^ at the visit (int16; -1: not visited or no centroids yet): the
  nearest of the running EMA centroids of correctly classified samples at the bottleneck, taken
  before the batch updates them (the same rule as CALM's discovery, see docs/unsupervised.md).

Tensors are (epochs, N) and saved to ``RUN_DIR/dynamics.safetensors`` (50,000 samples x 10 epochs:
2.5 MB). Bias labels are never read.

Example::

    method = DynamicsRecorder(TrainingMethod())
    result = fit(model, data, method=method, config=TrainConfig(epochs=3), head="fc")
    method.close()
    save_dynamics(method.dynamics(), Path("run/dynamics.safetensors"))
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..discover import RunningCentroids, attractor_rule
from ..models import resolve_head
from ._loop import TrainContext, TrainingMethod

NOT_VISITED = 255


class DynamicsRecorder(TrainingMethod):
    """Wrap ``method``: same training, plus per-sample loss / correctness / attractor per epoch.

    The first forward pass of the model on each batch (the method's own) is captured with hooks:
    logits from the model's output, the bottleneck from a pre-hook on the head. Upsampling methods
    (several visits per epoch) keep the last visit.
    """

    def __init__(self, method: TrainingMethod, *, centroid_momentum: float = 0.9) -> None:
        super().__init__()
        self.inner = method
        for name in ("loss", "correct", "attractor"):  # (epochs, N), sized in setup
            self.register_buffer(name, None)
        self.centroid_momentum = centroid_momentum

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def uses_bias_labels(self) -> bool:
        return self.inner.uses_bias_labels

    def prepare(self, ctx: TrainContext) -> None:
        self.inner.prepare(ctx)

    def setup(self, ctx: TrainContext) -> None:
        self.inner.setup(ctx)
        n, e = len(ctx.train_data), ctx.config.epochs
        self.loss = torch.full((e, n), float("nan"))
        self.correct = torch.full((e, n), NOT_VISITED, dtype=torch.uint8)
        self.attractor = torch.full((e, n), -1, dtype=torch.int16)
        self.centroids = RunningCentroids(num_classes=ctx.num_classes, momentum=self.centroid_momentum)
        self._capture: dict[str, Tensor] | None = None
        model = ctx.unwrapped
        _, head = resolve_head(model, ctx.head)
        self._hooks = [model.register_forward_hook(self._on_output), head.register_forward_pre_hook(self._on_head)]

    def _on_head(self, module: nn.Module, args: tuple) -> None:
        if self._capture is not None and "z" not in self._capture:
            self._capture["z"] = args[0].detach().flatten(1)

    def _on_output(self, module: nn.Module, args: tuple, output: Any) -> None:
        if self._capture is not None and "logits" not in self._capture and isinstance(output, Tensor):
            self._capture["logits"] = output.detach()

    def epoch_indices(self, ctx: TrainContext) -> Tensor | None:
        return self.inner.epoch_indices(ctx)

    def training_step(self, batch, ctx: TrainContext) -> dict[str, float]:
        self._capture = {}
        try:
            stats = self.inner.training_step(batch, ctx)
            self._record(batch, ctx, self._capture)
        finally:
            self._capture = None
        return stats

    @torch.no_grad()
    def _record(self, batch, ctx: TrainContext, capture: dict[str, Tensor]) -> None:
        logits, z = capture.get("logits"), capture.get("z")
        y = batch.y
        if logits is None or logits.ndim != 2 or len(logits) != len(y):
            return  # the method did not run the model on this batch as a whole: nothing to record
        z = z if z is not None and len(z) == len(y) else None
        # under torchrun: the global batch, so that every rank (rank 0 writes) holds every sample's record
        idx, y, logits = ctx.gather(batch.index.to(y.device), y, logits.float())
        z = ctx.gather(z.float())[0] if z is not None else None
        idx, e = idx.cpu(), ctx.epoch
        self.loss[e, idx] = F.cross_entropy(logits.float(), y, reduction="none").cpu()
        correct = logits.argmax(1) == y
        self.correct[e, idx] = correct.to(torch.uint8).cpu()
        if z is not None:
            centroids = self.centroids.centroids
            if centroids is not None and self.centroids.ready:
                att = attractor_rule(z, y, centroids, present=self.centroids.present)
                self.attractor[e, idx] = att.pseudo_bias.to(torch.int16).cpu()
            self.centroids.update(z, y, correct=correct)

    def end_epoch(self, ctx: TrainContext) -> dict[str, float]:
        return self.inner.end_epoch(ctx)

    def final_model(self, ctx: TrainContext) -> nn.Module:
        return self.inner.final_model(ctx)

    def conflict_flags(self, *, online: bool = False):
        return self.inner.conflict_flags(online=online)

    def extra_models(self, model: nn.Module) -> dict[str, nn.Module]:
        return self.inner.extra_models(model)

    def close(self) -> None:
        """Remove the hooks (call after ``fit``: the trained model must not keep them)."""
        for h in getattr(self, "_hooks", []):
            h.remove()
        self._hooks = []

    def state(self) -> dict[str, Any]:
        return self.inner.state()

    def dynamics(self) -> dict[str, Tensor]:
        """The recorded tensors, ready for :func:`save_dynamics`."""
        return {"loss": self.loss.to(torch.float16), "correct": self.correct, "attractor": self.attractor}
