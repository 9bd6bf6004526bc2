"""GroupDRO variants and the share of setup in a method's cost, on the comparison harness's biased-mnist
default budget (rho 0.99).

``groupdro TAG SEED``: one GroupDRO cell, with its D^u_val worst group and task accuracy next to the test
numbers. TAG ``balanced`` = the registry default (non-empty groups, group-balanced sampling), ``nonempty`` =
non-empty groups with plain shuffling; the ``old`` row of docs/design/groupdro.md ran this script on the code before
the change (`git show 1d472d4:src` unpacked on PYTHONPATH).
``setup METHOD``: how much of a method's whole cost (clock started before setup) is its setup:
first epoch's time minus the mean of the others.

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/groupdro_variants_and_setup_time.py groupdro balanced 0 --out runs/groupdro-setup
    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/groupdro_variants_and_setup_time.py setup jtt --out runs/groupdro-setup
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from debiaskit.audit import group_metrics
from debiaskit.bench._compare import effective_suite, run_cell
from debiaskit.data import make_splits
from debiaskit.methods import METHODS, build_method, get_method
from debiaskit.models import build_model, collect_outputs, default_head_name
from debiaskit.runs import load_run
from debiaskit.train import TrainConfig, fit

SUITE = effective_suite("biased-mnist", values=[0.99])


def splits_of(seed: int):
    return make_splits(
        SUITE.dataset, params={"rho": 0.99}, seed=seed, unbiased_size=SUITE.unbiased_size, train_size=SUITE.train_size
    )


def groupdro(tag: str, seed: int, out: Path) -> dict:
    splits = splits_of(seed)
    info = METHODS["groupdro"]
    if tag == "nonempty":
        info = replace(info, budgets={"default": {"group_balanced": False}})
    root = out / "groupdro" / tag
    cell = run_cell(
        suite=SUITE, value=0.99, method="groupdro", info=info, seed=seed, root=root, splits=splits, full=False
    )
    run = load_run(root / "biased-mnist" / "rho0.99" / "groupdro" / f"seed{seed}")
    val = collect_outputs(run.model, splits.unbiased_val, with_bottleneck=False)
    g = group_metrics(val.logits.argmax(1), val.y, val.b, num_classes=10, num_bias=10)
    return {
        "tag": tag,
        "seed": seed,
        "test_task": cell["task_accuracy"],
        "test_worst": cell["worst_group_accuracy"],
        "val_task": float((val.logits.argmax(1) == val.y).float().mean()),
        "val_worst": g.worst_group_accuracy,
        "selected_epoch": cell["selected_epoch"],
        "wall_time_s": cell["wall_time_s"],
        "state": cell["method_state"],
    }


def setup_time(name: str) -> dict:
    splits = splits_of(0)
    method, _ = build_method(name, dataset=SUITE.dataset, **get_method(name).budget("default"))
    torch.manual_seed(0)
    model = build_model(SUITE.model, num_classes=10, input_shape=splits.train.input_shape)
    res = fit(
        model,
        splits.train,
        method=method,
        head=default_head_name(model),
        progress=False,
        config=TrainConfig(epochs=SUITE.epochs, batch_size=SUITE.batch_size, lr=SUITE.lr, seed=0),
    )
    times = [h["time_s"] for h in res.history]
    per_epoch = (times[-1] - times[0]) / (len(times) - 1)
    setup = times[0] - per_epoch
    return {
        "method": name,
        "whole_cost_s": res.wall_time_s,
        "epoch_s": per_epoch,
        "setup_s": setup,
        "setup_share": setup / res.wall_time_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=("groupdro", "setup"))
    parser.add_argument("args", nargs="+")
    parser.add_argument("--out", type=Path, default=Path("runs/groupdro-setup"))
    a = parser.parse_args()
    start = time.perf_counter()
    res = groupdro(a.args[0], int(a.args[1]), a.out) if a.what == "groupdro" else setup_time(a.args[0])
    res["script_s"] = time.perf_counter() - start
    a.out.mkdir(parents=True, exist_ok=True)
    with open(a.out / "results.jsonl", "a") as f:
        f.write(json.dumps(res) + "\n")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
