"""Audit reports: a terminal table, JSON, Markdown and PNG plots."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from .._io import atomic_folder, write_json, write_text
from ._audit import AuditReport
from ._folders import AUDIT_FOLDER
from ._where import WHERE_MARGIN, where_rows, where_sentences, where_table

CONVENTIONS = (
    "accuracy = sample-weighted over the evaluation split; mean group = unweighted mean over "
    "non-empty (target, bias) groups; worst group = minimum over non-empty groups; bias "
    "extractability = privacy head (Linear, head-shaped) trained on D^u_train bottleneck features, "
    "early-stopped on D^u_val, scored on the evaluation split (not the benchmarks' converged linear "
    "probe, debiaskit.audit.probe_suite 'linear', which is fitted to convergence with L2 chosen on D^u_val "
    "and scored on the balanced D^u_test: the two read the same features but need not agree)"
)
PERCENT = "%"
FRACTION = "0-1"  # a fraction, not a percentage

UNITS = (
    f"Units: % = percent; {FRACTION} = a fraction (normalised MI; counterfactual bias = mean |p_y(x) - p_y(x_cf)|). "
    "Bias extractability = the audit's privacy head (early-stopped, scored on the evaluation split); the tabular "
    "benchmark tables show it as 'privacy head' beside a 'linear probe' fitted to convergence (a stronger reader "
    "of the same features)."
)


def pct(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}"


def _fraction(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def summary_rows(report: AuditReport) -> list[tuple[str, str, str]]:
    """(metric, value, unit) rows: one unit per row, stated (accuracies in %, MI and counterfactual bias as
    fractions). Aligned / conflicting rows only where y and b share their values (image recipes); for a
    protected attribute, P(y=1 | b) per value and Cramer's V of (y, b) instead."""
    rows = [(f"task accuracy ({report.eval_split} split, sample-weighted)", pct(report.task_accuracy), PERCENT)]
    for a in report.attributes:
        tag = f" [{a.name}{', pseudo-labels' if a.pseudo_labels else ''}]"
        g = a.groups
        if a.bias_strength is not None:
            st = a.bias_strength
            rows += [
                (f"P(y=1 | b={v}) in the {report.eval_split} split{tag}", pct(p), PERCENT)
                for v, p in enumerate(st["p_y1_given_b"])
            ]
            rows.append(
                (f"Cramer's V of (y, b) in the {report.eval_split} split{tag}", _fraction(st["cramers_v"]), FRACTION)
            )
        if g.aligned_accuracy is not None:
            rows += [
                (f"aligned accuracy{tag}", f"{pct(g.aligned_accuracy)}  (n={g.aligned_count})", PERCENT),
                (f"conflicting accuracy{tag}", f"{pct(g.conflicting_accuracy)}  (n={g.conflicting_count})", PERCENT),
            ]
        rows += [
            (
                f"worst-group accuracy{tag}",
                f"{pct(g.worst_group_accuracy)}  (y={g.worst_group[0]}, b={g.worst_group[1]})",
                PERCENT,
            ),
            (f"mean group accuracy{tag}", pct(g.mean_group_accuracy), PERCENT),
            (f"bias extractability{tag}", pct(a.bias_extractability) + _chance(a), PERCENT),
            (f"bias mutual information (normalised){tag}", _fraction(a.bias_mutual_information), FRACTION),
            (f"counterfactual bias{tag}", _fraction(a.counterfactual_bias), FRACTION),
        ]
    return rows


def _chance(a) -> str:
    """The attribute's chance level beside its extractability (a binary attribute reads 50 % by chance)."""
    if a.bias_extractability is None or not a.num_bias_classes:
        return ""
    return f"  (chance {100 / a.num_bias_classes:.2f})"


def render_table(report: AuditReport, *, title: str = "Bias audit"):
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("unit")
    for k, v, unit in summary_rows(report):
        table.add_row(
            Text(k), Text(v), Text(unit)
        )  # plain text: a tag such as "[sex]" is an attribute's name, not markup
    table.caption = UNITS
    return table


def to_markdown(report: AuditReport, *, title: str = "Bias audit") -> str:
    lines = [f"# {title}", "", f"Evaluation split: `{report.eval_split}` ({report.num_samples} samples).", ""]
    if report.below_majority():  # first: the numbers below describe a model a constant answer beats
        lines += [f"**{report.below_majority()}**", ""]
    lines += ["| metric | value | unit |", "|---|---|---|"]
    lines += [f"| {k} | {v} | {unit} |" for k, v, unit in summary_rows(report)]
    lines += ["", UNITS]
    for a in report.attributes:
        g = a.groups
        nb = len(g.group_accuracy[0])
        lines += [
            "",
            f"## Group accuracy, target x {a.name} (%; n in brackets)",
            "",
            "| y \\ b | " + " | ".join(str(j) for j in range(nb)) + " |",
            "|---" * (nb + 1) + "|",
        ]
        for i, row in enumerate(g.group_accuracy):
            cells = [f"{pct(v)} ({g.group_counts[i][j]})" for j, v in enumerate(row)]
            lines.append(f"| {i} | " + " | ".join(cells) + " |")
    for a in report.attributes:
        lines += where_lines(a, split=report.eval_split)
    lines += ["", f"Conventions: {CONVENTIONS}.", ""]
    for k, v in report.meta.items():
        lines.append(f"- {k}: {v}")
    return "\n".join(lines) + "\n"


def where_lines(a, *, split: str) -> list[str]:
    """Markdown: where attribute ``a``'s bias is read (one probe per block / stage and at the bottleneck, and
    within each target class), then the sentences derived from that table; nothing when it was not measured."""
    where = where_table(a.points, a.per_class)
    if where is None:
        return []
    lines = [
        "",
        f"## Where the bias is read: {a.name} (probe accuracy, %; {split} split)",
        "",
        f"Probe: {where['probe']}. A point reads the bias when it beats chance (the most frequent bias value's "
        f"share) by more than {100 * WHERE_MARGIN:.0f} points.",
        "",
        "| point | dims | probe accuracy | chance |",
        "|---|---|---|---|",
    ]
    lines += [f"| {' | '.join(r)} |" for r in where_rows(where)]
    return lines + ["", *where_sentences(where, split=split)]


def render_where(report: AuditReport):
    """The terminal tables of where each attribute's bias is read, with their sentences as captions (empty when
    not measured)."""
    from rich.table import Table
    from rich.text import Text

    tables = []
    for a in report.attributes:
        where = where_table(a.points, a.per_class)
        if where is None:
            continue
        table = Table(title=f"Where the bias is read: {a.name} ({report.eval_split} split)")
        for name, justify in (
            ("point", "left"),
            ("dims", "right"),
            ("probe accuracy %", "right"),
            ("chance %", "right"),
        ):
            table.add_column(name, justify=justify)  # type: ignore[arg-type]
        for row in where_rows(where):
            table.add_row(*(Text(c) for c in row))
        table.caption = " ".join(where_sentences(where, split=report.eval_split))
        tables.append(table)
    return tables


def plot_group_heatmap(report: AuditReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a = report.attributes[0]
    acc = torch.tensor(a.groups.group_accuracy) * 100
    fig, ax = plt.subplots(figsize=(6, 5))
    im = ax.imshow(acc.numpy(), vmin=0, vmax=100, cmap="viridis")
    for i in range(acc.shape[0]):
        for j in range(acc.shape[1]):
            if not math.isnan(acc[i, j]):
                ax.text(
                    j,
                    i,
                    f"{acc[i, j]:.0f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if acc[i, j] < 50 else "black",
                )
    ax.set_xlabel(f"bias ({a.name})")
    ax.set_ylabel("target")
    ax.set_title(f"Group accuracy (%), worst {pct(a.groups.worst_group_accuracy)}")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_bottleneck(report: AuditReport, path: Path, *, max_points: int = 3000) -> None:
    """2-D PCA of the bottleneck features coloured by bias, with class centroids marked."""
    if report._z is None:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    z = report._z - report._z.mean(0)
    _, _, v = torch.pca_lowrank(z, q=2, center=False)
    p = z @ v[:, :2]
    n = min(len(p), max_points)
    sel = torch.randperm(len(p), generator=torch.Generator().manual_seed(0))[:n]
    fig, ax = plt.subplots(figsize=(6, 5))
    sc = ax.scatter(p[sel, 0], p[sel, 1], c=report._b[sel], cmap="tab10", s=4, alpha=0.6)
    for k in torch.unique(report._y):
        c = p[report._y == k].mean(0)
        ax.scatter([c[0]], [c[1]], marker="X", s=120, c="black")
        ax.annotate(
            str(int(k)),
            (float(c[0]), float(c[1])),
            fontsize=10,
            fontweight="bold",
            xytext=(4, 4),
            textcoords="offset points",
        )
    ax.set_title("Bottleneck (PCA), colour = bias, X = class centroid")
    fig.colorbar(sc, ax=ax, label="bias label")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(
    report: AuditReport,
    folder: Path,
    *,
    title: str = "Bias audit",
    extra: dict[str, Any] | None = None,
    force: bool = False,
) -> Path:
    """Write ``audit.json``, ``report.md``, ``group_accuracy.png`` and ``bottleneck.png`` as the folder ``folder``.

    The same output rule as ``debiaskit audit --out`` (:mod:`debiaskit._io`): ``folder`` must be new or, with
    ``force``, an earlier audit report folder (never a run, a user's folder or a file); it is written in a
    hidden staging folder under a lock and renamed into place when complete, so a crash or a second writer
    never leaves a half-written or mixed report.
    """
    with atomic_folder(Path(folder), kind=AUDIT_FOLDER, force=force) as staging:
        write_report_files(report, staging, title=title, extra=extra)
    return Path(folder)


def write_report_files(
    report: AuditReport, folder: Path, *, title: str = "Bias audit", extra: dict[str, Any] | None = None
) -> None:
    """The report's files into ``folder``, a staging folder of :func:`~debiaskit._io.atomic_folder` (its caller)."""
    payload = {"kind": "audit", "schema_version": 1, **report.as_dict()}  # kind: what `--force` may replace
    payload["conventions"] = CONVENTIONS
    if extra:
        payload.update(extra)
    write_json(folder / "audit.json", payload)
    write_text(folder / "report.md", to_markdown(report, title=title))
    plot_group_heatmap(report, folder / "group_accuracy.png")
    plot_bottleneck(report, folder / "bottleneck.png")
