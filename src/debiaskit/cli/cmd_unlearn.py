"""`debiaskit unlearn RUN_DIR`: FMD's counterfactual unlearning step applied post hoc to a run folder."""
from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Optional

import typer

from ._common import app, console


@app.command()
def unlearn(run_dir: Path = typer.Argument(..., help="a finished run folder (debiaskit train)"),
            out: Optional[Path] = typer.Option(None, help="new run folder (default RUN_DIR-fmd)"),
            seed: int = 0, top_k: int = typer.Option(500, help="number of harmful training samples replaced"),
            pool_size: int = typer.Option(5000, help="training samples scored by influence"),
            damping: float = typer.Option(1e-2, help="Hessian damping"),
            force: bool = typer.Option(False, help="replace an existing output folder"),
            device: str = "cpu") -> None:
    """Debias a trained model with FMD (counterfactual bias -> influence -> Newton step on the last layer)
    and write a NEW run folder (the input run is not modified)."""
    from ..methods.fmd import fmd_unlearn
    from ..runs import RUN_FILE, WEIGHTS_FILE, atomic_folder, check_writable, load_run, save_weights, write_json
    run_dir = Path(run_dir)
    target = Path(out) if out is not None else run_dir.with_name(run_dir.name + "-fmd")
    check_writable(target, force=force)
    run = load_run(run_dir)
    splits = run.splits()
    res = fmd_unlearn(run.model, train=splits.train, head=run.head, seed=seed, top_k=top_k, pool_size=pool_size,
                      damping=damping, device=device)
    meta = dict(run.meta)
    meta.update({"kind": "unlearn", "status": "finished", "parent_run": str(run_dir),
                 "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                 "method": {"name": "fmd", "uses_bias_labels": False, "post_hoc": True,
                            "config": {"seed": seed, "top_k": top_k, "pool_size": pool_size, "damping": damping},
                            "state": res.info, "parent_method": run.meta.get("method", {})},
                 "weights": WEIGHTS_FILE})
    with atomic_folder(target, force=force) as staging:
        save_weights(res.model, staging / WEIGHTS_FILE)
        write_json(staging / RUN_FILE, meta)
    info = res.info
    console.print(f"[green]unlearned[/green] {run_dir} -> {target}: counterfactual bias on held-out pairs "
                  f"{info['bias_before']:.4f} -> {info['bias_after']:.4f} (step scale {info['selected_scale']}, "
                  f"{info['harmful_samples']} harmful samples replaced); audit it with `debiaskit audit {target}`")
