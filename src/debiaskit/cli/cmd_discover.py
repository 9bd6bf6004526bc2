"""`debiaskit discover RUN_DIR`: pseudo-bias labels and conflict scores without bias labels."""

from __future__ import annotations

from pathlib import Path

import typer

from ._common import TRUST_CODE_HELP, app, console, esc

# debiaskit's library (torch) is imported inside each command, so that `debiaskit --help` and argument errors stay fast


@app.command()
def discover(
    run_dir: Path,
    force: bool = typer.Option(False, help="replace an existing RUN_DIR/discover"),
    layer: str = typer.Option(
        "auto",
        help="where to apply the attractor rule: auto (label-free choice among "
        "the activation layers + bottleneck), bottleneck, or a module name",
    ),
    dynamics: str = typer.Option(
        "auto",
        help="RUN_DIR/dynamics.safetensors (train --record-dynamics): auto = "
        "extra train.dynamics row when present; use = train labels from it; off",
    ),
    device: str = "cpu",
    trust_code: bool = typer.Option(False, "--trust-code", help=TRUST_CODE_HELP),
) -> None:
    """Discover pseudo-bias labels of a trained run from its feature geometry (attractor rule), without bias labels.

    Writes RUN_DIR/discover/pseudo_bias.safetensors (<split>.pseudo_bias / .conflict_score / .confidence
    for train, unbiased_train, unbiased_val) and report.json / report.md (precision and recall against
    the true bias labels when the data has them; they are read for the report only).
    A model trained to convergence memorises its conflicting training samples at the bottleneck;
    --layer auto reads the earliest layers where they are still pulled to the other class.
    """
    from ..discover import discover_run

    folder, report = discover_run(
        run_dir, force=force, device=device, layer=layer, dynamics=dynamics, trust_code=trust_code
    )
    console.print(
        f"layer: {esc(report['layer']['chosen'])} ({esc(report['layer']['selection'])}); "
        f"training dynamics: {esc(report['training_dynamics'])}"
    )
    for split, q in report["quality"].items():
        if q is None:
            console.print(f"{split}: {report['flagged'][split]} flagged (no bias labels to compare with)")
        else:
            console.print(
                f"{split} ({esc(report['sources'][split])}): {q['flagged']} flagged / {q['true_conflicting']} truly conflicting; "
                f"precision {_pct(q['precision'])}, recall {_pct(q['recall'])}, "
                f"b^ accuracy {_pct(q['pseudo_bias_accuracy'])}"
            )
    from ..discover import WEAK_SCORE

    chosen = [r for r in report["layer"]["scan"] if r["chosen"]]
    if chosen and chosen[0]["flagged"] == 0:
        # --layer auto already scanned every candidate layer: only the training dynamics are left to try
        hint = "--record-dynamics" if report["layer"]["requested"] == "auto" else "--layer auto or --record-dynamics"
        console.print(
            f"[yellow]no training sample is pulled out of its class at {esc(chosen[0]['layer'])} (memorised?); "
            f"try {hint}[/yellow]"
        )
    elif chosen and (chosen[0].get("mean_flagged_score") or 0) < WEAK_SCORE:
        console.print(
            f"[yellow]weak attraction at {esc(chosen[0]['layer'])} (mean flagged score "
            f"{chosen[0].get('mean_flagged_score') or 0:.2f} < {WEAK_SCORE}): low-precision flags; see the layer scan[/yellow]"
        )
    console.print(
        f"pseudo-bias labels: {esc(folder / 'pseudo_bias.safetensors')}  report: {esc(folder / 'report.md')}",
        highlight=False,
        soft_wrap=True,
    )


def _pct(v: float) -> str:
    return "-" if v != v else f"{100 * v:.1f}%"
