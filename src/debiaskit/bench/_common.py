"""Shared pieces of the benchmark suites: cells, caching, mean +- std tables."""
from __future__ import annotations

import math
import platform
import statistics
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable

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


def load_cell(path: Path) -> dict[str, Any] | None:
    """A finished cell's JSON result, or None (so re-running a suite skips finished cells)."""
    return read_json(path) if Path(path).is_file() else None


def with_cells_on_disk(given: list[dict[str, Any]], on_disk: Iterable[dict[str, Any]],
                       key: Callable[[dict[str, Any]], Hashable]) -> list[dict[str, Any]]:
    """``given`` (this process's cells) plus every finished cell on disk it lacks: what a suite renders its
    reports from, under :func:`debiaskit._io.report_lock`, so a report never drops a cell that another
    process sharing the root finished (a finished cell never changes, so either copy is the same)."""
    seen = {key(c) for c in given}
    return list(given) + [c for c in on_disk if key(c) not in seen]
