"""`debiaskit bench ...`: benchmark suites (each suite adds its command to ``bench_app``)."""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

import typer

from ._common import app, say

# debiaskit's library (torch) is imported inside each command, so that `debiaskit --help` and argument errors stay fast

bench_app = typer.Typer(help="Benchmark suites: resumable, cached, mean +- std over seeds.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


def invoked_command() -> str:
    return "debiaskit " + " ".join(shlex.quote(a) for a in sys.argv[1:])


@bench_app.command("vanilla")
def bench_vanilla(
    out: Path = typer.Option(Path("runs/bench/vanilla"), help="suite folder (cells are cached)"),
    dataset: str = "biased-mnist",
    rho: list[float] | None = typer.Option(None, help="rho values (default 0.99 0.995 0.997 0.999)"),
    seeds: int = typer.Option(3, help="number of seeds (0..N-1)"),
    model: str = "simple-conv-small",
    epochs: int = 10,
    full: bool = typer.Option(False, help="paper protocol: SimpleConvNet, 80 epochs"),
    progress: bool = True,
) -> None:
    """Vanilla models across rho and seeds, audited; the baseline row of BENCHMARKS.md."""
    from ..bench import run_vanilla_suite, write_vanilla_results

    if full:
        model, epochs = "simple-conv", 80
    start = time.perf_counter()
    cells = run_vanilla_suite(
        root=out,
        dataset=dataset,
        rhos=tuple(rho or (0.99, 0.995, 0.997, 0.999)),
        seeds=tuple(range(seeds)),
        model=model,
        epochs=epochs,
        progress=progress,
        echo=say,
    )
    path = write_vanilla_results(cells, root=out, command=invoked_command(), wall_time_s=time.perf_counter() - start)
    say(path.read_text())


@bench_app.command("dev")
def bench_dev(
    out: Path = typer.Option(
        Path("runs/bench/dev"), help="suite folder (records are cached; reports in OUT/BUDGET/results.md)"
    ),
    budget: str = typer.Option("dev", help="smoke (toy data, seconds) | dev (CPU-sized) | full (the papers')"),
    cell: list[str] | None = typer.Option(None, "--cell", help="cells to run (default: all; `--cell list` names them)"),
    variant: list[str] | None = typer.Option(None, "--variant", help="pipelines (default: all)"),
    seeds: int = typer.Option(3, help="seeds 0..N-1"),
) -> None:
    """The development suite where FFW's defaults are chosen (D^u_val, worst cell first, then the mean), and the
    ablation of what each FFW stage buys beside pipelines without gates."""
    from ..bench import DEV_CELLS, DEV_VARIANTS, check_dev_selection, run_dev_suite, write_dev_results

    if cell == ["list"]:
        for c in DEV_CELLS.values():
            say(f"{c.name}: {c.dataset} {c.params}, {c.model}, {c.epochs} epochs - {c.what}")
        for v in DEV_VARIANTS.values():
            say(f"pipeline {v.name}: {v.text}")
        return
    cells, variants, seed_list = tuple(cell or DEV_CELLS), tuple(variant or DEV_VARIANTS), tuple(range(seeds))
    check_dev_selection(budget=budget, cells=cells, variants=variants, seeds=seed_list)  # before any compute
    start = time.perf_counter()
    run_dev_suite(root=out, budget=budget, cells=cells, seeds=seed_list, variants=variants, echo=say)
    path = write_dev_results(
        root=out, budget=budget, command=invoked_command(), wall_time_s=time.perf_counter() - start
    )
    say(path.read_text())
