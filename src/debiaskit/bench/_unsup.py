"""Label-free benchmark: CALM against VCBA-style, JTT, LfF (and vanilla) with no bias labels.

Every method receives ``splits.train.without_bias_labels()``; true bias labels are read only after
training, for the test metrics and for the discovery-quality diagnostics of CALM (precision / recall
of its conflict flags epoch by epoch). Nothing is selected on the test set.

A cell is one (method tag, dataset, rho, seed) and lives in
``ROOT/<tag>/<dataset>-rho<rho>-seed<seed>[-n<train_size>]/`` with ``result.json`` and
``model.safetensors``; it is written atomically and skipped when it exists (resumable). Non-default
budgets (epochs, model, D^u size) get a folder suffix so that the cache never mixes them. The
vanilla reference row reuses finished ``debiaskit bench vanilla`` runs (evaluated once, cached in
``ROOT/_vanilla/``).

Example::

    from debiaskit.bench import grid_cells, run_unsup, write_unsup_results
    cells = grid_cells(methods=["calm", "vcba"], rhos=[0.999], seeds=[0])
    results = run_unsup(cells, root=Path("runs/bench/unsup"))
    write_unsup_results(root=Path("runs/bench/unsup"), command="...", wall_time_s=0.0)
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from .._io import atomic_file, atomic_folder, open_root, report_lock
from ..audit import group_metrics
from ..data import make_splits
from ..errors import ConfigError
from ..methods import METHODS, build_method, get_method, method_config
from ..models import build_model, collect_outputs, default_head_name
from ..runs import is_finished, load_run, read_json, save_weights, write_json, write_text
from ..train import TrainConfig, fit
from ._common import machine_description
from ._folders import BENCH_CELL, BENCH_UNSUP_ROOT

RESULT_FILE = "result.json"
VANILLA_CACHE = "_vanilla"
DEFAULT_MODEL = "simple-conv-small"
DEFAULT_EPOCHS = 10
DEFAULT_UNBIASED_SIZE = 10000
_PLANS = json.loads((Path(__file__).parent / "unsup_plans.json").read_text())
DEFAULT_METHODS = tuple(_PLANS["default_methods"])
PLANS = tuple(_PLANS["plans"])
VANILLA_LABEL = "vanilla (bench vanilla runs)"


# -- cells ------------------------------------------------------------------------------------------------------
def unsup_cell(
    method: str,
    rho: float,
    seed: int,
    *,
    epochs: int | None = None,
    tag: str | None = None,
    dataset: str = "biased-mnist",
    train_size: int | None = None,
    model: str = DEFAULT_MODEL,
    unbiased_size: int = DEFAULT_UNBIASED_SIZE,
    **overrides: Any,
) -> dict[str, Any]:
    """One benchmark cell (a JSON-able dict, stored verbatim in its ``result.json``).

    ``epochs`` defaults to 10, plus the epochs the method trains before its reported model starts
    (``MethodInfo.extra_epochs``: VCBA's stage 1, so that its re-initialised stage 2 gets vanilla's budget).

    Example::

        unsup_cell("calm", 0.999, 0, tag="calm-no-reweight", reweight=False)
    """
    if epochs is None:
        epochs = default_epochs(method, DEFAULT_EPOCHS, overrides)
    return {
        "method": method,
        "rho": float(rho),
        "seed": int(seed),
        "epochs": int(epochs),
        "dataset": dataset,
        "tag": tag or method,
        "train_size": train_size,
        "overrides": dict(overrides),
        "model": model,
        "unbiased_size": int(unbiased_size),
    }


def default_epochs(method: str, epochs: int, overrides: dict[str, Any] | None = None) -> int:
    """Epochs of a cell: ``epochs`` for the reported model, plus what the method trains before it starts."""
    config = method_config(method, dataset="", **(overrides or {}))
    return epochs + get_method(method).epochs_before_model(config)


def plan_cells(name: str) -> list[dict[str, Any]]:
    """A named plan of ``unsup_plans.json``, in priority order. ``final`` pins CALM's first recipe
    (docs/design/calm-recipe.md)."""
    if name not in _PLANS["plans"]:
        raise ConfigError(f"unknown plan {name!r}; available: {', '.join(PLANS)}")
    return [
        unsup_cell(
            g["method"],
            rho,
            seed,
            tag=g.get("tag"),
            epochs=g.get("epochs"),
            train_size=g.get("train_size"),
            **g.get("overrides", {}),
        )
        for g in _PLANS["plans"][name]
        for rho in g["rhos"]
        for seed in g["seeds"]
    ]


def label_free_methods() -> list[str]:
    """Registered methods this benchmark accepts: training-time methods that read no bias labels and no D^u."""
    return sorted(
        n
        for n, info in METHODS.items()
        if not info.uses_bias_labels and not info.uses_unbiased_data and not info.post_hoc
    )


def grid_cells(
    *,
    methods: Iterable[str] = DEFAULT_METHODS,
    rhos: Iterable[float] = (0.999, 0.997),
    seeds: Iterable[int] = (0, 1, 2),
    datasets: Iterable[str] = ("biased-mnist",),
    epochs: int = DEFAULT_EPOCHS,
    train_size: int | None = None,
    model: str = DEFAULT_MODEL,
    unbiased_size: int = DEFAULT_UNBIASED_SIZE,
) -> list[dict[str, Any]]:
    """Every (dataset, seed, rho, method) cell, seed-major (a partial run is a complete table for its first seeds).

    Example::

        grid_cells(methods=["calm"], rhos=[0.95], seeds=[0], datasets=["biased-toy"], epochs=2, unbiased_size=600)
    """
    names = [n.strip() for m in methods for n in str(m).split(",") if n.strip()]
    allowed = label_free_methods()
    bad = [n for n in names if n not in allowed]
    if bad:
        raise ConfigError(
            f"method(s) {bad} cannot run here (unknown, or they need bias labels / D^u / a trained "
            f"model); label-free methods: {', '.join(allowed)}"
        )
    if not names:
        raise ConfigError("no method given")
    if epochs < 1:
        raise ConfigError(f"--epochs must be >= 1, got {epochs}")
    return [
        unsup_cell(
            m,
            rho,
            seed,
            epochs=default_epochs(m, epochs),
            dataset=ds,
            train_size=train_size,
            model=model,
            unbiased_size=unbiased_size,
        )
        for ds in datasets
        for seed in seeds
        for rho in rhos
        for m in dict.fromkeys(names)
    ]


def cell_dir(root: Path, cell: dict[str, Any]) -> Path:
    """``ROOT/<tag>/<dataset>-rho<rho>-seed<seed>[-n<size>]`` (+ suffixes for non-default budgets)."""
    c = _normalised(cell)
    name = f"{c['dataset']}-rho{c['rho']}-seed{c['seed']}" + (f"-n{c['train_size']}" if c["train_size"] else "")
    if c["model"] != DEFAULT_MODEL:
        name += f"-{c['model']}"
    if c["unbiased_size"] != DEFAULT_UNBIASED_SIZE:
        name += f"-u{c['unbiased_size']}"
    if c["epochs"] != default_epochs(c["method"], DEFAULT_EPOCHS, c["overrides"]):
        name += f"-{c['epochs']}ep"
    return Path(root) / c["tag"] / name


def _normalised(cell: dict[str, Any]) -> dict[str, Any]:
    """Fill keys that older cells (written before they existed) leave out with their defaults."""
    return {
        "model": DEFAULT_MODEL,
        "unbiased_size": DEFAULT_UNBIASED_SIZE,
        "train_size": None,
        "overrides": {},
        **cell,
        "rho": float(cell["rho"]),
    }


def _same_cell(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return _normalised(a) == _normalised(b)


# -- evaluation and CALM's discovery diagnostics ------------------------------------------------------------------
def evaluate(model: torch.nn.Module, test, *, head: str | None = None) -> dict[str, float]:
    """Unbiased-test metrics (true labels): task accuracy, aligned / conflicting / worst / mean group accuracy."""
    out = collect_outputs(model, test, head=head, with_bottleneck=False)
    pred = out.logits.argmax(1)
    g = group_metrics(
        pred, out.y, out.b, num_classes=test.num_classes, num_bias=test.num_bias_classes, aligned=test.aligned
    )
    return {
        "task": float((pred == out.y).float().mean()),
        "aligned": g.aligned_accuracy,
        "conflicting": g.conflicting_accuracy,
        "worst_group": g.worst_group_accuracy,
        "mean_group": g.mean_group_accuracy,
    }


def flag_quality(pseudo, flag, y, b, aligned) -> dict[str, Any]:
    """Precision / recall of conflict flags and b^ accuracy against the true labels (report only).
    ``pseudo`` (b^, -1 = not scored yet) may be None for methods that flag without a pseudo-bias."""
    seen = torch.ones(len(flag), dtype=torch.bool) if pseudo is None else pseudo >= 0
    flag, b, conf = flag[seen], b[seen], ~aligned[seen].bool()
    pseudo = None if pseudo is None else pseudo[seen]
    tp = int((flag & conf).sum())
    return {
        "flagged": int(flag.sum()),
        "true_conflicting": int(conf.sum()),
        "tp": tp,
        "precision": tp / max(int(flag.sum()), 1),
        "recall": tp / max(int(conf.sum()), 1),
        "b_acc": float((pseudo == b).float().mean()) if pseudo is not None and len(b) else None,
        "b_acc_conflicting": (
            float((pseudo[conf] == b[conf]).float().mean()) if pseudo is not None and conf.any() else None
        ),
    }


def track_flags(method, epoch: int, truth: tuple) -> dict[str, Any]:
    """After an epoch: the quality of the method's conflict flags (``conflict_flags()``), per visit
    (``online``) and frozen, against the true ``(y, b, aligned)`` of the training set. The truth is held
    by the benchmark, outside the training data, and read only here; nothing flows back into the method."""
    y, b, aligned = truth
    rec: dict[str, Any] = {"epoch": epoch}
    for key, online in (("online", True), ("frozen", False)):
        flags = method.conflict_flags(online=online)
        if flags is not None:
            i = flags.index
            rec[key] = flag_quality(flags.pseudo_bias, flags.flagged.bool(), y[i], b[i], aligned[i])
    return rec


# -- running ----------------------------------------------------------------------------------------------------
def run_unsup_cell(
    cell: dict[str, Any], *, root: Path, progress: bool = False, echo: Callable[[str], None] = print
) -> dict[str, Any]:
    """Train one cell without bias labels, evaluate it, write its folder atomically; cached cells are read."""
    folder = cell_dir(root, cell)
    cached = _cached(folder, cell)
    if cached is not None:
        return cached
    c = _normalised(cell)
    start = time.perf_counter()
    # = the vanilla runs' data (same seed, default D^u size) unless a subset or another size is asked for
    splits = make_splits(
        c["dataset"],
        params={"rho": c["rho"]},
        seed=c["seed"],
        train_size=c["train_size"],
        unbiased_size=c["unbiased_size"],
    )
    method, config = build_method(c["method"], dataset=c["dataset"], **c["overrides"])
    torch.manual_seed(c["seed"])
    model = build_model(c["model"], num_classes=splits.num_classes, input_shape=splits.train.input_shape)
    head = default_head_name(model)
    truth = (splits.train.y, splits.train.b, splits.train.aligned)
    track: list[dict[str, Any]] = []
    fitted = fit(
        model,
        splits.train.without_bias_labels(),
        method=method,
        head=head,
        progress=progress,
        num_classes=splits.num_classes,
        config=TrainConfig(epochs=c["epochs"], seed=c["seed"]),
        log=lambda record: track.append(track_flags(method, record["epoch"], truth)),
    )
    res = {
        "cell": cell,
        "config": config,
        "wall_time_s": fitted.wall_time_s,
        "history": fitted.history,
        "method_state": method.state(),
        "test": evaluate(fitted.model, splits.test, head=head),
    }
    if any(len(rec) > 1 for rec in track):
        res["discovery"] = track
    if fitted.model is not model:  # the method selected another model than the last epoch's: report both
        res["test_last_epoch"] = evaluate(model.eval(), splits.test, head=head)
    for name, extra in method.extra_models(fitted.model).items():
        res[f"test_{name}"] = evaluate(extra, splits.test, head=head)
    with atomic_folder(folder, kind=BENCH_CELL, force=True) as staging:  # replaces only a benchmark cell
        save_weights(fitted.model, staging / "model.safetensors")
        write_json(staging / RESULT_FILE, res)
    echo(
        f"  {c['tag']} {c['dataset']} rho={c['rho']} seed={c['seed']}: task {100 * res['test']['task']:.2f} "
        f"(train {fitted.wall_time_s:.0f}s, cell {time.perf_counter() - start:.0f}s) -> {folder}"
    )
    return res


def _cached(folder: Path, cell: dict[str, Any]) -> dict[str, Any] | None:
    f = folder / RESULT_FILE
    if not f.is_file():
        return None
    res = read_json(f)
    if not _same_cell(res.get("cell", {}), cell):
        raise ConfigError(
            f"{f} holds another configuration ({res.get('cell')}) than the one asked for ({cell}); "
            "use another --out or delete that cell"
        )
    return res


def run_unsup(
    cells: list[dict[str, Any]],
    *,
    root: Path,
    progress: bool = False,
    deadline: str | None = None,
    keep_going: bool = True,
    echo: Callable[[str], None] = print,
) -> tuple[list[dict[str, Any]], list[dict]]:
    """Run (or resume) cells one after another; returns (finished results, failed or skipped cells).

    ``deadline`` ("HH:MM", UTC): start no cell after it. A failing cell is reported, not cached, and
    retried next time (``keep_going=False`` raises instead).
    """
    open_root(root, kind=BENCH_UNSUP_ROOT)  # before any compute: never a user's folder or another suite's
    done, missed = [], []
    for i, cell in enumerate(cells, 1):
        label = f"[{i}/{len(cells)}] {cell['tag']} {cell['dataset']} rho={cell['rho']} seed={cell['seed']}"
        if (cell_dir(root, cell) / RESULT_FILE).is_file():
            echo(f"{label}: cached")
        elif deadline and time.strftime("%H:%M", time.gmtime()) >= deadline:
            echo(f"{label}: not started (deadline {deadline} UTC)")
            missed.append(cell)
            continue
        else:
            echo(f"{label}: training ({cell['epochs']} epochs) ...")
        try:
            done.append(run_unsup_cell(cell, root=root, progress=progress, echo=echo))
        except Exception as exc:  # noqa: BLE001 - one broken cell must not stop the suite
            echo(f"  FAILED {label}: {type(exc).__name__}: {exc}")
            if not keep_going:
                raise
            missed.append(cell)
    return done, missed


# -- vanilla reference --------------------------------------------------------------------------------------------
def vanilla_reference(dataset: str, rho: float, seed: int, *, root: Path, vanilla_from: Path | None) -> dict | None:
    """Test metrics of the finished ``bench vanilla`` run of (dataset, rho, seed), evaluated once and cached."""
    cache = Path(root) / VANILLA_CACHE / f"{dataset}-rho{rho}-seed{seed}.json"
    if cache.is_file():
        return read_json(cache)
    if vanilla_from is None:
        return None
    folder = Path(vanilla_from) / f"{dataset}-rho{rho}-seed{seed}"
    if not is_finished(folder):
        return None
    run = load_run(folder)
    data = run.meta.get("data", {})
    if data.get("unbiased_size", DEFAULT_UNBIASED_SIZE) != DEFAULT_UNBIASED_SIZE or data.get("train_size"):
        return None  # not the same data as the full-size cells
    res = {
        "test": evaluate(run.model, run.splits().test, head=run.head),
        "wall_time_s": run.meta["wall_time_s"],
        "run": str(folder),
        "model": run.meta["model"]["name"],
        "epochs": run.meta["train"]["epochs"],
    }
    write_json(cache, res)
    return res


# -- tables -----------------------------------------------------------------------------------------------------
COLUMNS = (
    "dataset",
    "rho",
    "method",
    "seeds",
    "unbiased test acc.",
    "conflicting acc.",
    "worst group",
    "last epoch",
    "sel.+refit",
    "train time (s)",
    "time / vanilla",
)


def pm(values: Iterable[float | None]) -> str:
    vals = [100 * v for v in values if v is not None]
    if not vals:
        return "-"
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{statistics.fmean(vals):.2f} +- {sd:.2f}"


def collect_results(root: Path) -> list[dict[str, Any]]:
    """Every finished cell under ``root`` (the table shows the whole cache, not just this invocation's cells)."""
    return [
        read_json(f) for f in sorted(Path(root).glob(f"*/*/{RESULT_FILE}")) if not f.parent.parent.name.startswith("_")
    ]


def summary_rows(
    root: Path, *, vanilla_from: Path | None = None, echo: Callable[[str], None] = print
) -> list[dict[str, Any]]:
    """One row per (dataset, rho, tag) plus the vanilla reference; mean +- sample std over seeds."""
    groups: dict[tuple, list[dict]] = {}
    for r in collect_results(root):
        c = _normalised(r["cell"])
        tag = c["tag"] + (f" (n={c['train_size']})" if c["train_size"] else "")
        groups.setdefault((c["dataset"], c["rho"], tag), []).append(r)
    van: dict[tuple, list] = {}
    for ds, rho in sorted({(ds, rho) for ds, rho, tag in groups if not tag.startswith("smoke")}):
        seeds = sorted(
            {s for (d, r, t), rs in groups.items() if (d, r) == (ds, rho) for s in (x["cell"]["seed"] for x in rs)}
        )
        for s in sorted(set(seeds) | {0, 1, 2}):
            cached = (Path(root) / VANILLA_CACHE / f"{ds}-rho{rho}-seed{s}.json").is_file()
            if not cached and vanilla_from is not None and is_finished(Path(vanilla_from) / f"{ds}-rho{rho}-seed{s}"):
                echo(
                    f"evaluating vanilla run {Path(vanilla_from) / f'{ds}-rho{rho}-seed{s}'} (cached in {VANILLA_CACHE}/)"
                )
            v = vanilla_reference(ds, rho, s, root=root, vanilla_from=vanilla_from)
            if v is not None:
                van.setdefault((ds, rho), []).append((s, v))
    rows = []
    for ds, rho in sorted({(d, r) for d, r, _ in groups} | set(van), key=lambda k: (k[0], -k[1])):
        vs = van.get((ds, rho), [])
        vt = statistics.fmean(v["wall_time_s"] for _, v in vs) if vs else None
        if vs:
            rows.append(
                {
                    "dataset": ds,
                    "rho": rho,
                    "method": VANILLA_LABEL,
                    "seeds": [s for s, _ in vs],
                    "task": [v["test"]["task"] for _, v in vs],
                    "conflicting": [v["test"]["conflicting"] for _, v in vs],
                    "worst_group": [v["test"]["worst_group"] for _, v in vs],
                    "last_epoch": None,
                    "refit": None,
                    "train_time_s": vt,
                    "time_ratio": 1.0,
                }
            )
        for (d, r, tag), rs in sorted(groups.items(), key=lambda kv: kv[0][2]):
            if (d, r) != (ds, rho):
                continue
            t = statistics.fmean(x["wall_time_s"] for x in rs)
            rows.append(
                {
                    "dataset": ds,
                    "rho": rho,
                    "method": tag,
                    "seeds": [x["cell"]["seed"] for x in rs],
                    "task": [x["test"]["task"] for x in rs],
                    "conflicting": [x["test"]["conflicting"] for x in rs],
                    "worst_group": [x["test"]["worst_group"] for x in rs],
                    "last_epoch": [x["test_last_epoch"]["task"] for x in rs] if "test_last_epoch" in rs[0] else None,
                    "refit": (
                        [x["test_selected_plus_refit"]["task"] for x in rs]
                        if "test_selected_plus_refit" in rs[0]
                        else None
                    ),
                    "train_time_s": t,
                    "time_ratio": t / vt if vt else None,
                }
            )
    return rows


def _cells_text(row: dict[str, Any]) -> list[str]:
    ratio = row["time_ratio"]
    return [
        row["dataset"],
        f"{row['rho']}",
        row["method"],
        ",".join(map(str, row["seeds"])),
        pm(row["task"]),
        pm(row["conflicting"]),
        pm(row["worst_group"]),
        pm(row["last_epoch"]) if row["last_epoch"] else "-",
        pm(row["refit"]) if row["refit"] else "-",
        f"{row['train_time_s']:.0f}",
        "-" if ratio is None else f"{ratio:.2f}",
    ]


def summary_table(rows: list[dict[str, Any]]) -> str:
    """The Markdown table (same columns as BENCHMARKS.md's label-free table)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cells_text(r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


PROTOCOL = (
    "Protocol: every method trains on D^b without bias labels (`without_bias_labels()`); true bias labels "
    "are read only for the test metrics and CALM's discovery diagnostics. Selection: CALM - best "
    "pseudo-group-balanced accuracy on its held-out 5 % of D^b (label-free); every other method - last epoch; "
    "nothing is selected on the test set or D^u. Numbers: % on the unbiased test set (official test digits, "
    "uniform bias), sample-weighted task accuracy; conflicting = bias-conflicting test samples; worst group = "
    'min over (target, bias) groups; mean +- sample std over the listed seeds. "last epoch" / "sel.+refit" = '
    "the same CALM runs at their last epoch / after the optional DFR-style head refit. time / vanilla = mean "
    "training wall time over the vanilla reference's mean."
)


def write_unsup_results(
    *,
    root: Path,
    command: str,
    wall_time_s: float,
    vanilla_from: Path | None = None,
    echo: Callable[[str], None] = print,
) -> tuple[Path, list[dict[str, Any]]]:
    """Write ``summary.md``, ``results.json`` and ``discovery_over_time.png`` from every cached cell of ``root``
    (another process's included), under the root's report lock (a later rewrite never drops a cell)."""
    root = open_root(root, kind=BENCH_UNSUP_ROOT)
    with report_lock(root):
        return _write_unsup_results(
            root=root, command=command, wall_time_s=wall_time_s, vanilla_from=vanilla_from, echo=echo
        )


def _write_unsup_results(
    *, root: Path, command: str, wall_time_s: float, vanilla_from: Path | None, echo: Callable[[str], None]
) -> tuple[Path, list[dict[str, Any]]]:
    rows = summary_rows(root, vanilla_from=vanilla_from, echo=echo)
    header = [
        f"Command: `{command}`  ",
        f"Machine: {machine_description()}; this invocation's wall time {wall_time_s / 60:.1f} min "
        "(cached cells count 0).  ",
        PROTOCOL,
        "",
        "",
    ]
    write_text(root / "summary.md", "\n".join(header) + summary_table(rows))
    cells = [
        {
            "cell": r["cell"],
            "test": r["test"],
            "wall_time_s": r["wall_time_s"],
            **{k: r[k] for k in ("test_last_epoch", "test_selected_plus_refit", "method_state") if k in r},
            "discovery_last": (r.get("discovery") or [None])[-1],
        }
        for r in collect_results(root)
    ]
    write_json(
        root / "results.json",
        {
            "command": command,
            "machine": machine_description(),
            "wall_time_s": wall_time_s,
            "rows": rows,
            "cells": cells,
        },
    )
    plot_discovery(root, root / "discovery_over_time.png")
    return root / "summary.md", rows


def plot_discovery(root: Path, path: Path) -> Path | None:
    """Precision / recall / b^ accuracy of CALM's online conflict flags per epoch, one line per CALM cell."""
    results = [r for r in collect_results(root) if r.get("discovery")]
    if not results:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for r in results:
        c, tr = r["cell"], [t for t in r["discovery"] if "online" in t]
        if not tr:  # GCE-branch cells: no online attraction to plot
            continue
        label = f"{c['tag']} rho={c['rho']} s{c['seed']}"
        for ax, key in zip(axes, ("precision", "recall", "b_acc_conflicting")):
            ax.plot(
                [t["epoch"] for t in tr],
                [float("nan") if t["online"][key] is None else t["online"][key] for t in tr],
                marker="o",
                label=label,
            )
    for ax, title in zip(
        axes,
        (
            "precision of online conflict flags",
            "recall of online conflict flags",
            "b^ accuracy on truly conflicting samples",
        ),
    ):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylim(-0.02, 1.02)
    axes[-1].legend(fontsize=6)
    fig.tight_layout()
    with atomic_file(path) as tmp:  # a root file: replaced whole or not at all
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path
