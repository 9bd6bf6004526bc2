"""One cell of the FFW paper's Table 2 at the paper's protocol, on a GPU: Biased MNIST (rho 0.99 by default),
SimpleConvNet at full resolution (28 x 28), 80 epochs of Adam 1e-3, batch 256, all 50000 biased training
digits; then its audit and unstructured FFW (gamma 10) with the paper's budget (up to 20 tau levels of
10 epochs, privacy head pre-trained up to 30 epochs). Sized to fit in 10 minutes of one GPU.

Writes OUT/vanilla (run folder), OUT/vanilla-audit, OUT/ffw (FFW folder), and OUT/results.json +
OUT/results.md (the lines for BENCHMARKS.md, GPU named) - both rewritten after every stage, so a run
stopped by a time limit still returns what it finished.

Usage, from the repository root::

    python benchmarks/gpu_table2_cell.py --prepare-cache          # here: gzipped MNIST into ./data-cache (~11 MB)
    DEBIASKIT_DATA=data-cache PYTHONPATH=src python benchmarks/gpu_table2_cell.py --device cuda --out OUT
    python benchmarks/gpu_table2_cell.py --smoke --device cpu --out runs/gpu-smoke   # the same pipeline in seconds

``benchmarks/gpu_table2_cell.sh`` is the device-machine entry (checks, then this script into $OUT).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gzip
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

PAPER = {
    0.99: {"vanilla": (88.46, 98.45), "ffw": (97.79, 15.74, 46.50)},
    0.995: {"vanilla": (74.23, 99.75), "ffw": (97.30, 17.14, 44.62)},
    0.997: {"vanilla": (46.04, 99.96), "ffw": (89.36, 27.84, 36.47)},
    0.999: {"vanilla": (10.02, 100.0), "ffw": (22.29, 23.13, 43.11)},
}
FFW_FULL = dict(max_levels=20, max_epochs_per_level=10, patience=2, head_pretrain_epochs=30)  # bench ffw --full
FFW_SMOKE = dict(max_levels=1, max_epochs_per_level=1, patience=1, head_pretrain_epochs=1)


def _data_root() -> Path:
    """Where `debiaskit data prepare` put MNIST: $DEBIASKIT_DATA, else the user's cache folder (the library's rule)."""
    import platformdirs

    env = os.environ.get("DEBIASKIT_DATA")
    return Path(env).expanduser() if env else Path(platformdirs.user_cache_dir("debiaskit")) / "data"


def prepare_cache(source: Path, target: Path) -> None:
    """Gzip the four MNIST IDX files into ``target/mnist`` (what the device run carries: ~11 MB, not 55)."""
    (target / "mnist").mkdir(parents=True, exist_ok=True)
    for name in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        src = source / "mnist" / name
        if not src.is_file():
            raise SystemExit(f"{src} is missing; run `debiaskit data prepare mnist` (DEBIASKIT_DATA={source}) first")
        with open(src, "rb") as f, gzip.open(target / "mnist" / f"{name}.gz", "wb", compresslevel=6) as g:
            shutil.copyfileobj(f, g)
    print(f"written {target / 'mnist'} ({sum(p.stat().st_size for p in (target / 'mnist').iterdir()) / 1e6:.1f} MB)")


def device_description(device: str) -> dict:
    import torch

    out = {
        "device": device,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
    }
    if device.startswith("cuda"):
        out["gpu"] = torch.cuda.get_device_name(0)
        out["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    return out


def pct(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def write_results(out: Path, results: dict) -> None:
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    r, m = results, results["machine"]
    rho = r["settings"]["rho"]
    paper = PAPER.get(rho, {})
    what = m.get("gpu") or m["device"]
    lines = [
        f"#### Table 2 cell at the paper's protocol on {what} (rho {rho}, seed {r['settings']['seed']})",
        "",
        f"Command: `{r['command']}`  ",
        f"Machine: {what}, torch {m['torch']} (CUDA {m['cuda']}), {m['cpu_count']} CPU cores; "
        f"started {r['started']}; one seed (no std).  ",
        f"Protocol: {r['settings']['dataset']}, {r['settings']['model']}, {r['settings']['epochs']} epochs, batch 256, "
        f"Adam 1e-3, all biased training samples, amp {r['settings']['amp']}; FFW "
        f"unstructured gamma 10, {json.dumps(r['settings']['ffw'])}; selection: hard-masked model with the lowest "
        "CE + gamma MI on D^u_val; numbers on the unbiased test set.",
        "",
        "| | Task | Bias | Spars. | wall time (s) |",
        "|---|---|---|---|---|",
    ]
    if "vanilla" in r:
        v = r["vanilla"]
        lines.append(
            f"| vanilla (ours) | {pct(v['task_accuracy'])} | {pct(v['bias_extractability'])} | - | "
            f"{r['timings_s'].get('train', 0):.0f} (train) + {r['timings_s'].get('audit', 0):.0f} (audit) |"
        )
    if paper:
        lines.append(f"| vanilla (paper) | {paper['vanilla'][0]} | {paper['vanilla'][1]} | - | - |")
    if "ffw" in r:
        f = r["ffw"]
        lines.append(
            f"| FFW (ours) | {pct(f['task_accuracy'])} | {pct(f['bias_extractability'])} | "
            f"{pct(f['sparsity'])} | {r['timings_s'].get('ffw', 0):.0f} |"
        )
    if paper:
        lines.append(f"| FFW (paper) | {paper['ffw'][0]} | {paper['ffw'][1]} | {paper['ffw'][2]} | - |")
    lines += ["", f"Stages finished: {', '.join(r['stages'])}; total wall time {r['timings_s'].get('total', 0):.0f} s."]
    (out / "results.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/gpu-table2"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--rho", type=float, default=0.99)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=80)
    parser.add_argument("--amp", default="off", help="off (the paper's float32), bf16 or fp16")
    parser.add_argument(
        "--smoke", action="store_true", help="toy data, an MLP, 1 epoch, 1 FFW level: checks the pipeline"
    )
    parser.add_argument(
        "--prepare-cache", action="store_true", help="gzip MNIST from $DEBIASKIT_DATA into ./data-cache"
    )
    args = parser.parse_args(argv)
    if args.prepare_cache:
        prepare_cache(_data_root(), Path("data-cache"))
        return {}

    from debiaskit import _dist
    from debiaskit.audit import audit_run
    from debiaskit.ffw import ffw_run
    from debiaskit.train import TrainConfig, train_run

    start = time.perf_counter()
    device = str(_dist.check_device(args.device))  # a clear error in seconds when there is no GPU
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    if args.smoke:
        data = dict(dataset="biased-toy", params={"rho": 0.95}, unbiased_size=600, train_size=None)
        epochs, ffw_budget, model = 1, FFW_SMOKE, "mlp"
    else:
        data = dict(dataset="biased-mnist", params={"rho": args.rho}, unbiased_size=10000, train_size=None)
        epochs, ffw_budget, model = args.epochs, FFW_FULL, "simple-conv"
    results = {
        "command": "python benchmarks/gpu_table2_cell.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "started": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "machine": device_description(device),
        "stages": [],
        "timings_s": {},
        "settings": {
            "rho": data["params"]["rho"],
            "seed": args.seed,
            "model": model,
            "epochs": epochs,
            "train_size": data["train_size"],
            "amp": args.amp,
            "ffw": ffw_budget,
            "dataset": data["dataset"],
        },
    }

    def stage(name: str, began: float) -> None:
        results["stages"].append(name)
        results["timings_s"][name] = time.perf_counter() - began
        results["timings_s"]["total"] = time.perf_counter() - start
        write_results(out, results)
        print(f"[{results['timings_s']['total']:.0f}s] {name} done", flush=True)

    t = time.perf_counter()
    train_run(
        dataset=data["dataset"],
        params=data["params"],
        model=model,
        out=out / "vanilla",
        unbiased_size=data["unbiased_size"],
        train_size=data["train_size"],
        device=device,
        progress=False,
        config=TrainConfig(epochs=epochs, batch_size=256, lr=1e-3, seed=args.seed, amp=args.amp),
        force=True,
    )
    stage("train", t)
    t = time.perf_counter()
    report, _ = audit_run(out / "vanilla", out=out / "vanilla-audit", seed=args.seed, device=device, force=True)
    results["vanilla"] = report.headline()
    stage("audit", t)
    t = time.perf_counter()
    run = ffw_run(
        out / "vanilla",
        mode="unstructured",
        gamma=10.0,
        out=out / "ffw",
        seed=args.seed,
        device=device,
        force=True,
        no_harm=False,
        **ffw_budget,
    )
    results["ffw"] = {
        **run.info["after"],
        "sparsity": run.info["search"]["sparsity"]["overall"],
        "selected_epoch": run.info["search"]["selected"]["epoch"],
        "stop_reason": run.info["search"]["stop_reason"],
    }
    stage("ffw", t)
    print((out / "results.md").read_text())
    return results


if __name__ == "__main__":
    main()
