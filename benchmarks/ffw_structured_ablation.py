"""Why does structured FFW stay under unstructured? Cheap ablations on D^u_val only (issue 14 item 4).

Each variant runs FFW's search on one frozen vanilla model and records, after every epoch, the soft
(tau) and the hard-masked model's task accuracy, privacy-head accuracy and MI on D^u_val - never the
test set. Variants change one thing at a time: where the unit gate sits, its optimiser / learning
rate, gamma, the schedule. Results: one JSON per variant in --out (resumable: a finished variant is
skipped).

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/ffw_structured_ablation.py \\
        --run runs/bench/vanilla/biased-mnist-rho0.99-seed0 --out runs/struct/ablation \\
        --variants base gamma0 unstructured --epochs 6

Gate positions other than debiaskit's (``prebn``: gate the conv output, before BatchNorm) are
research variants only: their hard mask cannot be exported exactly (a pruned unit leaves the
BatchNorm shift behind), so they are scored as gated models, not exported.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from debiaskit.ffw import _gates
from debiaskit.ffw._config import FFWConfig
from debiaskit.ffw._search import _Search
from debiaskit.ffw._structure import GatePoint, analyse_structure
from debiaskit.runs import load_run, write_json

# name -> (FFWConfig overrides, gate position)
VARIANTS: dict[str, tuple[dict, str]] = {
    "base": ({}, "default"),
    "gamma0": ({"gamma": 0.0}, "default"),
    "unstructured": ({"mode": "unstructured"}, "default"),
    "unstructured-gamma0": ({"mode": "unstructured", "gamma": 0.0}, "default"),
    "prebn": ({}, "prebn"),
    "prebn-gamma0": ({"gamma": 0.0}, "prebn"),
    "sgd-lr0.01": ({"gate_lr": 0.01}, "default"),
    "sgd-lr1": ({"gate_lr": 1.0}, "default"),
    "adam-lr0.01": ({"gate_optimizer": "adam", "gate_lr": 0.01}, "default"),
    "adam-lr0.001": ({"gate_optimizer": "adam", "gate_lr": 0.001}, "default"),
    "adam-lr0.1": ({"gate_optimizer": "adam", "gate_lr": 0.1}, "default"),
    "capacity": ({"gamma": 0.0, "gate_optimizer": "adam", "gate_lr": 0.05}, "default"),
    "head": ({}, "head"),
    "head-gamma0": ({"gamma": 0.0}, "head"),
    "head-capacity": ({"gamma": 0.0, "gate_optimizer": "adam", "gate_lr": 0.05}, "head"),
    "head-adam": ({"gate_optimizer": "adam", "gate_lr": 0.05}, "head"),
    "adam-lr0.05": ({"gate_optimizer": "adam", "gate_lr": 0.05}, "default"),
    "first-capacity": ({"gamma": 0.0, "gate_optimizer": "adam", "gate_lr": 0.05}, "first"),
    "first-kernels-capacity": ({"gamma": 0.0, "gate_optimizer": "adam", "gate_lr": 0.05}, "first-kernels"),
    "first": ({}, "first"),
    "first-kernels": ({}, "first-kernels"),
    "first2": ({}, "first2"),
    "first-long": ({"agree_tol": 0.0}, "first"),
    "kernels": ({}, "kernels"),
    "kernels-capacity": ({"gamma": 0.0, "gate_optimizer": "adam", "gate_lr": 0.05}, "kernels"),
    "unstructured-capacity": (
        {"mode": "unstructured", "gamma": 0.0, "gate_optimizer": "adam", "gate_lr": 0.05},
        "default",
    ),
}


def _prebn(model, example, head):
    """Gate points whose gate multiplies the conv/linear output itself (before its BatchNorm)."""
    s = analyse_structure(model, example, head)
    s.points = {
        k: GatePoint(
            layer=p.layer,
            producers=p.producers,
            sites=p.producers,
            units=p.units,
            channel_modules=p.channel_modules,
            consumers=p.consumers,
            fans=p.fans,
        )
        for k, p in s.points.items()
    }
    return s


def _with_head_gates(install):
    """Structured unit gates in the encoder plus one weight gate per head weight (unstructured)."""

    def wrapped(model, *, mode, head, example, include_head=False, state=None, **_):
        from torch.nn.utils import parametrize

        gm = install(model, mode=mode, head=head, example=example, include_head=False, state=state)
        module = model.get_submodule(head)
        gate = _gates.WeightGate(module.weight.shape, gm.state)
        parametrize.register_parametrization(module, "weight", gate, unsafe=True)
        module.parametrizations.weight.original.requires_grad_(False)
        gm.gates[head] = gate
        return gm

    return wrapped


def _with_weight_gates(install, which: str):
    """Structured unit gates plus weight gates on some convs: ``first`` = every weight of the first conv,
    ``kernels`` = one gate per (out, in) kernel of every conv (kernel-level sparsity)."""

    def wrapped(model, *, mode, head, example, include_head=False, state=None, **_):
        from torch import nn
        from torch.nn.utils import parametrize

        gm = install(model, mode=mode, head=head, example=example, include_head=False, state=state)
        convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
        depth = 2 if which == "first2" else 1
        for name, module in convs[:depth] if which.startswith("first") else convs:
            shape = module.weight.shape if which in ("first", "first2") else (*module.weight.shape[:2], 1, 1)
            gate = _gates.WeightGate(shape, gm.state)
            parametrize.register_parametrization(module, "weight", gate, unsafe=True)
            module.parametrizations.weight.original.requires_grad_(False)
            gm.gates[f"{name}.weight"] = gate
        return gm

    return wrapped


def run_variant(run_dir: Path, name: str, *, epochs: int, seed: int, schedule: dict) -> dict:
    overrides, position = VARIANTS[name]
    cfg = FFWConfig(
        **{
            "mode": "structured",
            "seed": seed,
            "max_levels": 1,
            "min_epochs_per_level": epochs,
            "max_epochs_per_level": epochs,
            "patience": epochs,
            **schedule,
            **overrides,
        }
    )
    run = load_run(run_dir)
    splits = run.splits()
    from debiaskit.ffw import _search

    original, original_install = _gates.analyse_structure, _search.install_gates
    if position == "prebn":
        _gates.analyse_structure = _prebn
    if position == "head":
        _search.install_gates = _with_head_gates(original_install)
    if position in ("first", "first2", "first-kernels", "kernels"):
        _search.install_gates = _with_weight_gates(original_install, position)
    try:
        torch.manual_seed(seed)
        search = _Search(
            run.model,
            head=run.head,
            train=splits.unbiased_train,
            val=splits.unbiased_val,
            config=cfg,
            device="cpu",
            callback=None,
        )
        start = time.perf_counter()
        search.pretrain_heads()
        search.initial_record()
        while not search.progress["done"]:
            rec = search.run_epoch(start, 0.0)
            soft, hard = rec["val_soft"], rec["val_hard"]  # soft: None where the schedule did not evaluate it
            soft_text = (
                f"soft task {100 * soft['task']:.2f} bias {100 * soft['bias']:.1f}"
                if soft is not None
                else "soft not evaluated"
            )
            print(
                f"[{name}] epoch {rec['epoch']} tau {rec['tau']:.3g}: {soft_text} | "
                f"hard task {100 * hard['task']:.2f} bias {100 * hard['bias']:.1f} "
                f"sparsity {100 * rec['sparsity']:.1f} ({time.perf_counter() - start:.0f} s)",
                flush=True,
            )
    finally:
        _gates.analyse_structure, _search.install_gates = original, original_install
    best = search.best
    return {
        "variant": name,
        "config": cfg.__dict__,
        "position": position,
        "history": search.history,
        "selected": {"epoch": best["epoch"], "tau": best["tau"], "val_hard": best["val_hard"]},
        "stop_reason": search.progress["stop_reason"],
        "wall_time_s": time.perf_counter() - start,
        "threads": torch.get_num_threads(),
    }


def report(out: Path) -> str:
    """Markdown table of every variant JSON in ``out`` (D^u_val numbers only)."""
    rows = [
        "| variant | gate position | epochs | soft task, last evaluated epoch | soft task, best evaluated epoch "
        "| selected hard task "
        "| its privacy-head acc. | its unit sparsity | wall time (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for path in sorted(out.glob("*.json")):
        r = json.loads(path.read_text())
        hist = r["history"][1:]
        softs = [h["val_soft"]["task"] for h in hist if h["val_soft"] is not None]  # the epochs that evaluated it
        sel = next(h for h in r["history"] if h["epoch"] == r["selected"]["epoch"])
        rows.append(
            f"| {path.stem[len(Path(r['run']).name) + 1 :]} | {r['position']} | {len(hist)} | "
            f"{100 * softs[-1]:.2f} | {100 * max(softs):.2f} | "
            f"{100 * sel['val_hard']['task']:.2f} | {100 * sel['val_hard']['bias']:.1f} | "
            f"{100 * sel['sparsity']:.1f} | {r['wall_time_s']:.0f} |"
        )
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--variants", nargs="+", default=["base"], choices=sorted(VARIANTS))
    ap.add_argument("--epochs", type=int, default=6, help="epochs at tau_init (one tau level) unless --schedule")
    ap.add_argument(
        "--schedule",
        type=json.loads,
        default={},
        help='JSON FFWConfig overrides for a full schedule, e.g. {"max_levels": 16, "max_epochs_per_level": 2, "patience": 1, "min_epochs_per_level": 1}',
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tag", default="", help="suffix of the result file names (write --tag=-x, with '=')")
    ap.add_argument("--report", action="store_true", help="print the Markdown table of --out and exit")
    args = ap.parse_args()
    if args.report:
        print(report(args.out))
        return
    torch.set_num_threads(1)
    for name in args.variants:
        path = args.out / f"{args.run.name}-{name}{args.tag}.json"
        if path.exists():
            print(f"skip {path} (done)")
            continue
        result = run_variant(args.run, name, epochs=args.epochs, seed=args.seed, schedule=args.schedule)
        result["run"] = str(args.run)
        write_json(path, result)
        print(f"wrote {path}: selected hard D^u_val task {100 * result['selected']['val_hard']['task']:.2f}")


if __name__ == "__main__":
    main()
