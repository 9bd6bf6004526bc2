"""The comparison harness: every method on the same data, model, budget and selection rule, one table.

A suite is a dataset with one swept recipe parameter (rho = share of bias-aligned samples), a model
and a training budget. Each (suite, parameter value, method, seed) cell is a folder holding
``result.json`` (audit headline, wall time, method diagnostics) and, where the model has the zoo
architecture, a loadable run (``run.json`` + ``model.safetensors``). Cells are written atomically;
re-running a suite skips finished cells, so an interrupted suite resumes where it stopped.

Rules that make the comparison fair:

* same splits (``make_splits(dataset, params, seed=seed)``), same model, same optimiser, same
  number of epochs for the model that is reported; auxiliary phases (JTT's identification model,
  DCWP's mining + mask search, LfF's biased model) are extra and show up in the wall time;
* post-hoc methods (FMD, FFW) start from the vanilla model of the same cell (its training time is
  not counted in theirs);
* selection on validation data only: label-free methods keep their last epoch (or their own
  label-free criterion); methods that need bias labels for selection say so
  (``MethodInfo.selection``); the test set is only ever used for the final numbers;
* every model is evaluated by :func:`debiaskit.audit.audit_model` on the unbiased test set.

Example::

    from debiaskit.bench import run_compare, write_compare_results
    cells = run_compare(suite="colored-mnist", root=Path("runs/bench/compare"), seeds=(0,), methods=["vanilla", "lff"])
"""

from __future__ import annotations

import datetime as _dt
import json
import multiprocessing as mp
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._io import atomic_folder, open_root, report_lock
from ..audit import audit_model, group_metrics
from ..data import is_attribute_bias, make_splits
from ..errors import ConfigError
from ..methods import METHODS, REFERENCE_METHOD, MethodInfo, build_method, get_method, method_defaults
from ..models import build_model, collect_outputs, infer_head
from ..runs import (
    RUN_FILE,
    DataRecord,
    MethodRecord,
    ModelRecord,
    RunRecord,
    TrainRecord,
    is_finished,
    load_run,
    read_json,
    save_run,
    write_json,
    write_text,
)
from ..train import TrainConfig, fit
from ._common import (
    BELOW_NOTE,
    MAJORITY,
    MARKED_ON,
    below_marks,
    fmt_stat,
    load_cell,
    machine_description,
    mean_std,
    with_cells_on_disk,
)
from ._folders import BENCH_CELL, BENCH_COMPARE_ROOT
from ._launch import LAUNCHERS, SlurmOptions, run_groups_with_submitit

RESULT_FILE = "result.json"


@dataclass(frozen=True)
class Suite:
    """A comparison suite: dataset, swept parameter, model and budget (default and ``--full``).

    Your own data and model fit too: ``dataset="tensors:PATH"`` (or ``folder:DIR``) with ``param=None``
    and one value (nothing is swept), ``model="package.module:factory"`` with ``model_args`` and ``head``.

    Example::

        mine = Suite(name="mine", dataset="tensors:my-data.safetensors", param=None, values=(0.0,),
                     model="mynets:residual_cnn", model_args={"width": 16}, head="classifier", epochs=5)
        cells = run_compare(suite=mine, root=Path("runs/compare"), seeds=(0, 1, 2))
    """

    name: str
    dataset: str
    values: tuple[Any, ...]  # numbers (rho) or text (adult's bias attribute)
    model: str
    epochs: int
    train_size: int | None = None
    param: str | None = "rho"  # None: nothing swept (your own data); ``values`` then holds one placeholder
    fixed: dict[str, float] = field(default_factory=dict)
    batch_size: int = 256
    lr: float = 1e-3
    unbiased_size: int = 10000
    full_model: str | None = None
    full_epochs: int | None = None
    full_train_size: int | None = None
    value_label: Callable[[float], str] = field(default=lambda v: f"rho {v}")
    paper: dict[str, dict[float, str]] = field(default_factory=dict)  # method -> value -> published number
    paper_source: str = ""
    notes: str = ""
    test_set: str = "the unbiased test set (official test digits, uniform bias)"
    # cell_extras(model, *, splits, head, seed, folder) -> JSON-able dict stored as result["extras"]; it may write
    # files into the cell's staging ``folder`` (adult: test predictions for fairlearn's metrics)
    cell_extras: Callable[..., dict[str, Any]] | None = None
    model_args: dict[str, Any] = field(default_factory=dict)  # for a package.module:factory model
    head: str | None = None  # its head (default: inferred, see models.infer_head)

    def at_full_budget(self) -> Suite:
        return replace(
            self,
            model=self.full_model or self.model,
            epochs=self.full_epochs or self.epochs,
            train_size=self.full_train_size,
        )


def _published(suite: str) -> dict[str, Any]:
    """The published numbers shown beside a suite's results, from ``published.json`` (data, not code):
    ``{"paper": {method: {value: text}}, "paper_source": where they come from}``."""
    entry = json.loads((Path(__file__).parent / "published.json").read_text())[suite]
    return {
        "paper": {m: {float(v): text for v, text in vals.items()} for m, vals in entry["numbers"].items()},
        "paper_source": entry["source"],
    }


def _pct_conflicting(v: float) -> str:
    return f"{100 * (1 - v):g}% conflicting"


SUITES: dict[str, Suite] = {
    s.name: s
    for s in (
        Suite(
            name="colored-mnist",
            dataset="colored-mnist",
            values=(0.995, 0.99, 0.98, 0.95),
            model="mlp",
            epochs=5,
            full_epochs=100,
            value_label=_pct_conflicting,
            **_published("colored-mnist"),
            notes="LfF protocol: MLP 3x100, Adam 1e-3, batch 256; default budget 5 epochs (paper: 100).",
        ),
        Suite(
            name="biased-mnist",
            dataset="biased-mnist",
            values=(0.99, 0.995, 0.997, 0.999),
            model="simple-conv-small",
            epochs=5,
            train_size=20000,
            full_model="simple-conv",
            full_epochs=80,
            **_published("biased-mnist"),
            notes="default budget: simple-conv-small (stride 2), 5 epochs on 20000 biased training digits; "
            "--full: SimpleConvNet, 80 epochs, all 50000 digits.",
        ),
        Suite(
            name="multicolor-mnist",
            dataset="multicolor-mnist",
            values=(0.99,),
            fixed={"rho_right": 0.95},
            model="simple-conv-small",
            epochs=5,
            train_size=20000,
            full_model="simple-conv",
            full_epochs=80,
            value_label=lambda v: f"rho_L {v}, rho_R 0.95",
            **_published("multicolor-mnist"),
        ),
        Suite(
            name="corrupted-mnist",
            dataset="corrupted-mnist",
            values=(0.95, 0.98, 0.99, 0.995),
            model="simple-conv-small",
            epochs=5,
            train_size=20000,
            full_model="resnet18",
            full_epochs=100,
            **_published("corrupted-mnist"),
        ),
        Suite(
            name="toy",
            dataset="biased-toy",
            values=(0.95,),
            model="mlp",
            epochs=1,
            unbiased_size=600,
            notes="debug suite: procedural toy digits, 1 epoch (seconds); not a benchmark",
        ),
    )
}  # + "adult", "compas": defined in bench/_adult.py (their cells need its per-cell measurements)


def register_suite(suite: Suite) -> Suite:
    """Make ``suite`` a named suite of the harness (``debiaskit bench compare --suite NAME``, ``--jobs``, slurm).

    A suite defined outside this module is registered by ``bench/__init__.py``, in one place, never as a side
    effect of importing its module. A name already registered is refused (:class:`~debiaskit.errors.ConfigError`).

    Example::

        register_suite(Suite(name="my-suite", dataset="colored-mnist", values=(0.99,), model="mlp", epochs=5))
    """
    if suite.name in SUITES and SUITES[suite.name] is not suite:
        raise ConfigError(f"a suite named {suite.name!r} is already registered; choose another name")
    SUITES[suite.name] = suite
    return suite


def available_methods() -> dict[str, MethodInfo]:
    """Every registered method, the reference (ERM) first, then by name."""
    out = {REFERENCE_METHOD: get_method(REFERENCE_METHOD)}
    out.update({k: v for k, v in sorted(METHODS.items()) if k != REFERENCE_METHOD})
    return out


# -- cells -------------------------------------------------------------------------------------------------
def suite_folder(suite: Suite) -> str:
    """Folder of a suite's cells: its name at the default budget, name@budget otherwise, so that cells
    trained under different budgets (--full, --epochs, --train-size) are never mixed up by the cache."""
    base = SUITES.get(suite.name)
    keys = ("dataset", "model", "epochs", "train_size", "batch_size", "lr", "unbiased_size", "fixed")
    if base is not None and all(getattr(base, k) == getattr(suite, k) for k in keys):
        return suite.name
    return f"{suite.name}@{suite.model}-{suite.epochs}ep-{suite.train_size or 'all'}-bs{suite.batch_size}-lr{suite.lr:g}-u{suite.unbiased_size}"


def cell_dir(root: Path, suite: Suite, value: float, method: str, seed: int) -> Path:
    return Path(root) / suite_folder(suite) / f"{suite.param or 'value'}{value}" / method / f"seed{seed}"


def _worst_group_on(dataset) -> Callable[[nn.Module], float]:
    """Selection score: worst-group accuracy on D^u_val (min over bias attributes). Uses bias labels."""

    def score(model: nn.Module) -> float:
        out = collect_outputs(model, dataset, with_bottleneck=False)
        b = out.b if out.b.ndim == 2 else out.b[:, None]
        cards = getattr(dataset, "bias_cardinalities", None) or (dataset.num_bias_classes,) * b.shape[1]
        return min(
            group_metrics(
                out.logits.argmax(1), out.y, b[:, a], num_classes=dataset.num_classes, num_bias=cards[a]
            ).worst_group_accuracy
            for a in range(b.shape[1])
        )

    return score


def _matches(meta: dict, suite: Suite, splits, config: TrainConfig) -> bool:
    tr = meta.get("train", {})
    return (
        meta.get("data") == splits.spec
        and meta.get("model", {}).get("name") == suite.model
        and tr.get("epochs") == config.epochs
        and tr.get("batch_size") == config.batch_size
        and tr.get("lr") == config.lr
        and tr.get("seed") == config.seed
        and meta.get("method", {}).get("name", REFERENCE_METHOD) == REFERENCE_METHOD
    )


def _same_architecture(model: nn.Module, reference: nn.Module) -> bool:
    a, b = model.state_dict(), reference.state_dict()
    return a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)


def run_cell(
    *,
    suite: Suite,
    value: float,
    method: str,
    info: MethodInfo,
    seed: int,
    root: Path,
    splits,
    full: bool,
    vanilla_from: Path | None = None,
    progress: bool = False,
    device: str = "cpu",
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train / derive one method on one (value, seed), audit it, write its cell atomically."""
    folder = cell_dir(root, suite, value, method, seed)
    reference = build_model(
        suite.model, num_classes=splits.num_classes, input_shape=splits.train.input_shape, args=suite.model_args
    )
    head = suite.head or infer_head(reference, num_classes=splits.num_classes)
    defaults = method_defaults(method, suite.dataset)
    overrides = {k: v for k, v in info.budget("full" if full else "default").items() if k in defaults}
    method_config = {**{k: d.value for k, d in defaults.items()}, **overrides}
    # the reported model gets the suite's epochs; a method that trains before it starts (VCBA's stage 1) gets more
    epochs = suite.epochs + (0 if info.post_hoc else info.epochs_before_model(method_config))
    config = TrainConfig(epochs=epochs, batch_size=suite.batch_size, lr=suite.lr, seed=seed)
    state: dict[str, Any] = {}
    start = time.perf_counter()
    reused = None
    selected_epoch = None
    if info.post_hoc and info.apply is not None:
        base_dir = cell_dir(root, suite, value, REFERENCE_METHOD, seed)
        vanilla = load_run(base_dir).model
        model, state = info.apply(vanilla, splits=splits, head=head, seed=seed, device=device, **method_config)
        wall = time.perf_counter() - start
    else:
        candidate = (
            None
            if vanilla_from is None or method != REFERENCE_METHOD
            else (Path(vanilla_from) / f"{suite.dataset}-{suite.param}{value}-seed{seed}")
        )
        if (
            candidate is not None
            and is_finished(candidate)
            and _matches(read_json(candidate / RUN_FILE), suite, splits, config)
        ):
            run = load_run(candidate)
            model, wall, reused = run.model, float(run.meta.get("wall_time_s", float("nan"))), str(candidate)
            echo(f"  reusing vanilla run {candidate}")
        else:
            method_obj, method_config = build_method(method, dataset=suite.dataset, **overrides)
            torch.manual_seed(seed)
            model = build_model(
                suite.model, num_classes=splits.num_classes, input_shape=splits.train.input_shape, args=suite.model_args
            )
            select = _worst_group_on(splits.unbiased_val) if info.selection == "val_worst_group" else None
            result = fit(
                model,
                splits.train,
                method=method_obj,
                config=config,
                num_classes=splits.num_classes,
                head=head,
                select=select,
                progress=progress,
                device=device,
            )
            model, wall, selected_epoch = result.model, result.wall_time_s, result.selected_epoch
            state = method_obj.state()
            flags = method_obj.conflict_flags()
            if flags is not None:  # scored here, by the harness: the method never sees the true labels
                state["pseudo_bias_flags"] = flags.report(splits.train)
    model.eval()
    report = audit_model(
        model,
        test=splits.test,
        unbiased_train=splits.unbiased_train,
        unbiased_val=splits.unbiased_val,
        head=head,
        seed=seed,
        device=device,
    )
    result = {
        "suite": suite.name,
        "dataset": suite.dataset,
        "param": suite.param,
        "value": value,
        "method": method,
        "seed": seed,
        "wall_time_s": wall,
        "audit_time_s": report.wall_time_s,
        "reused_run": reused,
        "selected_epoch": selected_epoch,
        "selection": info.selection_rule,
        "method_config": method_config,
        "flags": _flags(info),
        **report.headline(),
        "majority_class": majority_baseline(splits),
        "method_state": state,
    }
    with atomic_folder(folder, kind=BENCH_CELL, force=True) as staging:
        if suite.cell_extras is not None:
            result["extras"] = suite.cell_extras(model, splits=splits, head=head, seed=seed, folder=staging)
        if _same_architecture(model, reference):
            save_run(
                staging,
                model=model,
                record=RunRecord(
                    kind="compare-cell",
                    created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
                    model=ModelRecord.from_dict(
                        {
                            **getattr(reference, "debiaskit_model_spec", {}),
                            "name": suite.model,
                            "num_classes": splits.num_classes,
                            "input_shape": list(splits.train.input_shape),
                            "head": head,
                        },
                        file="the model's record",
                        prefix="model",
                    ),
                    data=DataRecord.from_dict(splits.spec, file="the splits' spec", prefix="data"),
                    train=TrainRecord(
                        epochs=config.epochs,
                        batch_size=config.batch_size,
                        lr=config.lr,
                        weight_decay=config.weight_decay,
                        optimizer=config.optimizer,
                        seed=seed,
                        selection=info.selection_rule,
                        selected_epoch=selected_epoch,
                    ),
                    method=MethodRecord(
                        name=method, uses_bias_labels=info.uses_bias_labels, config=method_config, state=state
                    ),
                    wall_time_s=wall,
                    device=str(device),
                ),
            )
        write_json(staging / RESULT_FILE, result)
    # conflicting accuracy where y and b share their values, else the group mean (a protected attribute)
    second = (
        ("conflicting", result["conflicting_accuracy"])
        if result["conflicting_accuracy"] is not None
        else ("group mean", result["mean_group_accuracy"])
    )
    echo(
        f"  {suite.name} {suite.param}={value} seed={seed} {method}: task {100 * result['task_accuracy']:.2f} "
        f"{second[0]} {100 * (second[1] if second[1] is not None else float('nan')):.2f} in {wall:.0f}s"
    )
    return result


def _flags(info: MethodInfo) -> dict[str, bool]:
    return {
        "uses_bias_labels": info.uses_bias_labels,
        "uses_unbiased_data": info.uses_unbiased_data,
        "retrains": info.retrains,
        "post_hoc": info.post_hoc,
        "uses_counterfactuals": info.uses_counterfactuals,
    }


def resolve_methods(names: Iterable[str] | None) -> dict[str, MethodInfo]:
    avail = available_methods()
    if not names:
        return avail
    wanted = [n.strip() for name in names for n in str(name).split(",") if n.strip()]
    unknown = [n for n in wanted if n not in avail]
    if unknown:
        raise ConfigError(f"unknown method(s) {unknown}; available: {', '.join(avail)}")
    return {n: avail[n] for n in wanted}


def get_suite(name: str) -> Suite:
    """The registered suite ``name``; an unknown name is a ``ConfigError`` listing the registered ones."""
    if name not in SUITES:
        raise ConfigError(f"unknown suite {name!r}; available: {', '.join(SUITES)}")
    return SUITES[name]


def effective_suite(
    suite: str | Suite,
    *,
    full: bool = False,
    epochs: int | None = None,
    train_size: int | None | str = "suite",
    values: Iterable[float] | None = None,
) -> Suite:
    """The suite with the budget actually run: ``--full``, then explicit overrides."""
    s = get_suite(suite) if isinstance(suite, str) else suite
    if full:
        s = s.at_full_budget()
    if epochs is not None:
        s = replace(s, epochs=int(epochs))
    if train_size != "suite":
        s = replace(s, train_size=train_size)
    if values is not None:
        s = replace(s, values=tuple(v if isinstance(v, str) else float(v) for v in values))
    return s


def run_compare(
    *,
    suite: str | Suite,
    root: Path,
    seeds: Iterable[int] = (0, 1, 2),
    methods: Iterable[str] | None = None,
    values: Iterable[float] | None = None,
    full: bool = False,
    epochs: int | None = None,
    train_size: int | None | str = "suite",
    vanilla_from: Path | None = None,
    progress: bool = False,
    keep_going: bool = True,
    report_only: bool = False,
    jobs: int = 1,
    device: str = "cpu",
    launcher: str = "local",
    slurm: Any = None,
    echo: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Run (or resume) a suite; returns every finished cell's result (cached cells are read, not rerun).

    Order: seed-major (all values and methods of seed 0 first), so a partial run is a complete table
    for its first seeds. Post-hoc methods train the cell's vanilla model first if it is missing.
    With ``keep_going`` a failing cell is reported and skipped (not cached) instead of stopping the suite.
    With ``report_only`` nothing is trained: the finished cells are collected (for tables).
    With ``jobs > 1`` the (seed, value) groups run in that many worker processes, each with
    ``cpu_count // jobs`` torch threads; a group's methods stay in one process (post-hoc methods need
    the group's vanilla cell) and cells are written atomically, so results equal a sequential run's.
    With ``launcher="slurm"`` each unfinished (seed, value) group is a Slurm job submitted through submitit
    (``slurm``: a :class:`~debiaskit.bench._launch.SlurmOptions`; see ``bench/_launch.py``); the call
    waits for the jobs, then collects the finished cells.
    """
    if launcher not in LAUNCHERS:
        raise ConfigError(f"launcher must be one of {', '.join(LAUNCHERS)}, got {launcher!r}")
    open_root(
        root, kind=BENCH_COMPARE_ROOT, create=False
    )  # before any compute: never a user's folder or another suite's
    if launcher == "slurm" and not report_only:
        groups = _groups(
            suite=suite,
            seeds=tuple(seeds),
            values=values,
            threads=1,
            common=dict(
                root=root,
                methods=methods,
                full=full,
                epochs=epochs,
                train_size=train_size,
                vanilla_from=vanilla_from,
                progress=progress,
                keep_going=keep_going,
            ),
        )
        run_groups_with_submitit(
            groups,
            root=Path(root),
            options=slurm or SlurmOptions(),
            run=_run_group,
            unfinished=lambda g: _unfinished(g, root=Path(root)),
            echo=echo,
        )
        report_only = True  # every cell that could be computed is on disk now: collect them
    elif jobs > 1 and not report_only:
        _run_groups_in_processes(
            suite=suite,
            root=root,
            seeds=tuple(seeds),
            methods=methods,
            values=values,
            full=full,
            epochs=epochs,
            train_size=train_size,
            vanilla_from=vanilla_from,
            progress=progress,
            keep_going=keep_going,
            device=device,
            jobs=jobs,
            echo=echo,
        )
        report_only = True  # every cell that could be computed is on disk now: collect them
    s = effective_suite(suite, full=full, epochs=epochs, train_size=train_size, values=values)
    chosen = resolve_methods(methods)
    post_hoc = [m for m, i in chosen.items() if i.post_hoc and i.apply is not None]
    order = [m for m in chosen if m not in post_hoc]
    if post_hoc and REFERENCE_METHOD not in order:
        order.insert(0, REFERENCE_METHOD)  # post-hoc methods start from the vanilla model of their cell
    order += post_hoc
    infos = available_methods()
    cells: list[dict[str, Any]] = []
    for seed in seeds:
        for value in s.values:
            splits = None
            for method in order:
                folder = cell_dir(root, s, value, method, seed)
                cached = load_cell(folder / RESULT_FILE)
                if cached is None and report_only:
                    continue
                if cached is None:
                    if splits is None:
                        open_root(root, kind=BENCH_COMPARE_ROOT)  # a new root gets its marker with its first cell
                        params = {s.param: value, **s.fixed} if s.param else dict(s.fixed)
                        splits = make_splits(
                            s.dataset, params=params, seed=seed, unbiased_size=s.unbiased_size, train_size=s.train_size
                        )
                    try:
                        cached = run_cell(
                            suite=s,
                            value=value,
                            method=method,
                            info=infos[method],
                            seed=seed,
                            root=root,
                            splits=splits,
                            full=full,
                            vanilla_from=vanilla_from,
                            progress=progress,
                            device=device,
                            echo=echo,
                        )
                    except Exception as exc:  # noqa: BLE001 - any bug in one method
                        # one failing method must not stop the suite; the cell stays unfinished (retried next time)
                        echo(f"  FAILED {s.name} {s.param}={value} seed={seed} {method}: {type(exc).__name__}: {exc}")
                        if not keep_going:
                            raise
                        continue
                if method in chosen:
                    cells.append(cached)
    return cells


def _run_group(kwargs: dict[str, Any]) -> int:
    """Worker-process entry: one (seed, value) group, sequentially, with a share of the CPU's threads."""
    torch.set_num_threads(kwargs.pop("threads"))
    tag = f"[seed {kwargs['seeds'][0]}, {kwargs['values'][0]}]"
    return len(run_compare(**kwargs, echo=lambda msg: print(f"{tag} {msg}", flush=True)))


def _unfinished(group: dict[str, Any], *, root: Path) -> bool:
    """Whether a (seed, value) group has a cell still to compute (the others are only read back)."""
    g = group
    s = effective_suite(g["suite"], full=g["full"], epochs=g["epochs"], train_size=g["train_size"], values=g["values"])
    chosen = resolve_methods(g["methods"])
    post_hoc = any(i.post_hoc and i.apply is not None for i in chosen.values())
    needed = set(chosen) | ({REFERENCE_METHOD} if post_hoc else set())  # post-hoc cells start from its cell
    return any(not (cell_dir(root, s, g["values"][0], m, g["seeds"][0]) / RESULT_FILE).is_file() for m in needed)


def _raise_interrupt(signum, frame):  # noqa: ARG001 - signal handler signature
    raise KeyboardInterrupt(f"signal {signum}")


def _groups(
    *, suite: str | Suite, seeds: tuple[int, ...], values: Iterable[float] | None, threads: int, common: dict[str, Any]
) -> list[dict[str, Any]]:
    """The (seed, value) groups of a suite as ``_run_group`` arguments (picklable: the suite by name)."""
    if not isinstance(suite, str):  # Suite objects hold lambdas, which a spawned worker cannot unpickle
        if SUITES.get(suite.name) is not suite:
            raise ConfigError(
                f"jobs > 1 and --launcher slurm need a registered suite name ({', '.join(SUITES)}), "
                "not a custom Suite object; run it with jobs=1"
            )
        suite = suite.name
    s = effective_suite(
        suite, full=common["full"], epochs=common["epochs"], train_size=common["train_size"], values=values
    )
    return [
        dict(common, suite=suite, seeds=(seed,), values=(value,), threads=threads)
        for seed in seeds
        for value in s.values
    ]


def _run_groups_in_processes(
    *,
    suite: str | Suite,
    seeds: tuple[int, ...],
    values: Iterable[float] | None,
    jobs: int,
    echo: Callable[[str], None],
    **common: Any,
) -> None:
    threads = max(1, (os.cpu_count() or 1) // jobs)
    groups = _groups(suite=suite, seeds=seeds, values=values, threads=threads, common=common)
    echo(f"running {len(groups)} (seed, value) groups in {jobs} processes, {threads} torch thread(s) each")
    # spawn: a fresh interpreter per worker (fork would copy the parent's torch thread pools and locks)
    pool = mp.get_context("spawn").Pool(processes=jobs, maxtasksperchild=1)
    # `kill PID` of the suite must stop its workers too (Ctrl-C reaches them through the process group)
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_interrupt) if in_main else None
    try:
        pending = [(g, pool.apply_async(_run_group, (g,))) for g in groups]
        for g, result in pending:
            try:
                result.get()
            except Exception as exc:  # noqa: BLE001 - a crashed group must not lose the other groups
                echo(f"  FAILED group seed={g['seeds'][0]} value={g['values'][0]}: {type(exc).__name__}: {exc}")
                if not common["keep_going"]:
                    raise
        pool.close()
    except BaseException:
        pool.terminate()  # no orphaned worker keeps writing cells after the suite stopped
        raise
    finally:
        pool.join()
        if in_main:
            signal.signal(signal.SIGTERM, previous)


# -- tables ------------------------------------------------------------------------------------------------
def _yn(v: bool) -> str:
    return "yes" if v else "no"


def compare_table(
    cells: list[dict[str, Any]], *, suite: str | Suite, command: str, wall_time_s: float, budget: str = ""
) -> str:
    """Markdown: method flags, one table per parameter value, a summary beside the published numbers."""
    s = get_suite(suite) if isinstance(suite, str) else suite
    methods = list(dict.fromkeys(c["method"] for c in cells))
    present = list(dict.fromkeys(c["value"] for c in cells))
    values = [v for v in s.values if v in present] + sorted(v for v in present if v not in s.values)
    seeds = sorted({c["seed"] for c in cells})
    lines = [
        f"### Suite `{s.name}` ({s.dataset})",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine_description()}; this invocation's wall time {wall_time_s / 60:.1f} min (cached "
        f"cells count 0); seeds {', '.join(map(str, seeds))}.  ",
        f"Budget: {budget or s.notes}  ",
        f"Numbers: % on {s.test_set}, mean +- sample std over "
        "seeds (a single run: its value and n=1; n in brackets where fewer than all seeds finished). Task = "
        "sample-weighted accuracy; conflicting = accuracy on bias-conflicting test samples (only where the target "
        "and the bias share their values; '-' for a protected attribute); worst group = min over non-empty "
        "(target, bias) groups; group mean = their unweighted mean; bias (privacy head) = the audit's bias "
        "extractability, accuracy of a privacy head trained on D^u_train bottleneck features (early-stopped on "
        "D^u_val); CF bias = mean |p_y(x) - p_y(x_cf)| over counterfactual pairs (x 100). Time = "
        "training/derivation wall time per run in seconds (post-hoc: excluding the vanilla model it starts from). "
        f"Trivial baselines first: *{MAJORITY}* = D^b's majority class predicted for every test sample; "
        f"*{REFERENCE_METHOD}* = ERM.",
        "",
        "| method | uses bias labels | uses D^u | retrains | post-hoc | counterfactual renderer | selection |",
        "|---|---|---|---|---|---|---|",
    ]
    infos = {c["method"]: c for c in cells}
    registry = available_methods()
    for m in methods:
        # flags from the registry as it is now (a cached cell keeps the flags of the code that wrote it)
        f = _flags(registry[m]) if m in registry else infos[m]["flags"]
        lines.append(
            f"| {m} | {_yn(f['uses_bias_labels'])} | {_yn(f['uses_unbiased_data'])} | {_yn(f['retrains'])} | "
            f"{_yn(f['post_hoc'])} | {_yn(f.get('uses_counterfactuals', False))} | {infos[m]['selection']} |"
        )
    for v in values:
        lines += ["", f"#### {s.value_label(v)}", "", *_value_table([c for c in cells if c["value"] == v], methods)]
    lines += [
        "",
        f"#### Task accuracy (%) across {s.param}, ours vs published",
        "",
        "| method | " + " | ".join(s.value_label(v) for v in values) + " |",
        "|---" * (len(values) + 1) + "|",
    ]
    for m in methods:
        row = []
        for v in values:
            cs = [c for c in cells if c["method"] == m and c["value"] == v]
            ours = fmt_stat(c["task_accuracy"] for c in cs) if cs else "-"
            paper = s.paper.get(m, {}).get(v)
            row.append(
                ours
                + (f" (paper {paper})" if paper else "")
                + (f" [n={len(cs)}]" if cs and len(cs) < len(seeds) else "")
            )
        lines.append(f"| {m} | " + " | ".join(row) + " |")
    extra = [m for m in s.paper if m not in methods]
    for m in extra:
        lines.append(f"| {m} (paper only) | " + " | ".join(s.paper[m].get(v, "-") for v in values) + " |")
    if s.paper_source:
        lines += ["", f"Published numbers: {s.paper_source}."]
    lines += ["", diagnostics_table(cells, suite=s, values=values)]
    lines += ["", hyperparameter_table(methods, dataset=s.dataset, cells=cells)]
    return "\n".join(lines) + "\n"


def _value_table(cells: list[dict[str, Any]], methods: list[str]) -> list[str]:
    """One parameter value's table: the majority-class row (recorded by every cell of this harness), then each
    method, marked when it falls below a trivial baseline, and the note that says what the marks mean."""
    rows = {m: [c for c in cells if c["method"] == m] for m in methods}
    rows = {m: cs for m, cs in rows.items() if cs}
    majority = list({c["seed"]: c["majority_class"] for c in cells if c.get("majority_class")}.values())
    keys = ("task_accuracy", "conflicting_accuracy", "worst_group_accuracy", "mean_group_accuracy")
    means = {m: {k: _mean_or_none(c.get(k) for c in cs) for k in MARKED_ON} for m, cs in rows.items()}
    lines = [
        "| method | Task | conflicting | worst group | group mean | bias (privacy head) | CF bias | time (s) | n |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    if majority:
        means[MAJORITY] = {k: _mean_or_none(b.get(k) for b in majority) for k in MARKED_ON}
        lines.append(
            f"| {MAJORITY} | "
            + " | ".join(fmt_stat(b.get(k) for b in majority) for k in keys)
            + f" | - | - | - | {len(majority)} |"
        )
    for m, cs in rows.items():
        t, ts, n_t = mean_std(c["wall_time_s"] for c in cs)
        time_text = f"{t:.0f}" if n_t == 1 else f"{t:.0f} +- {ts:.0f}"
        lines.append(
            f"| {m}{below_marks(means, m, reference=REFERENCE_METHOD)} | "
            + " | ".join(fmt_stat(c.get(k) for c in cs) for k in keys)
            + f" | {fmt_stat(c['bias_extractability'] for c in cs)} | {fmt_stat(c['counterfactual_bias'] for c in cs)} | "
            f"{time_text} | {len(cs)} |"
        )
    if not majority:
        lines += ["", f"{MAJORITY}: not recorded by these cells (written by an older harness; rerun them to get it)."]
    return lines + ["", BELOW_NOTE]


def _mean_or_none(values) -> float | None:
    m, _, n = mean_std(values)
    return m if n else None


def majority_baseline(splits) -> dict[str, Any] | None:
    """D^b's majority class predicted for every test sample, scored like the methods (task, conflicting where
    the bias has an aligned pairing, worst group over every attribute, group mean); None when the labels are
    not tensors in memory."""
    train_y, test = getattr(splits.train, "y", None), splits.test
    y, b = getattr(test, "y", None), getattr(test, "b", None)
    if not all(isinstance(t, torch.Tensor) for t in (train_y, y, b)):
        return None
    k = int(torch.bincount(train_y.long(), minlength=splits.num_classes).argmax())
    pred = torch.full_like(y, k)
    cols = b if b.ndim == 2 else b[:, None]
    attribute = is_attribute_bias(test)
    groups = [
        group_metrics(
            pred,
            y,
            cols[:, a],
            num_classes=test.num_classes,
            num_bias=test.num_bias_classes_of(a),
            aligned=None if attribute else test.aligned_mask(a),
        )
        for a in range(cols.shape[1])
    ]
    return {
        "class": k,
        "task_accuracy": groups[0].accuracy,
        "conflicting_accuracy": groups[0].conflicting_accuracy,
        "worst_group_accuracy": min(g.worst_group_accuracy for g in groups),
        "mean_group_accuracy": groups[0].mean_group_accuracy,
    }


# method-state keys of a conflict-flag report (ConflictFlags.report): the harness writes "pseudo_bias_flags";
# cells of older versions hold the same report under the key their method used. Rows follow this order.
FLAG_REPORT_KEYS = ("mining", "error_set", "pseudo_bias_flags")


def _flag_report(cell: dict[str, Any]) -> tuple[int, dict[str, Any]] | None:
    state = cell.get("method_state") or {}
    return next(((rank, state[k]) for rank, k in enumerate(FLAG_REPORT_KEYS) if isinstance(state.get(k), dict)), None)


def diagnostics_table(cells: list[dict[str, Any]], *, suite: Suite, values: list[float]) -> str:
    """Markdown: how well the methods that flag bias-conflicting training samples found them (scored
    against the true labels after training; no decision reads them), then each method's own report
    (``MethodInfo.report``, e.g. FMD's unlearning step)."""
    lines = [
        "#### Diagnostics (true bias labels read only here, after training)",
        "",
        "| method | setting | precision | recall | mined / flagged (% of D^b) | n |",
        "|---|---|---|---|---|---|",
    ]
    methods = list(dict.fromkeys(c["method"] for c in cells))
    reports = [(c, _flag_report(c)) for c in cells]
    for rank in range(len(FLAG_REPORT_KEYS)):
        for m in methods:
            for v in values:
                found = [
                    r[1] for c, r in reports if r is not None and r[0] == rank and c["method"] == m and c["value"] == v
                ]
                if found:
                    lines.append(
                        f"| {m} | {suite.value_label(v)} | {fmt_stat(f.get('precision') for f in found)} | "
                        f"{fmt_stat(f.get('recall') for f in found)} | {fmt_stat(f.get('mined_share') for f in found)} | {len(found)} |"
                    )
    registry = available_methods()
    for m in methods:
        info = registry.get(m)
        if info is not None and info.report is not None:
            settings = [
                (
                    suite.value_label(v),
                    [
                        c["method_state"]
                        for c in cells
                        if c["method"] == m and c["value"] == v and c.get("method_state")
                    ],
                )
                for v in values
            ]
            lines += info.report(settings, pm=fmt_stat)
    return "\n".join(lines)


def hyperparameter_table(methods: Iterable[str], *, dataset: str, cells: list[dict[str, Any]] = ()) -> str:
    """Markdown: each method's hyper-parameters as the cells ran them, with the registry's source of each
    default (paper, public code, or our tuning and on what), for ``dataset``'s family."""
    lines = [
        f"#### Hyper-parameters for {dataset} (value as run - source)",
        "",
        "| method | hyper-parameters |",
        "|---|---|",
    ]
    registry = available_methods()
    for m in methods:
        info = registry.get(m)
        if info is None:
            continue
        defaults = method_defaults(m, dataset)
        ran = next((c.get("method_config") for c in cells if c["method"] == m and c.get("method_config")), None)
        parts = [_hyperparameter(k, d, ran) for k, d in defaults.items()]
        lines.append(f"| {m} | {'; '.join(parts) or '-'} |")
    return "\n".join(lines)


def _hyperparameter(key: str, default, ran: dict[str, Any] | None) -> str:
    """``key=value - source`` as a cell ran it; a key the cell does not record was added to the method later."""
    if ran is not None and key not in ran:
        return f"{key}: not recorded by these cells (added later; default now {default.value!r} - {default.source})"
    value = default.value if ran is None else ran[key]
    return f"{key}={value!r} - {default.source}" + (
        "" if value == default.value else f" (suite budget; default {default.value!r})"
    )


def compare_cells_on_disk(root: Path, suite: Suite) -> list[dict[str, Any]]:
    """Every finished harness cell of ``suite``'s folder in ``root`` (whichever process wrote it; cells are
    atomic folders, so a result file is a finished cell), in seed / value / method order; fairlearn's rows of
    `bench adult`, which live beside them, are not the harness's."""
    folder = Path(root) / suite_folder(suite)
    found = [
        read_json(f)
        for f in folder.glob(f"*/*/seed*/{RESULT_FILE}")
        if not any(part.startswith(".") for part in f.relative_to(folder).parts)
    ]
    cells = [c for c in found if isinstance(c, dict) and "method" in c and not c.get("fairlearn")]
    rank = {m: i for i, m in enumerate(METHODS)}
    position = {v: i for i, v in enumerate(suite.values)}
    return sorted(
        cells,
        key=lambda c: (
            c["seed"],
            position.get(c["value"], len(position)),
            str(c["value"]),
            rank.get(c["method"], len(rank)),
            c["method"],
        ),
    )


def _compare_key(c: dict[str, Any]) -> tuple:
    return str(c["value"]), c["method"], int(c["seed"])


def write_compare_results(
    cells: list[dict[str, Any]], *, root: Path, suite: str | Suite, command: str, wall_time_s: float, budget: str = ""
) -> Path:
    """``results.json`` / ``results.md`` of the suite's folder from ``cells`` and every other finished cell on
    disk (another process's included), under the root's report lock."""
    s = get_suite(suite) if isinstance(suite, str) else suite
    open_root(root, kind=BENCH_COMPARE_ROOT)
    folder = Path(root) / suite_folder(s)
    with report_lock(root):
        cells = with_cells_on_disk(cells, compare_cells_on_disk(root, s), key=_compare_key)
        write_json(
            folder / "results.json",
            {
                "suite": s.name,
                "cells": cells,
                "command": command,
                "wall_time_s": wall_time_s,
                "machine": machine_description(),
            },
        )
        write_text(
            folder / "results.md",
            compare_table(cells, suite=s, command=command, wall_time_s=wall_time_s, budget=budget),
        )
    return folder / "results.md"
