"""Vanilla models on Biased MNIST across rho and seeds: the baseline row of every table."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .._io import open_root, report_lock
from ..audit import audit_run
from ..runs import is_finished, read_json, write_json, write_text
from ..train import TrainConfig, partial_dir, train_run
from ._common import fmt_pm, load_cell, machine_description, mean_std, with_cells_on_disk
from ._folders import BENCH_VANILLA_ROOT

# Paper's vanilla row (FFW Table 2, SimpleConvNet): rho -> (task, bias) in %.
PAPER_VANILLA = {0.99: (88.46, 98.45), 0.995: (74.23, 99.75), 0.997: (46.04, 99.96), 0.999: (10.02, 100.0)}


def vanilla_cell_dir(root: Path, dataset: str, rho: float, seed: int) -> Path:
    return Path(root) / f"{dataset}-rho{rho}-seed{seed}"


def run_vanilla_suite(
    *,
    root: Path,
    dataset: str = "biased-mnist",
    rhos=(0.99, 0.995, 0.997, 0.999),
    seeds=(0, 1, 2),
    model: str = "simple-conv-small",
    epochs: int = 10,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Train + audit every (rho, seed) cell; finished cells are reused, not retrained, and a cell whose
    training was interrupted resumes from its last finished epoch (``train --resume``)."""
    open_root(root, kind=BENCH_VANILLA_ROOT)  # before any compute: never a user's folder or another suite's
    cells = []
    for seed in seeds:
        for rho in rhos:
            folder = vanilla_cell_dir(root, dataset, rho, seed)
            result_file = folder / "audit" / "audit.json"
            if not is_finished(folder):
                start = time.perf_counter()
                resume = (partial_dir(folder) / "checkpoint.safetensors").is_file()
                train_run(
                    dataset=dataset,
                    params={"rho": rho},
                    out=folder,
                    model=model,
                    resume=resume,
                    config=TrainConfig(epochs=epochs, seed=seed),
                    progress=progress,
                    force=True,
                )
                echo(f"trained {folder.name} in {time.perf_counter() - start:.0f}s" + (" (resumed)" if resume else ""))
            if load_cell(result_file) is None:
                audit_run(folder)
            cells.append(_cell(folder))
    return cells


def _cell(folder: Path) -> dict[str, Any]:
    """A finished, audited vanilla cell as a table row (its rho, seed and dataset from its run.json)."""
    meta, audit = read_json(folder / "run.json"), read_json(folder / "audit" / "audit.json")
    att = audit["attributes"][0]
    return {
        "dataset": meta["data"]["dataset"],
        "rho": meta["data"]["params"]["rho"],
        "seed": meta["train"]["seed"],
        "task": audit["task_accuracy"],
        "bias": att["bias_extractability"],
        "conflicting": att["groups"]["conflicting_accuracy"],
        "worst_group": att["groups"]["worst_group_accuracy"],
        "train_time_s": meta["wall_time_s"],
    }


def vanilla_cells_on_disk(root: Path) -> list[dict[str, Any]]:
    """Every finished, audited cell of the root, whichever process wrote it."""
    folders = (
        sorted(p for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith("."))
        if Path(root).is_dir()
        else []
    )
    return [_cell(p) for p in folders if is_finished(p) and load_cell(p / "audit" / "audit.json") is not None]


def _cell_key(c: dict[str, Any]) -> tuple:
    return c.get("dataset"), float(c["rho"]), int(c["seed"])


def vanilla_table(cells: list[dict[str, Any]], *, command: str, wall_time_s: float) -> str:
    datasets = sorted({c.get("dataset") or "" for c in cells})
    rows = sorted({(c.get("dataset") or "", c["rho"]) for c in cells})
    seeds = sorted({c["seed"] for c in cells})
    lines = [
        f"Command: `{command}`  ",
        f"Machine: {machine_description()}; suite wall time {wall_time_s / 60:.1f} min "
        "(cached cells count 0); seeds " + ", ".join(map(str, seeds)) + ".  ",
        "Selection: none (last epoch). Task = top-1 on the unbiased test set (official test digits, "
        "uniform colours), sample-weighted. Bias = privacy head trained on D^u_train bottleneck features, "
        "early-stopped on D^u_val, scored on the unbiased test. Mean +- std (sample std) over seeds. Cells: every "
        "finished cell of this folder, whichever command wrote it.",
        "",
        "| rho | Task (ours) | Bias (ours) | conflicting acc. | worst group | train time / run (s) | paper Task / Bias |",
        "|---|---|---|---|---|---|---|",
    ]
    for dataset, rho in rows:
        cs = [c for c in cells if c["rho"] == rho and (c.get("dataset") or "") == dataset]
        t, _, _ = mean_std(c["train_time_s"] for c in cs)
        paper = PAPER_VANILLA.get(rho) if dataset in ("", "biased-mnist") else None
        label = f"{rho}" if len(datasets) == 1 else f"{dataset} {rho}"
        lines.append(
            f"| {label} | {fmt_pm(c['task'] for c in cs)} | {fmt_pm(c['bias'] for c in cs)} | "
            f"{fmt_pm(c['conflicting'] for c in cs)} | {fmt_pm(c['worst_group'] for c in cs)} | "
            f"{t:.0f} | {f'{paper[0]} / {paper[1]}' if paper else '-'} |"
        )
    return "\n".join(lines) + "\n"


def write_vanilla_results(cells, *, root: Path, command: str, wall_time_s: float) -> Path:
    """``results.json`` / ``results.md`` from ``cells`` and every other finished cell of ``root`` (another
    process's included), under the root's report lock."""
    open_root(root, kind=BENCH_VANILLA_ROOT)
    with report_lock(root):
        cells = with_cells_on_disk(cells, vanilla_cells_on_disk(root), key=_cell_key)
        write_json(
            Path(root) / "results.json",
            {"cells": cells, "command": command, "wall_time_s": wall_time_s, "machine": machine_description()},
        )
        write_text(Path(root) / "results.md", vanilla_table(cells, command=command, wall_time_s=wall_time_s))
    return Path(root) / "results.md"
