"""Post-hoc discovery on a trained model: pseudo-bias labels, conflict scores and their quality."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn

from .._io import atomic_folder, save_tensors, write_json, write_text
from .._validate import check_device
from ..data import BiasDataset, as_bias_data, relabel_bias
from ..errors import DataError, OutputError, RunExistsError
from ..runs import load_run
from ._dynamics import load_dynamics
from ._folders import DISCOVER_FOLDER
from ._geometry import attractor_rule, class_centroids
from ._layers import BOTTLENECK, candidate_layers, collect_layer_features

DISCOVER_DIR = "discover"
PSEUDO_FILE = "pseudo_bias.safetensors"
SPLITS = ("train", "unbiased_train", "unbiased_val")
WEAK_SCORE = 0.5  # below it a layer attracts its flagged samples weakly: not chosen by --layer auto, warned about
PERSIST_RATIO = 2.0  # --layer auto: a layer flagging more than this many times the next layer's flags is not chosen


@dataclass
class Discovery:
    """Discovered pseudo-bias of one split (one entry per sample).

    Example::

        found = discover_pseudo_bias(model, train=splits.train, head="fc")["train"]
        found.pseudo_bias, found.conflicting.sum()   # b^ per sample, the number flagged as bias-conflicting
    """

    pseudo_bias: Tensor  # int64: the attracting class b^
    conflict_score: Tensor  # float: > 0 when flagged as bias-conflicting
    confidence: Tensor  # float: normalised distance to the deciding hyperplane
    source: str = BOTTLENECK  # where the scores come from: a layer name, "bottleneck" or "dynamics"

    @property
    def conflicting(self) -> Tensor:
        return self.conflict_score > 0


@torch.no_grad()
def discover_pseudo_bias(
    model: nn.Module,
    *,
    train,
    others: dict[str, Any] | None = None,
    head: str | None = None,
    device: str | torch.device = "cpu",
    layer: str | None = None,
) -> dict[str, Discovery]:
    """Attractor rule with the centroids of the correctly classified samples of ``train``.

    ``layer``: where to read the features - ``None`` / ``"bottleneck"`` (the head's input), a module
    name (its output, spatially pooled), or ``"auto"`` (every candidate layer, picked by
    :func:`choose_layer`; the choice is in ``found["train"].source``). A model trained to convergence
    has memorised its conflicting training samples at the bottleneck; early layers still show them.
    Reads only images and targets (never bias labels). Returns ``{"train": Discovery, **others}``.

    Example::

        found = discover_pseudo_bias(model, train=splits.train, others={"unbiased_val": splits.unbiased_val},
                                     layer="auto")
        found["train"].conflicting.sum(), found["train"].source
    """
    found, _ = scan_layers(model, train=train, others=others, head=head, device=device, layer=layer)
    return found


def scan_layers(
    model: nn.Module,
    *,
    train,
    others: dict[str, Any] | None = None,
    head: str | None = None,
    device: str | torch.device = "cpu",
    layer: str | None = None,
    scan_samples: int = 10000,
    seed: int = 0,
) -> tuple[dict[str, Discovery], list[dict]]:
    """:func:`discover_pseudo_bias` plus the label-free statistics of the layers it tried (for reports).

    With ``layer="auto"`` the candidate layers are compared on a seeded random subset of at most
    ``scan_samples`` training samples (memory: N x the summed widths of all candidates), then the
    chosen layer is computed on every sample.
    """
    layer = layer or BOTTLENECK
    train = _unlabelled(train)
    scan: list[dict] = []
    full: tuple | None = None
    if layer == "auto":
        n = len(train)
        subset = (
            None
            if n <= scan_samples
            else torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:scan_samples]
        )
        feats, logits, y = collect_layer_features(
            model,
            train,
            layers=candidate_layers(model, head=head),
            head=head,
            device=device,
            indices=subset,
            strict=False,
        )
        for name, z in feats.items():
            scan.append({"layer": name, **_flag_stats(_attract(z, logits, y, source=name)[0], dim=z.shape[1])})
        chosen = choose_layer(scan)
        if subset is None:
            full = (feats[chosen], logits, y)
        for row in scan:
            row["chosen"] = row["layer"] == chosen
            row["samples"] = n if subset is None else len(subset)
    else:
        chosen = layer
    if full is None:
        feats, logits, y = collect_layer_features(model, train, layers=[chosen], head=head, device=device)
        full = (feats[chosen], logits, y)
    d_train, centroids, present = _attract(*full, source=chosen)
    if not scan:
        scan = [{"layer": chosen, **_flag_stats(d_train, dim=full[0].shape[1]), "chosen": True, "samples": len(train)}]
    found = {"train": d_train}
    for name, data in (others or {}).items():
        f, _, yo = collect_layer_features(model, _unlabelled(data), layers=[chosen], head=head, device=device)
        found[name] = _apply(f[chosen], yo, centroids, present, source=chosen)
    return found, scan


def _attract(z: Tensor, logits: Tensor, y: Tensor, *, source: str) -> tuple[Discovery, Tensor, Tensor]:
    """Centroids of the correctly classified samples and the attractor rule on the same samples."""
    correct = logits.argmax(1) == y
    if not correct.any():
        raise DataError("the model classifies no training sample correctly; there are no attractors to discover")
    centroids, present = class_centroids(z, y, num_classes=logits.shape[1], mask=correct)
    return _apply(z, y, centroids, present, source=source), centroids, present


def _flag_stats(found: Discovery, *, dim: int) -> dict[str, Any]:
    # mean score of the flagged samples: label-free strength of the attraction (near 1 = they sit at
    # the foreign centroid, near 0 = they straddle the hyperplanes: entangled features, weak evidence)
    score = found.conflict_score
    flags = score > 0
    return {
        "dim": int(dim),
        "flagged": int(flags.sum()),
        "flagged_share": float(flags.float().mean()),
        "mean_flagged_score": float(score[flags].mean()) if flags.any() else None,
    }


def choose_layer(
    scan: list[dict], *, max_share: float = 0.5, min_score: float = WEAK_SCORE, persist_ratio: float = PERSIST_RATIO
) -> str:
    """Label-free choice for ``layer="auto"``: the layer with the most training samples flagged, among
    those that flag a minority (< ``max_share``; a shortcut is by definition followed by most samples,
    so a layer that moves half the data out of its class cell is not class-structured yet), attract
    their flagged samples clearly (mean flagged score >= ``min_score``) and whose flags persist at the
    next layer (at most ``persist_ratio`` times as many flags as the next layer of the scan); the
    bottleneck when none does.

    Why the most flags: memorisation only ever pulls conflicting samples back into their own cell,
    so the number of flags falls with depth once the shortcut is encoded (Biased MNIST rho 0.99,
    simple-conv-small: 507, 506, 431, 0, 0 flags from the first ReLU to the bottleneck; 506 truly
    conflicting). Why the score: a layer whose features are not class-structured yet also moves
    *aligned* samples to a foreign centroid, but only just across a hyperplane - many flags, low mean
    score (a residual CNN's first block on a texture bias: 17 % of D^b flagged at mean score 0.45, F1
    0.10, against 0.56 at the bottleneck; an MLP on Colored MNIST: scores below 0.5 in every layer),
    while the conflicting samples of a clean shortcut sit at the foreign centroid (Biased MNIST: 0.94 at
    the first ReLU, F1 1.00). Why persistence: the score alone is a thin margin (the same residual CNN,
    seed 1: 23 % flagged at its first block at mean score 0.57, F1 0.07); the samples a shortcut pulls to
    the foreign class stay there over consecutive layers until they are memorised (Biased MNIST: 110,
    110, 96 flags of 10,000 over the first three layers), while flags of features that are not
    class-structured mostly vanish at the next layer (that CNN: 2,270 flags at block1, 187 at block2, 37
    at block3). The price: a layer right before the one that memorises is skipped (96 -> 0 above), so
    the earlier layers are the ones chosen. Ties go to the earlier layer.
    """

    def persists(i: int) -> bool:
        return i + 1 >= len(scan) or scan[i]["flagged"] <= persist_ratio * scan[i + 1]["flagged"]

    ok = [
        r
        for i, r in enumerate(scan)
        if r["flagged_share"] < max_share
        and r["flagged"] > 0
        and (r.get("mean_flagged_score") or 0.0) >= min_score
        and persists(i)
    ]
    if not ok:
        return scan[-1]["layer"]
    return max(ok, key=lambda r: r["flagged"])["layer"]  # max keeps the first (earliest) of equal counts


def _unlabelled(data):
    """The samples without their bias labels: discovery never reads them (any (x, y[, b]) dataset)."""
    return as_bias_data(data).without_bias_labels()


def _apply(z: Tensor, y: Tensor, centroids: Tensor, present: Tensor, *, source: str = BOTTLENECK) -> Discovery:
    att = attractor_rule(z, y, centroids, present=present)
    return Discovery(
        att.pseudo_bias.long().cpu(), att.conflict_score.float().cpu(), att.confidence.float().cpu(), source=source
    )


def discovery_quality(found: Discovery, data: BiasDataset, *, attribute: int = 0) -> dict[str, Any] | None:
    """Precision / recall / F1 of the conflict flags and accuracy of b^ against the TRUE bias labels.

    Only for reporting (never fed back into training or selection); None when the data has no labels.
    """
    data = as_bias_data(data)
    aligned = data.aligned_mask(attribute)
    if data.b is None or aligned is None:
        return None
    b = data.bias(attribute)
    conflicting = ~aligned.bool()
    flag = found.conflicting
    tp = int((flag & conflicting).sum())
    n_flag, n_conf = int(flag.sum()), int(conflicting.sum())
    precision = tp / n_flag if n_flag else float("nan")
    recall = tp / n_conf if n_conf else float("nan")
    f1 = (
        2 * precision * recall / (precision + recall)
        if n_flag and n_conf and (precision + recall) > 0
        else float("nan")
    )
    hit = found.pseudo_bias == b
    return {
        "samples": len(b),
        "true_conflicting": n_conf,
        "flagged": n_flag,
        "true_positives": tp,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "pseudo_bias_accuracy": float(hit.float().mean()),
        "pseudo_bias_accuracy_conflicting": float(hit[conflicting].float().mean()) if n_conf else float("nan"),
        "pseudo_bias_accuracy_aligned": float(hit[~conflicting].float().mean()) if len(b) > n_conf else float("nan"),
    }


def with_pseudo_bias(data, pseudo_bias: Tensor, *, name: str | None = None):
    """A copy of ``data`` whose bias labels are the discovered ``pseudo_bias`` (marked as such).

    ``info["pseudo_bias"] = True`` makes :func:`debiaskit.audit.audit_model` label its bias section
    "pseudo-labels"; ``aligned`` becomes ``b^ == y`` (the attractor of an aligned sample is its own class).

    Example::

        report = audit_model(model, test=with_pseudo_bias(splits.unbiased_val, found["unbiased_val"].pseudo_bias))
    """
    data = as_bias_data(data)
    pseudo_bias = torch.as_tensor(pseudo_bias).cpu()
    what = name or data.name
    if pseudo_bias.is_floating_point() or pseudo_bias.is_complex() or pseudo_bias.shape != (len(data),):
        raise DataError(
            f"pseudo-bias labels of {what} must be integer classes of shape ({len(data)},), got "
            f"{pseudo_bias.dtype} {tuple(pseudo_bias.shape)}; re-run `debiaskit discover`"
        )
    pseudo_bias = pseudo_bias.long()
    if len(pseudo_bias) and (int(pseudo_bias.min()) < 0 or int(pseudo_bias.max()) >= data.num_classes):
        raise DataError(
            f"pseudo-bias labels of {what} must be classes in [0, {data.num_classes - 1}] (the attracting "
            f"class), found [{int(pseudo_bias.min())}, {int(pseudo_bias.max())}]; re-run `debiaskit discover`"
        )
    # aligned = b^ == y: the attractor of an aligned sample is its own class; re-rendering (counterfactuals)
    # acts on the true bias attribute, not on b^, so it is dropped
    return relabel_bias(
        data,
        pseudo_bias,
        num_bias_classes=data.num_classes,
        bias_names=("pseudo_bias",),
        aligned=pseudo_bias == data.y,
        info={**data.info, "pseudo_bias": True},
        name=name or f"{data.name} (pseudo-bias)",
    )


def discover_from_dynamics(dynamics: dict[str, Tensor], y: Tensor, *, num_classes: int) -> Discovery:
    """Pseudo-bias of the TRAINING samples from recorded training dynamics (``--record-dynamics``).

    Each visit of a sample during training recorded its attractor (the nearest running centroid of
    correctly classified samples at the bottleneck), before memorisation pulled it back into its class.
    Rule: count the visits at which a sample was pulled to a foreign class; split the counts into two
    populations with Otsu's threshold t >= 1 on their histogram (label-free; "rarely" vs "repeatedly"
    pulled away, the split point depends on how fast the run fits its data); flagged when count >= t,
    b^ = the most frequent foreign attractor (y otherwise), conflict score = (count - t + 1/2) / epochs.
    Reads targets and the dynamics only.

    Example::

        from debiaskit.discover import load_dynamics
        found = discover_from_dynamics(load_dynamics(run_dir), splits.train.y, num_classes=10)
    """
    att = dynamics["attractor"].long()
    y = torch.as_tensor(y).long().cpu()
    if att.ndim != 2 or att.shape[1] != len(y):
        raise DataError(
            f"dynamics cover {tuple(att.shape)} (epochs, samples) but the training set has {len(y)} samples"
        )
    epochs = att.shape[0]
    votes = torch.zeros(len(y), num_classes)
    for e in range(epochs):
        ok = att[e] >= 0
        votes[ok] += F.one_hot(att[e, ok], num_classes).float()
    votes.scatter_(1, y[:, None], 0.0)  # keep foreign attractions only
    away = votes.sum(1)
    t = otsu_threshold(away.long(), max_value=epochs)
    flagged = away >= t
    pseudo = torch.where(flagged, votes.argmax(1), y)
    score = (away - t + 0.5) / epochs
    return Discovery(pseudo.long(), score.float(), score.abs().float(), source="dynamics")


def otsu_threshold(counts: Tensor, *, max_value: int) -> int:
    """Integer t >= 1 maximising the between-class variance of {counts < t} vs {counts >= t} (Otsu)."""
    hist = torch.bincount(counts.clamp(0, max_value), minlength=max_value + 1).double()
    values = torch.arange(max_value + 1, dtype=torch.double)
    best, best_t = -1.0, 1
    for t in range(1, max_value + 1):
        w0, w1 = hist[:t].sum(), hist[t:].sum()
        if w0 == 0 or w1 == 0:
            continue
        m0, m1 = (hist[:t] * values[:t]).sum() / w0, (hist[t:] * values[t:]).sum() / w1
        between = float(w0 * w1 * (m0 - m1) ** 2)
        if between > best:
            best, best_t = between, t
    return best_t


NO_OUT = (
    "clear that path or copy the run folder elsewhere (discover has no --out: it always writes "
    "RUN_DIR/discover, where `debiaskit ffw --bias-labels discovered` reads the labels)"
)


@contextmanager
def _discover_folder(target: Path, *, force: bool, pinned: tuple = ()) -> Iterator[Path]:
    """``atomic_folder`` for RUN_DIR/discover. Its refusals advise "choose another --out", an option discover does
    not have on purpose: the folder's place is fixed so that `ffw --bias-labels discovered` finds it; they are
    reworded to what the user can do instead."""
    try:
        with atomic_folder(target, kind=DISCOVER_FOLDER, force=force, pinned=pinned) as staging:
            yield staging
    except (OutputError, RunExistsError) as exc:
        if "--out" not in str(exc):
            raise
        text = str(exc).replace("Choose another --out", NO_OUT[0].upper() + NO_OUT[1:])
        text = text.replace("choose another --out", NO_OUT).replace("--out ", "")
        raise type(exc)(text) from exc


def discover_run(
    run_dir: Path,
    *,
    force: bool = False,
    device: str = "cpu",
    layer: str | None = "auto",
    dynamics: str = "auto",
    splits=None,
    model=None,
    trust_code: bool = False,
) -> tuple[Path, dict[str, Any]]:
    """``debiaskit discover``: write ``RUN_DIR/discover/`` (pseudo_bias.safetensors, report.json, report.md).

    Keys ``<split>.pseudo_bias`` (int64), ``<split>.conflict_score`` and ``<split>.confidence`` (float32)
    for split in train, unbiased_train, unbiased_val, from the attractor rule at ``layer`` (``"auto"``:
    see :func:`choose_layer`; ``None`` / ``"bottleneck"``: the head's input). ``dynamics``: ``"auto"``
    scores the training split from ``RUN_DIR/dynamics.safetensors`` as well when the run recorded it
    (keys ``train.dynamics.*``, a second row in the report); ``"use"`` makes those the ``train.*``
    labels (requires the file); ``"off"`` ignores it. True bias labels are read only for the report.
    ``splits`` / ``model``: for a run trained on data or a model given as Python objects, which its folder
    cannot rebuild (see :func:`debiaskit.runs.load_run`); ``trust_code``: import the user model of a run whose
    ``run.json`` is not signed with your key (see :func:`debiaskit.runs.load_run`).
    """
    if dynamics not in ("auto", "use", "off"):
        raise DataError(f"dynamics must be 'auto', 'use' or 'off', got {dynamics!r}")
    run_dir = Path(run_dir)
    target = run_dir / DISCOVER_DIR
    check_device(device)
    run = load_run(run_dir, splits=splits, model=model, trust_code=trust_code)
    with _discover_folder(target, force=force, pinned=(run.identity,)) as staging:  # before any compute
        dyn = None if dynamics == "off" else load_dynamics(run_dir)
        if dynamics == "use" and dyn is None:
            raise DataError(f"{run_dir} has no dynamics.safetensors; train it with `debiaskit train --record-dynamics`")
        splits = run.splits()
        data = {name: getattr(splits, name) for name in SPLITS}
        found, scan = scan_layers(
            run.model,
            train=data["train"],
            others={k: v for k, v in data.items() if k != "train"},
            head=run.head,
            device=device,
            layer=layer,
        )
        extra: dict[str, Discovery] = {}
        if dyn is not None:
            by_dynamics = discover_from_dynamics(dyn, data["train"].y, num_classes=splits.num_classes)
            if dynamics == "use":
                extra["train.geometry"], found["train"] = found["train"], by_dynamics
            else:
                extra["train.dynamics"] = by_dynamics
        tensors: dict[str, Tensor] = {}
        for name, f in {**found, **extra}.items():
            tensors[f"{name}.pseudo_bias"] = f.pseudo_bias.long().contiguous()
            tensors[f"{name}.conflict_score"] = f.conflict_score.float().contiguous()
            tensors[f"{name}.confidence"] = f.confidence.float().contiguous()
        quality = {name: discovery_quality(found[name], data[name]) for name in SPLITS}
        quality.update({name: discovery_quality(f, data["train"]) for name, f in extra.items()})
        chosen = found["unbiased_val"].source
        report = {
            "kind": "discover",
            "run": str(run_dir),
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "rule": "attractor: centroids of correctly classified training samples at layer "
            f"{chosen!r} (head {run.head!r}; spatially pooled); b^ = nearest centroid; flagged when b^ != y",
            "layer": {
                "requested": layer or BOTTLENECK,
                "chosen": chosen,
                "scan": scan,
                "selection": "label-free: most training samples flagged among layers flagging a minority with mean flagged score "
                f">= {WEAK_SCORE} and at most {PERSIST_RATIO:g}x the next layer's flags (else the bottleneck)"
                if layer == "auto"
                else "given",
            },
            "training_dynamics": _dynamics_note(dyn, dynamics),
            "sources": {name: f.source for name, f in {**found, **extra}.items()},
            "true_labels_used_for": "this quality report only",
            "quality": quality,
            "flagged": {name: int(f.conflicting.sum()) for name, f in {**found, **extra}.items()},
        }
        save_tensors(staging / PSEUDO_FILE, tensors)
        write_json(staging / "report.json", report)
        write_text(staging / "report.md", _markdown(report))
    return target, report


def _dynamics_note(dyn, mode: str) -> str:
    if mode == "off":
        return "not used (--dynamics off)"
    if dyn is None:
        return "not recorded (train with --record-dynamics to add a dynamics-based row for the training split)"
    how = "train.* labels" if mode == "use" else "extra row train.dynamics (train.* stay geometric)"
    return f"used: {dyn['attractor'].shape[0]} epochs of per-visit attractors -> {how}"


def _markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Pseudo-bias discovery for `{report['run']}`",
        "",
        f"Rule: {report['rule']}.  ",
        f"Layer: {report['layer']['chosen']} ({report['layer']['selection']}).  ",
        f"Training dynamics: {report['training_dynamics']}.  ",
        "Quality against the true bias labels (read for this report only):",
        "",
        "| split | source | samples | flagged | true conflicting | precision | recall | F1 | b^ accuracy | b^ acc. (conflicting) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, q in report["quality"].items():
        src = report["sources"].get(name, "")
        if q is None:
            lines.append(f"| {name} | {src} | - | {report['flagged'][name]} | no bias labels | - | - | - | - | - |")
            continue
        f = lambda v: "-" if v is None or v != v else f"{100 * v:.1f}"  # noqa: E731 (NaN / null -> '-')
        lines.append(
            f"| {name} | {src} | {q['samples']} | {q['flagged']} | {q['true_conflicting']} | {f(q['precision'])} | "
            f"{f(q['recall'])} | {f(q['f1'])} | {f(q['pseudo_bias_accuracy'])} | "
            f"{f(q['pseudo_bias_accuracy_conflicting'])} |"
        )
    lines += [
        "",
        f"Layer scan (label-free, on {report['layer']['scan'][0].get('samples', '?')} training samples: flagged per "
        "candidate layer; mean score of the flagged "
        "samples: 1 = at the foreign centroid, near 0 = on the hyperplanes, weak evidence):",
        "",
        "| layer | features | flagged | share | mean flagged score | chosen |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["layer"]["scan"]:
        m = r.get("mean_flagged_score")
        lines.append(
            f"| {r['layer']} | {r['dim']} | {r['flagged']} | {100 * r['flagged_share']:.2f}% | "
            f"{'-' if m is None else f'{m:.2f}'} | {'yes' if r['chosen'] else ''} |"
        )
    weak = [
        r
        for r in report["layer"]["scan"]
        if r["chosen"] and r["flagged"] and (r.get("mean_flagged_score") or 0) < WEAK_SCORE
    ]
    if weak:
        lines += [
            "",
            f"Warning: the flagged samples of the chosen layer have a mean score below {WEAK_SCORE}: the "
            "classes' centroids do not attract them clearly (entangled features); treat the flags as "
            "low-precision candidates.",
        ]
    return "\n".join(lines) + "\n"


def load_pseudo_bias(run_dir: Path, split: str) -> Tensor:
    """The discovered pseudo-bias labels of ``split`` from ``RUN_DIR/discover`` (for FFW, the audit, ...)."""
    path = Path(run_dir) / DISCOVER_DIR / PSEUDO_FILE
    if not path.is_file():
        raise DataError(f"{path} does not exist; run `debiaskit discover {run_dir}` first")
    tensors = load_file(str(path))
    key = f"{split}.pseudo_bias"
    if key not in tensors:
        raise DataError(f"{path} has no {key!r}; available: {', '.join(sorted(tensors))}")
    return tensors[key]
