"""Algorithm 1 of FFW: learn gates on a frozen model so that the bias cannot be read at the bottleneck.

One step on a batch of D^u_train (x, y, b):

    logits, z = f_gated(x)                       # weights, biases, BatchNorm frozen (eval mode)
    J = CE(logits, y) + gamma * D(z, b)          # D: the paper's MI(P(z), b), or a probe-free term (_adversary.py)
    gates  <- step on dJ/dm only                 # J's gradient on P is never computed (discarded)
    P      <- step on CE(P(z.detach()), b)       # the privacy head never reaches the encoder

Schedule: tau = 1; repeat { train until the objective on D^u_val plateaus; tau *= tau_decay } until
the tau-model and the hard-masked model (tau -> 0) agree on D^u_val, within an epoch budget spread over the
levels (so a model whose objective keeps creeping down cannot hold the search at one level). After every epoch the
*hard-masked* model is scored on D^u_val and the best one is kept: the soft model can be far better
than its hard mask (the gates are not yet binary), so only hard models are ever reported or selected.

Under torchrun each rank takes its DistributedSampler share of every epoch's D^u_train order (batch_size
is the global batch), the MI term is computed on the all-gathered head outputs of the global batch, and
the gate and privacy-head gradients are all-reduced (averaged) before each step, so the gates stay
identical on every rank; D^u_val (and the head pre-training features) are split across ranks and
gathered, so the hard-mask selection and the stop rule are computed identically on every rank. Rank 0
alone writes checkpoints and calls the callback.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import _dist
from ..data import iterate_batches
from ..errors import ModelError
from ..models import batch_memory_format, forward_with_bottleneck, head_shape, laid_out
from ._adversary import (
    bias_columns,
    lda_crossfit_accuracy,
    lda_readability,
    mi_term,
    mlp_head,
    probe_free_penalty,
    probe_free_term,
    refit_linear_head,
)
from ._checkpoint import _Checkpoint
from ._config import FFWConfig, _check_data
from ._gates import GateState, freeze, install_gates
from ._harm import ChanceFloor
from ._schedule import _Schedule
from ._selection import _Selection
from ._step import ffw_step, fit_log_temperature, mutual_information


class _Search(_Selection, _Schedule, _Checkpoint):
    """The state of one FFW search (kept in an object so that it can be checkpointed and resumed)."""

    input_identity: dict[str, Any] | None = None  # what the search runs on (see find_fantastic_weights)

    def __init__(self, model: nn.Module, *, head: str, train, val, config: FFWConfig, device, callback) -> None:
        self.cfg, self.train, self.val, self.device, self.callback = config, train, val, torch.device(device), callback
        self.bias_cardinalities = _check_data(train, val)  # each attribute its own number of classes
        self.n_attr = len(self.bias_cardinalities)
        self.head = head
        self.work = copy.deepcopy(model).to(self.device)
        freeze(self.work)
        example = next(iter(iterate_batches(train, batch_size=2, device=self.device))).x
        # channels-last image batches where the model takes them unchanged (CPU; models/_layout.py), decided
        # before the gates go in: a 2-3x faster convolution for the search's steps and D^u_val passes
        self.memory_format = batch_memory_format(self.work, example, device=self.device)
        self.state = GateState(tau=config.tau_init)
        self.gated = install_gates(
            self.work,
            mode=config.mode,
            head=head,
            example=example,
            include_head=config.include_head,
            input_weights=config.input_weights,
            state=self.state,
        )
        d, num_classes = head_shape(self.work, head)
        # below this D^u_val accuracy a candidate is collapsed (ffw/_harm.py): never selected, never handed back
        self.floor = ChanceFloor.of(val.y, max(num_classes, 2))
        torch.manual_seed(config.seed)
        self.heads = [nn.Linear(d, k).to(self.device) for k in self.bias_cardinalities]
        self.head_opts = [
            torch.optim.SGD(
                h.parameters(), lr=config.head_lr, momentum=config.head_momentum, weight_decay=config.head_weight_decay
            )
            for h in self.heads
        ]
        # adversaries beyond the paper's head (_adversary.py); the linear heads are always trained and reported
        self.mlps = (
            [mlp_head(d, k).to(self.device) for k in self.bias_cardinalities] if config.adversary == "mlp" else []
        )
        self.mlp_opts = [torch.optim.Adam(h.parameters(), lr=1e-3) for h in self.mlps]
        # probe-free adversaries: running statistics of z, no parameters
        self.lda = probe_free_term(config, d, config.adversary) if config.adversary in ("lda", "mmd") else None
        self._epoch_z: list[tuple[Tensor, Tensor]] = []
        self._vanilla_val: tuple[Tensor, Tensor, Tensor, Tensor] | None = None  # pretrain_heads -> initial_record
        opt = (
            torch.optim.Adam
            if config.gate_optimizer == "adam"
            else (lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9))
        )
        # the logit temperature learnt with the gates (FFWConfig.learn_temperature); stepped by the gate optimiser
        self.log_temperature = (
            torch.zeros((), device=self.device, requires_grad=True) if config.learn_temperature else None
        )
        self.gate_opt = opt(self._trained(), lr=config.gate_lr)
        self.progress = {
            "level": 0,
            "tau": config.tau_init,
            "epoch_in_level": 0,
            "epoch": 0,
            "plateau_best": None,
            "bad_epochs": 0,
            "done": False,
            "stop_reason": None,
        }
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        self.best_gates: dict[str, Tensor] | None = None
        self.step = 0

    def _trained(self) -> list[Tensor]:
        """What the gate optimiser steps: the gates, and the logit temperature when it is learnt."""
        return self.gated.gate_parameters() + ([self.log_temperature] if self.log_temperature is not None else [])

    # ---- privacy head pre-training on the vanilla model (gates all at 1) ----
    @torch.no_grad()
    def _features(self, data, *, hard: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(logits, z, y, b) of ``data``; under torchrun split across ranks and gathered (the same everywhere)."""

        def rows(index: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
            logits, zs, ys, bs = [], [], [], []
            for batch in iterate_batches(data, batch_size=512, device=self.device, indices=index):
                assert batch.b is not None, "FFW's data has bias labels (checked on entry)"
                out, z = forward_with_bottleneck(self.work, laid_out(batch.x, self.memory_format), self.head)
                logits.append(out)
                zs.append(z)
                ys.append(batch.y)
                bs.append(batch.b)
            return torch.cat(logits), torch.cat(zs), torch.cat(ys), torch.cat(bs)

        self.state.hard = hard
        try:
            return _dist.map_shards(len(data), rows)
        finally:
            self.state.hard = False

    def pretrain_heads(self) -> None:
        """Train each privacy head on detached vanilla features until its D^u_val loss plateaus."""
        logits_tr, z_tr, y_tr, b_tr = self._features(self.train, hard=False)
        if self.log_temperature is not None:
            with torch.no_grad():
                self.log_temperature.copy_(fit_log_temperature(logits_tr, y_tr))
        self._vanilla_val = self._features(self.val, hard=False)  # also epoch 0's record (initial_record)
        _, z_va, _, b_va = self._vanilla_val
        gen = torch.Generator().manual_seed(self.cfg.seed)
        pairs = list(zip(self.heads, self.head_opts)) + list(zip(self.mlps, self.mlp_opts))
        for i, (head, opt) in enumerate(pairs):
            bt, bv = bias_columns(b_tr)[i % self.n_attr], bias_columns(b_va)[i % self.n_attr]
            best, bad = math.inf, 0
            for _ in range(self.cfg.head_pretrain_epochs):
                order = torch.randperm(len(z_tr), generator=gen)
                for start in range(0, len(order), self.cfg.batch_size):
                    idx = order[start : start + self.cfg.batch_size]
                    opt.zero_grad(set_to_none=True)
                    F.cross_entropy(head(z_tr[idx]), bt[idx]).backward()
                    opt.step()
                with torch.no_grad():
                    loss = float(F.cross_entropy(head(z_va), bv))
                if loss < best * (1 - self.cfg.plateau_threshold):
                    best, bad = loss, 0
                else:
                    bad += 1
                    if bad >= self.cfg.head_pretrain_patience:
                        break
        if self.lda is not None:
            self.lda.fit(z_tr.cpu())

    def _dependence(self) -> Callable[[Tensor, list[Tensor], Tensor], Tensor] | None:
        """The bias term D(z, b) of J for the configured adversary (None: the paper's linear-head MI)."""
        kind, cards, cond = self.cfg.adversary, self.bias_cardinalities, bool(self.cfg.condition_on_target)
        if kind == "mlp":
            return lambda z, cols, y: cast(Tensor, sum(mi_term(h, z, c, k) for h, c, k in zip(self.mlps, cols, cards)))
        term = self.lda
        if term is not None:  # "lda", "mmd"
            return lambda z, cols, y: probe_free_penalty(term, z, cols, y, cards, given_target=cond)
        return None

    def _end_epoch_adversary(self) -> None:
        """``refit``: re-fit the linear heads to convergence on this epoch's bottleneck features."""
        if self.cfg.adversary == "refit" and self._epoch_z:
            z = torch.cat([zb for zb, _ in self._epoch_z])
            b = torch.cat([bb for _, bb in self._epoch_z])
            for h, col in zip(self.heads, bias_columns(b)):
                refit_linear_head(h, z, col, weight_decay=self.cfg.head_weight_decay)
        self._epoch_z = []

    # ---- one epoch of gates + privacy head on D^u_train ----
    def train_epoch(self) -> dict[str, float]:
        cfg = self.cfg
        self.state.tau, self.state.hard = self.progress["tau"], False
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + self.progress["epoch"])
        sums = {"loss": 0.0, "ce": 0.0, "mi": 0.0, "head_loss": 0.0}
        steps = 0
        params = self._trained()
        dependence = self._dependence()
        rank, world = _dist.rank_and_world()
        perm = torch.randperm(len(self.train), generator=gen)
        place = torch.empty_like(perm)
        place[perm] = torch.arange(len(perm))  # each sample's position in this epoch's order
        for batch in iterate_batches(
            self.train,
            batch_size=_dist.per_rank_batch(cfg.batch_size, world),
            indices=_dist.shard(perm, rank=rank, world=world),
            device=self.device,
        ):
            # under torchrun: the global batch in the 1-rank order, for the order-sensitive adversaries
            order = _dist.global_batch_order(place[batch.index]) if world > 1 else None
            x = laid_out(batch.x, self.memory_format)
            assert batch.b is not None, "FFW's data has bias labels (checked on entry)"
            out = ffw_step(
                self.work,
                self.head,
                params,
                self.heads + self.mlps,
                x,
                batch.y,
                batch.b,
                gamma=cfg.gamma,
                num_bias=self.bias_cardinalities,
                dependence=dependence,
                order=order,
                log_temperature=self.log_temperature,
                scale_free=bool(cfg.scale_free_dependence),
            )
            # identical gates and heads on every rank (a no-op on one process); average_gradients takes tensors and
            # modules in one list (one collective), which its annotation does not say
            _dist.average_gradients(list(params) + list(self.heads) + list(self.mlps))  # type: ignore[arg-type]
            z, b, y = out.pop("z"), batch.b, batch.y
            if world > 1:  # the global batch's features and labels on every rank, in the 1-rank order
                assert order is not None
                z, b, y = (_dist.all_gather(t)[order.to(t.device)] for t in (z, b, y))
            if self.lda is not None:
                self.lda.observe(z.cpu(), b.cpu(), y.cpu())
            if cfg.adversary == "refit":
                self._epoch_z.append((z, b))
            if not all(
                p.grad is None or bool(torch.isfinite(p.grad).all()) for p in params
            ):  # never step into NaN gates
                raise ModelError(
                    f"FFW got a non-finite gate gradient at tau {self.progress['tau']}, step {self.step + 1} "
                    f"(loss {out['loss']}); try a lower gate_lr"
                )
            for opt in self.head_opts + self.mlp_opts:
                opt.step()
            self.gate_opt.step()
            for k in sums:
                sums[k] += out[k]
            loss = out["loss"]
            steps += 1
            self.step += 1
            if not math.isfinite(loss):
                raise ModelError(
                    f"FFW diverged (loss {loss}) at tau {self.state.tau}, step {self.step}; try a lower gate_lr"
                )
            if self.callback is not None and _dist.is_main_process():
                self.callback({"kind": "step", "step": self.step, "epoch": self.progress["epoch"] + 1, "loss": loss})
        self._end_epoch_adversary()
        means = torch.tensor([sums[k] / max(steps, 1) for k in sums], dtype=torch.float64)
        means = _dist.all_reduce_sum(means) / _dist.rank_and_world()[1]  # averaged over ranks
        return {f"train_{k}": float(v) for k, v in zip(sums, means)}

    def evaluate(self, *, hard: bool) -> dict[str, float]:
        """On D^u_val: task accuracy and CE; the search's own linear head (accuracy ``bias``, ``mi``); the
        adversary's term ``dependence``; the closed-form linear readability ``readability`` and the accuracy
        of a cross-fitted LDA classifier ``lda_bias`` (adversary-free); all summed / averaged over attributes."""
        self.state.tau = self.progress["tau"]
        return self._summarise(*self._features(self.val, hard=hard))

    @torch.no_grad()
    def _summarise(self, logits: Tensor, z: Tensor, y: Tensor, b: Tensor) -> dict[str, float]:
        """:meth:`evaluate`'s numbers from D^u_val outputs already computed."""
        ce = float(F.cross_entropy(logits, y))
        cols = bias_columns(b)
        accs, mis, reads, ldas, deps = [], [], [], [], []
        for i, (col, k) in enumerate(zip(cols, self.bias_cardinalities)):  # each attribute its own K
            p = self.heads[i](z)
            accs.append(float((p.argmax(1) == col).float().mean()))
            mis.append(float(mutual_information(p.softmax(1), col, k)))
            zc, cc = z.cpu(), col.cpu()
            reads.append(lda_readability(zc, cc, k, ridge=self.cfg.lda_ridge))
            ldas.append(lda_crossfit_accuracy(zc, cc, k, ridge=self.cfg.lda_ridge))
            if self.cfg.adversary == "mlp":
                deps.append(float(mi_term(self.mlps[i], z, col, k)))
            elif self.lda is not None:
                deps.append(self.lda.measure(zc, cc, k, given=y.cpu() if self.cfg.condition_on_target else None))
        dependence = sum(deps) if deps else sum(mis)
        return {
            "task": float((logits.argmax(1) == y).float().mean()),
            "ce": ce,
            "bias": sum(accs) / len(accs),
            "mi": sum(mis),
            "dependence": dependence,
            "readability": sum(reads),
            "lda_bias": sum(ldas) / len(ldas),
            "objective": ce + self.cfg.gamma * dependence,
        }

    def gate_stats(self) -> dict[str, float]:
        masks = self.gated.hard_masks()
        total = sum(m.numel() for m in masks.values())
        pruned = sum(int((m == 0).sum()) for m in masks.values())
        tau = self.progress["tau"]
        # gates that the hard mask prunes but the tau-model still mostly passes (the soft/hard gap)
        undecided = sum(
            int(((g.m < 0) & (2 * torch.sigmoid(g.m / tau) > 0.5)).sum()) for g in self.gated.gates.values()
        )
        return {"sparsity": pruned / total, "undecided": undecided / total}

    def initial_record(self) -> None:
        """Epoch 0: the vanilla model (every gate at 1) is a candidate too: FFW may not beat it."""
        # every gate is exactly 1 before the first step (m = 0: soft 2 sigmoid(0) = 1, hard m >= 0), so the tau-model
        # and the hard-masked model are both the vanilla model, whose D^u_val outputs pretrain_heads already has
        assert self._vanilla_val is not None, "pretrain_heads runs first"
        vanilla = self._summarise(*self._vanilla_val)
        self._vanilla_val = None
        rec = {
            "epoch": 0,
            "level": 0,
            "tau": self.progress["tau"],
            "val_soft": vanilla,
            "val_hard": dict(vanilla),
            **self.gate_stats(),
            "time_s": 0.0,
        }
        self.history.append(rec)
        self.consider(rec)

    def run_epoch(self, start_time: float, time_offset: float) -> dict[str, Any]:
        p = self.progress
        stats = self.train_epoch()
        p["epoch"] += 1
        p["epoch_in_level"] += 1
        hard = self.evaluate(hard=True)
        # the tau-model on D^u_val only where it decides something: the plateau test, the level's end (agreement)
        soft = self.evaluate(hard=False) if self._soft_decides() else None
        rec = {
            "epoch": p["epoch"],
            "level": p["level"],
            "tau": p["tau"],
            **stats,
            "val_soft": soft,
            "val_hard": hard,
            **self.gate_stats(),
            "time_s": time_offset + time.perf_counter() - start_time,
        }
        self.history.append(rec)
        self.consider(rec)
        self.after_epoch(rec, soft, hard)
        return rec
