"""Vanilla models on Biased MNIST across rho and seeds: the baseline row of every table."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from .._io import BENCH_VANILLA_ROOT, open_root
from ..audit import audit_run
from ..runs import is_finished, read_json, write_json, write_text
from ..train import TrainConfig, partial_dir, train_run
from ._common import fmt_pm, load_cell, machine_description, mean_std

# Paper's vanilla row (FFW Table 2, SimpleConvNet): rho -> (task, bias) in %.
PAPER_VANILLA = {0.99: (88.46, 98.45), 0.995: (74.23, 99.75), 0.997: (46.04, 99.96), 0.999: (10.02, 100.0)}


def vanilla_cell_dir(root: Path, dataset: str, rho: float, seed: int) -> Path:
    return Path(root) / f"{dataset}-rho{rho}-seed{seed}"


def run_vanilla_suite(*, root: Path, dataset: str = "biased-mnist", rhos=(0.99, 0.995, 0.997, 0.999),
                      seeds=(0, 1, 2), model: str = "simple-conv-small", epochs: int = 10,
                      progress: bool = True, echo: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Train + audit every (rho, seed) cell; finished cells are reused, not retrained, and a cell whose
    training was interrupted resumes from its last finished epoch (``train --resume``)."""
    open_root(root, kind=BENCH_VANILLA_ROOT)   # before any compute: never a user's folder or another suite's
    cells = []
    for seed in seeds:
        for rho in rhos:
            folder = vanilla_cell_dir(root, dataset, rho, seed)
            result_file = folder / "audit" / "audit.json"
            if not is_finished(folder):
                start = time.perf_counter()
                resume = (partial_dir(folder) / "checkpoint.safetensors").is_file()
                train_run(dataset=dataset, params={"rho": rho}, out=folder, model=model, resume=resume,
                          config=TrainConfig(epochs=epochs, seed=seed), progress=progress, force=True)
                echo(f"trained {folder.name} in {time.perf_counter() - start:.0f}s" + (" (resumed)" if resume else ""))
            if load_cell(result_file) is None:
                audit_run(folder)
            meta, audit = read_json(folder / "run.json"), read_json(result_file)
            att = audit["attributes"][0]
            cells.append({"rho": rho, "seed": seed, "task": audit["task_accuracy"],
                          "bias": att["bias_extractability"], "conflicting": att["groups"]["conflicting_accuracy"],
                          "worst_group": att["groups"]["worst_group_accuracy"], "train_time_s": meta["wall_time_s"]})
    return cells


def vanilla_table(cells: list[dict[str, Any]], *, command: str, wall_time_s: float) -> str:
    rhos = sorted({c["rho"] for c in cells})
    seeds = sorted({c["seed"] for c in cells})
    lines = [
        f"Command: `{command}`  ",
        f"Machine: {machine_description()}; suite wall time {wall_time_s / 60:.1f} min "
        "(cached cells count 0); seeds " + ", ".join(map(str, seeds)) + ".  ",
        "Selection: none (last epoch). Task = top-1 on the unbiased test set (official test digits, "
        "uniform colours), sample-weighted. Bias = privacy head trained on D^u_train bottleneck features, "
        "early-stopped on D^u_val, scored on the unbiased test. Mean +- std (sample std) over seeds.",
        "",
        "| rho | Task (ours) | Bias (ours) | conflicting acc. | worst group | train time / run (s) | paper Task / Bias |",
        "|---|---|---|---|---|---|---|",
    ]
    for rho in rhos:
        cs = [c for c in cells if c["rho"] == rho]
        t, _, _ = mean_std(c["train_time_s"] for c in cs)
        paper = PAPER_VANILLA.get(rho)
        lines.append(f"| {rho} | {fmt_pm(c['task'] for c in cs)} | {fmt_pm(c['bias'] for c in cs)} | "
                     f"{fmt_pm(c['conflicting'] for c in cs)} | {fmt_pm(c['worst_group'] for c in cs)} | "
                     f"{t:.0f} | {f'{paper[0]} / {paper[1]}' if paper else '-'} |")
    return "\n".join(lines) + "\n"


def write_vanilla_results(cells, *, root: Path, command: str, wall_time_s: float) -> Path:
    open_root(root, kind=BENCH_VANILLA_ROOT)
    write_json(Path(root) / "results.json", {"cells": cells, "command": command, "wall_time_s": wall_time_s,
                                             "machine": machine_description()})
    write_text(Path(root) / "results.md", vanilla_table(cells, command=command, wall_time_s=wall_time_s))
    return Path(root) / "results.md"
