"""Steps per second of the training loop on 1 vs 2 gloo ranks (1 torch thread each), and the overhead of the
distributed path at world size 1 (a 1-rank process group: DistributedDataParallel, sharding, collectives)
against the plain loop. Workload: vanilla ERM, simple-conv-small on Biased MNIST (rho 0.99), global batch 256.

Usage (writes benchmarks/results/dist_scaling.json and prints a Markdown table)::

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python benchmarks/dist_scaling.py --repeats 5 --steps 40

Modes, interleaved in every repeat (so that a change of the machine's load hits all of them alike):

* ``plain``: ``fit`` in this process, no process group;
* ``ddp1``: ``torchrun --nproc-per-node 1`` (a 1-rank gloo group: the distributed path at world size 1);
* ``ddp2``: ``torchrun --nproc-per-node 2`` (2 ranks, 128 samples each per step).

Per run: wall time per global step and CPU time per step (``time.process_time`` of each rank, summed over
ranks), both over the steps after ``--warmup`` steps. CPU time is the load-robust measure on a shared
machine: it does not count the time a process waits for a core; the wall time does.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
RESULTS = HERE.parent / "results" / "dist_scaling.json"


def measure(steps: int, warmup: int, train_size: int) -> dict | None:
    """Train ``warmup + steps`` global steps (in this process: plain, or one rank of torchrun); rank 0 returns
    {wall_s_per_step, cpu_s_per_step (summed over ranks), world_size}."""
    import torch

    from debiaskit import _dist
    from debiaskit.data import make_splits
    from debiaskit.models import build_model
    from debiaskit.train import TrainConfig, TrainingMethod, fit

    torch.set_num_threads(1)
    _dist.init_from_env()
    rank, world = _dist.rank_and_world()

    class Timed(TrainingMethod):
        """ERM that stamps wall and CPU time at every step."""

        def setup(self, ctx):
            super().setup(ctx)
            self.stamps = []

        def training_step(self, batch, ctx):
            self.stamps.append((time.perf_counter(), time.process_time()))
            return super().training_step(batch, ctx)

    splits = make_splits("biased-mnist", params={"rho": 0.99}, seed=0, train_size=train_size)
    torch.manual_seed(0)
    model = build_model("simple-conv-small", num_classes=10, input_shape=splits.train.input_shape)
    method = Timed()
    n = (warmup + steps + 1) * 256
    fit(
        model,
        splits.train.subset(torch.arange(n)),
        method=method,
        config=TrainConfig(epochs=1, batch_size=256),
        progress=False,
    )
    (w0, c0), (w1, c1) = method.stamps[warmup], method.stamps[warmup + steps]
    cpu = float(_dist.all_reduce_sum(torch.tensor([c1 - c0], dtype=torch.float64))[0])
    wall = float(_dist.all_reduce_sum(torch.tensor([w1 - w0], dtype=torch.float64))[0]) / world
    _dist.shutdown()
    if rank != 0:
        return None
    return {"wall_s_per_step": wall / steps, "cpu_s_per_step": cpu / steps, "world_size": world}


def run_mode(mode: str, args) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    worker = [
        str(HERE),
        "--worker",
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--train-size",
        str(args.train_size),
    ]
    if mode == "plain":
        cmd = [sys.executable, *worker]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", mode[-1], *worker]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{proc.stderr[-3000:]}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT ") :])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--train-size", type=int, default=20000)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        out = measure(args.steps, args.warmup, args.train_size)
        if out is not None:
            print("RESULT " + json.dumps(out), flush=True)
        return
    modes = ("plain", "ddp1", "ddp2")
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    loads = []
    start = time.time()
    for r in range(args.repeats):
        for mode in modes:
            loads.append(os.getloadavg()[0])
            runs[mode].append(run_mode(mode, args))
            print(f"repeat {r + 1}/{args.repeats} {mode}: {runs[mode][-1]}", flush=True)
    summary = {}
    for mode, rs in runs.items():
        wall = [x["wall_s_per_step"] for x in rs]
        cpu = [x["cpu_s_per_step"] for x in rs]
        summary[mode] = {
            "steps_per_s_wall": [1 / w for w in wall],
            "cpu_s_per_step": cpu,
            "median_steps_per_s_wall": 1 / statistics.median(wall),
            "median_cpu_s_per_step": statistics.median(cpu),
        }
    # paired per repeat (the runs of one repeat are adjacent in time): ratios are robust to slow load drift
    ratio = lambda a, b, key: [x[key] / y[key] for x, y in zip(runs[a], runs[b])]  # noqa: E731
    result = {
        "command": "OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python benchmarks/dist_scaling.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()} {os.cpu_count()} CPU cores (shared), torch threads 1 per process",
        "load_average_1min": {"min": min(loads), "median": statistics.median(loads), "max": max(loads)},
        "wall_time_s": time.time() - start,
        "settings": vars(args),
        "summary": summary,
        "runs": runs,
        "ddp1_over_plain_cpu_per_step": ratio("ddp1", "plain", "cpu_s_per_step"),
        "ddp1_over_plain_wall_per_step": ratio("ddp1", "plain", "wall_s_per_step"),
        "ddp2_over_plain_cpu_per_step": ratio("ddp2", "plain", "cpu_s_per_step"),
        "plain_over_ddp2_wall_per_step": ratio("plain", "ddp2", "wall_s_per_step"),
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    med = lambda xs: statistics.median(xs)  # noqa: E731
    print(f"\nload average (1 min) during the runs: {result['load_average_1min']}")
    print("| mode | global steps/s (wall, median) | CPU s per global step (all ranks, median) |")
    print("|---|---|---|")
    for mode in modes:
        s = summary[mode]
        print(f"| {mode} | {s['median_steps_per_s_wall']:.2f} | {s['median_cpu_s_per_step']:.4f} |")
    print(
        f"ddp1 / plain CPU per step (paired median): {med(result['ddp1_over_plain_cpu_per_step']):.3f}; "
        f"wall: {med(result['ddp1_over_plain_wall_per_step']):.3f}"
    )
    print(
        f"2-rank speed-up (wall, paired median): {med(result['plain_over_ddp2_wall_per_step']):.2f}x; "
        f"CPU per step 2 ranks / plain: {med(result['ddp2_over_plain_cpu_per_step']):.3f}"
    )
    print(f"written: {RESULTS}")


if __name__ == "__main__":
    main()
