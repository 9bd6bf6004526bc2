"""Bring your own model and data, end to end on real data: a user residual CNN on Fashion-MNIST with a
bias debiaskit does not ship (a striped background texture whose orientation x frequency is the bias).

    python benchmarks/byo_fashion_stripes.py make --out /work/bench/byo/stripes-rho0.99.safetensors
    python benchmarks/byo_fashion_stripes.py run --data /work/bench/byo/stripes-rho0.99.safetensors \\
        --root /work/bench/byo/runs --seeds 0 1 2

``make`` writes one .safetensors file the way a user would (x uint8 (N, 1, 28, 28), y, b, split):
D^b = ``--train-size`` official training images with bias rho (b = y with probability rho, else a uniformly
drawn other value), the next ``--unbiased-size`` training images with uniform b marked ``unbiased`` (code 5:
debiaskit divides them 60/20/20 into D^u train / val / test per (y, b) group), and ``--test-size`` official
test images with uniform b (code 4). Bias b in 0..9: stripes of orientation 36 deg * (b mod 5) and period
4 px (b < 5) or 7 px (b >= 5), drawn on the background only (pixel = max(item, 110 * stripe)).

``run`` drives the CLI as a user would (subprocesses; PYTHONPATH=benchmarks for the model file) for each
seed: train, audit, ffw --mode structured and --mode unstructured, discover (--layer auto and bottleneck),
and writes ``ROOT/results.md`` + ``results.json`` (commands, wall times, numbers, mean +- std over seeds).
"""
from __future__ import annotations

import argparse
import json
import math
import os
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
    biased, unbiased = order[:args.train_size], order[args.train_size:args.train_size + args.unbiased_size]
    test = rng.permutation(len(arrays.test_labels))[:args.test_size]
    parts = [(arrays.train_images[biased], arrays.train_labels[biased], None, 0),
             (arrays.train_images[unbiased], arrays.train_labels[unbiased], "uniform", 5),
             (arrays.test_images[test], arrays.test_labels[test], "uniform", 4)]
    xs, ys, bs, codes = [], [], [], []
    for images, labels, kind, code in parts:
        y = labels.astype(np.int64)
        b = rng.integers(0, 10, len(y)) if kind == "uniform" else draw_bias(y, args.rho, rng)
        xs.append(render(images, b))
        ys.append(y)
        bs.append(b)
        codes.append(np.full(len(y), code))
    out = save_tensor_file(args.out, x=torch.from_numpy(np.concatenate(xs)), y=torch.from_numpy(np.concatenate(ys)),
                           b=torch.from_numpy(np.concatenate(bs)), split=torch.from_numpy(np.concatenate(codes)),
                           bias_names=("stripes",))
    print(f"wrote {out} ({sum(len(y) for y in ys)} samples; D^b rho {args.rho})")


def _cli(args: list[str], log: list[dict]) -> float:
    env = {**os.environ, "PYTHONPATH": str(HERE) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [str(Path(sys.executable).parent / "debiaskit"), *args]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    log.append({"command": "debiaskit " + " ".join(args), "wall_s": wall, "rc": proc.returncode})
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return wall


def run(args) -> None:
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    log: list[dict] = []
    for seed in args.seeds:
        run_dir = root / f"seed{seed}"
        if not (run_dir / "run.json").exists():
            _cli(["train", "--dataset", f"tensors:{args.data}", "--model", "byo_user_model:residual_cnn",
                  "--model-arg", f"width={args.width}", "--epochs", str(args.epochs), "--seed", str(seed),
                  "--out", str(run_dir), "--no-progress"], log)
        _cli(["audit", str(run_dir), "--seed", str(seed)], log)
        for mode in ("structured", "unstructured"):
            if not (run_dir / f"ffw-{mode}-g10" / "ffw.json").exists():
                _cli(["ffw", str(run_dir), "--mode", mode, "--seed", str(seed), "--no-progress"], log)
        discover = {}
        for layer in ("bottleneck", "auto"):
            _cli(["discover", str(run_dir), "--layer", layer, "--force"], log)
            report = json.loads((run_dir / "discover" / "report.json").read_text())
            discover[layer] = {"layer": report["layer"]["chosen"], **(report["quality"]["train"] or {})}
        meta = json.loads((run_dir / "run.json").read_text())
        audit = json.loads((run_dir / "audit" / "audit.json").read_text())
        ffw = {m: json.loads((run_dir / f"ffw-{m}-g10" / "ffw.json").read_text()) for m in ("structured", "unstructured")}
        rows.append({"seed": seed, "train_s": meta["wall_time_s"], "audit": audit["attributes"][0], "task": audit["task_accuracy"],
                     "ffw": {m: {"before": f["before"], "after": f["after"], "sparsity": f["search"]["sparsity"]["overall"],
                                 "params": f["parameters"], "wall_s": f["wall_time_s"]} for m, f in ffw.items()},
                     "discover": discover})
    (root / "results.json").write_text(json.dumps({"rows": rows, "log": log}, indent=2))
    (root / "results.md").write_text(markdown(rows, log, args))
    print((root / "results.md").read_text())


def _pm(values) -> str:
    values = [100 * v for v in values if v is not None and v == v]
    if not values:
        return "-"
    return f"{statistics.mean(values):.2f} +- {statistics.stdev(values) if len(values) > 1 else 0.0:.2f}"


def markdown(rows, log, args) -> str:
    lines = [f"Seeds {', '.join(str(r['seed']) for r in rows)} (n = {len(rows)}); mean +- sample std; test = "
             f"{args.data} code 4 (uniform bias).", "",
             "| model | task | aligned | conflicting | worst group | bias extractability | sparsity | params |",
             "|---|---|---|---|---|---|---|---|"]
    a = [r["audit"] for r in rows]
    lines.append(f"| vanilla | {_pm(r['task'] for r in rows)} | {_pm(x['groups']['aligned_accuracy'] for x in a)} | "
                 f"{_pm(x['groups']['conflicting_accuracy'] for x in a)} | {_pm(x['groups']['worst_group_accuracy'] for x in a)} | "
                 f"{_pm(x['bias_extractability'] for x in a)} | - | {rows[0]['ffw']['structured']['params']['before']} |")
    for mode in ("structured", "unstructured"):
        f = [r["ffw"][mode]["after"] for r in rows]
        lines.append(f"| FFW {mode} | {_pm(x['task_accuracy'] for x in f)} | {_pm(x['aligned_accuracy'] for x in f)} | "
                     f"{_pm(x['conflicting_accuracy'] for x in f)} | {_pm(x['worst_group_accuracy'] for x in f)} | "
                     f"{_pm(x['bias_extractability'] for x in f)} | {_pm(r['ffw'][mode]['sparsity'] for r in rows)} | "
                     f"{', '.join(str(r['ffw'][mode]['params']['after']) for r in rows)} |")
    lines += ["", "| discover | layer chosen per seed | flagged | precision | recall | F1 |", "|---|---|---|---|---|---|"]
    for layer in ("bottleneck", "auto"):
        d = [r["discover"][layer] for r in rows]
        lines.append(f"| --layer {layer} | {', '.join(x['layer'] for x in d)} | {', '.join(str(x.get('flagged')) for x in d)} | "
                     f"{_pm(x.get('precision') for x in d)} | {_pm(x.get('recall') for x in d)} | {_pm(x.get('f1') for x in d)} |")
    lines += ["", "| command | wall time (s), per seed |", "|---|---|"]
    by_cmd: dict[str, list[float]] = {}
    for entry in log:
        key = " ".join(w if not w.startswith(str(args.root)) else "RUN" for w in entry["command"].split())
        key = key.replace(str(args.data), "DATA")
        for s in args.seeds:
            key = key.replace(f"--seed {s}", "--seed S").replace(f"seed{s}", "seedS")
        by_cmd.setdefault(key, []).append(entry["wall_s"])
    lines += [f"| `{k}` | {', '.join(f'{v:.0f}' for v in vs)} |" for k, vs in by_cmd.items()]
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
    p.set_defaults(func=run)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
