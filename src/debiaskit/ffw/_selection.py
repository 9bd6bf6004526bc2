"""Which hard-masked state of the search is kept: the selection score, the near-chance exclusion, ``consider``."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ._config import FFWConfig
from ._gates import GatedModel
from ._harm import ChanceFloor, near_chance


class _Selection:
    """The search's selection rule (a mixin of ``_Search``; the weight tuning reuses ``selection_score``)."""

    cfg: FFWConfig
    floor: ChanceFloor
    history: list[dict[str, Any]]
    best: dict[str, Any] | None
    best_gates: dict[str, Tensor] | None
    gated: GatedModel

    def selection_score(self, val: dict[str, float]) -> float:
        """The selection rule (``SELECTIONS``) on D^u_val numbers (task, ce, objective; readability for
        'readability'): higher is better. The search's states and the weight tuning's epochs are both judged by it."""
        sel = self.cfg.selection
        if sel == "objective":
            return -val["objective"]
        if sel == "readability":
            return -(val["ce"] + self.cfg.gamma * val["readability"])
        return val["task"]

    def usable(self, val: dict[str, float]) -> bool:
        """Whether a candidate's D^u_val numbers clear the near-chance floor (``ffw/_harm.py``): a collapsed network
        (J's favourite: a constant bottleneck makes D 0) is excluded before any score is compared."""
        return not near_chance(val["task"], self.floor)

    def _score(self, record: dict[str, Any]) -> float:
        return self.selection_score(record["val_hard"])

    def _keeps_task(self, record: dict[str, Any]) -> bool:
        """A gated candidate whose D^u_val task accuracy is not below the vanilla model's (epoch 0)."""
        return record["epoch"] > 0 and record["val_hard"]["task"] >= self.history[0]["val_hard"]["task"]

    def consider(self, record: dict[str, Any]) -> None:
        """Keep the best hard-masked state on D^u_val: near-chance candidates never (while any other exists); then
        by the selection score among the gated candidates that keep the vanilla model's task accuracy; by the score
        alone while there is none. J alone prefers a dead network (CE log K, D 0) to any model that still reads the
        bias - which an overconfident vanilla model's CE makes easy to reach (docs/design/ffw-structured.md)."""
        score = self._score(record)
        record["selection_score"] = score
        record["keeps_task"] = self._keeps_task(record)
        record["near_chance"] = not self.usable(record["val_hard"])
        key = (not record["near_chance"], record["keeps_task"], score)
        if self.best is None or key > (
            not self.best.get("near_chance", False),
            self.best.get("keeps_task", False),
            self.best["selection_score"],
        ):
            self.best = record
            self.best_gates = {k: v.clone() for k, v in self.gated.gate_tensors().items()}
