"""The tau schedule of the search: plateaus within a level, the level's end, agreement, refinement, the budget."""

from __future__ import annotations

from typing import Any

from ._config import FFWConfig


class _Schedule:
    """When a tau level ends and when the search stops (a mixin of ``_Search``: reads and moves ``progress``)."""

    cfg: FFWConfig
    progress: dict[str, Any]
    best: dict[str, Any] | None

    def after_epoch(self, rec: dict[str, Any], soft: dict[str, float] | None, hard: dict[str, float]) -> None:
        """Move the schedule after an epoch whose record is ``rec`` (the tau-model's D^u_val numbers ``soft``,
        None where they decide nothing; the hard-masked model's ``hard``)."""
        p, cfg = self.progress, self.cfg
        if p.get("refining"):
            self._refine_step()
            return
        plateau = False
        if self._plateau_decides():
            assert soft is not None, "the tau-model is evaluated wherever a plateau can end the level"
            best = p["plateau_best"]
            if best is None or soft["objective"] < best - cfg.plateau_threshold * abs(best):
                p["plateau_best"], p["bad_epochs"] = soft["objective"], 0
            else:
                p["bad_epochs"] += 1
            plateau = p["bad_epochs"] >= cfg.patience and p["epoch_in_level"] >= cfg.min_epochs_per_level
        if plateau or self._level_must_end():
            assert soft is not None, "the tau-model is evaluated at every level's end"
            rec["level_end"] = True
            self.end_level(soft, hard)

    def _best_score(self) -> float:
        assert self.best is not None, "epoch 0 is recorded before any schedule step"
        return self.best["selection_score"]

    def end_level(self, soft: dict[str, float], hard: dict[str, float]) -> None:
        p, cfg = self.progress, self.cfg
        agree = abs(soft["task"] - hard["task"]) <= cfg.agree_tol and abs(soft["bias"] - hard["bias"]) <= cfg.agree_tol
        budget_spent = cfg.max_epochs is not None and p["epoch"] >= cfg.max_epochs
        if agree and cfg.refine_patience > 0 and not budget_spent:
            # the paper stops here; refining keeps this tau while the hard model still improves on D^u_val
            p["refining"], p["refine_from"], p["refine_bad"] = True, p["epoch"], 0
            p["refine_best"] = self._best_score()
        elif agree:
            p["done"], p["stop_reason"] = (
                True,
                f"tau-model and hard-masked model agree on D^u_val at tau={p['tau']:.3g}",
            )
        elif cfg.max_epochs is not None and p["epoch"] >= cfg.max_epochs:
            p["done"], p["stop_reason"] = (
                True,
                (f"epoch budget max_epochs={cfg.max_epochs} spent (tau={p['tau']:.3g}) before agreement"),
            )
        elif p["level"] + 1 >= cfg.max_levels:
            p["done"], p["stop_reason"] = (
                True,
                f"max_levels={cfg.max_levels} reached (tau={p['tau']:.3g}) before agreement",
            )
        else:
            p["level"] += 1
            p["tau"] *= cfg.tau_decay
            p["epoch_in_level"], p["plateau_best"], p["bad_epochs"] = 0, None, 0

    def _level_must_end(self) -> bool:
        """The level ends after this epoch whatever the tau-model does: its epoch cap, or the budget, is reached."""
        p, cfg = self.progress, self.cfg
        return (cfg.max_epochs is not None and p["epoch"] >= cfg.max_epochs) or p["epoch_in_level"] >= cfg.level_cap()

    def _plateau_decides(self) -> bool:
        """Whether a plateau can end a level before its cap: the first epoch that can see one (the level's first
        epoch sets the reference, ``patience`` epochs without improvement follow) comes before the cap. With the
        default budget (2 epochs per level, patience 1) it cannot: the cap ends every level first."""
        cfg = self.cfg
        return max(cfg.patience + 1, cfg.min_epochs_per_level) < cfg.level_cap()

    def _soft_decides(self) -> bool:
        """Whether this epoch needs the tau-model's D^u_val numbers (not while refining: only the hard model
        counts there)."""
        return not self.progress.get("refining") and (self._plateau_decides() or self._level_must_end())

    def _refine_step(self) -> None:
        """After agreement: stop once the best hard-masked selection score has not improved for
        ``refine_patience`` epochs (or the budget is spent)."""
        p, cfg = self.progress, self.cfg
        if self._best_score() > p["refine_best"]:
            p["refine_best"], p["refine_bad"] = self._best_score(), 0
        else:
            p["refine_bad"] += 1
        budget_spent = cfg.max_epochs is not None and p["epoch"] >= cfg.max_epochs
        if p["refine_bad"] >= cfg.refine_patience or budget_spent:
            why = (
                "the epoch budget was spent"
                if p["refine_bad"] < cfg.refine_patience
                else (f"the D^u_val selection score stopped improving for {cfg.refine_patience} epoch(s)")
            )
            p["done"], p["stop_reason"] = (
                True,
                (
                    f"tau-model and hard-masked model agree on D^u_val at tau={p['tau']:.3g} (epoch {p['refine_from']}); "
                    f"refined at that tau until {why}"
                ),
            )
