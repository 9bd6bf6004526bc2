"""The development suite: where FFW's defaults are chosen, and the ablation of what each of its stages buys.

A default chosen on one dataset's D^u_val need not carry over (on a torchvision-style ResNet with a position bias,
FFW's defaults exported a chance-level model; on UCI Adult they returned the vanilla model or a constant one). So
every default - and every later change of one - is chosen on this suite's D^u_val: **worst cell first, then the
mean over cells** (``summary`` below). The cells (:data:`CELLS`) span colour, position, texture, corruption and
tabular biases on a plain CNN, an MLP, a torchvision-style ResNet and a user-style residual CNN.

Per (cell, seed) one vanilla model is trained (a run folder, resumable) and every pipeline (:data:`VARIANTS`) starts
from it with the same data access: D^u_train to learn, D^u_val to choose, the unbiased test only reported.

* FFW as the library ships it: ``ffw-default`` (unstructured) and ``ffw-structured``, and its cheaper preset
  ``fast`` (``ffw-fast``, ``ffw-fast-structured``);
* its stages added one by one: ``gates-only`` (the search alone), ``gates+tune``, ``gates+tune+erase``,
  ``gates+tune+erase+refit`` - each later stage run by :func:`debiaskit.ffw.apply_stages` on the model of the
  stage before (the code find_fantastic_weights runs after its gates, same config; one search per cell and seed
  instead of four). ``gates+tune+erase+refit`` is the default pipeline rebuilt stage by stage: where it differs
  from ``ffw-default``, the library did something more (a do-no-harm guard);
* pipelines without gates: ``finetune+erase+refit`` (every weight tuned by FFW's tuning - CE + the probe-free bias
  term, the epoch chosen on D^u_val - then the eraser and the refit), ``erase+refit`` (the eraser and the refit on
  the vanilla bottleneck), ``dfr`` (the head refit alone: DFR's group-balanced last-layer logistic regression,
  its strength chosen on D^u_val).

A pipeline that raises one of debiaskit's errors (a guard that refuses to export a model worse than the vanilla
one) is recorded as **refused** with its message; the summary then scores it as the vanilla model (what its user is
left with). Every (cell, seed, pipeline) record is one JSON file written atomically, so an interrupted suite resumes
where it stopped; the reports are rewritten from every record on disk.

Budgets: ``smoke`` (the procedural toy digits, 1 vanilla epoch, a 2-epoch search: seconds; the tests run it),
``dev`` (CPU-sized: the cells' own epochs on 20,000 biased training samples, FFW's library defaults), ``full``
(the papers' models and epochs on every training sample, FFW's paper schedule). Cost of the dev budget, one seed,
every pipeline, 1 torch thread on a shared 2-core CPU (load 3-6), measured: watermark-tvresnet 17.9 min (5.7 of them
vanilla training), biased-mnist-0.99 5.5, stripes-fashion 5.0, corrupted-mnist 4.2, biased-mnist-0.997 3.3,
colored-mnist-1pct 1.3, adult-sex / adult-race 0.2 each: 38 min for the eight cells, about 2 hours for 3 seeds.

Examples::

    debiaskit bench dev --budget smoke --cell biased-mnist-0.99 --seeds 1      # seconds: does it run?
    debiaskit bench dev --out runs/bench/dev --budget dev --seeds 3              # the suite defaults are chosen on
    debiaskit bench dev --out runs/bench/dev-full --budget full --seeds 3        # the papers' budget
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._io import open_root, report_lock
from ..audit import group_metrics, probe_suite
from ..data import as_bias_datasets
from ..errors import ConfigError, DebiaskitError
from ..ffw import FFW_PRESETS, FFWConfig, apply_stages, find_fantastic_weights
from ..models import collect_outputs
from ..runs import is_finished, load_run, read_json, write_json, write_text
from ..train import TrainConfig, partial_dir, train_run
from ._common import fmt_pm, load_cell, machine_description, mean_std
from ._ffw import FULL_PROTOCOL
from ._folders import BENCH_DEV_ROOT

BUDGETS = {
    "smoke": "procedural toy digits (600 biased, 400 for D^u, 200 test; Adult: 2,000 rows), 1 vanilla epoch, FFW search 2 epochs + 1 tuning epoch, "
    "probe sgd5 only: seconds per cell; for tests, not for numbers",
    "dev": "CPU-sized: each cell's own vanilla epochs on at most 20,000 biased training samples, D^u of 10,000, "
    "FFW with the library's defaults, all four probes",
    "full": "the papers' models and epochs on every training sample, FFW with the paper's schedule "
    "(no epoch cap, 20 levels of up to 10 epochs, patience 2), all four probes",
}
BUDGET_FFW: dict[str, dict[str, Any]] = {
    "smoke": dict(max_epochs=2, head_pretrain_epochs=2, tune_epochs=1),
    "dev": {},
    "full": dict(FULL_PROTOCOL),
}
BUDGET_PROBES = {
    "smoke": ("sgd5",),
    "dev": ("sgd5", "audit", "mlp", "linear"),
    "full": ("sgd5", "audit", "mlp", "linear"),
}


@dataclass(frozen=True)
class DevCell:
    """One cell of the suite: a dataset with its parameters, a model and the vanilla training budget."""

    name: str
    dataset: str
    params: dict[str, Any]
    model: str
    epochs: int
    smoke_dataset: str  # the same recipe on the toy source (Adult: itself, few rows)
    full_model: str | None = None
    full_epochs: int | None = None
    what: str = ""

    def setting(self, budget: str) -> dict[str, Any]:
        """dataset, params, model, epochs and sizes of this cell at ``budget``."""
        if budget == "smoke":
            adult = self.smoke_dataset == "adult"  # Adult has no toy source: its rows, cut down
            return {
                "dataset": self.smoke_dataset,
                "params": self.params,
                "model": self.model,
                "epochs": 1,
                "train_size": 2000 if adult else 600,
                "unbiased_size": 1000 if adult else 400,
                "test_size": 1000 if adult else 200,
            }
        if budget == "dev":
            return {
                "dataset": self.dataset,
                "params": self.params,
                "model": self.model,
                "epochs": self.epochs,
                "train_size": None if self.dataset == "adult" else 20000,
                "unbiased_size": None,
                "test_size": None,
            }
        return {
            "dataset": self.dataset,
            "params": self.params,
            "model": self.full_model or self.model,
            "epochs": self.full_epochs or self.epochs,
            "train_size": None,
            "unbiased_size": None,
            "test_size": None,
        }


CELLS: dict[str, DevCell] = {
    c.name: c
    for c in (
        DevCell(
            "biased-mnist-0.99",
            "biased-mnist",
            {"rho": 0.99},
            "simple-conv-small",
            5,
            "biased-toy",
            full_model="simple-conv",
            full_epochs=80,
            what="background colour (Bahng et al.), rho 0.99",
        ),
        DevCell(
            "biased-mnist-0.997",
            "biased-mnist",
            {"rho": 0.997},
            "simple-conv-small",
            5,
            "biased-toy",
            full_model="simple-conv",
            full_epochs=80,
            what="background colour, rho 0.997",
        ),
        DevCell(
            "colored-mnist-1pct",
            "colored-mnist",
            {"rho": 0.99},
            "mlp",
            5,
            "colored-toy",
            full_epochs=100,
            what="foreground colour (LfF), 1 % conflicting, MLP",
        ),
        DevCell(
            "corrupted-mnist",
            "corrupted-mnist",
            {"rho": 0.99},
            "simple-conv-small",
            5,
            "corrupted-toy",
            full_model="resnet18",
            full_epochs=100,
            what="corruption family per class (LfF protocol), rho 0.99",
        ),
        DevCell(
            "stripes-fashion",
            "stripes-fashion-mnist",
            {"rho": 0.99},
            "residual-cnn",
            5,
            "stripes-toy",
            what="striped background on Fashion-MNIST with the residual CNN of BENCHMARKS.md, 'Your own model and data'",
        ),
        DevCell(
            "watermark-tvresnet",
            "watermark-mnist",
            {"rho": 0.99},
            "tv-resnet-small",
            5,
            "watermark-toy",
            what="watermark position (a 4x4 patch at one of 10 border places) on a torchvision-style ResNet",
        ),
        DevCell("adult-sex", "adult", {"bias": "sex"}, "mlp", 20, "adult", what="UCI Adult, bias sex, MLP"),
        DevCell("adult-race", "adult", {"bias": "race"}, "mlp", 20, "adult", what="UCI Adult, bias race, MLP"),
    )
}


@dataclass(frozen=True)
class Variant:
    """A pipeline on the cell's vanilla model: ``kind`` "ffw" (find_fantastic_weights) or "stages"
    (:func:`debiaskit.ffw.apply_stages`) run on the model of ``parent`` ("vanilla" or another variant), with
    ``settings`` over the budget's FFW config. ``guarded``: FFW's do-no-harm rule applies (what a user of
    ``find_fantastic_weights`` gets: a refusal leaves the vanilla model); the stages of the ablation are measured
    as they come out (``no_harm=False``), so that the stages after them can be measured too."""

    name: str
    parent: str
    kind: str
    settings: dict[str, Any] = field(default_factory=dict)
    text: str = ""
    guarded: bool = False


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant(
            "ffw-default", "vanilla", "ffw", {}, "find_fantastic_weights, every default (unstructured)", guarded=True
        ),
        Variant(
            "ffw-structured",
            "vanilla",
            "ffw",
            {"mode": "structured"},
            "find_fantastic_weights, mode structured",
            guarded=True,
        ),
        Variant(
            "ffw-fast",
            "vanilla",
            "ffw",
            dict(FFW_PRESETS["fast"]),
            "find_fantastic_weights, preset fast (unstructured)",
            guarded=True,
        ),
        Variant(
            "ffw-fast-structured",
            "vanilla",
            "ffw",
            {**FFW_PRESETS["fast"], "mode": "structured"},
            "find_fantastic_weights, preset fast, mode structured",
            guarded=True,
        ),
        Variant(
            "gates-only",
            "vanilla",
            "ffw",
            {"tune_epochs": 0, "erase": "none", "refit_head": False},
            "the gate search alone (no tuning, eraser or refit)",
        ),
        Variant(
            "gates+tune",
            "gates-only",
            "stages",
            {"erase": "none", "refit_head": False},
            "gates-only's model + FFW's weight tuning",
        ),
        Variant(
            "gates+tune+erase",
            "gates+tune",
            "stages",
            {"tune_epochs": 0, "refit_head": False},
            "+ the eraser (chosen through the head as it is)",
        ),
        Variant(
            "gates+tune+erase+refit",
            "gates+tune",
            "stages",
            {"tune_epochs": 0},
            "+ the eraser and the head refit: the default pipeline, stage by stage",
        ),
        Variant(
            "finetune+erase+refit",
            "vanilla",
            "stages",
            {},
            "no gates: every weight tuned (FFW's tuning), then the eraser and the refit",
        ),
        Variant(
            "erase+refit",
            "vanilla",
            "stages",
            {"tune_epochs": 0},
            "no gates: the eraser + refit on the vanilla bottleneck",
        ),
        Variant(
            "dfr",
            "vanilla",
            "stages",
            {"tune_epochs": 0, "erase": "none"},
            "no gates: the head refit alone (DFR: group-balanced last layer on D^u_train, strength on D^u_val)",
        ),
    )
}
BASELINES = ("vanilla", "majority")


def check_selection(*, budget: str, cells: Iterable[str], variants: Iterable[str], seeds: Iterable[int]) -> None:
    """Refuse an unknown budget, cell or variant, or no seed, before any compute."""
    if budget not in BUDGETS:
        raise ConfigError(f"unknown budget {budget!r}; choose one of {', '.join(BUDGETS)}")
    for kind, given, known in (("cell", cells, CELLS), ("variant", variants, VARIANTS)):
        unknown = [g for g in given if g not in known]
        if unknown:
            raise ConfigError(f"unknown {kind}(s) {', '.join(map(repr, unknown))}; available: {', '.join(known)}")
    if not list(seeds):
        raise ConfigError("no seed to run: give at least one (--seeds N with N >= 1)")


def seed_dir(root: Path, budget: str, cell: str, seed: int) -> Path:
    return Path(root) / budget / cell / f"seed{seed}"


# -- evaluation -----------------------------------------------------------------------------------------------
def _group_numbers(pred: torch.Tensor, data) -> dict[str, float]:
    """Accuracy, group-mean and worst-group accuracy (each the worst over the bias attributes)."""
    groups = [
        group_metrics(pred, data.y, data.bias(a), num_classes=data.num_classes, num_bias=data.num_bias_classes_of(a))
        for a in range(len(data.bias_cardinalities))
    ]
    return {
        "acc": groups[0].accuracy,
        "group_mean": min(g.mean_group_accuracy for g in groups),
        "worst_group": min(g.worst_group_accuracy for g in groups),
    }


def evaluate(model: nn.Module, head: str, splits, *, seed: int, probes: tuple[str, ...]) -> dict[str, Any]:
    """D^u_val group-mean accuracy (what the suite selects on), the unbiased test's accuracy / group mean / worst
    group, and the probe suite at the bottleneck (learn on D^u_train, choose on D^u_val, read the test's first bias
    attribute)."""
    train, val, test = as_bias_datasets(splits.unbiased_train, splits.unbiased_val, splits.test)
    outs = [collect_outputs(model, d, head=head) for d in (train, val, test)]
    v = _group_numbers(outs[1].logits.argmax(1), val)
    t = _group_numbers(outs[2].logits.argmax(1), test)
    cols = [d.bias(0) for d in (train, val, test)]
    read = probe_suite(
        outs[0].z,
        cols[0],
        outs[1].z,
        cols[1],
        outs[2].z,
        cols[2],
        num_bias=test.num_bias_classes_of(0),
        seed=seed,
        probes=probes,
    )
    return {
        "val_group_mean": v["group_mean"],
        "val_acc": v["acc"],
        "test_acc": t["acc"],
        "test_group_mean": t["group_mean"],
        "test_worst_group": t["worst_group"],
        "probes": read,
        "probe_chance": 1.0 / test.num_bias_classes_of(0),
    }


def majority_record(splits) -> dict[str, Any]:
    """The constant model that predicts D^b's most frequent class: the floor every pipeline must clear."""
    train, val, test = as_bias_datasets(splits.train, splits.unbiased_val, splits.test)
    top = int(torch.bincount(train.y.long()).argmax())
    v = _group_numbers(torch.full_like(val.y, top), val)
    t = _group_numbers(torch.full_like(test.y, top), test)
    return {
        "val_group_mean": v["group_mean"],
        "val_acc": v["acc"],
        "test_acc": t["acc"],
        "test_group_mean": t["group_mean"],
        "test_worst_group": t["worst_group"],
        "probes": {},
        "class": top,
        "wall_time_s": 0.0,
    }


# -- one (cell, seed) -------------------------------------------------------------------------------------------
def _vanilla(cell: DevCell, budget: str, seed: int, folder: Path, echo) -> Path:
    """Train (or resume, or reuse) the cell's vanilla run folder."""
    out = folder / "vanilla"
    if not is_finished(out):
        s = cell.setting(budget)
        start = time.perf_counter()
        resume = (partial_dir(out) / "checkpoint.safetensors").is_file()
        train_run(
            dataset=s["dataset"],
            params=s["params"],
            out=out,
            model=s["model"],
            resume=resume,
            config=TrainConfig(epochs=s["epochs"], seed=seed),
            train_size=s["train_size"],
            unbiased_size=s["unbiased_size"],
            test_size=s["test_size"],
            progress=False,
            force=True,
        )
        echo(f"[{cell.name} seed {seed}] vanilla trained in {time.perf_counter() - start:.0f}s")
    return out


class _Pipelines:
    """The models of one (cell, seed), each built once from its parent (kept in memory for its children)."""

    def __init__(self, run, splits, *, budget: str, seed: int) -> None:
        self.splits, self.budget, self.seed = splits, budget, seed
        self.built: dict[str, tuple[nn.Module, str, dict[str, Any], float] | DebiaskitError] = {
            "vanilla": (run.model, run.head, {}, 0.0)
        }

    def config(self, variant: Variant) -> FFWConfig:
        return FFWConfig(**{**BUDGET_FFW[self.budget], **variant.settings, "seed": self.seed})

    def get(self, name: str) -> tuple[nn.Module, str, dict[str, Any], float]:
        """(model, head, what the pipeline did, its own wall time); raises the error a refused pipeline raised."""
        if name not in self.built:
            try:
                self.built[name] = self._build(VARIANTS[name])
            except DebiaskitError as exc:  # the refusal is the result (its children are refused with it)
                self.built[name] = exc
        got = self.built[name]
        if isinstance(got, DebiaskitError):
            raise got
        return got

    def _build(self, variant: Variant) -> tuple[nn.Module, str, dict[str, Any], float]:
        parent, head, _, _ = self.get(variant.parent)
        config = self.config(variant)
        train, val = self.splits.unbiased_train, self.splits.unbiased_val
        start = time.perf_counter()
        if variant.kind == "ffw":
            res = find_fantastic_weights(
                parent, head=head, train=train, val=val, config=config, progress=False, no_harm=variant.guarded
            )
            info = {
                "sparsity": res.sparsity.get("overall"),
                "stop_reason": res.stop_reason,
                "selected_epoch": res.selected.get("epoch"),
                "tune_epoch": res.tune.chosen_epoch if res.tune else None,
                "erase_rank": res.eraser.rank if res.eraser else None,
                "refit_lam": res.head_refit.kept_lam if res.head_refit else None,
                "kept": res.choice.kept if res.choice else None,  # compare_ungated: "gated" or "ungated", None when off
            }
            return res.model, res.head, info, time.perf_counter() - start
        res = apply_stages(parent, train=train, val=val, head=head, config=config)
        info = {
            "tune_epoch": res.tune.chosen_epoch if res.tune else None,
            "erase_rank": res.eraser.rank if res.eraser else None,
            "refit_lam": res.head_refit.kept_lam if res.head_refit else None,
        }
        return res.model, res.head, info, time.perf_counter() - start


def run_seed(
    cell: DevCell, seed: int, *, root: Path, budget: str, variants: tuple[str, ...], echo: Callable[[str], None] = print
) -> dict[str, dict[str, Any]]:
    """Every record of one (cell, seed): the baselines and each variant, read from disk where already written."""
    folder = seed_dir(root, budget, cell.name, seed)
    names = (*BASELINES, *variants)
    records = {n: load_cell(folder / f"{n}.json") for n in names}
    if all(r is not None for r in records.values()):
        return records
    run = load_run(_vanilla(cell, budget, seed, folder, echo))
    splits = run.splits()
    probes = BUDGET_PROBES[budget]
    pipes = _Pipelines(run, splits, budget=budget, seed=seed)
    for name in names:
        if records[name] is not None:
            continue
        start = time.perf_counter()
        if name == "majority":
            rec = majority_record(splits)
        elif name == "vanilla":
            rec = {
                **evaluate(run.model, run.head, splits, seed=seed, probes=probes),
                "wall_time_s": float(run.meta.get("wall_time_s") or 0.0),
                "what": "vanilla training (D^b)",
            }
        else:
            rec = _variant_record(pipes, name, splits, seed=seed, probes=probes)
        rec.update(
            {
                "cell": cell.name,
                "seed": seed,
                "budget": budget,
                "pipeline": name,
                "record_time_s": time.perf_counter() - start,
            }
        )
        write_json(folder / f"{name}.json", rec)  # atomic: a record is whole or absent
        records[name] = rec
        echo(
            f"[{cell.name} seed {seed}] {name}: "
            + (
                "refused: " + rec["refused"]
                if "refused" in rec
                else f"D^u_val group mean {100 * rec['val_group_mean']:.1f}"
            )
        )
    return records


def _variant_record(pipes: _Pipelines, name: str, splits, *, seed: int, probes) -> dict[str, Any]:
    variant = VARIANTS[name]
    try:
        model, head, info, wall = pipes.get(name)
    except DebiaskitError as exc:
        return {"refused": f"{type(exc).__name__}: {exc}", "parent": variant.parent, "what": variant.text}
    return {
        **evaluate(model, head, splits, seed=seed, probes=probes),
        **info,
        "wall_time_s": wall,
        "parent": variant.parent,
        "what": variant.text,
    }


def run_dev_suite(
    *,
    root: Path,
    budget: str = "dev",
    cells: Iterable[str] | None = None,
    seeds: Iterable[int] = (0,),
    variants: Iterable[str] | None = None,
    echo: Callable[[str], None] = print,
) -> dict[str, dict[int, dict[str, dict[str, Any]]]]:
    """Run (or resume) the suite: {cell: {seed: {pipeline: record}}}. Cells in the order given."""
    cells, variants, seeds = tuple(cells or CELLS), tuple(variants or VARIANTS), tuple(seeds)
    check_selection(budget=budget, cells=cells, variants=variants, seeds=seeds)
    open_root(root, kind=BENCH_DEV_ROOT)  # before any compute: never a user's folder or another suite's
    out: dict[str, dict[int, dict[str, dict[str, Any]]]] = {}
    for name in cells:
        for seed in seeds:
            out.setdefault(name, {})[seed] = run_seed(
                CELLS[name], seed, root=root, budget=budget, variants=variants, echo=echo
            )
    return out


# -- reports ------------------------------------------------------------------------------------------------------
def records_on_disk(root: Path, budget: str) -> dict[str, dict[int, dict[str, dict[str, Any]]]]:
    """Every record of ``budget`` under ``root``, whichever process wrote it."""
    out: dict[str, dict[int, dict[str, dict[str, Any]]]] = {}
    base = Path(root) / budget
    for path in sorted(base.glob("*/seed*/*.json")) if base.is_dir() else []:
        rec = read_json(path)
        if isinstance(rec, dict) and "pipeline" in rec:
            out.setdefault(rec["cell"], {}).setdefault(int(rec["seed"]), {})[rec["pipeline"]] = rec
    return out


def _pipelines_in(results) -> list[str]:
    seen = {p for seeds in results.values() for recs in seeds.values() for p in recs}
    return [p for p in (*BASELINES, *VARIANTS) if p in seen]


def _score(rec: dict[str, Any], vanilla: dict[str, Any] | None) -> float | None:
    """D^u_val group mean of a record; a refused pipeline leaves its user with the vanilla model."""
    if "refused" in rec:
        return vanilla.get("val_group_mean") if vanilla else None
    return rec.get("val_group_mean")


def summary_rows(results) -> list[dict[str, Any]]:
    """Per pipeline: D^u_val group mean per cell (mean over seeds), its worst cell and its mean over cells; ranked
    worst cell first, then the mean (the suite's selection rule). Only cells every pipeline has count."""
    pipes = _pipelines_in(results)
    rows = []
    for p in pipes:
        per_cell, refused = {}, 0
        for cell, seeds in results.items():
            vals = []
            for recs in seeds.values():
                if p in recs:
                    refused += "refused" in recs[p]
                    vals.append(_score(recs[p], recs.get("vanilla")))
            m, _, n = mean_std(vals)
            if n:
                per_cell[cell] = m
        rows.append({"pipeline": p, "per_cell": per_cell, "refused": refused})
    common = set.intersection(*(set(r["per_cell"]) for r in rows)) if rows else set()
    for r in rows:
        vals = [v for c, v in r["per_cell"].items() if c in common]
        r["worst"], r["mean"] = (min(vals), sum(vals) / len(vals)) if vals else (float("nan"), float("nan"))
        # sorted first: on a tie the worst cell (and the rank) does not follow the set's hash order
        r["worst_cell"] = min(sorted(common), key=lambda c: r["per_cell"][c]) if vals else None
    rows.sort(  # stable: tied pipelines keep the order of VARIANTS
        key=lambda r: (-r["worst"] if r["worst"] == r["worst"] else 1.0, -r["mean"] if r["mean"] == r["mean"] else 1.0)
    )
    return rows


def _pct(values) -> str:
    return fmt_pm(values, digits=1)


def cell_table(cell: str, seeds: dict[int, dict[str, dict[str, Any]]]) -> list[str]:
    """The markdown table of one cell: a row per pipeline, mean +- std over its seeds."""
    probes = sorted({k for recs in seeds.values() for r in recs.values() for k in r.get("probes", {})})
    chance = next((r["probe_chance"] for recs in seeds.values() for r in recs.values() if "probe_chance" in r), None)
    spec = CELLS.get(cell)
    lines = [
        f"### {cell}" + (f": {spec.what}" if spec else ""),
        "",
        f"Seeds: {', '.join(map(str, sorted(seeds)))}. Probes: bias accuracy at the bottleneck on the unbiased "
        f"test (chance {100 * chance:.1f} %)."
        if chance
        else f"Seeds: {', '.join(map(str, sorted(seeds)))}.",
        "",
        "| pipeline | D^u_val group mean | test acc. | test group mean | test worst group | "
        + " | ".join(f"probe {p}" for p in probes)
        + " | wall s | notes |",
        "|---|---|---|---|---|" + "---|" * len(probes) + "---|---|",
    ]
    for p in _pipelines_in({cell: seeds}):
        recs = [recs[p] for recs in seeds.values() if p in recs]
        ok = [r for r in recs if "refused" not in r]
        refused = [r["refused"] for r in recs if "refused" in r]
        notes = f"refused {len(refused)}/{len(recs)}: {refused[0]}" if refused else ""
        ungated = sum(r.get("kept") == "ungated" for r in ok)
        if ungated:  # compare_ungated kept the model without gates on these seeds
            notes = "; ".join(x for x in (f"no gates kept {ungated}/{len(recs)}", notes) if x)
        if not ok:
            lines.append(f"| {p} | refused | refused | refused | refused |" + " - |" * len(probes) + f" - | {notes} |")
            continue
        wall, _, _ = mean_std(r.get("wall_time_s") for r in ok)
        lines.append(
            f"| {p} | {_pct(r['val_group_mean'] for r in ok)} | {_pct(r['test_acc'] for r in ok)} | "
            f"{_pct(r['test_group_mean'] for r in ok)} | {_pct(r['test_worst_group'] for r in ok)} | "
            + " | ".join(_pct(r.get("probes", {}).get(k) for r in ok) for k in probes)
            + f" | {wall:.0f} | {notes} |"
        )
    return lines


def dev_report(results, *, budget: str, command: str, wall_time_s: float) -> str:
    """results.md: protocol, the summary ranking, then one table per cell."""
    rows = summary_rows(results)
    cells = list(results)
    lines = [
        f"# debiaskit bench dev ({budget} budget)",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine_description()}; this invocation {wall_time_s / 60:.1f} min "
        "(records already on disk count 0).  ",
        f"Budget: {BUDGETS[budget]}.",
        "",
        "Every pipeline starts from the cell's vanilla model with the same data: D^u_train to learn, D^u_val to "
        "choose; the unbiased test is only reported. Accuracies in %, mean +- sample std over seeds. "
        "Selection rule of the suite: D^u_val group-mean accuracy, **worst cell first, then the mean over "
        "cells**; a refused pipeline scores as the vanilla model (what its user keeps). Wall s: the pipeline's "
        "own compute (a stage added to another pipeline: that stage alone).",
        "",
        "Pipelines:",
        "",
    ]
    lines += [f"- `{v.name}`: {v.text}" for v in VARIANTS.values() if any(r["pipeline"] == v.name for r in rows)]
    lines += [
        "",
        "## Summary: D^u_val group mean per cell, ranked worst cell first, then mean",
        "",
        "| rank | pipeline | worst cell | mean over cells | " + " | ".join(cells) + " | refused |",
        "|---|---|---|---|" + "---|" * len(cells) + "---|",
    ]
    for i, r in enumerate(rows, 1):
        per = " | ".join(f"{100 * r['per_cell'][c]:.1f}" if c in r["per_cell"] else "-" for c in cells)
        worst = f"{100 * r['worst']:.1f} ({r['worst_cell']})" if r["worst_cell"] else "-"
        mean = f"{100 * r['mean']:.1f}" if r["mean"] == r["mean"] else "-"
        lines.append(f"| {i} | {r['pipeline']} | {worst} | {mean} | {per} | {r['refused'] or ''} |")
    walls = _cell_walls(results)
    lines += [
        "",
        "## Cells",
        "",
        "Wall time per cell and seed (vanilla training + every pipeline, records written "
        "this or an earlier time): " + "; ".join(f"{c} {w / 60:.1f} min" for c, w in walls.items()) + ".",
        "",
    ]
    for cell, seeds in results.items():
        lines += cell_table(cell, seeds) + [""]
    return "\n".join(lines) + "\n"


def _cell_walls(results) -> dict[str, float]:
    """Mean over seeds of: the vanilla training + every record's own time (a pipeline and its evaluation)."""
    out = {}
    for cell, seeds in results.items():
        per_seed = [
            float(recs.get("vanilla", {}).get("wall_time_s") or 0.0)
            + sum(float(r.get("record_time_s") or 0.0) for r in recs.values())
            for recs in seeds.values()
        ]
        out[cell] = sum(per_seed) / max(len(per_seed), 1)
    return out


def write_dev_results(*, root: Path, budget: str, command: str, wall_time_s: float) -> Path:
    """ROOT/BUDGET/results.md and results.json from every record of ``budget`` on disk (under the report lock)."""
    open_root(root, kind=BENCH_DEV_ROOT)
    folder = Path(root) / budget
    with report_lock(root):
        results = records_on_disk(root, budget)
        write_json(
            folder / "results.json",
            {
                "budget": budget,
                "records": {c: {str(s): r for s, r in seeds.items()} for c, seeds in results.items()},
                "summary": summary_rows(results),
                "command": command,
                "machine": machine_description(),
            },
        )
        write_text(folder / "results.md", dev_report(results, budget=budget, command=command, wall_time_s=wall_time_s))
    return folder / "results.md"
