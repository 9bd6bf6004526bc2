"""Shared pieces of the benchmark suites: cells, caching, mean +- std tables."""

from __future__ import annotations

import math
import platform
import statistics
from collections.abc import Callable, Hashable, Iterable
from pathlib import Path
from typing import Any

import torch

from ..runs import read_json


def machine_description() -> str:
    return f"{platform.machine()} CPU, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}"


def mean_std(values: Iterable[float | None]) -> tuple[float, float, int]:
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not vals:
        return float("nan"), float("nan"), 0
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0), len(vals)


def fmt_pm(values: Iterable[float | None], *, scale: float = 100.0, digits: int = 2) -> str:
    m, s, n = mean_std(values)
    if n == 0:
        return "-"
    return f"{scale * m:.{digits}f} +- {scale * s:.{digits}f}"


def fmt_stat(values: Iterable[float | None], *, scale: float = 100.0, digits: int = 2) -> str:
    """mean +- sample std over the finished runs; one run is printed as its value with ``(n=1)`` (a single
    run has no spread, and "+- 0.00" would claim one)."""
    m, s, n = mean_std(values)
    if n == 0:
        return "-"
    if n == 1:
        return f"{scale * m:.{digits}f} (n=1)"
    return f"{scale * m:.{digits}f} +- {scale * s:.{digits}f}"


# trivial baselines every comparison table shows first: (row name, mark of a row below it)
MAJORITY = "majority class"
MARKED_ON = ("worst_group_accuracy", "mean_group_accuracy")
BELOW_NOTE = (
    "↓maj / ↓van: below the majority-class row / below the vanilla row on worst-group or group-mean "
    "accuracy (means over seeds, no significance test: read the std). Methods that find the bias-conflicting samples from the mistakes of an "
    "ERM or deliberately biased model (LfF, DCWP, JTT, ...) assume the bias is easier to learn than the "
    "target; where it is not (a protected attribute that predicts the label weakly, as in Adult and "
    "COMPAS), the samples they up-weight are mostly hard-to-classify ones, not bias-conflicting ones, and "
    "they can fall below ERM or the trivial predictor."
)


def below_marks(means: dict[str, dict[str, float | None]], method: str, *, reference: str) -> str:
    """`` ↓maj`` / `` ↓van`` when ``method``'s mean worst-group or group-mean accuracy is below the majority-class
    row's / the ``reference`` (vanilla) row's; ``means``: row -> metric -> mean (None: not measured)."""
    marks = []
    for base, mark in ((MAJORITY, "↓maj"), (reference, "↓van")):
        if method in (MAJORITY, base) or base not in means:
            continue
        ours, theirs = means.get(method, {}), means[base]
        if any(ours.get(k) is not None and theirs.get(k) is not None and ours[k] < theirs[k] - 1e-9 for k in MARKED_ON):
            marks.append(mark)
    return "".join(f" {m}" for m in marks)


def load_cell(path: Path) -> dict[str, Any] | None:
    """A finished cell's JSON result, or None (so re-running a suite skips finished cells)."""
    return read_json(path) if Path(path).is_file() else None


def with_cells_on_disk(
    given: list[dict[str, Any]], on_disk: Iterable[dict[str, Any]], key: Callable[[dict[str, Any]], Hashable]
) -> list[dict[str, Any]]:
    """``given`` (this process's cells) plus every finished cell on disk it lacks: what a suite renders its
    reports from, under :func:`debiaskit._io.report_lock`, so a report never drops a cell that another
    process sharing the root finished (a finished cell never changes, so either copy is the same)."""
    seen = {key(c) for c in given}
    return list(given) + [c for c in on_disk if key(c) not in seen]
