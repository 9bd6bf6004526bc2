"""Audit a run folder made by ``debiaskit train`` (or any folder with run.json + weights)."""
from __future__ import annotations

import shutil
from pathlib import Path

from ..runs import atomic_folder, load_run
from ._audit import AuditReport, audit_model
from ._report import write_report


def audit_run(run_dir: Path, *, out: Path | None = None, seed: int = 0, device: str = "cpu",
              counterfactual: bool = True) -> tuple[AuditReport, Path]:
    """Rebuild the run's model and data, audit it, and write the report to ``RUN_DIR/audit``.

    The audit is a derived artefact: it replaces an earlier audit of the same run atomically.
    """
    run = load_run(run_dir)
    splits = run.splits()
    report = audit_model(run.model, test=splits.test, unbiased_train=splits.unbiased_train,
                         unbiased_val=splits.unbiased_val, head=run.head, seed=seed, device=device,
                         counterfactual=counterfactual)
    report.meta = {"run": str(run.folder), "dataset": splits.spec["dataset"], "params": splits.spec["params"],
                   "model": run.meta["model"]["name"], "method": run.meta.get("method", {}).get("name", "vanilla"),
                   "seed": seed}
    target = Path(out) if out is not None else Path(run_dir) / "audit"
    with atomic_folder(target, force=True) as staging:
        write_report(report, staging, title=f"Bias audit of {Path(run_dir).name}")
    return report, target
