"""Audit a run folder made by ``debiaskit train`` (or any folder with run.json + weights)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import _dist
from .._validate import SEED, require
from ..runs import load_run
from ._audit import AuditReport, audit_model
from ._folders import AUDIT_FOLDER
from ._report import write_report_files


def audit_run(
    run_dir: Path,
    *,
    out: Path | None = None,
    seed: int = 0,
    device: str = "cpu",
    counterfactual: bool = True,
    force: bool = False,
    splits=None,
    model=None,
    trust_code: bool = False,
) -> tuple[AuditReport, Path]:
    """Rebuild the run's model and data, audit it, and write the report to ``out`` (default ``RUN_DIR/audit``).

    ``out`` may only be a new folder or, with ``force``, an earlier audit report folder: never the run
    itself, a folder holding it, or anything else (see :mod:`debiaskit._io`). Under torchrun the ranks
    share the forward passes and rank 0 writes the report.
    ``splits`` / ``model``: for a run trained on data or a model given as Python objects, which its folder
    cannot rebuild (see :func:`debiaskit.runs.load_run`); ``trust_code``: import the user model of a run whose
    ``run.json`` is not signed with your key (see :func:`debiaskit.runs.load_run`).
    """
    require("seed", seed, SEED)
    device = _dist.check_device(device)
    target = Path(out) if out is not None else Path(run_dir) / "audit"
    # the input is checked first, then the output, then the compute runs
    run = load_run(run_dir, splits=splits, model=model, trust_code=trust_code)
    return audit_into(
        run.model,
        head=run.head,
        splits=run.splits,
        target=target,
        force=force,
        inputs=(Path(run_dir),),
        pinned=(run.identity,),  # a moved RUN: nothing written
        seed=seed,
        device=device,
        counterfactual=counterfactual,
        meta=lambda splits: {
            "run": str(run.folder),
            "dataset": splits.spec["dataset"],
            "params": splits.spec["params"],
            "model": run.record.model.name,
            "method": run.record.method_name,
            "seed": seed,
        },
        title=f"Bias audit of {Path(run_dir).name}",
    )


def audit_into(
    model,
    *,
    head: str,
    splits: Callable[[], Any],
    target: Path,
    force: bool,
    inputs: tuple[Path, ...],
    pinned: tuple = (),
    seed: int,
    device: str,
    counterfactual: bool,
    meta: Callable[[Any], dict[str, Any]],
    title: str,
) -> tuple[AuditReport, Path]:
    """Audit ``model`` on the splits ``splits()`` builds and write the report into ``target`` (the output rule of
    an audit report folder, opened before the splits are built; under torchrun rank 0 writes): what
    :func:`audit_run` and FFW's ``audit_ffw_folder`` share. ``meta(splits)``: the report's meta, beside the
    process description."""
    with _dist.rank0_folder(target, kind=AUDIT_FOLDER, force=force, inputs=inputs, pinned=pinned) as staging:
        data = splits()
        report = audit_model(
            model,
            test=data.test,
            unbiased_train=data.unbiased_train,
            unbiased_val=data.unbiased_val,
            head=head,
            seed=seed,
            device=device,
            counterfactual=counterfactual,
        )
        report.meta = {**meta(data), **_dist.description()}
        if staging is not None:
            write_report_files(report, staging, title=title)
    return report, target
