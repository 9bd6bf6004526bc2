"""Bring your own model and data, end to end on real data: a user residual CNN on Fashion-MNIST with a
bias debiaskit does not ship (a striped background texture whose orientation x frequency is the bias).

    python benchmarks/byo_fashion_stripes.py make --out runs/byo/stripes-rho0.99.safetensors
    python benchmarks/byo_fashion_stripes.py run --data runs/byo/stripes-rho0.99.safetensors \\
        --root runs/byo --seeds 0 1 2 [--steps train audit ffw-structured ...] [--tag v2]
    python benchmarks/byo_fashion_stripes.py report --data ... --root runs/byo --tag v2

``make`` writes one .safetensors file the way a user would (x uint8 (N, 1, 28, 28), y, b, split):
D^b = ``--train-size`` official training images with bias rho (b = y with probability rho, else a uniformly
drawn other value), the next ``--unbiased-size`` training images with uniform b marked ``unbiased`` (code 5:
debiaskit divides them 60/20/20 into D^u train / val / test per (y, b) group), and ``--test-size`` official
test images with uniform b (code 4). Bias b in 0..9: stripes of orientation 36 deg * (b mod 5) and period
4 px (b < 5) or 7 px (b >= 5), drawn on the background only (pixel = max(item, 110 * stripe)).

``run`` drives the CLI as a user would (subprocesses; PYTHONPATH=benchmarks for the model file) for each
seed: train, audit, ffw --mode structured and --mode unstructured, discover (--layer bottleneck and auto), and
CALM trained on the same tensors (+ its audit). Outputs go to ROOT/seedS/<step>-TAG (CALM: ROOT/calm-seedS);
a step whose output exists is skipped, so a sweep resumes and two processes can split the steps / seeds.
Every command's wall time and the 1-minute load average go to ROOT/log-TAG-seedS.jsonl. ``report`` reads them
all and writes ``ROOT/results-TAG.md`` + ``.json`` (mean +- sample std over the seeds that finished).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent


def stripes(b: int, size: int = 28) -> np.ndarray:
    """The bias texture of value b: a sinusoidal grating in [0, 1]."""
    angle = math.radians(36 * (b % 5))
    period = 4.0 if b < 5 else 7.0
    v, u = np.mgrid[0:size, 0:size].astype(np.float32)
    return 0.5 + 0.5 * np.sin(2 * np.pi * (u * math.cos(angle) + v * math.sin(angle)) / period)


def render(images: np.ndarray, b: np.ndarray) -> np.ndarray:
    textures = np.stack([stripes(k) for k in range(10)]) * 110.0
    out = np.maximum(images.astype(np.float32), textures[b])
    return out.clip(0, 255).astype(np.uint8)[:, None]


def draw_bias(y: np.ndarray, rho: float, rng: np.random.Generator) -> np.ndarray:
    other = (y + rng.integers(1, 10, len(y))) % 10
    return np.where(rng.random(len(y)) < rho, y, other)


def make(args) -> None:
    from debiaskit.data import get_source, save_tensor_file

    arrays = get_source("fashion-mnist").load()
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(arrays.train_labels))
    biased, unbiased = order[: args.train_size], order[args.train_size : args.train_size + args.unbiased_size]
    test = rng.permutation(len(arrays.test_labels))[: args.test_size]
    parts = [
        (arrays.train_images[biased], arrays.train_labels[biased], None, 0),
        (arrays.train_images[unbiased], arrays.train_labels[unbiased], "uniform", 5),
        (arrays.test_images[test], arrays.test_labels[test], "uniform", 4),
    ]
    xs, ys, bs, codes = [], [], [], []
    for images, labels, kind, code in parts:
        y = labels.astype(np.int64)
        b = rng.integers(0, 10, len(y)) if kind == "uniform" else draw_bias(y, args.rho, rng)
        xs.append(render(images, b))
        ys.append(y)
        bs.append(b)
        codes.append(np.full(len(y), code))
    out = save_tensor_file(
        args.out,
        x=torch.from_numpy(np.concatenate(xs)),
        y=torch.from_numpy(np.concatenate(ys)),
        b=torch.from_numpy(np.concatenate(bs)),
        split=torch.from_numpy(np.concatenate(codes)),
        bias_names=("stripes",),
    )
    print(f"wrote {out} ({sum(len(y) for y in ys)} samples; D^b rho {args.rho})")


def _cli(args: list[str], log_path: Path) -> float:
    """Run one ``debiaskit`` command as a user would; append its wall time and the load to ``log_path``."""
    env = {**os.environ, "PYTHONPATH": str(HERE) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "debiaskit", *args]
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    entry = {
        "command": "debiaskit " + " ".join(args),
        "wall_s": wall,
        "rc": proc.returncode,
        "load1_before": load_before,
        "load1_after": os.getloadavg()[0],
        "finished": time.strftime("%H:%M:%S"),
    }
    with open(log_path, "a") as fh:  # one short line per command; O_APPEND keeps parallel writers whole
        fh.write(json.dumps(entry) + "\n")
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return wall


STEPS = ("train", "audit", "ffw-structured", "ffw-unstructured", "discover", "calm")


def _paths(root: Path, seed: int, tag: str) -> dict[str, Path]:
    run_dir = root / f"seed{seed}"
    return {
        "run": run_dir,
        "audit": run_dir / f"audit-{tag}",
        "ffw-structured": run_dir / f"ffw-structured-{tag}",
        "ffw-unstructured": run_dir / f"ffw-unstructured-{tag}",
        "discover-bottleneck": run_dir / f"discover-bottleneck-{tag}.json",
        "discover-auto": run_dir / f"discover-auto-{tag}.json",
        "calm": root / f"calm-seed{seed}",
        "calm-audit": root / f"calm-seed{seed}" / f"audit-{tag}",
    }


def run(args) -> None:
    """Each step is skipped when its output exists, so an interrupted sweep resumes and two processes
    may share the seeds (``--steps`` picks what this process runs)."""
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    train_args = [
        "--dataset",
        f"tensors:{args.data}",
        "--model",
        "byo_user_model:residual_cnn",
        "--model-arg",
        f"width={args.width}",
        "--epochs",
        str(args.epochs),
    ]
    for seed in args.seeds:
        p = _paths(root, seed, args.tag)
        log = root / f"log-{args.tag}-seed{seed}.jsonl"
        s = str(seed)
        for step in args.steps:
            if step == "train" and not (p["run"] / "run.json").exists():
                _cli(["train", *train_args, "--seed", s, "--out", str(p["run"]), "--no-progress"], log)
            elif step == "audit" and not (p["audit"] / "audit.json").exists():
                _cli(["audit", str(p["run"]), "--seed", s, "--out", str(p["audit"])], log)
            elif step.startswith("ffw-") and not (p[step] / "ffw.json").exists():
                _cli(
                    ["ffw", str(p["run"]), "--mode", step[4:], "--seed", s, "--out", str(p[step]), "--no-progress"], log
                )
            elif step == "discover":
                for layer in ("bottleneck", "auto"):
                    if not p[f"discover-{layer}"].exists():
                        # discover writes RUN/discover; --force replaces only the folder it wrote the step before
                        _cli(["discover", str(p["run"]), "--layer", layer, "--force"], log)
                        shutil.copyfile(p["run"] / "discover" / "report.json", p[f"discover-{layer}"])
            elif step == "calm":
                if not (p["calm"] / "run.json").exists():
                    _cli(
                        [
                            "train",
                            *train_args,
                            "--method",
                            "calm",
                            "--seed",
                            s,
                            "--out",
                            str(p["calm"]),
                            "--no-progress",
                        ],
                        log,
                    )
                if not (p["calm-audit"] / "audit.json").exists():
                    _cli(["audit", str(p["calm"]), "--seed", s, "--out", str(p["calm-audit"])], log)


def _read(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def report(args) -> None:
    root = Path(args.root)
    rows = []
    for seed in args.seeds:
        p = _paths(root, seed, args.tag)
        meta = _read(p["run"] / "run.json")
        audit = _read(p["audit"] / "audit.json")
        ffw = {m: _read(p[f"ffw-{m}"] / "ffw.json") for m in ("structured", "unstructured")}
        calm = _read(p["calm-audit"] / "audit.json")
        calm_state = (_read(p["calm"] / "run.json") or {}).get("method", {}).get("state", {})
        discover = {}
        for layer in ("bottleneck", "auto"):
            rep = _read(p[f"discover-{layer}"])
            if rep is not None:
                discover[layer] = {"layer": rep["layer"]["chosen"], **(rep["quality"]["train"] or {})}
        rows.append(
            {
                "seed": seed,
                "train_s": meta and meta["wall_time_s"],
                "model_args": meta and meta["model"].get("args"),
                "epochs": meta and meta["train"].get("epochs"),
                "audit": audit and {"task": audit["task_accuracy"], **audit["attributes"][0]},
                "calm": calm
                and {
                    "task": calm["task_accuracy"],
                    **calm["attributes"][0],
                    "selected_epoch": calm_state.get("selected_epoch"),
                    "flags": calm_state.get("pseudo_bias_flags"),
                },
                "ffw": {
                    m: f
                    and {
                        "after": f["after"],
                        "sparsity": f["search"]["sparsity"]["overall"],
                        "params": f["parameters"],
                        "wall_s": f["wall_time_s"],
                        "probes": f.get("probes"),
                        "selected_epoch": f["search"]["selected"]["epoch"],
                        "epochs": f["search"].get("epochs"),
                        "stop": f["search"].get("stop_reason"),
                    }
                    for m, f in ffw.items()
                },
                "discover": discover,
            }
        )
    log = []
    for seed in args.seeds:
        path = root / f"log-{args.tag}-seed{seed}.jsonl"
        if path.exists():
            log += [{**json.loads(line), "seed": seed} for line in path.read_text().splitlines() if line.strip()]
    (root / f"results-{args.tag}.json").write_text(json.dumps({"rows": rows, "log": log}, indent=2))
    (root / f"results-{args.tag}.md").write_text(markdown(rows, log, args))
    print((root / f"results-{args.tag}.md").read_text())


def _pm(values) -> str:
    values = [100 * v for v in values if v is not None and v == v]
    if not values:
        return "not run"
    spread = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.mean(values):.2f} +- {spread:.2f} (n={len(values)})"


def _group_row(name: str, audits, extra: str = "") -> str:
    a = [x for x in audits if x is not None]
    g = [x["groups"] for x in a]
    return (
        f"| {name} | {_pm(x['task'] for x in a)} | {_pm(x['aligned_accuracy'] for x in g)} | "
        f"{_pm(x['conflicting_accuracy'] for x in g)} | {_pm(x['worst_group_accuracy'] for x in g)} | "
        f"{_pm(x['bias_extractability'] for x in a)} | {extra}"
    )


def args_width(rows) -> str:
    return ", ".join(sorted({str(r["model_args"].get("width")) for r in rows if r.get("model_args")})) or "?"


def args_epochs(rows) -> str:
    return ", ".join(sorted({str(r["epochs"]) for r in rows if r.get("epochs")})) or "?"


def markdown(rows, log, args) -> str:
    lines = [
        f"Seeds {', '.join(str(r['seed']) for r in rows)}; mean +- sample std over the seeds that finished (n); "
        f"test = {args.data} code 4 (uniform bias).",
        "",
        "| model | task | aligned | conflicting | worst group | bias extractability | sparsity | params |",
        "|---|---|---|---|---|---|---|---|",
    ]
    params = next((r["ffw"]["structured"]["params"]["before"] for r in rows if r["ffw"]["structured"]), "-")
    lines.append(_group_row("vanilla", [r["audit"] for r in rows], f"- | {params} |"))
    for mode in ("structured", "unstructured"):
        f = [r["ffw"][mode] for r in rows if r["ffw"][mode]]
        after = [
            {
                "task": x["after"]["task_accuracy"],
                "groups": x["after"],
                "bias_extractability": x["after"]["bias_extractability"],
            }
            for x in f
        ]
        lines.append(
            _group_row(
                f"FFW {mode}",
                after,
                f"{_pm(x['sparsity'] for x in f)} | {', '.join(str(x['params']['after']) for x in f) or '-'} |",
            )
        )
    lines.append(_group_row("CALM (label-free training)", [r["calm"] for r in rows], "- | - |"))
    probes = sorted(
        {
            k
            for r in rows
            for m in ("structured", "unstructured")
            if r["ffw"][m] and r["ffw"][m]["probes"]
            for k in r["ffw"][m]["probes"]["after"]
        }
    )
    if probes:
        lines += [
            "",
            "| bias extractability by probe (test) | " + " | ".join(probes) + " |",
            "|---" * (len(probes) + 1) + "|",
        ]
        for label, mode, when in [
            ("vanilla", "unstructured", "before"),
            ("FFW structured", "structured", "after"),
            ("FFW unstructured", "unstructured", "after"),
        ]:
            got = [r["ffw"][mode]["probes"][when] for r in rows if r["ffw"][mode] and r["ffw"][mode]["probes"]]
            lines.append(f"| {label} | " + " | ".join(_pm(g.get(k) for g in got) for k in probes) + " |")
    epochs = {
        label: ", ".join(str(x["selected_epoch"]) for x in got if x)
        for label, got in [
            ("FFW structured", [r["ffw"]["structured"] for r in rows]),
            ("FFW unstructured", [r["ffw"]["unstructured"] for r in rows]),
            ("CALM (its own label-free rule)", [r["calm"] for r in rows]),
        ]
    }
    lines += ["", "Selected epoch per seed: " + "; ".join(f"{k} {v or '-'}" for k, v in epochs.items()) + "."]
    flags = [r["calm"]["flags"] for r in rows if r["calm"] and r["calm"].get("flags")]
    if flags:
        lines += [
            "",
            f"CALM's own conflict flags on D^b (true labels read by the report only): mined "
            f"{', '.join(str(f['mined']) for f in flags)} / truly conflicting {', '.join(str(f['true_conflicting']) for f in flags)}; "
            f"precision {_pm(f['precision'] for f in flags)}, recall {_pm(f['recall'] for f in flags)}",
        ]
    lines += [
        "",
        "| discover | layer chosen per seed | flagged | precision | recall | F1 |",
        "|---|---|---|---|---|---|",
    ]
    for layer in ("bottleneck", "auto"):
        d = [r["discover"][layer] for r in rows if layer in r["discover"]]
        lines.append(
            f"| --layer {layer} | {', '.join(x['layer'] for x in d) or '-'} | "
            f"{', '.join(str(x.get('flagged')) for x in d) or '-'} | {_pm(x.get('precision') for x in d)} | "
            f"{_pm(x.get('recall') for x in d)} | {_pm(x.get('f1') for x in d)} |"
        )
    lines += ["", "| command | wall time (s) per seed sN [1-min load average before -> after] |", "|---|---|"]
    by_cmd: dict[str, list[str]] = {}
    trained = [r for r in rows if r["train_s"] is not None]
    if trained:  # the vanilla runs' own record (they may predate the log)
        by_cmd[
            f"`debiaskit train --dataset tensors:DATA --model byo_user_model:residual_cnn --model-arg width={args_width(rows)} "
            f"--epochs {args_epochs(rows)} --seed S --out ROOT/seedS --no-progress` (its run.json wall_time_s; load not "
            f"recorded)"
        ] = [f"s{r['seed']}: {r['train_s']:.0f}" for r in trained]
    for entry in log:
        key = entry["command"].replace(str(args.data), "DATA").replace(str(args.root), "ROOT")
        for s in args.seeds:
            key = key.replace(f"--seed {s}", "--seed S").replace(f"seed{s}", "seedS")
        by_cmd.setdefault(key, []).append(
            f"s{entry['seed']}: {entry['wall_s']:.0f} [{entry.get('load1_before', float('nan')):.1f} -> "
            f"{entry.get('load1_after', float('nan')):.1f}]"
        )
    lines += [f"| {k if k.startswith('`') else '`' + k + '`'} | {', '.join(vs)} |" for k, vs in by_cmd.items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("make")
    p.add_argument("--out", required=True)
    p.add_argument("--rho", type=float, default=0.99)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-size", type=int, default=20000)
    p.add_argument("--unbiased-size", type=int, default=5000)
    p.add_argument("--test-size", type=int, default=5000)
    p.set_defaults(func=make)
    p = sub.add_parser("run")
    p.add_argument("--data", required=True)
    p.add_argument("--root", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--tag", default="v2", help="suffix of the output folders of audit / ffw / discover")
    p.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS))
    p.set_defaults(func=run)
    p = sub.add_parser("report")
    p.add_argument("--data", required=True)
    p.add_argument("--root", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--tag", default="v2")
    p.set_defaults(func=report)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
