"""`debiaskit unlearn RUN_DIR`: FMD's counterfactual unlearning step applied post hoc to a run folder."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ._common import TRUST_CODE_HELP, app, console, esc
# debiaskit's library (torch) is imported inside each command, so that `debiaskit --help` and argument errors stay fast


@app.command()
def unlearn(run_dir: Path = typer.Argument(..., help="a finished run folder (debiaskit train)"),
            out: Optional[Path] = typer.Option(None, help="new run folder (default RUN_DIR-fmd)"),
            seed: int = 0, top_k: int = typer.Option(500, help="number of harmful training samples replaced"),
            pool_size: int = typer.Option(5000, help="training samples scored by influence"),
            damping: float = typer.Option(1e-2, help="Hessian damping"),
            force: bool = typer.Option(False, help="replace an earlier unlearn run at --out (never a training run)"),
            device: str = "cpu",
            trust_code: bool = typer.Option(False, "--trust-code", help=TRUST_CODE_HELP)) -> None:
    """Debias a trained model with FMD (counterfactual bias -> influence -> Newton step on the last layer)
    and write a NEW run folder (the input run is not modified)."""
    from ..methods.fmd import unlearn_run
    target, res = unlearn_run(run_dir, out=out, force=force, seed=seed, top_k=top_k, pool_size=pool_size,
                              damping=damping, device=device, trust_code=trust_code)
    info = res.info
    console.print(f"[green]unlearned[/green] {esc(run_dir)} -> {esc(target)}: counterfactual bias on held-out pairs "
                  f"{info['bias_before']:.4f} -> {info['bias_after']:.4f} (step scale {info['selected_scale']}, "
                  f"{info['harmful_samples']} harmful samples replaced); audit it with `debiaskit audit {esc(target)}`", highlight=False, soft_wrap=True)
