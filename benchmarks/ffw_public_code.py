"""FFW beside the public code: the authors' gating search and debiaskit's on the same frozen model and data.

The public code (github: renahon/debiasing_surgeon_ffw, commit 22e824b) is NOT part of debiaskit and is never
copied into this repository: bring it into a scratch folder outside the repository and pass its path::

    # the public code in a clone of the authors' repository (renahon/debiasing_surgeon_ffw), e.g. ../ffw-public
    python benchmarks/ffw_public_code.py --public ../ffw-public \\
        --run runs/bench/vanilla/biased-mnist-rho0.99-seed0 --epochs 12 --out runs/ffw-public

What it does: builds the authors' objects around *our* frozen model (debiaskit's simple-conv-small has the
same module names as their SimpleConvNet: ``extracter``, ``avgpool``, ``fc``) and our D^u_train / D^u_val,
runs their ``train_gating_weights_based_on_MI_double`` for ``--epochs`` epochs, turns their gating weights into
masks (``m >= 0`` kept, their ``prune_based_on_gating_weights`` rule) and scores the masked model with
debiaskit's audit and stronger probes; then (unless ``--skip-ours``) runs debiaskit's FFW for the same number
of epochs and scores it the same way. Output: ``OUT/public_vs_ours.json`` and ``OUT/public_vs_ours.md``.

Changes needed to run the public code here (applied at run time by this script; their files are not edited):

1. ``wandb`` (imported at module level, training_functions.py:13) and ``tqdm`` (gating_weights.py:14,
   training_functions.py:12) are not installed: stubbed (``args.wandb = 0`` already disables logging).
2. ``torchvision`` (models.py:13, dataloaders.py:12) is not available: models.py and dataloaders.py are not
   imported; the objects they build are built here with the same settings (models.py:62-90: the ``avgpool``
   wrapped in ``Sequential(avgpool, Identity)`` for the hooks, privacy head ``Linear(128, 10)``, ``MI``,
   SGD lr_priv 0.1 / momentum 0.9 / wd 1e-4; criterion ``CrossEntropyLoss``) and the data loaders yield
   ``(x, [y, b])`` from debiaskit's splits (their label layout: ``labels[0]`` target, ``labels[1]`` bias).
3. ``main.py`` is not run (it trains or loads its own vanilla model and then crashes in the final
   evaluation, see below); its gating call (main.py:94-98) is made directly, with ``args.max_gate_epochs``
   set to ``--epochs`` (their default is 200).
4. Their per-epoch evaluation loops over every loader in ``dls``: we pass D^u_train, D^u_val and the D^u test
   part (2,000 samples) as "unbiased_test", not the 50k biased training set (their main.py:51-55 passes it
   too; it is only reported), to keep the CPU cost bounded. Final numbers come from debiaskit's audit on the
   official test digits.
5. With ``--fix-eval`` (default), the one-line evaluation bug is fixed in memory before the module is
   executed: training_functions.py:180 ``labels[i]`` -> ``labels[1 + i]`` (their ``run_model`` scores the
   privacy head against the *target*). ``--no-fix-eval`` runs the code exactly as published.
6. Pickled gating weights (gating_weights.py:296) and the privacy head (training_functions.py:36) are written
   under ``OUT/public-files`` (their ``args.datapath``); nothing is read back from pickles.

Defects confirmed by running it (file:line at commit 22e824b):

- training_functions.py:180: ``run_model`` reads ``labels[i]`` (the target) as the bias label, while training
  uses ``labels[1 + i]`` (gating_weights.py:451, training_functions.py:302). Its MI and "private accuracy" on
  every evaluation are computed against the target: they drive the temperature schedule
  (gating_weights.py:236-245) and the choice of the best intermediate mask (gating_weights.py:340-355).
- training_functions.py:420: ``evaluate_pruned_model`` reads ``args.PH1``, which is never set: the final
  evaluation of main.py:98-105 crashes with AttributeError. Next failures on that path:
  training_functions.py:451-458 passes ``PH_optimizer_for_pruned_model`` where ``run_model`` expects the data
  loader; training_functions.py:468-480 calls ``evaluate_pruned_model`` with four positional arguments for
  three parameters; training_functions.py:420 hooks ``pruned_model.extracter`` (the conv stack) instead of
  ``avgpool`` for Biased MNIST (the bottleneck used everywhere else, gating_weights.py:110).
- main.py:88-92: when gating weights are loaded from disk, ``best_intermediate_gating_weights`` is never
  defined and main.py:103 raises NameError; the weights are loaded with ``pickle`` (arbitrary code on load).
- gating_weights.py:145-149 + tools.py:68-80: tau is multiplied by 0.1 (paper: 0.5) only after more than 5
  epochs (``count > patience``) without a 5 % relative improvement of that (mis-labelled) MI, and the search
  stops only below tau = 1e-8 (or at 200 epochs): on our model it stays at tau = 1 for tens of epochs, where
  the hard mask (``m >= 0``) has nothing in common with the soft model it trains.
- gating_weights.py:127: Adam with default lr 1e-3 and weight decay 1e-4 on the gating parameters: the decay
  pulls every gate towards m = 0, the pruning threshold itself.
- tools.py:184-210: ``get_sparsity`` counts every ``.weight`` including the head ``fc``, and
  gating_weights.py:40-50 gates ``fc`` too; the paper's text speaks of the encoder only.
- models.py:36-38 vs the paper: the privacy head is ``Linear(num_features, num_classes)`` - right for Biased
  MNIST only because there are as many bias classes as target classes.
"""

from __future__ import annotations

import argparse
import copy
import importlib.machinery
import importlib.util
import json
import sys
import time
import types
from pathlib import Path

import torch
from torch import nn


def _stub_modules() -> None:
    """Change 1: wandb and tqdm are not installed here."""
    wandb = types.ModuleType("wandb")
    wandb.__spec__ = importlib.machinery.ModuleSpec("wandb", None)  # torch probes optional modules by spec
    wandb.log = lambda *a, **k: None
    wandb.init = lambda *a, **k: None
    sys.modules.setdefault("wandb", wandb)

    class _Bar:
        def __init__(self, it=None, *a, **k):
            self.it = it

        def __iter__(self):
            return iter(self.it)

        def set_postfix(self, *a, **k):
            pass

    tqdm = types.ModuleType("tqdm")
    tqdm.__spec__ = importlib.machinery.ModuleSpec("tqdm", None)
    tqdm.tqdm = _Bar
    sys.modules.setdefault("tqdm", tqdm)


def _load_public(path: Path, *, fix_eval: bool):
    """Import the public modules from ``path``; change 5 patches training_functions.py:180 in memory."""
    sys.path.insert(0, str(path))
    source = (path / "training_functions.py").read_text()
    buggy = "private_labels = [labels[i].to(device) for i in range(args.nb_bias)]"
    if source.count(buggy) != 1:
        raise SystemExit(f"{path}/training_functions.py is not the expected version (commit 22e824b)")
    if fix_eval:
        source = source.replace(buggy, "private_labels = [labels[1 + i].to(device) for i in range(args.nb_bias)]")
    spec = importlib.util.spec_from_loader(
        "training_functions", loader=None, origin=str(path / "training_functions.py")
    )
    module = importlib.util.module_from_spec(spec)
    module.__file__ = str(path / "training_functions.py")
    sys.modules["training_functions"] = module
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    import gating_weights  # noqa: E402  (imports training_functions from sys.modules)
    import irene.core  # noqa: E402

    return module, gating_weights, irene.core


class _Loader:
    """Their batches: ``(x, [y, b])``."""

    def __init__(self, data, *, batch_size: int, shuffle: bool, seed: int) -> None:
        from debiaskit.data import iterate_batches

        self.data, self.batch_size, self.shuffle, self.seed, self.epoch = data, batch_size, shuffle, seed, 0
        self._iterate = iterate_batches

    def __len__(self) -> int:
        return (len(self.data) + self.batch_size - 1) // self.batch_size

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        self.epoch += 1
        for batch in self._iterate(self.data, batch_size=self.batch_size, shuffle=self.shuffle, generator=gen):
            yield batch.x, [batch.y, batch.b]


def run_public(public: Path, run_dir: Path, *, epochs: int, out: Path, fix_eval: bool, seed: int) -> dict:
    from debiaskit.ffw import apply_unstructured_masks
    from debiaskit.runs import load_run

    _stub_modules()
    tf, gw, core = _load_public(public, fix_eval=fix_eval)
    torch.manual_seed(seed)
    run = load_run(run_dir)
    splits = run.splits()
    model = copy.deepcopy(run.model)
    model.avgpool = nn.Sequential(model.avgpool, nn.Identity())  # models.py:62
    d, n_bias = model.fc.in_features, splits.unbiased_train.num_bias_classes
    args = argparse.Namespace(
        device=torch.device("cpu"),
        nb_bias=1,
        lr_priv=0.1,
        momentum_sgd=0.9,
        weight_decay=1e-4,
        gamma=10.0,
        alpha=1.0,
        batch_size=100,
        max_PH_epochs=200,
        PH_patience=5,
        max_gate_epochs=epochs,
        gate_patience=5,
        stopping_criterion="min_temperature",
        wandb=0,
        dataset="Bmnist",
        rho=0.99,
        seed=seed,
        ver="ECCV24",
        datapath=str(out / "public-files"),
        criterion=nn.CrossEntropyLoss(reduction="mean"),
    )
    (out / "public-files").mkdir(parents=True, exist_ok=True)
    placeholder = copy.deepcopy(model)
    args.PH = [core.Privacy_head(placeholder.avgpool, nn.Sequential(nn.Linear(d, n_bias)))]
    args.MI = [core.MI(device=args.device, privates=n_bias)]
    args.PH_optimizer = [torch.optim.SGD(args.PH[0].parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)]
    dls = {
        "unbiased_training": _Loader(splits.unbiased_train, batch_size=100, shuffle=True, seed=seed),
        "unbiased_validation": _Loader(splits.unbiased_val, batch_size=100, shuffle=False, seed=seed),
        "unbiased_test": _Loader(splits.unbiased_test, batch_size=100, shuffle=False, seed=seed),
    }
    own = {}  # the search's own privacy head on D^u_val after the last epoch
    original_run_model = gw.run_model

    def recording_run_model(model_, args_, PH, loader, device, prefix="", **kw):
        metrics = original_run_model(model_, args_, PH, loader, device=device, prefix=prefix, **kw)
        if prefix == "gated/unbiased_validation":
            own.update(
                task=float(metrics["top1"].avg) / 100,
                bias=float(metrics["private_acc"][0].avg) / 100,
                mi=float(metrics["MI_tot"][0].avg),
            )
        return metrics

    gw.run_model = recording_run_model
    temperatures = []
    original_step = gw.step_temperature

    def recording_step(policy, scheduler, value):
        temperature, flag = original_step(policy, scheduler, value)
        temperatures.append(temperature)
        return temperature, flag

    gw.step_temperature = recording_step
    model_aux = copy.deepcopy(model)
    start = time.perf_counter()
    tf.init_PH(args, model_aux, dls, False)
    final, best = gw.train_gating_weights_based_on_MI_double(model, args, dls, temp_sched_patience=args.gate_patience)
    wall = time.perf_counter() - start
    results = {
        "epochs": len(temperatures),
        "temperatures": temperatures,
        "search_s": wall,
        "own_head_val": own,
        "fix_eval": fix_eval,
    }
    for label, gates in (("final", final), ("best_intermediate", best)):
        if gates is None:
            results[label] = None
            continue
        masks = {f"{k}.weight": (v.detach() >= 0).to(torch.uint8) for k, v in gates.items()}
        pruned = apply_unstructured_masks(run.model, masks, copy_model=True).eval()
        results[label] = score(pruned, run, splits, seed=seed)
        results[label]["sparsity_with_head"] = sum(int((m == 0).sum()) for m in masks.values()) / sum(
            m.numel() for m in masks.values()
        )
    return results


def score(model: nn.Module, run, splits, *, seed: int) -> dict:
    """debiaskit's audit (official test digits) + stronger probes, and D^u_val task accuracy."""
    from debiaskit.audit import audit_model
    from debiaskit.ffw._run import probe_readings
    from debiaskit.models import collect_outputs

    audit = audit_model(
        model,
        test=splits.test,
        unbiased_train=splits.unbiased_train,
        unbiased_val=splits.unbiased_val,
        head=run.head,
        seed=seed,
        counterfactual=False,
    )
    val = collect_outputs(model, splits.unbiased_val, head=run.head)
    h = audit.headline()
    return {
        "val_task": float((val.logits.argmax(1) == val.y).float().mean()),
        "test_task": h["task_accuracy"],
        "worst_group": h["worst_group_accuracy"],
        "probes": {"audit": h["bias_extractability"], **probe_readings(model, splits, head=run.head, seed=seed)},
    }


def run_ours(run_dir: Path, *, epochs: int, seed: int, overrides: dict) -> dict:
    from debiaskit.ffw import find_fantastic_weights
    from debiaskit.runs import load_run

    run = load_run(run_dir)
    splits = run.splits()
    start = time.perf_counter()
    res = find_fantastic_weights(
        run.model,
        head=run.head,
        train=splits.unbiased_train,
        val=splits.unbiased_val,
        seed=seed,
        progress=False,
        no_harm=False,
        **{"max_epochs": epochs, **overrides},
    )
    wall = time.perf_counter() - start
    sel = res.selected
    out = {
        "epochs": len(res.history) - 1,
        "search_s": wall,
        "stop": res.stop_reason,
        "settings": overrides,
        "own_head_val": {"task": sel["val_hard"]["task"], "bias": sel["val_hard"]["bias"]},
        "selected": score(res.model, run, splits, seed=seed),
    }
    out["selected"]["sparsity"] = res.sparsity["overall"]
    return out


def markdown(rec: dict) -> str:
    def pct(v):
        return "-" if v is None else f"{100 * v:.1f}"

    rows = [
        "| search | epochs | search s | own head on D^u_val | D^u_val task | test task | worst group | "
        "bias: audit / sgd5 / MLP / converged linear |",
        "|---|---|---|---|---|---|---|---|",
    ]
    entries = [(f"public code, {k}", rec["public"], rec["public"].get(k)) for k in ("best_intermediate", "final")]
    entries += [(f"debiaskit {k}", r, r["selected"]) for k, r in rec.get("ours", {}).items()]
    for label, r, s in entries:
        if s is None:
            rows.append(f"| {label} | {r['epochs']} | {r['search_s']:.0f} | - | (no mask: tau never decayed) | | | |")
            continue
        p = s["probes"]
        rows.append(
            f"| {label} | {r['epochs']} | {r['search_s']:.0f} | {pct(r['own_head_val'].get('bias'))} | "
            f"{pct(s['val_task'])} | {pct(s['test_task'])} | {pct(s['worst_group'])} | "
            f"{pct(p['audit'])} / {pct(p['sgd5'])} / {pct(p['mlp'])} / {pct(p['linear'])} |"
        )
    return "\n".join(rows) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--public", type=Path, required=True, help="folder of the public FFW code (outside this repository)"
    )
    ap.add_argument("--run", type=Path, required=True, help="debiaskit run folder of a simple-conv-small vanilla model")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-fix-eval", action="store_true", help="run training_functions.py:180 as published")
    ap.add_argument("--skip-ours", action="store_true")
    ap.add_argument(
        "--ours",
        action="append",
        default=[],
        help='NAME=JSON settings of a debiaskit search (default: paper={"adversary": "head"} and default={})',
    )
    a = ap.parse_args()
    if not (a.public / "gating_weights.py").is_file():
        print(f"error: {a.public} does not hold the public FFW code (no gating_weights.py)", file=sys.stderr)
        raise SystemExit(2)
    torch.set_num_threads(1)
    a.out.mkdir(parents=True, exist_ok=True)
    rec = {"command": " ".join(sys.argv), "run": str(a.run), "epochs": a.epochs}
    rec["public"] = run_public(a.public, a.run, epochs=a.epochs, out=a.out, fix_eval=not a.no_fix_eval, seed=a.seed)
    if not a.skip_ours:
        settings = dict(s.split("=", 1) for s in a.ours) or {"paper": '{"adversary": "head"}', "default": "{}"}
        rec["ours"] = {
            k: run_ours(a.run, epochs=a.epochs, seed=a.seed, overrides=json.loads(v)) for k, v in settings.items()
        }
    (a.out / "public_vs_ours.json").write_text(json.dumps(rec, indent=1))
    (a.out / "public_vs_ours.md").write_text(markdown(rec))
    print(markdown(rec))


if __name__ == "__main__":
    main()
