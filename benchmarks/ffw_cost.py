"""Cost of `debiaskit ffw` against the vanilla training, in one process, with a per-part breakdown.

Trains the Biased MNIST cell (rho 0.99, simple-conv-small; default: the `bench dev` size, 5 epochs on 20,000 biased
training samples; `--epochs 6 --train-size 0`: `make demo`'s) as `debiaskit train` does (recording the model's
audit and probe readings in run.json), then runs FFW on it as `debiaskit ffw RUN` does (library defaults, strong
probes, the counterfactual audit) twice in the same process: on a copy of the run without the recorded readings
(computed, as before they were recorded) and on the run itself (reused). Prints the wall time of each part next to
the training's and checks that both FFW outputs hold the same numbers. Parts are timed by wrapping the functions
FFW calls (a part nested in another is included in it). Run with one thread and state the machine's load:

    OMP_NUM_THREADS=1 DEBIASKIT_DATA=... python benchmarks/ffw_cost.py --out /tmp/ffw-cost
    OMP_NUM_THREADS=1 DEBIASKIT_DATA=... python benchmarks/ffw_cost.py --out /tmp/ffw-cost-demo --epochs 6 --train-size 0
    OMP_NUM_THREADS=1 DEBIASKIT_DATA=... python benchmarks/ffw_cost.py --out runs/cost --epochs 10 --train-size 0 \
        --variant preset=fast

``--variant preset=fast`` (or any ffw_run keywords, ``--variant tune_epochs=4,tune_lr=0.004``) also times FFW
with those settings on the same run, readings reused. The results and the machine they were measured on:
BENCHMARKS.md, "Cost: the whole FFW call against the vanilla training".
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from collections import defaultdict
from pathlib import Path

import torch

import debiaskit.audit._audit as audit_mod
import debiaskit.ffw._run as run_mod
import debiaskit.ffw._search as search_mod
import debiaskit.train._run as train_mod
from debiaskit._io import json_safe
from debiaskit.ffw import ffw_run
from debiaskit.train import TrainConfig, train_run

TIMES: dict[str, float] = defaultdict(float)
CPU: dict[str, float] = defaultdict(float)  # this process's CPU seconds: far less sensitive to the machine's load
CALLS: dict[str, int] = defaultdict(int)


def wrap(owner, name: str, label: str) -> None:
    """Time every call of ``owner.name`` under ``label`` (a module function or a class method)."""
    fn = getattr(owner, name, None)
    if fn is None:
        return

    def timed(*args, **kwargs):
        start, cpu = time.perf_counter(), time.process_time()
        try:
            return fn(*args, **kwargs)
        finally:
            TIMES[label] += time.perf_counter() - start
            CPU[label] += time.process_time() - cpu
            CALLS[label] += 1

    setattr(owner, name, timed)


def instrument() -> None:
    wrap(train_mod, "fit", "0 training (fit)")
    wrap(run_mod, "vanilla_readings", "readings recorded at the end of training")
    wrap(run_mod, "_input_readings", "1 input model's audit + probes")
    wrap(run_mod, "readings_key", "  readings key (weight and data digests)")
    wrap(run_mod, "find_fantastic_weights", "2 find_fantastic_weights")
    wrap(search_mod._Search, "pretrain_heads", "  search: privacy heads' pre-training")
    wrap(search_mod._Search, "run_epoch", "  search: gate epochs")
    wrap(search_mod, "_finish", "  stages after the gates (_finish)")
    wrap(search_mod, "tune_kept_weights", "    weight tuning")
    wrap(search_mod, "_after_gates", "    eraser + head refit")
    wrap(search_mod, "_ungated_candidate", "    ungated candidate (compare_ungated)")
    wrap(search_mod, "audit_model", "3 after-audit")
    wrap(run_mod, "audit_model", "  audit_model in _run (input model, when computed)")
    wrap(audit_mod, "_collect", "  audits: forward passes")
    wrap(audit_mod, "probe_bias", "  audits: privacy head")
    wrap(audit_mod, "counterfactual_bias", "  audits: counterfactual")
    wrap(run_mod, "probe_readings", "4 strong probes (all calls)")
    wrap(run_mod, "_speed", "5 speed check")


def report(title: str, vanilla: tuple[float, float]) -> None:
    """Each part: wall s, x the training's wall; CPU s, x the training's CPU."""
    print(f"\n== {title}")
    for k in sorted(TIMES):
        print(
            f"{k:52s} wall {TIMES[k]:7.1f} s {TIMES[k] / vanilla[0]:6.3f}x   cpu {CPU[k]:7.1f} s "
            f"{CPU[k] / vanilla[1]:6.3f}x  ({CALLS[k]} call(s))"
        )
    TIMES.clear(), CPU.clear(), CALLS.clear()


def stages(info: dict) -> None:
    """The pipeline's own record of each stage: its wall time and D^u_val group mean after it."""
    for st in info["search"].get("stages", []):
        mean = st.get("val_group_mean")
        shown = "-" if mean is None else f"{100 * mean:.2f}"
        print(f"  stage {st['name']:8s} {st['wall_time_s']:6.1f} s  D^u_val group mean {shown}")


def timed_ffw(label: str, folder: Path, out: Path, vanilla: tuple[float, float], **overrides) -> dict:
    """Run FFW on ``folder`` as `debiaskit ffw` does, then print its parts and stages against the training's time;
    returns ffw.json's contents."""
    start, cpu = time.perf_counter(), time.process_time()
    info = ffw_run(folder, out=out, force=True, **overrides).info
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    report(
        f"ffw, {label}: wall {wall:.1f} s = {wall / vanilla[0]:.3f}x the training's, "
        f"cpu {cpu:.1f} s = {cpu / vanilla[1]:.3f}x",
        vanilla,
    )
    stages(info)
    return info


def _value(text: str):
    """A --variant value: JSON (4, 0.004, true) or else the text itself (fast)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def untimed(obj):
    if isinstance(obj, dict):
        return {k: untimed(v) for k, v in obj.items() if not k.endswith("time_s") and k != "inference"}
    if isinstance(obj, list):
        return [untimed(v) for v in obj]
    return obj


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--epochs", type=int, default=5, help="vanilla epochs (5: the bench dev cell; 6: make demo)")
    p.add_argument("--train-size", type=int, default=20000, help="biased training samples (0: all, as make demo)")
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="FIELD=VALUE[,FIELD=VALUE]",
        help="also time FFW with these ffw_run keywords (readings reused): --variant preset=fast, "
        "--variant tune_epochs=4,tune_lr=0.004",
    )
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    instrument()
    if args.out.exists():
        shutil.rmtree(args.out)
    run_dir, plain = args.out / "vanilla", args.out / "vanilla-plain"
    start = time.perf_counter()
    train_run(
        dataset="biased-mnist",
        params={"rho": 0.99},
        out=run_dir,
        model="simple-conv-small",
        config=TrainConfig(epochs=args.epochs, seed=0),
        train_size=args.train_size or None,
        progress=False,
        # what `debiaskit train` passes (its default); a debiaskit before readings: trained and run as it was
        **({"readings": run_mod.vanilla_readings} if hasattr(run_mod, "vanilla_readings") else {}),
    )
    command = time.perf_counter() - start
    recorded = json.loads((run_dir / "run.json").read_text())["wall_time_s"]
    vanilla = (TIMES["0 training (fit)"], CPU["0 training (fit)"])
    print(f"load before: {os.getloadavg()}")
    print(
        f"vanilla training wall_time_s (run.json): {recorded:.1f} s; fit: wall {vanilla[0]:.1f} s, cpu {vanilla[1]:.1f} s"
    )
    print(f"the train command (data, training, readings, writing): {command:.1f} s")
    report("train", vanilla)
    shutil.copytree(run_dir, plain)  # the same weights; its run.json without readings: FFW computes them
    record = json.loads((plain / "run.json").read_text())
    record.pop("readings", None)
    (plain / "run.json").write_text(json.dumps(record))
    infos = {}
    phases = (("computed", plain), ("reused", run_dir)) if hasattr(run_mod, "vanilla_readings") else (("main", plain),)
    for name, folder in phases:
        infos[name] = timed_ffw(f"input readings {name}", folder, args.out / f"ffw-{name}", vanilla)
    for spec in args.variant:
        overrides = {k: _value(v) for k, v in (item.split("=", 1) for item in spec.split(","))}
        timed_ffw(f"{spec}, input readings reused", run_dir, args.out / f"ffw-{spec}", vanilla, **overrides)
    if len(infos) < 2:
        return
    same = all(
        untimed(json_safe(infos["computed"][k])) == untimed(json_safe(infos["reused"][k]))
        for k in ("before", "after", "probes", "history", "search", "diagnosis", "parameters")
    )
    weights = [(args.out / f"ffw-{n}" / "model.safetensors").read_bytes() for n in ("computed", "reused")]
    print(f"\nsame FFW numbers and weights: {same and weights[0] == weights[1]}")
    print(f"before_readings: {infos['reused'].get('before_readings')}")
    print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
