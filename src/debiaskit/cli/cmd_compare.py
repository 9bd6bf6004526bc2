"""`debiaskit bench compare`: every method on one suite, same data/model/budget/selection, one table."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from ..errors import ConfigError
from ._common import console, esc, say
from .cmd_bench import bench_app, invoked_command

# debiaskit's library (torch) is imported inside each command, so that `debiaskit --help` and argument errors stay fast


@bench_app.command("compare")
def bench_compare(
    suite: str = typer.Option(
        ..., help="biased-mnist | colored-mnist | multicolor-mnist | corrupted-mnist | adult | compas | toy"
    ),
    methods: list[str] | None = typer.Option(
        None, "--methods", help="methods to run (repeat or comma-separate; default: all registered + ffw)"
    ),
    seeds: int = typer.Option(3, help="number of seeds (0..N-1)"),
    full: bool = typer.Option(
        False, help="papers' budgets (e.g. 100 epochs MLP on colored-mnist, SimpleConvNet 80 epochs)"
    ),
    value: list[str] | None = typer.Option(
        None, "--value", help="only these values of the swept parameter (rho; adult / compas: the bias attribute)"
    ),
    epochs: int | None = typer.Option(None, help="override the suite's epochs"),
    train_size: int | None = typer.Option(None, help="override the suite's number of biased training digits (0 = all)"),
    out: Path = typer.Option(Path("runs/bench/compare"), help="root folder of the cached cells"),
    vanilla_from: Path | None = typer.Option(
        Path("runs/bench/vanilla"),
        help="reuse finished vanilla runs from `bench vanilla` when their configuration matches exactly",
    ),
    report_only: bool = typer.Option(False, "--report-only", help="train nothing: tabulate the finished cells"),
    list_methods: bool = typer.Option(False, "--list", help="list the methods and their flags, then exit"),
    jobs: int = typer.Option(
        1, min=1, help="worker processes; each runs whole (seed, value) groups with cpu_count/jobs threads"
    ),
    launcher: str = typer.Option(
        "local",
        help="local: this machine (--jobs processes); slurm: one Slurm job per (seed, value) group, through submitit",
    ),
    slurm_config: Path | None = typer.Option(
        None,
        help="JSON/TOML file of Slurm options (partition, time_min, gpus_per_task, cpus_per_task, mem_gb, additional)",
    ),
    slurm_partition: str | None = typer.Option(None, help="Slurm partition (overrides --slurm-config)"),
    slurm_time: int | None = typer.Option(
        None, help="minutes per job; a group that needs longer is requeued and resumes"
    ),
    slurm_gpus_per_task: int | None = typer.Option(None, help="GPUs per job (> 0: cells run on cuda)"),
    slurm_cpus_per_task: int | None = typer.Option(None, help="CPUs (torch threads) per job"),
    slurm_mem_gb: int | None = typer.Option(None, help="memory per job in GB"),
    device: str = typer.Option("cpu", help="device of the cells run here (--launcher local): cpu or cuda"),
    progress: bool = False,
) -> None:
    """Train/derive every method, audit it, write RESULTS (mean +- std over seeds); resumes finished cells."""
    from ..bench import (
        available_methods,
        effective_suite,
        get_suite,
        load_slurm_options,
        run_compare,
        write_compare_results,
    )

    if list_methods:
        for name, info in available_methods().items():
            console.print(
                f"{esc(name)}: bias labels={info.uses_bias_labels} D^u={info.uses_unbiased_data} "
                f"retrains={info.retrains} post-hoc={info.post_hoc}; selection: {esc(info.selection_rule)}"
            )
        return
    slurm = None
    if launcher == "slurm":
        slurm = load_slurm_options(
            slurm_config,
            partition=slurm_partition,
            time_min=slurm_time,
            gpus_per_task=slurm_gpus_per_task,
            cpus_per_task=slurm_cpus_per_task,
            mem_gb=slurm_mem_gb,
        )
    elif any(
        v is not None
        for v in (slurm_config, slurm_partition, slurm_time, slurm_gpus_per_task, slurm_cpus_per_task, slurm_mem_gb)
    ):
        raise ConfigError("--slurm-* options need --launcher slurm")
    if device != "cpu":
        from .._dist import check_device

        check_device(device)
    value = [_number_or_text(v) for v in value or ()]  # rho values are numbers, tabular suites' bias names text
    _check_values(get_suite(suite), value)
    size = "suite" if train_size is None else (train_size or None)
    s = effective_suite(get_suite(suite), full=full, epochs=epochs, train_size=size, values=value or None)
    start = time.perf_counter()
    cells = run_compare(
        suite=suite,
        root=out,
        seeds=tuple(range(seeds)),
        methods=methods,
        values=value or None,
        full=full,
        epochs=epochs,
        train_size=size,
        vanilla_from=vanilla_from,
        progress=progress,
        report_only=report_only,
        jobs=jobs,
        device=device,
        launcher=launcher,
        slurm=slurm,
        echo=say,
    )
    desc = (
        f"{s.model}, {s.epochs} epochs, batch {s.batch_size}, Adam lr {s.lr}, biased training digits: "
        f"{s.train_size or 'all'}" + (" (--full)" if full else "")
    )
    path = write_compare_results(
        cells, root=out, suite=s, command=invoked_command(), wall_time_s=time.perf_counter() - start, budget=desc
    )
    say(path.read_text())


def _number_or_text(v: str) -> float | str:
    try:
        return float(v)
    except ValueError:
        return v


def _check_values(suite, values: list) -> None:
    """A swept number takes any number; a suite of named values (adult / compas: the bias attribute) only its own."""
    named = any(isinstance(v, str) for v in suite.values)
    wrong = [v for v in values if v not in suite.values] if named else [v for v in values if isinstance(v, str)]
    if wrong:
        expected = ", ".join(map(str, suite.values)) if named else f"numbers (the suite sweeps {suite.param})"
        raise ConfigError(f"--value {', '.join(map(str, wrong))}: suite {suite.name} takes {expected}")
