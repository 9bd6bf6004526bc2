"""Table 2 rows (mean +- sample std over seeds) from a folder of `debiaskit ffw` outputs.

    python benchmarks/ffw_structured_table.py runs/struct/t2 --prefix structured-inputw

Reads every PREFIX-rho{RHO}-seed{SEED}/ffw.json: Task / conflicting / worst group on the unbiased test,
bias extractability by the audit probe and the stronger probes (2-layer MLP, linear to convergence),
units removed, input-layer weights set to 0, parameters kept, search wall time; selection is FFW's own
(on D^u_val) as recorded in each file.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path


def _ms(values: list[float], scale: float = 100.0) -> str:
    vals = [scale * v for v in values if v is not None]
    if not vals:
        return "-"
    if len(vals) == 1:
        return f"{vals[0]:.2f} (n=1)"
    return f"{statistics.mean(vals):.2f} +- {statistics.stdev(vals):.2f} (n={len(vals)})"


def rows(folder: Path, prefix: str) -> list[dict]:
    out = []
    for path in sorted(folder.glob(f"{prefix}-rho*-seed*/ffw.json")):
        m = re.search(r"rho([0-9.]+)-seed(\d+)", path.parent.name)
        d = json.loads(path.read_text())
        sp = d["search"]["sparsity"]
        probes = (d.get("probes") or {}).get("after", {})
        out.append(
            {
                "rho": float(m.group(1)),
                "seed": int(m.group(2)),
                "task": d["after"]["task_accuracy"],
                "conflicting": d["after"]["conflicting_accuracy"],
                "worst": d["after"]["worst_group_accuracy"],
                "bias": d["after"]["bias_extractability"],
                "mlp": probes.get("mlp"),
                "linear": probes.get("linear"),
                "units": sp["overall"],
                "input_zeros": (sp.get("input_weights") or {}).get("overall"),
                "params_kept": 1 - sp.get("parameter_sparsity", 0.0),
                "search_s": d["search_time_s"],
                "vanilla_task": d["before"]["task_accuracy"],
                "val_task": d["search"]["selected"]["val_hard"]["task"],
                "epochs": d["search"]["epochs"],
            }
        )
    return out


def table(folder: Path, prefix: str) -> str:
    data = rows(folder, prefix)
    lines = [
        "| rho | Task | conflicting | worst group | Bias (audit) | Bias (MLP) | Bias (linear) | units removed "
        "| input weights 0 | params kept | D^u_val task (selected) | epochs | search s | vanilla Task |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for rho in sorted({r["rho"] for r in data}):
        rs = [r for r in data if r["rho"] == rho]

        def col(k, s=100.0, rs=rs):
            return _ms([r[k] for r in rs], s)

        lines.append(
            f"| {rho:g} | {col('task')} | {col('conflicting')} | {col('worst')} | {col('bias')} | {col('mlp')} "
            f"| {col('linear')} | {col('units')} | {col('input_zeros')} | {col('params_kept')} | "
            f"{col('val_task')} | {col('epochs', 1)} | {col('search_s', 1)} | {col('vanilla_task')} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path)
    ap.add_argument("--prefix", default="structured-inputw")
    args = ap.parse_args()
    print(table(args.folder, args.prefix))


if __name__ == "__main__":
    main()
