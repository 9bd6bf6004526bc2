"""`debiaskit bench adult`: the Adult suite of the comparison harness plus fairlearn's rows, one table."""
from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional

import typer

from ._common import console, esc, say
from .cmd_bench import bench_app, invoked_command
# debiaskit's library (torch) is imported inside each command, so that `debiaskit --help` and argument errors stay fast


@bench_app.command("adult")
def bench_adult(out: Path = typer.Option(Path("runs/bench/compare"), help="root folder of the cached cells (shared with `bench compare`)"),
                seeds: int = typer.Option(3, help="number of seeds (0..N-1)"),
                bias: Optional[List[str]] = typer.Option(None, "--bias", help="protected attribute(s): sex, race (default both)"),
                methods: Optional[List[str]] = typer.Option(None, "--methods", help="our methods (default: every registered method, FFW in both modes)"),
                fairlearn: bool = typer.Option(True, help="add fairlearn's rows (needs `pip install -e '.[bench]'`)"),
                jobs: int = typer.Option(1, min=1, help="worker processes for our methods' (seed, bias) groups"),
                report_only: bool = typer.Option(False, "--report-only", help="train nothing: tabulate the finished cells"),
                progress: bool = False) -> None:
    """UCI Adult: every method of the harness (audited; FFW in both modes) beside fairlearn; writes OUT/adult/adult.md + .json."""
    from ..bench import run_adult_bench, write_adult_results
    start = time.perf_counter()
    records = run_adult_bench(root=out, seeds=tuple(range(seeds)), values=tuple(bias or ()) or None,
                              methods=methods or None, fairlearn=fairlearn, jobs=jobs, report_only=report_only,
                              progress=progress, command=invoked_command(), echo=say)
    path = write_adult_results(records, root=out, command=invoked_command(), wall_time_s=time.perf_counter() - start)
    say(path.read_text())
    console.print(f"written: {esc(path)} and {esc(path.with_suffix('.json'))}", soft_wrap=True)
