"""FFW's stages after the gates - weight tuning, eraser, head refit - run on any network, without a gate search.

What does each stage of FFW buy? The ablation of ``debiaskit bench dev`` compares FFW with pipelines that have the
same data access (D^u_train to learn, D^u_val to choose) but no gates: every weight tuned + eraser + refit, the
eraser + refit on the vanilla bottleneck, the head refit alone (DFR). For the comparison to say anything, they must
run the very code FFW runs after its gates, with the same config; this module runs it on a network no gate pruned
(no weight is exactly zero there, so the tuning trains every weight), or on a gated export to add the stages one by
one. Nothing here is a new formula.

The eraser and the head refit themselves live here too (``collect_bottleneck`` -> ``erase_step`` -> ``refit_step``,
with their records :class:`EraserRecord` and :class:`RefitRecord`): FFW's pipeline (``_pipeline.py``) calls them as
its ``erase`` and ``refit`` stages, :func:`apply_stages` and compare_ungated's candidate through ``_after_gates``.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .. import _dist
from ..audit import logits_accuracy
from ..data import as_bias_datasets
from ..models import collect_outputs, head_shape, resolve_head
from ._adversary import Labelled, bias_columns, labelled, lda_readability
from ._config import FFWConfig, _check_data
from ._erase import LinearEraser, attach_eraser, conditional_erasers, fit_linear_eraser
from ._gates import freeze
from ._refit import REFIT_GRID, refit_head
from ._selection import _Selection
from ._tune import TuneRecord, tune_kept_weights


@dataclass
class StagesResult:
    """What :func:`apply_stages` did: the new network (``model``, its head ``head``: behind the eraser when there is
    one) and each stage's record as in :class:`FFWResult` (None: the stage was off)."""

    model: nn.Module
    head: str
    tune: TuneRecord | None
    eraser: EraserRecord | None
    head_refit: RefitRecord | None
    wall_time_s: float


class _Context:
    """What the stages read of a search: its config, data, head, the data's bias cardinalities and the search's own
    selection rule (the same function, so a tuned epoch is chosen exactly as FFW chooses it)."""

    selection_score = _Selection.selection_score

    def __init__(self, *, cfg: FFWConfig, train, val, head: str) -> None:
        self.cfg, self.train, self.val, self.head, self.callback = cfg, train, val, head, None
        self.bias_cardinalities = _check_data(train, val)


def apply_stages(
    model: nn.Module,
    *,
    train,
    val,
    head: str | None = None,
    config: FFWConfig | None = None,
    device: str = "cpu",
    **overrides,
) -> StagesResult:
    """Run FFW's after-gate stages on a copy of ``model``: ``tune_epochs`` of weight tuning under J, then the eraser
    (``erase``) and the head refit (``refit_head``), all on D^u_train (``train``) and chosen on D^u_val (``val``), as
    :func:`find_fantastic_weights` runs them after its gates. ``overrides`` set :class:`FFWConfig` fields.

    Example (DFR: the head refit alone on the vanilla bottleneck)::

        res = apply_stages(model, train=splits.unbiased_train, val=splits.unbiased_val, tune_epochs=0,
                           erase="none", refit_head=True)
    """
    start = time.perf_counter()
    if config is None:
        config = FFWConfig(**overrides)
    elif overrides:
        raise ValueError("pass either config= or keyword overrides, not both")
    where = _dist.check_device(device)
    head_name, _ = resolve_head(model, head)
    head_shape(model, head_name)  # the eraser and the refit read a Linear head's input
    train, val = as_bias_datasets(train, val)
    ctx = _Context(cfg=config, train=train, val=val, head=head_name)
    work = copy.deepcopy(model).to(where).eval()
    freeze(work)  # the tuning unfreezes what it trains and freezes it again
    tune = tune_kept_weights(work, ctx)
    new_head, eraser, refit = _after_gates(work, ctx)
    return StagesResult(
        model=work, head=new_head, tune=tune, eraser=eraser, head_refit=refit, wall_time_s=time.perf_counter() - start
    )


@dataclass
class EraserRecord:
    """What the eraser did: its kind, the head it sits in front of, the bottleneck's width, its rank (directions
    erased), what its fit says (``fit``: variance removed; for "conditional" the candidates scored and the rule),
    D^u_val task accuracy and closed-form readability of the bias before and after it, and its time (the outputs'
    collection included). ``to_json()``: the record of ffw.json (``fit``'s keys at the top level)."""

    kind: str
    head: str
    dim: int
    rank: int
    fit: dict[str, Any]
    val_task_before: float
    val_task_after: float
    val_readability_before: float
    val_readability_after: float
    time_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        return {**{k: out[k] for k in ("kind", "head", "dim", "rank")}, **out.pop("fit"), **out}


@dataclass
class RefitRecord:
    """What the head refit did (``_refit.py``): the head refit, its kind, the penalty kept (None: the head as it was
    kept), D^u_val task accuracy before and after, the penalties tried, the D^u_train samples and its time."""

    head: str
    kind: str
    kept_lam: float | None
    val_task_before: float
    val_task_after: float
    grid: list[dict[str, Any]]
    train_samples: int
    time_s: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Bottleneck:
    """The exported network's outputs on D^u_train and D^u_val, collected once for the eraser and the refit: the
    (erased) bottlenecks, D^u_val logits behind the current head, the head's fits already made (for the refit)."""

    train: Labelled
    val: Labelled
    head: str
    train_z: Tensor
    val_z: Tensor
    val_logits: Tensor
    fits: dict[float, dict[str, Tensor]] | None
    start: float


def collect_bottleneck(exported: nn.Module, search: Any) -> Bottleneck | None:
    """One pass over D^u_train and D^u_val through ``exported`` (None when neither the eraser nor the refit is on)."""
    cfg = search.cfg
    if cfg.erase == "none" and not cfg.refit_head:
        return None
    start = time.perf_counter()
    device = next(exported.parameters()).device
    train = labelled(collect_outputs(exported, search.train, head=search.head, device=device))
    val = labelled(collect_outputs(exported, search.val, head=search.head, device=device))
    return Bottleneck(train, val, search.head, train.z, val.z, val.logits, None, start)


def erase_step(exported: nn.Module, search: Any, bn: Bottleneck | None) -> EraserRecord | None:
    """The eraser in front of the head (in place; ``erase``); moves ``bn`` behind it. None when off."""
    if bn is None or search.cfg.erase == "none":
        return None
    bn.head, eraser, bn.train_z, bn.val_z, bn.fits, bn.val_logits = _erase(exported, search, bn.train, bn.val)
    eraser.time_s = time.perf_counter() - bn.start
    return eraser


def refit_step(exported: nn.Module, search: Any, bn: Bottleneck | None) -> RefitRecord | None:
    """The head's refit on the (erased) bottleneck (in place; ``refit_head``). None when off."""
    if bn is None or not search.cfg.refit_head:
        return None
    # a gated head keeps its pruned zeros; the eraser's scoring fits are reused, not redone
    fit = refit_head(
        exported.get_submodule(bn.head),
        train_z=bn.train_z,
        train_y=bn.train.y,
        train_b=bn.train.b,
        val_z=bn.val_z,
        val_y=bn.val.y,
        keep_zeros=search.cfg.include_head,
        fits=bn.fits,
    )
    return RefitRecord(head=bn.head, **fit)


def _after_gates(exported: nn.Module, search: Any) -> tuple[str, EraserRecord | None, RefitRecord | None]:
    """The closed-form steps on the exported model (in place), from one pass over D^u_train and D^u_val: the
    eraser in front of the head (``erase``), then the head's refit on the (erased) bottleneck (``refit_head``).
    Returns the head's name and what each step did (None when off)."""
    bn = collect_bottleneck(exported, search)
    eraser = erase_step(exported, search, bn)
    head_refit = refit_step(exported, search, bn)
    return (search.head if bn is None else bn.head), eraser, head_refit


# within-target directions tried by erase="conditional" (clipped to how many there are), fewest first
CONDITIONAL_RANKS = (0, 5, 10, 20, 40, 80, 10_000)


def _choose_conditional(
    head: nn.Module, search: Any, train: Labelled, val: Labelled
) -> tuple[LinearEraser, dict[str, Any], dict[float, dict[str, Tensor]], tuple[Tensor, Tensor]]:
    """erase="conditional": the candidate erasers (the linear one plus k within-target directions) scored by
    D^u_val task accuracy - through the head refit on each erased D^u_train when ``refit_head`` (the lambda the
    full refit picks for k = 0, one fit per candidate), else through the head as it is - and the one that erases
    most among those within one standard error of the best (the one-standard-error rule: no tolerance to tune).
    Also returns the head fits made for the chosen candidate (lam -> parameters) and the erased D^u_train / D^u_val
    bottlenecks they were made on (on the CPU, recomputed bit for bit rather than kept for every candidate): the
    final refit reuses both, so the fits match their inputs exactly."""
    cards = search.bias_cardinalities
    candidates = conditional_erasers(train.z, train.y, train.b, cards, ranks=CONDITIONAL_RANKS)
    scored: list[dict[str, Any]] = []
    grid: tuple[float, ...] = REFIT_GRID
    fits: list[dict[float, dict[str, Tensor]]] = []
    for i, (eraser, info) in enumerate(candidates):
        with torch.no_grad():
            zt, zv = eraser(train.z), eraser(val.z)
        work = copy.deepcopy(head).cpu()
        fits.append({})
        if search.cfg.refit_head:
            fit = refit_head(
                work,
                train_z=zt,
                train_y=train.y,
                train_b=train.b,
                val_z=zv,
                val_y=val.y,
                keep_zeros=search.cfg.include_head,
                grid=grid,
                fits=fits[-1],
            )
            if i == 0:  # k = 0 first: its lambda scores the others (none kept: the original head does)
                grid = () if fit["kept_lam"] is None else (fit["kept_lam"],)
        with torch.no_grad():
            scored.append(
                {"within_target_rank": info["within_target_rank"], "val_task": logits_accuracy(work(zv), val.y)}
            )
    best = max(c["val_task"] for c in scored)
    stderr = math.sqrt(best * (1 - best) / len(val.y))
    pick = max(i for i, c in enumerate(scored) if c["val_task"] >= best - stderr)
    eraser, info = candidates[pick]
    with torch.no_grad():
        erased = eraser(train.z), eraser(val.z)
    return (
        eraser,
        {
            **info,
            "candidates": scored,
            "val_task_stderr": stderr,
            "selection": "most within-target directions whose D^u_val task accuracy is within one standard "
            "error of the best candidate's",
        },
        fits[pick],
        erased,
    )


def _erase(
    exported: nn.Module, search: Any, train: Labelled, val_before: Labelled
) -> tuple[str, EraserRecord, Tensor, Tensor, dict[float, dict[str, Tensor]], Tensor]:
    """Fit the eraser on the exported model's D^u_train bottleneck (the search's bias labels) and put it in
    front of the head (in place); returns the new head name, what the eraser did with its effect on D^u_val,
    the erased D^u_train and D^u_val bottlenecks, the head fits already made behind it (for the refit) and the
    D^u_val logits behind the eraser."""
    device = next(exported.parameters()).device
    cards = search.bias_cardinalities  # each attribute's one-hot and readability with its own K
    fits: dict[float, dict[str, Tensor]] = {}
    if search.cfg.erase == "conditional":
        eraser, fit, fits, (train_after, z_after) = _choose_conditional(
            exported.get_submodule(search.head), search, train, val_before
        )
    else:
        eraser, fit = fit_linear_eraser(train.z, train.b, cards)
        with torch.no_grad():  # on the CPU, where the collected features are
            train_after, z_after = eraser(train.z), eraser(val_before.z)
    head = attach_eraser(exported, search.head, eraser.to(device))
    with torch.no_grad():  # D^u_val behind the eraser from the features already collected: no second forward pass
        logits_after = exported.get_submodule(head)(z_after.to(device)).cpu()  # HEAD.head, behind the eraser

    def readability(z: Tensor, b: Tensor) -> float:  # the search's closed-form reading, whole split, ridge 1e-2
        return sum(lda_readability(z, c, k) for c, k in zip(bias_columns(b), cards))

    fit = dict(fit)
    return (
        head,
        EraserRecord(
            kind=search.cfg.erase,
            head=search.head,
            dim=int(train.z.shape[1]),
            rank=int(fit.pop("rank")),
            fit=fit,
            val_task_before=logits_accuracy(val_before.logits, val_before.y),
            val_task_after=logits_accuracy(logits_after, val_before.y),
            val_readability_before=readability(val_before.z, val_before.b),
            val_readability_after=readability(z_after, val_before.b),
        ),
        train_after,
        z_after,
        fits,
        logits_after,
    )
