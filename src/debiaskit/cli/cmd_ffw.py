"""`debiaskit ffw RUN_DIR` (FFW surgery on a trained run) and `debiaskit bench ffw` (its benchmark)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ._common import TRUST_CODE_HELP, app, console, esc, say
from .cmd_bench import bench_app, invoked_command

# debiaskit's library (torch) is imported inside each command, so that `debiaskit --help` and argument errors stay fast


class _D:
    """The CLI's defaults: FFWConfig's (a test checks they agree; importing FFWConfig here would load torch)."""

    gamma, tau_init, tau_decay, max_epochs, max_levels, max_epochs_per_level, patience = 10.0, 1.0, 0.5, 10, 20, 10, 1
    gate_lr, adversary, selection, erase, refine_patience, refit_head = 0.1, "lda", "objective", "conditional", 0, True
    tune_epochs, tune_gamma, tune_lr, tune_schedule, tune_batch_size, tune_shift = 8, 3.0, 2e-3, "cosine", 128, 1
    compare_ungated = True


# the options a preset sets (ffw/_presets.py): passed to ffw_run only when typed on the command line, so that the
# preset's value holds otherwise (their typer defaults are the "default" preset's, shown in --help)
_PRESET_OPTIONS = (
    "tau_init",
    "tau_decay",
    "max_epochs",
    "max_levels",
    "max_epochs_per_level",
    "patience",
    "refine_patience",
    "gate_lr",
    "adversary",
    "selection",
    "erase",
    "refit_head",
    "tune_epochs",
    "tune_gamma",
    "tune_lr",
    "tune_schedule",
    "tune_batch_size",
    "tune_shift",
    "compare_ungated",
)


def _typed_options(ctx: typer.Context, values: dict) -> dict:
    """The preset options the user gave (command line or environment), not those left at their default."""
    # by the source's name: typer ships its own copy of click, whose ParameterSource is not click's
    typed = {k: values[k] for k in _PRESET_OPTIONS if ctx.get_parameter_source(k).name != "DEFAULT"}
    if "max_epochs" in typed:
        typed["max_epochs"] = typed["max_epochs"] or None  # 0: no budget
    return typed


def _progress_line(event: dict) -> None:
    from ..ffw import progress_line

    line = progress_line(event)
    if line is not None:
        say(line)


@app.command()
def ffw(
    ctx: typer.Context,
    run_dir: Path = typer.Argument(..., help="run folder made by `debiaskit train`"),
    mode: str = typer.Option(..., help="unstructured (a gate per weight) or structured (a gate per channel/neuron)"),
    gamma: float = typer.Option(_D.gamma, help="weight of the bias term (paper: 10)"),
    include_head: bool = typer.Option(
        False, help="also gate the classifier head's weights (unstructured; the public code does)"
    ),
    input_weights: bool = typer.Option(
        False,
        help="structured: also gate every weight of the layers that read the "
        "input (an input-level bias such as colour lives there)",
    ),
    out: Path | None = typer.Option(
        None,
        help="FFW folder (default RUN_DIR/ffw-MODE-gGAMMA, plus -head, "
        "-input-weights, -discovered when those options are set, -paper for --preset paper)",
    ),
    resume: bool = typer.Option(False, help="continue an interrupted search (kept in .OUT.partial/)"),
    force: bool = typer.Option(False, help="replace an existing FFW folder / discard an interrupted search"),
    bias_labels: str = typer.Option(
        "true",
        help="'true' bias labels of D^u, or 'discovered' pseudo-bias labels "
        "from RUN_DIR/discover/pseudo_bias.safetensors",
    ),
    tau_init: float = typer.Option(_D.tau_init, help="the gates' first temperature (paper 1; --preset fast: 0.25)"),
    tau_decay: float = typer.Option(_D.tau_decay, help="tau *= this at each plateau (paper 0.5)"),
    max_epochs: int = typer.Option(
        _D.max_epochs,
        help="epoch budget of the search, spread over the tau levels (0: no budget, the paper's open-ended schedule)",
    ),
    max_levels: int = typer.Option(_D.max_levels, help="at most this many tau levels"),
    max_epochs_per_level: int = typer.Option(_D.max_epochs_per_level, help="epochs per tau level at most"),
    patience: int = typer.Option(
        _D.patience, help="epochs without improvement of the D^u_val objective that make a plateau"
    ),
    refine_patience: int = typer.Option(
        _D.refine_patience,
        help="after soft/hard agreement, keep training at that tau "
        "while the D^u_val selection score improves (stop after "
        "this many epochs without; 0: stop at agreement, the paper)",
    ),
    gate_lr: float = typer.Option(_D.gate_lr, help="learning rate of the gates (SGD, momentum 0.9)"),
    adversary: str = typer.Option(
        _D.adversary,
        help="bias term: lda (default: closed-form linear readability given "
        "the target, no probe to fool), mmd (lda + a Gaussian-kernel term), "
        "head (the paper: MI of a co-trained linear head), refit, mlp",
    ),
    selection: str = typer.Option(_D.selection, help="objective, readability or accuracy (all on D^u_val)"),
    erase: str = typer.Option(
        _D.erase,
        help="conditional (default): after the gates, a closed-form eraser in "
        "front of the head makes the bias classes' means equal at the "
        "bottleneck on D^u_train (LEACE) and removes the strongest directions "
        "along which they differ within a target class (what an MLP probe "
        "reads), as many as D^u_val task accuracy allows; linear: the first "
        "part alone; none: the pruned sub-network alone",
    ),
    refit_head: bool = typer.Option(
        _D.refit_head,
        help="after the gates (and the eraser), refit the head on the "
        "D^u_train bottleneck (group-balanced, regularisation picked "
        "on D^u_val; kept only if D^u_val task accuracy improves)",
    ),
    tune_epochs: int = typer.Option(
        _D.tune_epochs,
        help="after the gates, train the kept weights this many epochs on "
        "D^u_train under J = CE + tune-gamma x the bias term (pruned "
        "weights stay 0; the epoch, or none, chosen on D^u_val by the "
        "selection rule; 0: the gates alone)",
    ),
    tune_gamma: float = typer.Option(_D.tune_gamma, help="weight of the bias term while the kept weights are tuned"),
    tune_lr: float = typer.Option(_D.tune_lr, help="learning rate of the weight tuning (Adam)"),
    tune_schedule: str = typer.Option(
        _D.tune_schedule, help="learning-rate schedule of the weight tuning: cosine (to 0 at the last step) or constant"
    ),
    tune_batch_size: int = typer.Option(
        _D.tune_batch_size, help="batch size of the weight tuning (the global batch under torchrun)"
    ),
    tune_shift: int = typer.Option(
        _D.tune_shift,
        help="while tuning, shift image inputs by up to this many pixels "
        "at random (edges replicated; 0: never; non-image inputs "
        "are never shifted)",
    ),
    compare_ungated: bool = typer.Option(
        _D.compare_ungated,
        help="also run the eraser and the head refit on your model without gates, and keep whichever of the two "
        "candidates has the higher D^u_val group-mean accuracy (the report says which)",
    ),
    strong_probes: bool = typer.Option(True, help="also read the bias with an MLP and a converged linear probe"),
    trust_code: bool = typer.Option(False, "--trust-code", help=TRUST_CODE_HELP),
    preset: str = typer.Option(
        "default",
        help="named settings: default (the defaults shown here), fast (the default pipeline within 0.3x the vanilla "
        "training: tau from 0.25, 8 search epochs, 3 tuning epochs at 5e-3; a lower D^u_val on the development suite) "
        "or paper (the paper's FFW: privacy-head MI, tau halved at each plateau until soft and hard agree, no epoch "
        "budget, gates alone - no tuning, eraser or head refit); an option typed here wins over the preset's value",
    ),
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
) -> None:
    """Find the fantastic weights: remove the sub-network that carries the bias (FFW, Nahon et al. 2024).

    Do no harm: the final model is compared with the run's on D^u_val; when its group-mean accuracy is below the
    run's by more than one standard error, when it is near chance, or when it is the run's model unchanged, no
    model is written and the command exits with status 3 (what was tried, and what to do, is printed).
    Exit status: 0 written, 2 bad input, 3 no output better than the input, 130 interrupted.
    """
    from ..errors import NoImprovementError
    from ..ffw import before_after_rows, choice_line, ffw_run, has_checkpoint, no_harm_lines, partial_dir

    typed = _typed_options(ctx, locals())
    try:
        res = ffw_run(
            run_dir,
            mode=mode,
            gamma=gamma,
            include_head=include_head,
            out=out,
            resume=resume,
            force=force,
            bias_labels=bias_labels,
            seed=seed,
            device=device,
            callback=_progress_line if progress else None,
            command=invoked_command(),
            strong_probes=strong_probes,
            input_weights=input_weights,
            trust_code=trust_code,
            preset=preset,
            **typed,
        )
    except NoImprovementError as exc:  # nothing written: say what was tried and what to do, exit 3
        console.print(f"[bold yellow]no model written:[/bold yellow] {esc(exc)}", highlight=False)
        raise typer.Exit(code=exc.exit_code) from None
    except KeyboardInterrupt:
        from ..ffw import default_out

        target = out or default_out(
            run_dir, mode, gamma, include_head, bias_labels, input_weights=input_weights, preset=preset
        )
        if has_checkpoint(partial_dir(target)):
            console.print(
                f"[yellow]interrupted[/yellow]: the last finished epoch and the best hard-masked state so far "
                f"are kept in {esc(partial_dir(target))}; continue with the same command plus --resume"
            )
        else:
            console.print(
                "[yellow]interrupted[/yellow] before the first search epoch finished: nothing to resume; "
                "rerun the same command to start again"
            )
        raise
    info = res.info
    table = Table(title=f"FFW {esc(mode)} (gamma {gamma:g}) on {esc(run_dir)}")
    for col in ("", "before (vanilla)", "after (FFW)"):
        table.add_column(col)
    for row in before_after_rows(info):
        table.add_row(*map(esc, row))
    console.print(table)
    layers = Table(title="sparsity per layer (% removed)")
    layers.add_column("layer")
    layers.add_column("removed")
    for k, v in info["search"]["sparsity"]["per_layer"].items():
        layers.add_row(esc(k), f"{100 * v:.2f}")
    console.print(layers)
    sel = info["search"]["selected"]
    console.print(
        f"selected: {esc(info['selection'])} (epoch {sel['epoch']}, tau {sel['tau']:.3g}); "
        f"stop: {esc(info['search']['stop_reason'])}",
        highlight=False,
    )
    choice = info["search"].get("choice")
    if choice:
        console.print(esc(choice_line(choice)), highlight=False)
    probes = info.get("probes")
    if probes:
        ptable = Table(title="bias extractability under stronger probes (unbiased test)")
        for col in ("probe", "before (vanilla)", "after (FFW)"):
            ptable.add_column(col)
        for k in probes["descriptions"]:
            if k in probes["after"]:
                ptable.add_row(esc(k), f"{100 * probes['before'][k]:.2f}", f"{100 * probes['after'][k]:.2f}")
        console.print(ptable)
        verdict = probes["verdict"]
        console.print(
            verdict["text"], style="green" if verdict["bias_unreadable"] else "yellow", highlight=False, markup=False
        )
    if info.get("input_below_majority"):
        console.print(f"[bold yellow]warning:[/bold yellow] {esc(info['input_below_majority'])}", highlight=False)
    for line in no_harm_lines(info["search"].get("no_harm"), selected_epoch=sel["epoch"]):
        say(line)
    for note in info.get("diagnosis") or []:
        console.print(f"[bold red]diagnosis:[/bold red] {esc(note)}", highlight=False)
    console.print(
        f"written: {esc(res.out)}/ (ffw.json, report.md, model.safetensors, masks.safetensors)",
        highlight=False,
        soft_wrap=True,
    )


@bench_app.command("ffw")
def bench_ffw(
    out: Path = typer.Option(Path("runs/bench/ffw"), help="suite folder (cells are cached)"),
    vanilla_root: Path = typer.Option(Path("runs/bench/vanilla"), help="folder of the vanilla runs"),
    tables: list[str] | None = typer.Option(
        None,
        "--table",
        help="table2, baselines, cost, table1, table6, colored, multicolor (default: all, in this order)",
    ),
    rho: list[float] | None = typer.Option(None, help="rho values of Table 2 (default 0.99 0.995 0.997 0.999)"),
    seeds: int = typer.Option(3, help="seeds 0..N-1"),
    full: bool = typer.Option(
        False, help="paper protocol: SimpleConvNet (vanilla runs must be simple-conv), up to 10 epochs per tau level"
    ),
    deadline: str | None = typer.Option(None, help="UTC HH:MM after which no new cell starts"),
    wait: bool = typer.Option(True, help="wait for vanilla runs that are still training"),
) -> None:
    """FFW benchmark (Tables 1, 2, 5, 6 of the paper, baselines, cost); writes OUT/results.md."""
    from ..bench import run_ffw_bench

    path = run_ffw_bench(
        root=out,
        vanilla_root=vanilla_root,
        tables=tuple(tables or ()),
        rhos=tuple(rho or ()),
        seeds=tuple(range(seeds)),
        full=full,
        deadline=deadline,
        wait=wait,
        command=invoked_command(),
        echo=say,
    )
    say(path.read_text())
