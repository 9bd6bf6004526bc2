"""Re-measure the probe column of the UCI Adult tables (BENCHMARKS.md, "UCI Adult and COMPAS") with the audit's converged linear probe,
on the models cached in the Adult bench's cells: nothing is retrained and nothing is written into that root.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/adult_probe.py \\
        --root runs/bench/adult --out runs/adult-probe

For every harness cell (bias, method, seed) of the root's adult suite folder whose cell keeps its model (a run
folder: model.safetensors + run.json), the model is loaded (``load_run``), its splits are rebuilt from what its
run.json records (the Adult files' SHA-256 checked), its test predictions are checked against the ones the cell
cached (the same model on the same rows, or the cell is skipped with the reason), and its bottleneck features
of D^u_train / D^u_val / D^u_test go through ``debiaskit.bench._adult.bottleneck_probe`` - the audit's
``probe_suite`` "linear" probe, what ``bench adult`` now computes for new cells.

``ffw-structured`` cells keep no model (the export is physically smaller than the vanilla architecture): the
harness's FFW structured ``apply`` is re-run on the cell's vanilla model with the cell's recorded method config
and seed; its probe counts for the cell only if its test predictions equal the cached ones exactly (the same
model). Otherwise the cell is reported as not re-measured, and the re-run's own probe and test accuracy are
recorded beside it (``rerun_*``: a different export, for information).

Writes OUT/probe.json (per cell: the old probe's and the new probe's D^u_test accuracy, wall times) and
OUT/probe.md (per bias and method: mean +- sample std over seeds, new beside old). OUT must not exist.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file

from debiaskit.bench import _adult as bench_adult
from debiaskit.bench._compare import RESULT_FILE, effective_suite, get_suite, suite_folder
from debiaskit.methods import get_method
from debiaskit.models import collect_outputs
from debiaskit.runs import load_run


def _pm(values: list[float]) -> str:
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.fmean(values):.2f} +- {100 * sd:.2f}"


def _predictions(model: torch.nn.Module, test) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return torch.cat([model(x).argmax(1) for x in test.x.split(4096)]).numpy()


def _probe(model: torch.nn.Module, splits, head: str) -> float:
    tr, va, te = (
        collect_outputs(model, s, head=head) for s in (splits.unbiased_train, splits.unbiased_val, splits.unbiased_test)
    )
    return bench_adult.bottleneck_probe(tr.z, tr.b, va.z, va.b, te.z, te.b, num_bias=splits.num_bias_classes)[
        "test_accuracy"
    ]


def measure(root: Path) -> list[dict]:
    folder = Path(root) / suite_folder(effective_suite(get_suite("adult"), values=None))
    rows = []
    for result_file in sorted(folder.glob(f"*/*/seed*/{RESULT_FILE}")):
        cell = json.loads(result_file.read_text())
        if cell.get("fairlearn"):
            continue
        cell_dir = result_file.parent
        start = time.perf_counter()
        row = {
            "value": cell["value"],
            "method": cell["method"],
            "seed": cell["seed"],
            "old": ((cell.get("extras") or {}).get("linear_probe") or {}).get("test_accuracy"),
        }
        cached = load_file(str(cell_dir / bench_adult.PREDICTIONS_FILE))["pred"]
        if (cell_dir / "run.json").is_file():
            run = load_run(cell_dir)
            model, splits, head = run.model, run.splits(), run.head
        elif cell["method"] == "ffw-structured":
            vanilla = load_run(folder / cell_dir.parent.parent.name / "vanilla" / cell_dir.name)
            splits, head = vanilla.splits(), vanilla.head
            model, _ = get_method("ffw-structured").apply(
                vanilla.model, splits=splits, head=head, seed=cell["seed"], **cell["method_config"]
            )
        else:
            rows.append({**row, "new": None, "skipped": "the cell keeps no model"})
            continue
        pred = _predictions(model, splits.test)
        if not np.array_equal(pred, cached):
            y = splits.test.y.numpy()
            rows.append(
                {
                    **row,
                    "new": None,
                    "skipped": "its model's test predictions differ from the cached ones "
                    "(not the model the cell measured)",
                    "rerun_probe": _probe(model, splits, head),
                    "rerun_test_accuracy": float((pred == y).mean()),
                    "cached_test_accuracy": float((cached == y).mean()),
                    "wall_time_s": time.perf_counter() - start,
                }
            )
            continue
        rows.append(
            {
                **row,
                "new": _probe(model, splits, head),
                "wall_time_s": time.perf_counter() - start,
                "rebuilt": cell["method"] == "ffw-structured" and not (cell_dir / "run.json").is_file(),
            }
        )
        print(
            f"{row['value']} {row['method']} seed {row['seed']}: old {row['old']:.4f} new {rows[-1]['new']:.4f} "
            f"({rows[-1]['wall_time_s']:.1f}s)",
            flush=True,
        )
    return rows


def report(rows: list[dict], *, command: str, wall_time_s: float, load: tuple[list[float], list[float]]) -> str:
    lines = [
        f"Command: `{command}`  ",
        f"Machine: {os.uname().machine} CPU, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}; "
        f"wall time {wall_time_s:.0f} s; 1-min load average before / after {load[0][0]:.1f} / {load[1][0]:.1f}.  ",
        "Probe: debiaskit.audit.probe_suite 'linear' on the cell's bottleneck features (fitted on D^u_train, "
        "L2 in {1e-4, 1e-3, 1e-2} chosen on D^u_val), accuracy (%) on the balanced D^u_test; old = the bench's "
        "former twin (float64, random init, L2 in {1e-5, ..., 1e-1}). Mean +- sample std over seeds.",
        "",
        "| bias | method | probe (audit's) | old probe | seeds | skipped | re-run: probe / test acc. (cached acc.) |",
        "|---|---|---|---|---|---|---|",
    ]
    for value in dict.fromkeys(r["value"] for r in rows):
        for method in dict.fromkeys(r["method"] for r in rows if r["value"] == value):
            rs = [r for r in rows if r["value"] == value and r["method"] == method]
            new = [r["new"] for r in rs if r["new"] is not None]
            old = [r["old"] for r in rs if r["old"] is not None]
            skipped = "; ".join(f"seed {r['seed']}: {r['skipped']}" for r in rs if r.get("skipped")) or "-"
            rerun = [r for r in rs if "rerun_probe" in r]
            rerun_text = (
                (
                    f"{_pm([r['rerun_probe'] for r in rerun])} / {_pm([r['rerun_test_accuracy'] for r in rerun])} "
                    f"({_pm([r['cached_test_accuracy'] for r in rerun])})"
                )
                if rerun
                else "-"
            )
            lines.append(f"| {value} | {method} | {_pm(new)} | {_pm(old)} | {len(new)} | {skipped} | {rerun_text} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="the Adult bench root (read only)")
    parser.add_argument("--out", type=Path, required=True, help="a new folder for probe.json / probe.md")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=False)  # never replaces an earlier measurement
    load_before, start = list(os.getloadavg()), time.perf_counter()
    rows = measure(args.root)
    wall, load_after = time.perf_counter() - start, list(os.getloadavg())
    command = "OMP_NUM_THREADS=1 nice -n 10 python benchmarks/adult_probe.py --root " + f"{args.root} --out {args.out}"
    (args.out / "probe.json").write_text(
        json.dumps(
            {
                "command": command,
                "wall_time_s": wall,
                "load_before": load_before,
                "load_after": load_after,
                "rows": rows,
            },
            indent=1,
        )
    )
    (args.out / "probe.md").write_text(report(rows, command=command, wall_time_s=wall, load=(load_before, load_after)))
    print((args.out / "probe.md").read_text())


if __name__ == "__main__":
    main()
