"""After the gates: train the kept weights a few epochs under the search's own objective J (``tune_epochs``).

The gates choose a sub-network; they cannot move a weight. Fine-tuning the kept weights on D^u_train with the
cross-entropy alone lifts task accuracy but teaches the bottleneck the bias again (an MLP probe read 25-54 %,
docs/design/ffw-defaults.md, "Why tune the kept weights"); under J = CE + gamma * D, with D the probe-free linear readability
of the bias within each target class, it lifts task accuracy while D holds the bias down. One epoch:

    logits, z = f(shift(x))                # the exported network; BatchNorm statistics frozen (eval mode);
                                           # images shifted by up to tune_shift pixels (a small-data prior)
    J = CE(logits, y) + tune_gamma * D(z, b)
    every parameter <- Adam step on dJ   # weights pruned by the gates (exact zeros) stay exactly zero

After every epoch the model is scored on D^u_val by the search's own selection rule (``FFWConfig.selection``; J with
the search's gamma by default, D measured on the whole split) and the best state is kept; the gates' state (epoch
0) is a candidate, so tuning can only be chosen where D^u_val prefers it; an epoch whose D^u_val accuracy is near
chance is never preferred to one that is not (ffw/_harm.py). The test set chooses nothing.

Under torchrun each rank takes its share of every epoch's order (the global batch in the 1-rank order for D), the
gradients are averaged before each step, and D^u_val is scored identically on every rank.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import _dist
from ..data import iterate_batches
from ..models import batch_memory_format, collect_outputs, forward_with_bottleneck, head_shape, laid_out
from ._adversary import bias_columns, labelled, lda_readability, probe_free_penalty, probe_free_term


@dataclass
class TuneRecord:
    """What the weight tuning did: its settings, the epoch kept (0: the gates' state), the D^u_val numbers before
    and after (``val_before`` / ``val_after``: task, ce, dependence, objective, selection_score), every epoch's
    record, how many pruned weights were held at zero, why it stopped early (None: it did not) and its time."""

    epochs: int
    chosen_epoch: int
    gamma: float
    lr: float
    batch_size: int
    shift: int
    val_before: dict[str, float]
    val_after: dict[str, float]
    history: list[dict[str, Any]]
    held_zero: int
    stopped: str | None
    selection: str
    time_s: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def shift_images(x: Tensor, offsets: Tensor, k: int) -> Tensor:
    """Each image of ``x`` (N, C, H, W) translated by (offsets[i] - k) pixels down and right, the edges replicated:
    ``offsets`` (N, 2) in [0, 2k]. Other inputs (tabular rows, sequences) are returned as they are.

    One gather over the padded batch (no loop over the images): ~0.02 s per epoch of 6,000 28 x 28 images."""
    if x.dim() != 4 or k == 0:
        return x
    n, c, h, w = x.shape
    padded = F.pad(x, (k, k, k, k), mode="replicate")
    width = w + 2 * k
    offsets = offsets.to(x.device)
    base = (torch.arange(h, device=x.device)[:, None] * width + torch.arange(w, device=x.device)[None]).view(1, 1, -1)
    index = (base + (offsets[:, 0] * width + offsets[:, 1]).view(n, 1, 1)).expand(n, c, h * w)
    return padded.flatten(2).gather(2, index).view(n, c, h, w)


def tuning_memory(cfg) -> int:
    """Batches the tuning's bias term remembers: the search's ``memory`` x ``batch_size`` rows, in tuning batches."""
    return -(-cfg.memory * cfg.batch_size // cfg.tune_batch_size)


def _zeros_held(model: nn.Module) -> list[tuple[Tensor, Tensor]]:
    """(weight, mask) of every weight matrix / kernel with exact zeros: the pruned weights, held at zero."""
    held: list[tuple[Tensor, Tensor]] = []
    for p in model.parameters():
        if p.dim() > 1:
            mask = p.detach() != 0
            if not bool(mask.all()):
                held.append((p, mask.to(p.dtype)))
    return held


def _score_val(model: nn.Module, search, device) -> dict[str, float]:
    """D^u_val numbers of ``model``: task accuracy, CE, the bias term measured on the whole split (each attribute
    with its own number of classes, given the target when the search conditions on it), J (and the unconditioned
    readability under selection='readability') and the selection score."""
    cfg, cards = search.cfg, search.bias_cardinalities
    out = collect_outputs(model, search.val, head=search.head, device=device)
    _, z, y, b = labelled(out)
    given = y if cfg.condition_on_target else None
    dependence: float = sum(
        lda_readability(z, col, k, ridge=cfg.lda_ridge, given=given) for col, k in zip(bias_columns(b), cards)
    )
    ce = float(F.cross_entropy(out.logits, y))
    task = float((out.logits.argmax(1) == y).float().mean())
    rec = {"task": task, "ce": ce, "dependence": dependence, "objective": ce + cfg.gamma * dependence}
    if cfg.selection == "readability":  # as the search's rule: the reading not conditioned on the target
        rec["readability"] = sum(
            lda_readability(z, col, k, ridge=cfg.lda_ridge) for col, k in zip(bias_columns(b), cards)
        )
    rec["selection_score"] = search.selection_score(rec)  # the search's own rule
    return rec


def _preferred(search, val: dict[str, float], best: dict[str, float]) -> bool:
    """Whether an epoch's D^u_val numbers beat the best so far: a near-chance epoch never beats one that is not
    (``search.usable``, ffw/_harm.py: J prefers a collapsed network, whose constant bottleneck makes D 0); then the
    selection score."""
    usable = getattr(search, "usable", lambda v: True)  # a search without the rule (hand-built in tests): score only
    return (usable(val), val["selection_score"]) > (usable(best), best["selection_score"])


def tune_kept_weights(
    exported: nn.Module, search, *, callback: Callable[[dict[str, Any]], None] | None = None
) -> TuneRecord | None:
    """Train ``exported`` (in place) for ``tune_epochs`` epochs under J on D^u_train and keep its best state on
    D^u_val (see the module docstring). Returns what it did (None when ``tune_epochs`` is 0)."""
    cfg = search.cfg
    if cfg.tune_epochs == 0:
        return None
    start = time.perf_counter()
    device = next(exported.parameters()).device
    exported.eval()  # BatchNorm statistics and dropout as in the search: the frozen model's
    params = list(exported.parameters())
    held = _zeros_held(exported)
    example = next(iter(iterate_batches(search.train, batch_size=2, device=device))).x
    fmt = batch_memory_format(exported, example, device=device)
    d, _ = head_shape(exported, search.head)
    batch = cfg.tune_batch_size
    # a fresh probe-free term on the exported bottleneck (a structured export is narrower): the search's own kind
    # when it is probe-free, else the closed-form linear one. Its reference sample holds as many rows as the
    # search's (memory x batch_size), whatever the batch: smaller batches would otherwise pair each batch with fewer
    # remembered samples (a noisier gradient)
    term = probe_free_term(
        dataclasses.replace(cfg, memory=tuning_memory(cfg)), d, "mmd" if cfg.adversary == "mmd" else "lda"
    )
    term.fit(labelled(collect_outputs(exported, search.train, head=search.head, device=device)).z)
    cards, cond = search.bias_cardinalities, cfg.condition_on_target
    rank, world = _dist.rank_and_world()
    history: list[dict[str, Any]] = [{"epoch": 0, "val": _score_val(exported, search, device)}]
    best, best_state = history[0], copy.deepcopy(exported.state_dict())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=cfg.tune_lr)
    steps = cfg.tune_epochs * -(-len(search.train) // batch)
    # cosine: the learning rate falls to 0 by the last step, so the last epochs move the model little (less noise
    # between the epochs D^u_val chooses from)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps) if cfg.tune_schedule == "cosine" else None
    stopped = None
    try:
        for epoch in range(1, cfg.tune_epochs + 1):
            train = _tune_epoch(
                exported,
                search,
                opt,
                schedule,
                term,
                held,
                fmt,
                epoch=epoch,
                rank=rank,
                batch_size=batch,
                world=world,
                cards=cards,
                cond=cond,
                device=device,
            )
            if train.get("diverged"):  # keep the best state so far; say so
                stopped = f"the loss became non-finite in epoch {epoch} (try a lower tune_lr): stopped there"
                break
            rec: dict[str, Any] = {
                "epoch": epoch,
                **train,
                "val": _score_val(exported, search, device),
                "time_s": time.perf_counter() - start,
            }
            history.append(rec)
            if _preferred(search, rec["val"], best["val"]):
                best, best_state = rec, copy.deepcopy(exported.state_dict())
            if callback is not None and _dist.is_main_process():
                callback({"kind": "tune", **rec, "epochs": cfg.tune_epochs})
    finally:
        for p in params:
            p.requires_grad_(False)
    exported.load_state_dict(best_state)
    return TuneRecord(
        epochs=cfg.tune_epochs,
        chosen_epoch=best["epoch"],
        gamma=cfg.tune_gamma,
        lr=cfg.tune_lr,
        batch_size=batch,
        shift=cfg.tune_shift,
        val_before=history[0]["val"],
        val_after=best["val"],
        history=history,
        held_zero=sum(int((m == 0).sum()) for _, m in held),
        stopped=stopped,
        selection=f"the epoch (0: the gates' state) with the best D^u_val selection score ({cfg.selection})",
        time_s=time.perf_counter() - start,
    )


def _tune_epoch(
    model: nn.Module,
    search,
    opt: torch.optim.Optimizer,
    schedule,
    term,
    held,
    fmt,
    *,
    epoch: int,
    batch_size: int,
    rank: int,
    world: int,
    cards,
    cond: bool,
    device,
) -> dict[str, float]:
    cfg = search.cfg
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + 500_000 + epoch)  # apart from the search's orders
    perm = torch.randperm(len(search.train), generator=gen)
    # each sample's shift for this epoch, drawn by its index in the split: the same on any number of ranks
    offsets = torch.randint(0, 2 * cfg.tune_shift + 1, (len(search.train), 2), generator=gen)
    place = torch.empty_like(perm)
    place[perm] = torch.arange(len(perm))
    sums, steps = {"loss": 0.0, "ce": 0.0, "dependence": 0.0}, 0
    for batch in iterate_batches(
        search.train,
        batch_size=_dist.per_rank_batch(batch_size, world),
        indices=_dist.shard(perm, rank=rank, world=world),
        device=device,
    ):
        x = shift_images(batch.x, offsets[batch.index], cfg.tune_shift)
        logits, z = forward_with_bottleneck(model, laid_out(x, fmt), search.head)
        ce = F.cross_entropy(logits, batch.y)
        assert batch.b is not None, "FFW's data has bias labels (checked on entry)"
        z_all, b_all, y_all = z, batch.b, batch.y
        if world > 1:  # D on the global batch, in the 1-rank order (gradient back to each rank's own rows)
            order = _dist.global_batch_order(place[batch.index]).to(z.device)
            z_all = _dist.all_gather_with_grad(z)[order]
            b_all, y_all = (_dist.all_gather(t)[order.to(t.device)] for t in (batch.b, batch.y))
        dep = probe_free_penalty(term, z_all, bias_columns(b_all), y_all, cards, given_target=cond)
        loss = ce + cfg.tune_gamma * dep
        bad = torch.tensor([0.0 if bool(torch.isfinite(loss.detach())) else 1.0])
        if float(_dist.all_reduce_sum(bad)) > 0:  # every rank stops together (CE is each rank's own)
            return {"diverged": True}
        opt.zero_grad(set_to_none=True)
        loss.backward()
        _dist.average_gradients(list(model.parameters()))
        opt.step()
        if schedule is not None:
            schedule.step()
        with torch.no_grad():
            for p, mask in held:
                p.mul_(mask)
        term.observe(z_all.detach().cpu(), b_all.cpu(), y_all.cpu())
        sums["loss"] += float(loss.detach())
        sums["ce"] += float(ce.detach())
        sums["dependence"] += float(dep.detach())
        steps += 1
    means = torch.tensor([sums[k] / max(steps, 1) for k in sums], dtype=torch.float64)
    means = _dist.all_reduce_sum(means) / world
    return {f"train_{k}": float(v) for k, v in zip(sums, means)}
