"""`debiaskit bench adult [--dataset compas]`: a tabular suite of the comparison harness (Adult, COMPAS) plus
fairlearn's rows and the trivial baselines, one table."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from ._common import console, esc, say
from .cmd_bench import bench_app, invoked_command

# debiaskit's library (torch) is imported inside each command, so that `debiaskit --help` and argument errors stay fast


@bench_app.command("adult")
def bench_adult(
    out: Path = typer.Option(
        Path("runs/bench/compare"), help="root folder of the cached cells (shared with `bench compare`)"
    ),
    seeds: int = typer.Option(3, help="number of seeds (0..N-1)"),
    dataset: str = typer.Option("adult", "--dataset", help="adult or compas"),
    bias: list[str] | None = typer.Option(
        None,
        "--bias",
        help="protected attribute(s); adult: sex, race; compas: race, race_binary, sex (default: all of the dataset's)",
    ),
    methods: list[str] | None = typer.Option(
        None, "--methods", help="our methods (default: every registered method, FFW in both modes)"
    ),
    fairlearn: bool = typer.Option(True, help="add fairlearn's rows (needs `pip install -e '.[bench]'`)"),
    jobs: int = typer.Option(1, min=1, help="worker processes for our methods' (seed, bias) groups"),
    report_only: bool = typer.Option(False, "--report-only", help="train nothing: tabulate the finished cells"),
    progress: bool = False,
) -> None:
    """UCI Adult or ProPublica COMPAS: every method of the harness (audited; FFW in both modes) beside fairlearn and
    the trivial baselines (majority class, vanilla); writes OUT/DATASET/DATASET.md + .json."""
    from ..bench import run_adult_bench, tabular_suite, write_adult_results

    tabular_suite(dataset)  # an unknown dataset is refused before anything runs
    start = time.perf_counter()
    records = run_adult_bench(
        root=out,
        seeds=tuple(range(seeds)),
        values=tuple(bias or ()) or None,
        methods=methods or None,
        fairlearn=fairlearn,
        jobs=jobs,
        report_only=report_only,
        progress=progress,
        command=invoked_command(),
        dataset=dataset,
        echo=say,
    )
    path = write_adult_results(
        records, root=out, command=invoked_command(), wall_time_s=time.perf_counter() - start, dataset=dataset
    )
    say(path.read_text())
    console.print(f"written: {esc(path)} and {esc(path.with_suffix('.json'))}", soft_wrap=True)
