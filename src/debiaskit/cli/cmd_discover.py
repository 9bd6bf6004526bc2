"""`debiaskit discover RUN_DIR`: pseudo-bias labels and conflict scores without bias labels."""
from __future__ import annotations

from pathlib import Path

import typer

from ._common import app, console


@app.command()
def discover(run_dir: Path,
             force: bool = typer.Option(False, help="replace an existing RUN_DIR/discover"),
             device: str = "cpu") -> None:
    """Discover pseudo-bias labels of a trained run from its bottleneck geometry (attractor rule).

    Writes RUN_DIR/discover/pseudo_bias.safetensors (<split>.pseudo_bias / .conflict_score / .confidence
    for train, unbiased_train, unbiased_val) and report.json / report.md (precision and recall against
    the true bias labels when the data has them; they are read for the report only).
    """
    from ..discover import discover_run
    folder, report = discover_run(run_dir, force=force, device=device)
    for split, q in report["quality"].items():
        if q is None:
            console.print(f"{split}: {report['flagged'][split]} flagged (no bias labels to compare with)")
        else:
            console.print(f"{split}: {q['flagged']} flagged / {q['true_conflicting']} truly conflicting; "
                          f"precision {_pct(q['precision'])}, recall {_pct(q['recall'])}, "
                          f"b^ accuracy {_pct(q['pseudo_bias_accuracy'])}")
    console.print(f"pseudo-bias labels: {folder / 'pseudo_bias.safetensors'}  report: {folder / 'report.md'}")


def _pct(v: float) -> str:
    return "-" if v != v else f"{100 * v:.1f}%"
