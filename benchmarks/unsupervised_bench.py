"""Benchmark of the label-free methods (CALM, VCBA-style, JTT, LfF) against vanilla on Biased MNIST.

Resumable: each cell writes ``ROOT/<tag>/<dataset>-rho<rho>-seed<seed>/result.json`` and is skipped when it
exists. Cells run one after another in priority order (one process, one thread). True bias labels are
used ONLY after training, for evaluation and for the discovery-quality diagnostics; every method receives
``splits.train.without_bias_labels()``.

    OMP_NUM_THREADS=1 DEBIASKIT_DATA=data-cache .venv/bin/python benchmarks/unsupervised_bench.py --plan final
    .venv/bin/python benchmarks/unsupervised_bench.py --summary-only
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from debiaskit.audit import group_metrics
from debiaskit.data import make_splits
from debiaskit.methods import build_method
from debiaskit.methods.calm import CALM
from debiaskit.models import build_model, collect_outputs
from debiaskit.runs import is_finished, load_run, read_json, save_weights, write_json, write_text
from debiaskit.train import TrainConfig, fit

ROOT = Path("runs/bench/unsup")
VANILLA = Path("/work/main/runs/bench/vanilla")
MODEL = "simple-conv-small"


def cell(method, rho, seed, *, epochs=10, tag=None, dataset="biased-mnist", train_size=None, **overrides):
    return {"method": method, "rho": rho, "seed": seed, "epochs": epochs, "dataset": dataset,
            "tag": tag or method, "train_size": train_size, "overrides": overrides}


def plan(name: str) -> list[dict]:
    if name == "final":
        c = [cell("calm", 0.999, s) for s in (0, 1, 2)]
        c += [cell("vcba", 0.999, 0, epochs=12), cell("jtt", 0.999, 0)]
        c += [cell("calm", 0.997, s) for s in (0, 1, 2)]
        c += [cell("lff", 0.999, 0), cell("calm", 0.999, 0, tag="calm-online-no-freeze", freeze=False)]
        c += [cell("vcba", 0.999, s, epochs=12) for s in (1, 2)] + [cell("jtt", 0.999, s) for s in (1, 2)]
        c += [cell("vcba", 0.997, 0, epochs=12), cell("jtt", 0.997, 0)]
        c += [cell("calm", 0.999, 0, tag="calm-no-logit-adjust", logit_adjust=False),
              cell("calm", 0.999, 0, tag="calm-no-reweight", reweight=False)]
        c += [cell("calm", r, s) for r in (0.995, 0.99) for s in (0, 1, 2)]
        c += [cell("lff", 0.999, s) for s in (1, 2)]
        return c
    if name == "smoke":
        return [cell("calm", 0.999, 0, epochs=3, tag="smoke-calm", train_size=3000, warmup_epochs=1),
                cell("vcba", 0.999, 0, epochs=2, tag="smoke-vcba", train_size=3000, stage1_epochs=1)]
    raise SystemExit(f"unknown plan {name}")


class TrackedCALM(CALM):
    """CALM plus bench-only diagnostics against the true labels (never fed back into the method)."""

    truth = None  # (y, b, aligned) of the training set, set by the bench

    def setup(self, ctx):
        super().setup(ctx)
        self._ctx, self.track = ctx, []

    def end_epoch(self, ctx):
        out = super().end_epoch(ctx)
        y, b, aligned = self.truth
        idx = self.train_index
        rec = {"epoch": ctx.epoch + 1, "online": _quality(self.last_pseudo[idx], self.last_score[idx] > 0, y[idx], b[idx], aligned[idx])}
        if self.pseudo is not None:
            rec["frozen"] = _quality(self.pseudo[idx], self.pseudo[idx] != y[idx], y[idx], b[idx], aligned[idx])
        self.track.append(rec)
        return out


def _quality(pseudo, flag, y, b, aligned):
    seen = pseudo >= 0
    pseudo, flag, b, conf = pseudo[seen], flag[seen], b[seen], ~aligned[seen]
    tp = int((flag & conf).sum())
    return {"flagged": int(flag.sum()), "true_conflicting": int(conf.sum()), "tp": tp,
            "precision": tp / max(int(flag.sum()), 1), "recall": tp / max(int(conf.sum()), 1),
            "b_acc": float((pseudo == b).float().mean()),
            "b_acc_conflicting": float((pseudo[conf] == b[conf]).float().mean()) if conf.any() else None}


def evaluate(model, test, head="fc") -> dict:
    out = collect_outputs(model, test, head=head, with_bottleneck=False)
    pred = out.logits.argmax(1)
    g = group_metrics(pred, out.y, out.b, num_classes=test.num_classes, num_bias=test.num_bias_classes,
                      aligned=test.aligned)
    return {"task": float((pred == out.y).float().mean()), "aligned": g.aligned_accuracy,
            "conflicting": g.conflicting_accuracy, "worst_group": g.worst_group_accuracy,
            "mean_group": g.mean_group_accuracy}


def run_cell(c: dict, root: Path, log) -> None:
    folder = root / c["tag"] / (f"{c['dataset']}-rho{c['rho']}-seed{c['seed']}"
                                + (f"-n{c['train_size']}" if c.get("train_size") else ""))
    if (folder / "result.json").is_file():
        return
    t0 = time.time()
    # = the vanilla runs' data (same seed, default unbiased_size) unless a train_size subset is asked for
    splits = make_splits(c["dataset"], params={"rho": c["rho"]}, seed=c["seed"], train_size=c.get("train_size"))
    method, cfg = build_method(c["method"], dataset=c["dataset"], **c["overrides"])
    if c["method"] == "calm":
        tracked = TrackedCALM(**cfg)
        tracked.truth = (splits.train.y, splits.train.b, splits.train.aligned)
        method = tracked
    torch.manual_seed(c["seed"])
    model = build_model(MODEL, num_classes=splits.num_classes, input_shape=splits.train.input_shape)
    result = fit(model, splits.train.without_bias_labels(), method=method, head="fc", progress=False,
                 config=TrainConfig(epochs=c["epochs"], seed=c["seed"]))
    res = {"cell": c, "config": cfg, "wall_time_s": result.wall_time_s, "history": result.history,
           "method_state": method.state(), "test": evaluate(result.model, splits.test)}
    if isinstance(method, TrackedCALM):
        res["discovery"] = method.track
        res["test_last_epoch"] = evaluate(method._ctx.model.eval(), splits.test)
        refit = copy.deepcopy(result.model)
        method._refit_head(refit, method._ctx)
        res["test_selected_plus_refit"] = evaluate(refit.eval(), splits.test)
    folder.mkdir(parents=True, exist_ok=True)
    save_weights(result.model, folder / "model.safetensors")
    write_json(folder / "result.json", res)
    log(f"{c['tag']} rho={c['rho']} seed={c['seed']}: task {res['test']['task']:.4f} "
        f"(train {result.wall_time_s:.0f}s, cell {time.time() - t0:.0f}s)")


def vanilla_result(rho: float, seed: int, cache: Path) -> dict | None:
    f = cache / f"biased-mnist-rho{rho}-seed{seed}.json"
    if f.is_file():
        return read_json(f)
    folder = VANILLA / f"biased-mnist-rho{rho}-seed{seed}"
    if not is_finished(folder):
        return None
    run = load_run(folder)
    res = {"test": evaluate(run.model, run.splits().test), "wall_time_s": run.meta["wall_time_s"]}
    write_json(f, res)
    return res


def summarise(root: Path) -> str:
    rows: dict[tuple, list[dict]] = {}
    for f in sorted(root.glob("*/*/result.json")):
        r = read_json(f)
        c = r["cell"]
        rows.setdefault((c["dataset"], c["rho"], c["tag"]), []).append(r)
    van = {}
    for rho in sorted({r for (ds, r, tag) in rows if ds == "biased-mnist" and not tag.startswith("smoke")}):
        for s in (0, 1, 2):
            v = vanilla_result(rho, s, root / "_vanilla")
            if v is not None:
                van.setdefault(rho, []).append((s, v))
    lines = ["| dataset | rho | method | seeds | unbiased test acc. | conflicting acc. | worst group | "
             "last epoch | sel.+refit | train time (s) | time / vanilla |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for rho in sorted({k[1] for k in rows} | set(van), reverse=True):
        vs = van.get(rho, [])
        vt = statistics.fmean(v["wall_time_s"] for _, v in vs) if vs else None
        if vs:
            lines.append(f"| biased-mnist | {rho} | vanilla (founder's runs) | {','.join(str(s) for s, _ in vs)} | "
                         f"{pm([v['test']['task'] for _, v in vs])} | {pm([v['test']['conflicting'] for _, v in vs])} | "
                         f"{pm([v['test']['worst_group'] for _, v in vs])} | - | - | {vt:.0f} | 1.00 |")
        for (ds, r, tag), rs in sorted(rows.items(), key=lambda kv: kv[0][2]):
            if r != rho:
                continue
            t = statistics.fmean(x["wall_time_s"] for x in rs)
            last = pm([x["test_last_epoch"]["task"] for x in rs]) if "test_last_epoch" in rs[0] else "-"
            refit = pm([x["test_selected_plus_refit"]["task"] for x in rs]) if "test_selected_plus_refit" in rs[0] else "-"
            ratio = f"{t / vt:.2f}" if vt else "-"
            lines.append(f"| {ds} | {r} | {tag} | {','.join(str(x['cell']['seed']) for x in rs)} | "
                         f"{pm([x['test']['task'] for x in rs])} | {pm([x['test']['conflicting'] for x in rs])} | "
                         f"{pm([x['test']['worst_group'] for x in rs])} | {last} | {refit} | {t:.0f} | {ratio} |")
    return "\n".join(lines) + "\n"


def pm(values) -> str:
    vals = [100 * v for v in values if v is not None]
    if not vals:
        return "-"
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{statistics.fmean(vals):.2f} +- {sd:.2f}"


def plot_discovery(root: Path, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    files = sorted(root.glob("calm*/*/result.json"))
    if not files:
        return
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for f in files:
        r = read_json(f)
        c, tr = r["cell"], r.get("discovery", [])
        label = f"{c['tag']} rho={c['rho']} s{c['seed']}"
        ep = [t["epoch"] for t in tr]
        for ax, key in zip(axes, ("precision", "recall", "b_acc_conflicting")):
            ax.plot(ep, [t["online"][key] if t["online"][key] is not None else float("nan") for t in tr], marker="o", label=label)
    for ax, title in zip(axes, ("precision of online conflict flags", "recall of online conflict flags",
                                "b^ accuracy on truly conflicting samples")):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylim(-0.02, 1.02)
    axes[-1].legend(fontsize=6)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--plan", default="final")
    p.add_argument("--root", type=Path, default=ROOT)
    p.add_argument("--summary-only", action="store_true")
    p.add_argument("--deadline", default=None, help="UTC HH:MM: start no cell after it")
    args = p.parse_args()
    torch.set_num_threads(1)

    def log(msg):
        print(time.strftime("%H:%M:%S", time.gmtime()), msg, flush=True)

    if not args.summary_only:
        for c in plan(args.plan):
            if args.deadline and time.strftime("%H:%M", time.gmtime()) >= args.deadline:
                log(f"deadline reached; not run: {json.dumps(c)}")
                continue
            try:
                run_cell(c, args.root, log)
            except Exception as exc:  # keep going: one broken cell must not stop the suite
                log(f"FAILED {c}: {exc!r}")
            write_text(args.root / "summary.md", summarise(args.root))
    write_text(args.root / "summary.md", summarise(args.root))
    plot_discovery(args.root, args.root / "discovery_over_time.png")
    print((args.root / "summary.md").read_text())


if __name__ == "__main__":
    sys.exit(main())
