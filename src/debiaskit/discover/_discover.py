"""Post-hoc discovery on a trained model: pseudo-bias labels, conflict scores and their quality."""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ..data import BiasDataset
from ..errors import DataError
from ..models import collect_outputs
from ..runs import atomic_folder, check_writable, load_run, write_json, write_text
from ._geometry import attractor_rule, class_centroids

DISCOVER_DIR = "discover"
PSEUDO_FILE = "pseudo_bias.safetensors"
SPLITS = ("train", "unbiased_train", "unbiased_val")


@dataclass
class Discovery:
    """Discovered pseudo-bias of one split (one entry per sample)."""

    pseudo_bias: Tensor      # int64: the attracting class b^
    conflict_score: Tensor   # float: > 0 when flagged as bias-conflicting
    confidence: Tensor       # float: normalised distance to the deciding hyperplane

    @property
    def conflicting(self) -> Tensor:
        return self.conflict_score > 0


@torch.no_grad()
def discover_pseudo_bias(model: nn.Module, *, train, others: dict[str, Any] | None = None, head: str | None = None,
                         device: str | torch.device = "cpu") -> dict[str, Discovery]:
    """Attractor rule with the centroids of the correctly classified samples of ``train``.

    Reads only images and targets (never bias labels). Returns ``{"train": Discovery, **others}``.

    Example::

        found = discover_pseudo_bias(model, train=splits.train, others={"unbiased_val": splits.unbiased_val})
        found["train"].conflicting.sum()
    """
    out_train = collect_outputs(model, _unlabelled(train), head=head, device=device)
    correct = out_train.logits.argmax(1) == out_train.y
    if not correct.any():
        raise DataError("the model classifies no training sample correctly; there are no attractors to discover")
    centroids, present = class_centroids(out_train.z, out_train.y, num_classes=out_train.logits.shape[1], mask=correct)
    found = {"train": _apply(out_train.z, out_train.y, centroids, present)}
    for name, data in (others or {}).items():
        o = collect_outputs(model, _unlabelled(data), head=head, device=device)
        found[name] = _apply(o.z, o.y, centroids, present)
    return found


def _unlabelled(data):
    return data.without_bias_labels() if isinstance(data, BiasDataset) else data


def _apply(z: Tensor, y: Tensor, centroids: Tensor, present: Tensor) -> Discovery:
    att = attractor_rule(z, y, centroids, present=present)
    return Discovery(att.pseudo_bias.long().cpu(), att.conflict_score.float().cpu(), att.confidence.float().cpu())


def discovery_quality(found: Discovery, data: BiasDataset, *, attribute: int = 0) -> dict[str, Any] | None:
    """Precision / recall / F1 of the conflict flags and accuracy of b^ against the TRUE bias labels.

    Only for reporting (never fed back into training or selection); None when the data has no labels.
    """
    if data.b is None or data.aligned is None:
        return None
    b = data.bias(attribute)
    conflicting = ~data.aligned_mask(attribute).bool()
    flag = found.conflicting
    tp = int((flag & conflicting).sum())
    n_flag, n_conf = int(flag.sum()), int(conflicting.sum())
    precision = tp / n_flag if n_flag else float("nan")
    recall = tp / n_conf if n_conf else float("nan")
    f1 = 2 * precision * recall / (precision + recall) if n_flag and n_conf and (precision + recall) > 0 else float("nan")
    hit = found.pseudo_bias == b
    return {"samples": len(b), "true_conflicting": n_conf, "flagged": n_flag, "true_positives": tp,
            "precision": precision, "recall": recall, "f1": f1,
            "pseudo_bias_accuracy": float(hit.float().mean()),
            "pseudo_bias_accuracy_conflicting": float(hit[conflicting].float().mean()) if n_conf else float("nan"),
            "pseudo_bias_accuracy_aligned": float(hit[~conflicting].float().mean()) if len(b) > n_conf else float("nan")}


def with_pseudo_bias(data: BiasDataset, pseudo_bias: Tensor, *, name: str | None = None) -> BiasDataset:
    """A copy of ``data`` whose bias labels are the discovered ``pseudo_bias`` (marked as such).

    ``info["pseudo_bias"] = True`` makes :func:`debiaskit.audit.audit_model` label its bias section
    "pseudo-labels"; ``aligned`` becomes ``b^ == y`` (the attractor of an aligned sample is its own class).

    Example::

        report = audit_model(model, test=with_pseudo_bias(splits.unbiased_val, found["unbiased_val"].pseudo_bias))
    """
    pseudo_bias = torch.as_tensor(pseudo_bias).long().cpu()
    if pseudo_bias.shape != (len(data),):
        raise DataError(f"pseudo_bias must have shape ({len(data)},), got {tuple(pseudo_bias.shape)}")
    out = data.subset(torch.arange(len(data)), name=name or f"{data.name} (pseudo-bias)")
    out.b, out.num_bias_classes, out.bias_names = pseudo_bias, data.num_classes, ("pseudo_bias",)
    out.aligned = pseudo_bias == data.y
    out.render = None  # re-rendering acts on the true bias attribute, not on b^
    out.info = {**data.info, "pseudo_bias": True}
    return out


def discover_run(run_dir: Path, *, force: bool = False, device: str = "cpu") -> tuple[Path, dict[str, Any]]:
    """``debiaskit discover``: write ``RUN_DIR/discover/`` (pseudo_bias.safetensors, report.json, report.md).

    Keys ``<split>.pseudo_bias`` (int64), ``<split>.conflict_score`` and ``<split>.confidence`` (float32)
    for split in train, unbiased_train, unbiased_val. True bias labels are read only for the report.
    """
    run_dir = Path(run_dir)
    target = run_dir / DISCOVER_DIR
    check_writable(target, force=force)
    run = load_run(run_dir)
    splits = run.splits()
    data = {name: getattr(splits, name) for name in SPLITS}
    found = discover_pseudo_bias(run.model, train=data["train"],
                                 others={k: v for k, v in data.items() if k != "train"}, head=run.head, device=device)
    tensors: dict[str, Tensor] = {}
    for name, f in found.items():
        tensors[f"{name}.pseudo_bias"] = f.pseudo_bias.long().contiguous()
        tensors[f"{name}.conflict_score"] = f.conflict_score.float().contiguous()
        tensors[f"{name}.confidence"] = f.confidence.float().contiguous()
    quality = {name: discovery_quality(found[name], data[name]) for name in SPLITS}
    report = {"run": str(run_dir), "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              "rule": "attractor: centroids of correctly classified training samples at the bottleneck "
                      f"(head {run.head!r}); b^ = nearest centroid; flagged when b^ != y",
              "training_dynamics": "not used: a run folder stores only the final weights",
              "true_labels_used_for": "this quality report only", "quality": quality,
              "flagged": {name: int(f.conflicting.sum()) for name, f in found.items()}}
    with atomic_folder(target, force=force) as staging:
        save_file(tensors, str(staging / PSEUDO_FILE))
        write_json(staging / "report.json", report)
        write_text(staging / "report.md", _markdown(report))
    return target, report


def _markdown(report: dict[str, Any]) -> str:
    lines = [f"# Pseudo-bias discovery for `{report['run']}`", "", f"Rule: {report['rule']}.  ",
             f"Training dynamics: {report['training_dynamics']}.  ",
             "Quality against the true bias labels (read for this report only):", "",
             "| split | samples | flagged | true conflicting | precision | recall | F1 | b^ accuracy | b^ acc. (conflicting) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, q in report["quality"].items():
        if q is None:
            lines.append(f"| {name} | - | {report['flagged'][name]} | no bias labels | - | - | - | - | - |")
            continue
        f = lambda v: "-" if v != v else f"{100 * v:.1f}"  # noqa: E731 (NaN -> '-')
        lines.append(f"| {name} | {q['samples']} | {q['flagged']} | {q['true_conflicting']} | {f(q['precision'])} | "
                     f"{f(q['recall'])} | {f(q['f1'])} | {f(q['pseudo_bias_accuracy'])} | "
                     f"{f(q['pseudo_bias_accuracy_conflicting'])} |")
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
