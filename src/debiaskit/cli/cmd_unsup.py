"""`debiaskit bench unsup`: label-free methods (CALM, VCBA-style, JTT, LfF) with no bias labels, vs vanilla."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from ..errors import ConfigError
from ._common import console, esc, say
from .cmd_bench import bench_app, invoked_command

# debiaskit's library (torch) is imported inside each command, so that `debiaskit --help` and argument errors stay fast


@bench_app.command("unsup")
def bench_unsup(
    dataset: list[str] | None = typer.Option(
        None, "--dataset", help="datasets with a rho parameter (repeat; default biased-mnist)"
    ),
    rho: list[float] | None = typer.Option(None, "--rho", help="rho values (repeat; default 0.999 0.997)"),
    methods: list[str] | None = typer.Option(
        None, "--methods", help="label-free methods (repeat or comma-separate; default calm,vcba,jtt,lff)"
    ),
    seeds: int = typer.Option(3, min=1, help="number of seeds (0..N-1)"),
    epochs: int = typer.Option(10, min=1, help="epochs of the reported model (vcba adds its stage-1 epochs)"),
    plan: str | None = typer.Option(
        None,
        help="a named cell list instead of the grid: final (the first recipe's benchmark, CALM pinned to its first attractor recipe, with ablations) | gce (current CALM defaults, rho 0.999 / 0.997) | smoke",
    ),
    model: str = typer.Option("simple-conv-small", help="network (see `debiaskit models list`)"),
    train_size: int | None = typer.Option(None, help="use only this many biased training samples"),
    unbiased_size: int = typer.Option(10000, help="held-out training digits for D^u (toy datasets: <= 600)"),
    out: Path = typer.Option(Path("runs/bench/unsup"), help="root folder of the cached cells and the reports"),
    vanilla_from: Path | None = typer.Option(
        Path("runs/bench/vanilla"), help="finished `bench vanilla` runs for the vanilla reference row"
    ),
    report_only: bool = typer.Option(
        False, "--report-only", help="train nothing: rebuild summary.md / results.json / the plot from the cached cells"
    ),
    deadline: str | None = typer.Option(None, help="UTC HH:MM: start no cell after it"),
    list_methods: bool = typer.Option(False, "--list", help="list the label-free methods, then exit"),
    progress: bool = typer.Option(False, help="progress bar per training run"),
) -> None:
    """Benchmark label-free debiasing on biased data with NO bias labels; resumable, cells cached under --out.

    Writes OUT/summary.md (Markdown), OUT/results.json and OUT/discovery_over_time.png (CALM's
    conflict-flag precision / recall per epoch) and prints the table. The table covers every cached
    cell under OUT, not only this invocation's.
    """

    from ..bench import DEFAULT_METHODS, grid_cells, label_free_methods, plan_cells, run_unsup, write_unsup_results

    if list_methods:
        say("label-free methods: " + ", ".join(label_free_methods()))
        return
    if deadline is not None and not _is_hhmm(deadline):
        raise ConfigError(f"--deadline takes UTC HH:MM, got {deadline!r}")
    start = time.perf_counter()
    failed: list = []
    if not report_only:
        if plan is not None:
            if methods or rho or dataset:
                raise ConfigError("--plan fixes its own cells; drop --methods / --rho / --dataset (or drop --plan)")
            cells = plan_cells(plan)
        else:
            cells = grid_cells(
                methods=methods or DEFAULT_METHODS,
                rhos=rho or (0.999, 0.997),
                seeds=range(seeds),
                datasets=dataset or ("biased-mnist",),
                epochs=epochs,
                train_size=train_size,
                model=model,
                unbiased_size=unbiased_size,
            )
        console.print(f"{len(cells)} cells under {esc(out)} (finished cells are read, not retrained)")
        _, failed = run_unsup(cells, root=out, progress=progress, deadline=deadline, echo=say)
    path, rows = write_unsup_results(
        root=out,
        command=invoked_command(),
        wall_time_s=time.perf_counter() - start,
        vanilla_from=vanilla_from,
        echo=say,
    )
    _print_table(rows)
    console.print(
        f"summary: {esc(path)}  json: {esc(out / 'results.json')}  plot: {esc(out / 'discovery_over_time.png')}",
        highlight=False,
        soft_wrap=True,
    )
    if failed:
        console.print(
            f"[yellow]{len(failed)} cell(s) failed or were not started; rerun the same command to retry[/yellow]"
        )
        raise typer.Exit(1)


def _print_table(rows) -> None:
    """Compact terminal view (one decimal); the Markdown file has every column at two decimals."""
    from rich import box
    from rich.table import Table

    from ..bench import mean_std

    datasets = sorted({r["dataset"] for r in rows})

    def short(values) -> str:
        m, s, n = mean_std(v for v in values or [] if v is not None)
        return "-" if n == 0 else f"{100 * m:.1f}±{100 * s:.1f}"

    table = Table(
        title=f"{esc(', '.join(datasets))}: unbiased test accuracy (%), mean±std over seeds",
        box=box.SIMPLE,
        collapse_padding=True,
        pad_edge=False,
    )
    many = len(datasets) > 1
    for c in (["dataset"] if many else []) + [
        "rho",
        "method",
        "seeds",
        "task",
        "conflict.",
        "worst grp",
        "time s",
        "x van.",
    ]:
        table.add_column(c, no_wrap=True)
    for r in rows:
        table.add_row(
            *([esc(r["dataset"])] if many else []),
            esc(r["rho"]),
            esc(r["method"].replace(" (bench vanilla runs)", " (reused)")),
            ",".join(map(str, r["seeds"])),
            short(r["task"]),
            short(r["conflicting"]),
            short(r["worst_group"]),
            f"{r['train_time_s']:.0f}",
            "-" if r["time_ratio"] is None else f"{r['time_ratio']:.2f}",
        )
    console.print(table)


def _is_hhmm(text: str) -> bool:
    parts = text.split(":")
    return (
        len(parts) == 2
        and all(p.isdigit() and len(p) == 2 for p in parts)
        and int(parts[0]) < 24
        and int(parts[1]) < 60
    )
