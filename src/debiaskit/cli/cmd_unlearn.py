"""`debiaskit unlearn RUN_DIR`: FMD's counterfactual unlearning step applied post hoc to a run folder."""

from __future__ import annotations

from pathlib import Path

import typer

from ._common import TRUST_CODE_HELP, app, console, esc

# debiaskit's library (torch) is imported inside each command, so that `debiaskit --help` and argument errors stay fast


@app.command()
def unlearn(
    run_dir: Path = typer.Argument(..., help="a finished run folder (debiaskit train)"),
    out: Path | None = typer.Option(None, help="new run folder (default RUN_DIR-fmd)"),
    seed: int = 0,
    top_k: int = typer.Option(500, help="number of harmful training samples replaced"),
    pool_size: int = typer.Option(5000, help="training samples scored by influence"),
    damping: float | None = typer.Option(
        None, help="Hessian damping (default: chosen with the step among 1e-2, 1e-3, 1e-4)"
    ),
    max_accuracy_drop: float = typer.Option(
        1.0, help="points of held-out accuracy (and class-mean accuracy) the step may cost"
    ),
    force: bool = typer.Option(False, help="replace an earlier unlearn run at --out (never a training run)"),
    device: str = "cpu",
    trust_code: bool = typer.Option(False, "--trust-code", help=TRUST_CODE_HELP),
) -> None:
    """Debias a trained model with FMD (counterfactual bias -> influence -> Newton step on the last layer)
    and write a NEW run folder (the input run is not modified).

    The step size is chosen on held-out training samples (never the test set): the lowest counterfactual
    bias whose accuracy stays within --max-accuracy-drop points of the input model. Exit code 3: no step
    lowered the bias within that tolerance; nothing was written (the message says what was tried).
    Counterfactuals come from the dataset: a debiaskit recipe, Adult, or a tensors file with `cf`
    (the counterfactual input of each row) or `bias_columns`."""
    from .._validate import NON_NEGATIVE, require
    from ..errors import NO_IMPROVEMENT_EXIT, NoImprovementError
    from ..methods.fmd import unlearn_run

    require("max_accuracy_drop", max_accuracy_drop, NON_NEGATIVE)
    try:
        target, res = unlearn_run(
            run_dir,
            out=out,
            force=force,
            seed=seed,
            top_k=top_k,
            pool_size=pool_size,
            damping=damping,
            tolerance=max_accuracy_drop / 100,
            device=device,
            trust_code=trust_code,
        )
    except NoImprovementError as exc:
        console.print(f"[bold yellow]nothing better:[/bold yellow] {esc(exc)}", highlight=False)
        raise typer.Exit(NO_IMPROVEMENT_EXIT) from exc
    info = res.info
    console.print(
        f"[green]unlearned[/green] {esc(run_dir)} -> {esc(target)}: held-out counterfactual bias "
        f"{info['bias_before']:.4f} -> {info['bias_after']:.4f}, held-out accuracy "
        f"{100 * info['accuracy_before']:.2f} -> {100 * info['accuracy_after']:.2f} % (step scale "
        f"{info['selected_scale']:g}, {info['harmful_samples']} harmful samples replaced; trade-off in "
        f"{esc(target)}/unlearn.md); audit it with `debiaskit audit {esc(target)}`",
        highlight=False,
        soft_wrap=True,
    )
