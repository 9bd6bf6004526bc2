"""The tabular benchmarks (UCI Adult, ProPublica COMPAS): debiaskit's methods (through the comparison harness)
beside fairlearn's mitigations and the trivial baselines.

Our rows are the cells of ``bench compare --suite adult`` / ``--suite compas`` (every registered method by default:
the same splits, MLP, budget, selection rules and audit as every other suite). fairlearn's rows (a benchmark extra:
``pip install -e '.[bench]'``) are fitted on the same D^b of the same seed:

* ``fairlearn-lr``: scikit-learn LogisticRegression (C = 1, lbfgs) on the same standardised features:
  the unconstrained base estimator of the reductions;
* ``fairlearn-lr-full``: the same LogisticRegression on the full training set (D^b and all of D^u: every row
  that is not test), a reference for what the rows that D^u takes from D^b cost;
* ``fairlearn-eg-dp`` / ``fairlearn-eg-eo``: ExponentiatedGradient(LogisticRegression, DemographicParity() /
  EqualizedOdds()), fairlearn's defaults (eps 0.01, 50 iterations); a randomised classifier, predictions drawn
  with the seed;
* ``fairlearn-to-dp-lr`` / ``fairlearn-to-eo-lr``: ThresholdOptimizer(LogisticRegression, demographic_parity /
  equalized_odds, objective accuracy) - group-specific (randomised) thresholds fitted on D^b;
* ``fairlearn-to-dp-mlp`` / ``fairlearn-to-eo-mlp``: the same ThresholdOptimizer on our vanilla MLP of the
  same cell (``prefit``, its P(y = 1 | x)): post-processing the very network the other rows start from.

ThresholdOptimizer reads the protected attribute at prediction time (its thresholds are per group); no other
row does (the attribute is an input feature of every model, as in FMD's setting).

Trivial baselines, in every table: ``majority class`` (predicts D^b's majority class for every row: its
accuracy, worst group and group mean are what any method must beat) and our ``vanilla`` MLP. A row below
either of them on worst-group or group-mean accuracy is marked (``↓maj`` / ``↓van``).

Every row - ours and fairlearn's - is scored by fairlearn's metrics on the test rows: accuracy
(``MetricFrame``, overall), worst-group and group-mean accuracy over the (income x bias) groups
(``MetricFrame`` with both as sensitive features: ``group_min`` / mean of ``by_group``), worst accuracy over the
bias groups alone, ``demographic_parity_difference`` and ``equalized_odds_difference`` (between groups, worst
case). Also, for every row, the counterfactual bias on all test rows (mean |p_y(x) - p_y(x_cf)|, x_cf = the
same row with the protected attribute flipped; for ThresholdOptimizer the attribute it reads is flipped too)
and, where a bottleneck exists, the bias extractability: the audit's privacy head (on the test rows) and the
audit's converged linear probe (``debiaskit.audit.PROBES["linear"]``: L-BFGS to convergence on standardised
features, L2 chosen on D^u_val; accuracy on the balanced D^u_test: 50 % = chance).

Example::

    from debiaskit.bench import run_adult_bench
    rows = run_adult_bench(root=Path("runs/bench/compare"), seeds=(0, 1, 2))
    rows = run_adult_bench(root=Path("runs/bench/compare"), seeds=(0, 1, 2), dataset="compas")
"""

from __future__ import annotations

import math
import statistics
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .._io import atomic_folder, open_root, report_lock
from ..audit import probe_suite
from ..data import BiasDataset, Splits, make_splits
from ..errors import ConfigError
from ..methods import REFERENCE_METHOD
from ..models import collect_outputs
from ..runs import load_run, read_json, write_json, write_text
from ._common import (
    BELOW_NOTE,
    MAJORITY,
    MARKED_ON,
    below_marks,
    fmt_stat,
    load_cell,
    machine_description,
    with_cells_on_disk,
)
from ._compare import (
    RESULT_FILE,
    Suite,
    cell_dir,
    effective_suite,
    get_suite,
    run_compare,
    suite_folder,
    write_compare_results,
)
from ._folders import BENCH_CELL, BENCH_COMPARE_ROOT

PREDICTIONS_FILE = "test_predictions.safetensors"
EG_OPTIONS = {"eps": 0.01, "max_iter": 50}  # fairlearn's defaults, written out so the table can say so

# name -> (description, uses the protected attribute at prediction time, selection rule in words)
FAIRLEARN_ROWS: dict[str, tuple[str, bool, str]] = {
    "fairlearn-lr": ("LogisticRegression (C = 1), the base estimator, no constraint", False, "none (fitted on D^b)"),
    "fairlearn-lr-full": (
        "LogisticRegression (C = 1) on the full training set (D^b + D^u), no constraint",
        False,
        "none (fitted on every non-test row)",
    ),
    "fairlearn-eg-dp": (
        "ExponentiatedGradient(LogisticRegression, DemographicParity)",
        False,
        "fairlearn defaults (eps 0.01, 50 iterations) on D^b",
    ),
    "fairlearn-eg-eo": (
        "ExponentiatedGradient(LogisticRegression, EqualizedOdds)",
        False,
        "fairlearn defaults (eps 0.01, 50 iterations) on D^b",
    ),
    "fairlearn-to-dp-lr": (
        "ThresholdOptimizer(LogisticRegression, demographic_parity)",
        True,
        "thresholds maximising accuracy on D^b under the constraint",
    ),
    "fairlearn-to-eo-lr": (
        "ThresholdOptimizer(LogisticRegression, equalized_odds)",
        True,
        "thresholds maximising accuracy on D^b under the constraint",
    ),
    "fairlearn-to-dp-mlp": (
        "ThresholdOptimizer(our vanilla MLP, prefit, demographic_parity)",
        True,
        "thresholds maximising accuracy on D^b under the constraint",
    ),
    "fairlearn-to-eo-mlp": (
        "ThresholdOptimizer(our vanilla MLP, prefit, equalized_odds)",
        True,
        "thresholds maximising accuracy on D^b under the constraint",
    ),
}


def require_fairlearn() -> None:
    """Fail before any compute when the benchmark extra is missing."""
    try:
        import fairlearn  # noqa: F401
        import sklearn  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            f"the tabular benchmark's fairlearn rows need the bench extra ({exc.name} is missing): "
            "pip install -e '.[bench]' (every row of the Adult / COMPAS table is scored by fairlearn's "
            "metrics)"
        ) from exc


# -- per cell: what the harness stores for each of our models ---------------------------------------------------
def flipped(test: BiasDataset) -> Tensor:
    """Inputs of every test row with the (binary) protected attribute flipped."""
    return test.counterfactual(torch.arange(len(test)), 1 - test.b)


def counterfactual_gap(p1: np.ndarray, p1_cf: np.ndarray, y: np.ndarray) -> float:
    """Mean |p_y(x) - p_y(x_cf)| from the probabilities of class 1 (binary target)."""
    p_y, p_y_cf = np.where(y == 1, p1, 1 - p1), np.where(y == 1, p1_cf, 1 - p1_cf)
    return float(np.abs(p_y - p_y_cf).mean())


def bottleneck_probe(
    z_train: Tensor, b_train: Tensor, z_val: Tensor, b_val: Tensor, z_test: Tensor, b_test: Tensor, *, num_bias: int = 2
) -> dict[str, Any]:
    """The probe column: the audit's converged linear probe (``probe_suite``'s ``linear``, the one the FFW
    tables use), fitted on D^u_train features, L2 chosen on D^u_val, accuracy on ``z_test`` (D^u_test)."""
    accuracy = probe_suite(z_train, b_train, z_val, b_val, z_test, b_test, num_bias=num_bias, probes=("linear",))
    return {"test_accuracy": accuracy["linear"], "probe": "debiaskit.audit.probe_suite linear"}


def adult_cell_extras(model: nn.Module, *, splits: Splits, head: str | None, seed: int, folder: Path) -> dict[str, Any]:
    """The harness's per-cell hook for the adult suite: test predictions (for fairlearn's metrics, written
    to ``folder``), the counterfactual bias on every test row, and the converged linear probe."""
    from safetensors.torch import save_file

    test = splits.test
    out = collect_outputs(model, test, head=head)
    with torch.no_grad():
        model.eval()
        p1 = out.logits.softmax(1)[:, 1]
        p1_cf = torch.cat([model(x).softmax(1)[:, 1] for x in flipped(test).split(4096)])
    save_file(
        {
            "pred": out.logits.argmax(1).to(torch.int64).contiguous(),
            "prob1": p1.contiguous(),
            "prob1_cf": p1_cf.contiguous(),
        },
        str(Path(folder) / PREDICTIONS_FILE),
    )
    tr, va, te = (
        collect_outputs(model, s, head=head) for s in (splits.unbiased_train, splits.unbiased_val, splits.unbiased_test)
    )
    probe = bottleneck_probe(tr.z, tr.b, va.z, va.b, te.z, te.b, num_bias=splits.num_bias_classes)
    return {
        "cf_bias_all": counterfactual_gap(p1.numpy(), p1_cf.numpy(), test.y.numpy()),
        "linear_probe": probe,
        "bottleneck_width": int(out.z.shape[1]),
    }


# the adult and compas suites of the comparison harness, defined beside their per-cell measurements (cell_extras);
# registered by bench/__init__.py with the harness's other suites
ADULT_SUITE = Suite(
    name="adult",
    dataset="adult",
    param="bias",
    values=("sex", "race"),
    model="mlp",
    epochs=20,
    value_label=lambda v: f"bias {v}",
    cell_extras=adult_cell_extras,
    test_set="the official Adult test rows (NOT group-balanced: read worst group and group mean)",
    notes="UCI Adult (see `debiaskit data show adult`): MLP 3x100 on 88 (sex) / 85 (race) tabular features, "
    "Adam 1e-3, batch 256, 20 epochs; `debiaskit bench adult` adds fairlearn's rows",
)
COMPAS_SUITE = Suite(
    name="compas",
    dataset="compas",
    param="bias",
    values=("race", "race_binary", "sex"),
    model="mlp",
    epochs=20,
    value_label=lambda v: f"bias {v}",
    cell_extras=adult_cell_extras,
    test_set="the fixed COMPAS test part (20% of every (y, sex, race) cell, the same for every seed; NOT "
    "group-balanced: read worst group and group mean)",
    notes="ProPublica COMPAS (see `debiaskit data show compas`): MLP 3x100 on 11 (race, race_binary) / 15 (sex) "
    "tabular features, Adam 1e-3, batch 256, 20 epochs; `debiaskit bench adult --dataset compas` adds "
    "fairlearn's rows",
)
TABULAR_SUITES = ("adult", "compas")


# -- fairlearn's rows ------------------------------------------------------------------------------------------
def torch_estimator(model: nn.Module):
    """A trained torch classifier as a fitted scikit-learn estimator (for ThresholdOptimizer with ``prefit``)."""
    from sklearn.base import BaseEstimator, ClassifierMixin

    class TorchClassifier(ClassifierMixin, BaseEstimator):
        def __init__(self, model: nn.Module) -> None:
            self.model = model

        def fit(self, X, y, **kwargs):  # noqa: ARG002 - prefit: nothing to learn
            return self

        def predict_proba(self, X) -> np.ndarray:
            self.model.eval()
            with torch.no_grad():
                x = torch.as_tensor(np.asarray(X, dtype=np.float32))
                return torch.cat([self.model(part).softmax(1) for part in x.split(4096)]).double().numpy()

        def predict(self, X) -> np.ndarray:
            return self.predict_proba(X).argmax(1)

        def __sklearn_is_fitted__(self) -> bool:
            return True

    est = TorchClassifier(model)
    est.classes_ = np.array([0, 1])
    return est


def fit_fairlearn_row(name: str, splits: Splits, *, seed: int, vanilla: nn.Module | None) -> dict[str, np.ndarray]:
    """Fit one fairlearn row on D^b; return its test predictions and P(y = 1) on x and on x_cf."""
    from fairlearn.postprocessing import ThresholdOptimizer
    from fairlearn.reductions import DemographicParity, EqualizedOdds, ExponentiatedGradient
    from sklearn.linear_model import LogisticRegression

    train, test = splits.train, splits.test
    x, y, b = train.x.numpy().astype(np.float64), train.y.numpy(), train.b.numpy()
    xt, bt = test.x.numpy().astype(np.float64), test.b.numpy()
    xt_cf, bt_cf = flipped(test).numpy().astype(np.float64), 1 - bt
    rng = np.random.RandomState(seed)
    lr = lambda: LogisticRegression(C=1.0, max_iter=2000)  # noqa: E731
    if name in ("fairlearn-lr", "fairlearn-lr-full"):
        if name.endswith("-full"):  # every non-test row: D^b and the three parts of D^u
            parts = (train, splits.unbiased_train, splits.unbiased_val, splits.unbiased_test)
            x = np.concatenate([p.x.numpy().astype(np.float64) for p in parts])
            y = np.concatenate([p.y.numpy() for p in parts])
        est = lr().fit(x, y)
        return {
            "pred": est.predict(xt),
            "prob1": est.predict_proba(xt)[:, 1],
            "prob1_cf": est.predict_proba(xt_cf)[:, 1],
        }
    if name in ("fairlearn-eg-dp", "fairlearn-eg-eo"):
        eg = ExponentiatedGradient(
            lr(), constraints=DemographicParity() if name.endswith("dp") else EqualizedOdds(), **EG_OPTIONS
        )
        with warnings.catch_warnings():  # fairlearn's own pandas deprecation notices, not ours to fix
            warnings.simplefilter("ignore", DeprecationWarning)
            eg.fit(x, y, sensitive_features=b)
        # the mixture's P(y = 1 | x) (fairlearn's randomised classifier; _pmf_predict is how predict draws)
        return {
            "pred": eg.predict(xt, random_state=rng),
            "prob1": eg._pmf_predict(xt)[:, 1],
            "prob1_cf": eg._pmf_predict(xt_cf)[:, 1],
        }
    if name.startswith("fairlearn-to-"):
        constraints = "demographic_parity" if "-dp-" in name else "equalized_odds"
        if name.endswith("-mlp"):
            if vanilla is None:
                raise ConfigError(f"{name} needs the vanilla MLP of the same cell")
            to = ThresholdOptimizer(
                estimator=torch_estimator(vanilla),
                constraints=constraints,
                objective="accuracy_score",
                prefit=True,
                predict_method="predict_proba",
            )
        else:
            to = ThresholdOptimizer(
                estimator=lr(), constraints=constraints, objective="accuracy_score", predict_method="predict_proba"
            )
        to.fit(x, y, sensitive_features=b)
        return {
            "pred": to.predict(xt, sensitive_features=bt, random_state=rng),
            "prob1": to._pmf_predict(xt, sensitive_features=bt)[:, 1],
            "prob1_cf": to._pmf_predict(xt_cf, sensitive_features=bt_cf)[:, 1],
        }
    raise ConfigError(f"unknown fairlearn row {name!r}; available: {', '.join(FAIRLEARN_ROWS)}")


def fairness_metrics(y: np.ndarray, pred: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """fairlearn's metrics of one row's test predictions (see the module doc)."""
    from fairlearn.metrics import MetricFrame, demographic_parity_difference, equalized_odds_difference
    from sklearn.metrics import accuracy_score

    y, pred, b = np.asarray(y), np.asarray(pred), np.asarray(b)
    groups = MetricFrame(metrics=accuracy_score, y_true=y, y_pred=pred, sensitive_features={"y": y, "b": b})
    by_bias = MetricFrame(metrics=accuracy_score, y_true=y, y_pred=pred, sensitive_features=b)
    return {
        "accuracy": float(groups.overall),
        "worst_group_accuracy": float(groups.group_min()),
        "mean_group_accuracy": float(groups.by_group.mean()),
        "worst_bias_group_accuracy": float(by_bias.group_min()),
        "dp_difference": float(demographic_parity_difference(y, pred, sensitive_features=b)),
        "eo_difference": float(equalized_odds_difference(y, pred, sensitive_features=b)),
    }


def tabular_suite(dataset: str) -> Suite:
    """The harness suite of a tabular benchmark (adult, compas)."""
    if dataset not in TABULAR_SUITES:
        raise ConfigError(f"the tabular benchmark runs on {' or '.join(TABULAR_SUITES)}, got {dataset!r}")
    return get_suite(dataset)


def _fairlearn_cell(root: Path, value: str, name: str, seed: int, dataset: str = "adult") -> Path:
    return cell_dir(root, tabular_suite(dataset), value, name, seed)


def run_fairlearn_cell(
    *, root: Path, value: str, name: str, seed: int, splits: Splits, vanilla: nn.Module | None, dataset: str = "adult"
) -> dict[str, Any]:
    """Fit, predict and cache one fairlearn row (atomic cell folder beside the harness's cells)."""
    from safetensors.numpy import save_file

    folder = _fairlearn_cell(root, value, name, seed, dataset)
    start = time.perf_counter()
    out = fit_fairlearn_row(name, splits, seed=seed, vanilla=vanilla)
    wall = time.perf_counter() - start
    result = {
        "kind": "bench-cell",
        "suite": dataset,
        "dataset": dataset,
        "param": "bias",
        "value": value,
        "method": name,
        "seed": seed,
        "wall_time_s": wall,
        "selection": FAIRLEARN_ROWS[name][2],
        "description": FAIRLEARN_ROWS[name][0],
        "uses_bias_at_inference": FAIRLEARN_ROWS[name][1],
        "fairlearn": True,
        "extras": {"cf_bias_all": counterfactual_gap(out["prob1"], out["prob1_cf"], splits.test.y.numpy())},
    }
    with atomic_folder(folder, kind=BENCH_CELL, force=True) as staging:  # replaces only a benchmark cell
        save_file(
            {
                "pred": np.asarray(out["pred"]).astype(np.int64),
                "prob1": np.asarray(out["prob1"], dtype=np.float32),
                "prob1_cf": np.asarray(out["prob1_cf"], dtype=np.float32),
            },
            str(staging / PREDICTIONS_FILE),
        )
        write_json(staging / RESULT_FILE, result)
    return result


# -- the benchmark ---------------------------------------------------------------------------------------------
def _splits(value: str, seed: int, dataset: str = "adult") -> Splits:
    s = tabular_suite(dataset)
    return make_splits(
        s.dataset, params={s.param: value}, seed=seed, unbiased_size=s.unbiased_size, train_size=s.train_size
    )


def majority_record(splits: Splits, *, dataset: str, value: str, seed: int) -> dict[str, Any]:
    """The trivial baseline of one (value, seed): D^b's majority class predicted for every test row, scored by
    the same metrics (its counterfactual bias is 0: a constant prediction never moves)."""
    majority = int(np.bincount(splits.train.y.numpy(), minlength=2).argmax())
    y, b = splits.test.y.numpy(), splits.test.b.numpy()
    return {
        "suite": dataset,
        "dataset": dataset,
        "param": "bias",
        "value": value,
        "method": MAJORITY,
        "seed": seed,
        "wall_time_s": 0.0,
        "selection": f"none (D^b's majority class, y = {majority})",
        "trivial": True,
        "description": "predicts D^b's majority class for every row",
        "extras": {"cf_bias_all": 0.0},
        "metrics": fairness_metrics(y, np.full(len(y), majority), b),
    }


def _predictions(folder: Path) -> np.ndarray | None:
    from safetensors.numpy import load_file

    path = Path(folder) / PREDICTIONS_FILE
    return load_file(str(path))["pred"] if path.is_file() else None


def run_adult_bench(
    *,
    root: Path,
    seeds: Iterable[int] = (0, 1, 2),
    values: Iterable[str] | None = None,
    methods: Iterable[str] | None = None,
    fairlearn: bool = True,
    jobs: int = 1,
    report_only: bool = False,
    progress: bool = False,
    command: str = "",
    dataset: str = "adult",
    echo: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Our methods through the harness, then fairlearn's rows on the same splits; every row scored by
    fairlearn's metrics. Returns one record per (value, method, seed) with the metrics filled in.
    ``dataset``: adult or compas. The harness's own table (flags, hyper-parameters, diagnostics) is written too:
    ROOT/DATASET/results.md."""
    suite = tabular_suite(dataset)
    require_fairlearn()  # the metrics of every row, ours included, are fairlearn's
    values = tuple(values or suite.values)
    unknown = [v for v in values if v not in suite.values]
    if unknown:
        raise ConfigError(f"{dataset} bias must be one of {', '.join(suite.values)}, got {unknown}")
    open_root(root, kind=BENCH_COMPARE_ROOT)  # the compare suite's root: never a user's folder
    start = time.perf_counter()
    seeds = tuple(seeds)
    s = effective_suite(suite, values=None)
    ours = run_compare(
        suite=s,
        root=root,
        seeds=seeds,
        methods=list(methods) if methods else None,
        values=values,
        jobs=jobs,
        report_only=report_only,
        progress=progress,
        echo=echo,
    )
    write_compare_results(
        ours, root=root, suite=s, command=command, wall_time_s=time.perf_counter() - start, budget=s.notes
    )
    records = []
    for seed in seeds:
        for value in values:
            splits = _splits(value, seed, dataset)
            y, b = splits.test.y.numpy(), splits.test.b.numpy()
            for cell in (c for c in ours if c["seed"] == seed and c["value"] == value):
                pred = _predictions(cell_dir(root, s, value, cell["method"], seed))
                if pred is None:
                    echo(
                        f"  {cell['method']} seed {seed} {value}: cell has no {PREDICTIONS_FILE} (written by an older "
                        "harness); rerun it to score it with fairlearn"
                    )
                    continue
                records.append({**cell, "metrics": fairness_metrics(y, pred, b)})
            if not fairlearn:
                continue
            vanilla = None
            for name in FAIRLEARN_ROWS:
                folder = _fairlearn_cell(root, value, name, seed, dataset)
                cell = load_cell(folder / RESULT_FILE)
                if cell is None and not report_only:
                    if vanilla is None and name.endswith("-mlp"):
                        vanilla = load_run(cell_dir(root, s, value, REFERENCE_METHOD, seed)).model
                    echo(f"  fairlearn: {name} {dataset} bias={value} seed={seed}")
                    cell = run_fairlearn_cell(
                        root=root, value=value, name=name, seed=seed, splits=splits, vanilla=vanilla, dataset=dataset
                    )
                if cell is not None:
                    records.append({**cell, "metrics": fairness_metrics(y, _predictions(folder), b)})
    return records


# -- tables ----------------------------------------------------------------------------------------------------
COLUMNS = (
    ("accuracy", "accuracy", 1),
    ("worst (y,b) group", "worst_group_accuracy", 1),
    ("group mean", "mean_group_accuracy", 1),
    ("worst bias group", "worst_bias_group_accuracy", 1),
    ("DP diff", "dp_difference", -1),
    ("EO diff", "eo_difference", -1),
)
TEST_ROWS = {
    "adult": "the official Adult test rows (15,060 complete rows, not group-balanced)",
    "compas": "the fixed COMPAS test part (20 % of every (y, sex, race) cell of ProPublica's filtered rows, "
    "the same for every seed; not group-balanced)",
}
TITLES = {"adult": "UCI Adult", "compas": "ProPublica COMPAS"}


def _stat(values: list[float | None]) -> tuple[float, float, int]:
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not vals:
        return float("nan"), float("nan"), 0
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0), len(vals)


def _pm(values: list[float | None], scale: float = 100.0) -> str:
    return fmt_stat(values, scale=scale)


def _row_values(records: list[dict[str, Any]]) -> dict[str, list]:
    out: dict[str, list] = {key: [r["metrics"][key] for r in records] for _, key, _ in COLUMNS}
    out["cf_bias"] = [(r.get("extras") or {}).get("cf_bias_all") for r in records]
    out["probe"] = [((r.get("extras") or {}).get("linear_probe") or {}).get("test_accuracy") for r in records]
    out["audit_probe"] = [r.get("bias_extractability") for r in records]
    out["time"] = [r.get("wall_time_s") for r in records]
    return out


def _row_order(methods: Iterable[str]) -> list[str]:
    """The trivial baselines first (majority class, vanilla), then the rest in their order."""
    methods = list(dict.fromkeys(methods))
    return [m for m in (MAJORITY, REFERENCE_METHOD) if m in methods] + [
        m for m in methods if m not in (MAJORITY, REFERENCE_METHOD)
    ]


def summary(records: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """value -> method -> {metric: (mean, std, n)} (for JSON and the winners list); baselines first."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for r in records:
        out.setdefault(r["value"], {})
    for value, methods in out.items():
        for method in _row_order(r["method"] for r in records if r["value"] == value):
            rs = [r for r in records if r["value"] == value and r["method"] == method]
            vals = _row_values(rs)
            methods[method] = {k: dict(zip(("mean", "std", "n"), _stat(v))) for k, v in vals.items()}
            methods[method]["seeds"] = sorted(r["seed"] for r in rs)
    return out


def _means(stats: dict[str, dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    return {m: {k: (st[k]["mean"] if st[k]["n"] else None) for k in MARKED_ON} for m, st in stats.items()}


def winners(stats: dict[str, dict[str, Any]]) -> list[str]:
    """Per metric: the best row, and every row whose mean is within one std (the larger) of it (the majority-class
    row is a baseline, not a contender: its DP / EO differences are 0 by construction)."""
    lines = []
    for label, key, sign in (*COLUMNS, ("CF bias", "cf_bias", -1)):
        rows = [(m, s[key]) for m, s in stats.items() if s[key]["n"] and m != MAJORITY]
        if not rows:
            continue
        best_m, best = max(rows, key=lambda r: sign * r[1]["mean"])
        ties = [m for m, st in rows if m != best_m and abs(st["mean"] - best["mean"]) <= max(st["std"], best["std"])]
        lines.append(
            f"- {label}: **{best_m}** ({100 * best['mean']:.2f})"
            + (f"; within one std: {', '.join(ties)}" if ties else "")
        )
    return lines


def _table_rows(value: str, records: list[dict[str, Any]], stats: dict[str, dict[str, Any]]) -> list[str]:
    means = _means(stats)
    lines = []
    for method in stats:
        rs = [r for r in records if r["value"] == value and r["method"] == method]
        vals = _row_values(rs)
        t, ts, n_t = _stat(vals["time"])
        first = rs[0]
        inference = "yes (group thresholds)" if first.get("uses_bias_at_inference") else "no"
        cells = [_pm(vals[key]) for _, key, _ in COLUMNS]
        time_text = "-" if first.get("trivial") else (f"{t:.1f}" if n_t == 1 else f"{t:.1f} +- {ts:.1f}")
        name = method + below_marks(means, method, reference=REFERENCE_METHOD)
        lines.append(
            f"| {name} | " + " | ".join(cells) + f" | {_pm(vals['cf_bias'])} | {_pm(vals['probe'])} | "
            f"{_pm(vals['audit_probe'])} | {time_text} | {len(rs)} | {inference} | {first.get('selection', '-')} |"
        )
    return lines


def adult_table(records: list[dict[str, Any]], *, command: str, wall_time_s: float, dataset: str = "adult") -> str:
    seeds = sorted({r["seed"] for r in records})
    suite = tabular_suite(dataset)
    stats = summary(records)
    lines = [
        f"### {TITLES[dataset]}: debiaskit's methods beside fairlearn and the trivial baselines",
        "",
        f"Command: `{command}`  ",
        f"Machine: {machine_description()}; this invocation's wall time {wall_time_s / 60:.1f} min (cached cells "
        f"count 0); seeds {', '.join(map(str, seeds))}.  ",
        f"Budget (our rows): {suite.notes}.  ",
        f"Numbers: % on {TEST_ROWS[dataset]}, mean +- sample std over seeds (a single run: its value and n=1; the "
        "seed draws D^u and so D^b, the model's initialisation and the randomised predictions). "
        "All accuracy and fairness columns are computed by fairlearn (MetricFrame / demographic_parity_difference / "
        "equalized_odds_difference) from each row's test predictions. Worst (y,b) group = min over the 4 (target x "
        "bias) groups; group mean = their unweighted mean; worst bias group = min over the 2 bias groups; DP / EO "
        "diff = largest between-group gap of selection rate / of TPR and FPR (lower is fairer). CF bias = mean "
        "|p_y(x) - p_y(x_cf)| over all test rows, x_cf = the row with the protected attribute flipped (x 100). "
        "Two bias read-outs of the bottleneck, each under its own name: *linear probe* = the benchmarks' converged "
        "linear probe (debiaskit.audit.probe_suite 'linear': logistic regression on standardised features, L-BFGS "
        "to convergence, L2 in {1e-4, 1e-3, 1e-2} chosen on D^u_val), accuracy on the balanced D^u_test (50 = "
        "chance); *privacy head* = the audit's bias extractability (a head-shaped Linear trained with early-stopped "
        "Adam on D^u_train, accuracy on the unbalanced test rows): a weaker, faster reader, so it can sit below "
        "the probe. Time = training / fitting seconds per run (post-hoc rows: excluding the vanilla model).  ",
        f"Trivial baselines first: *{MAJORITY}* predicts D^b's majority class for every row (what any method must "
        f"beat: its worst group is 0 and its group mean 50); *{REFERENCE_METHOD}* is our MLP trained by ERM on D^b.",
        "",
    ]
    for value in [v for v in suite.values if v in stats]:
        lines += [
            f"#### bias = {value}",
            "",
            "| method | " + " | ".join(c[0] for c in COLUMNS) + " | CF bias | linear probe | privacy head | "
            "time (s) | n | b at inference | selection |",
            "|---" * (len(COLUMNS) + 8) + "|",
        ]
        lines += _table_rows(value, records, stats[value])
        lines += [
            "",
            BELOW_NOTE,
            "",
            "Best per column (mean; rows within one std of it listed):",
            "",
            *winners(stats[value]),
            "",
        ]
    lines += [
        "fairlearn rows: " + "; ".join(f"{k} = {d}" for k, (d, _, _) in FAIRLEARN_ROWS.items()) + ".",
        f"Our rows: see `bench compare --suite {dataset}` (results.md beside this file) for their flags, "
        "hyper-parameters and diagnostics.",
    ]
    return "\n".join(lines) + "\n"


def _record_key(r: dict[str, Any]) -> tuple:
    return str(r["value"]), r["method"], int(r["seed"])


def adult_records_on_disk(root: Path, *, skip: set = frozenset(), dataset: str = "adult") -> list[dict[str, Any]]:
    """Every finished cell of the ``dataset`` suite in ``root`` (our rows and fairlearn's, whichever process wrote
    them) whose key is not in ``skip``, scored by fairlearn's metrics from its test predictions."""
    s = effective_suite(tabular_suite(dataset), values=None)
    folder = Path(root) / suite_folder(s)
    tests: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
    records = []
    for f in sorted(folder.glob(f"*/*/seed*/{RESULT_FILE}")):
        cell = read_json(f)
        if (
            any(p.startswith(".") for p in f.relative_to(folder).parts)
            or not isinstance(cell, dict)
            or "method" not in cell
            or _record_key(cell) in skip
        ):
            continue
        pred = _predictions(f.parent)
        if pred is None:
            continue
        if (cell["value"], cell["seed"]) not in tests:
            test = _splits(cell["value"], cell["seed"], dataset).test
            tests[cell["value"], cell["seed"]] = (test.y.numpy(), test.b.numpy())
        y, b = tests[cell["value"], cell["seed"]]
        records.append({**cell, "metrics": fairness_metrics(y, pred, b)})
    return records


def majority_records(records: list[dict[str, Any]], *, dataset: str) -> list[dict[str, Any]]:
    """The majority-class row of every (value, seed) that ``records`` cover (computed, never cached: it costs
    one pass over the labels)."""
    keys = sorted({(str(r["value"]), int(r["seed"])) for r in records if r["method"] != MAJORITY})
    return [majority_record(_splits(v, seed, dataset), dataset=dataset, value=v, seed=seed) for v, seed in keys]


def write_adult_results(
    records: list[dict[str, Any]], *, root: Path, command: str, wall_time_s: float, dataset: str = "adult"
) -> Path:
    """``DATASET/DATASET.json`` / ``.md`` (adult/adult.md, compas/compas.md) from ``records`` and every other
    finished cell of ``root`` (another process's included), plus the majority-class rows, under the root's
    report lock."""
    tabular_suite(dataset)
    open_root(root, kind=BENCH_COMPARE_ROOT)
    folder = Path(root) / dataset
    with report_lock(root):
        records = with_cells_on_disk(
            records,
            adult_records_on_disk(root, skip={_record_key(r) for r in records}, dataset=dataset),
            key=_record_key,
        )
        records = [r for r in records if r["method"] != MAJORITY]
        records = majority_records(records, dataset=dataset) + records
        write_json(
            folder / f"{dataset}.json",
            {
                "suite": dataset,
                "command": command,
                "wall_time_s": wall_time_s,
                "machine": machine_description(),
                "summary": summary(records),
                "rows": [{k: v for k, v in r.items() if k != "method_state"} for r in records],
            },
        )
        write_text(
            folder / f"{dataset}.md", adult_table(records, command=command, wall_time_s=wall_time_s, dataset=dataset)
        )
    return folder / f"{dataset}.md"
