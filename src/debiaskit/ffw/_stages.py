"""FFW's stages after the gates - weight tuning, eraser, head refit - run on any network, without a gate search.

What does each stage of FFW buy? The ablation of ``debiaskit bench dev`` compares FFW with pipelines that have the
same data access (D^u_train to learn, D^u_val to choose) but no gates: every weight tuned + eraser + refit, the
eraser + refit on the vanilla bottleneck, the head refit alone (DFR). For the comparison to say anything, they must
run the very code FFW runs after its gates, with the same config; this module runs it on a network no gate pruned
(no weight is exactly zero there, so the tuning trains every weight), or on a gated export to add the stages one by
one. Nothing here is a new formula.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any

from torch import nn

from .. import _dist
from ..data import as_bias_datasets
from ..models import head_shape, resolve_head
from ._gates import freeze
from ._search import FFWConfig, _after_gates, _check_data, _Search
from ._tune import tune_kept_weights


@dataclass
class StagesResult:
    """What :func:`apply_stages` did: the new network (``model``, its head ``head``: behind the eraser when there is
    one) and each stage's record as in :class:`FFWResult` (None: the stage was off)."""

    model: nn.Module
    head: str
    tune: dict[str, Any] | None
    eraser: dict[str, Any] | None
    head_refit: dict[str, Any] | None
    wall_time_s: float


class _Context:
    """What the stages read of a search: its config, data, head, the data's bias cardinalities and the search's own
    selection rule (the same function, so a tuned epoch is chosen exactly as FFW chooses it)."""

    selection_score = _Search.selection_score

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
    device = _dist.check_device(device)
    head_name, _ = resolve_head(model, head)
    head_shape(model, head_name)  # the eraser and the refit read a Linear head's input
    train, val = as_bias_datasets(train, val)
    ctx = _Context(cfg=config, train=train, val=val, head=head_name)
    work = copy.deepcopy(model).to(device).eval()
    freeze(work)  # the tuning unfreezes what it trains and freezes it again
    tune = tune_kept_weights(work, ctx)
    new_head, eraser, refit = _after_gates(work, ctx)
    return StagesResult(
        model=work, head=new_head, tune=tune, eraser=eraser, head_refit=refit, wall_time_s=time.perf_counter() - start
    )
