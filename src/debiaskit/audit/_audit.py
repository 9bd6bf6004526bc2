"""The bias audit of any trained nn.Module with a named head."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .._dist import map_shards
from ..data import BiasDataset, as_bias_datasets, bias_strength, is_attribute_bias
from ..errors import DataError
from ..models import Outputs, collect_outputs, resolve_head
from ._metrics import GroupMetrics, group_metrics
from ._probe import probe_bias
from ._where import (
    PerClassProbe,
    PointProbe,
    majority_share,
    per_class_probe,
    point_probes,
    probe_points,
    spaced,
    tap_points,
    where_table,
)


@dataclass
class AttributeAudit:
    """Audit numbers for one bias attribute."""

    name: str
    groups: GroupMetrics
    bias_extractability: float | None = None
    bias_mutual_information: float | None = None
    privacy_head_val_accuracy: float | None = None
    counterfactual_bias: float | None = None
    pseudo_labels: bool = False  # True when the bias labels were discovered, not given
    num_bias_classes: int | None = None  # this attribute's own number of values (chance = 1 / it)
    # a protected attribute (y and b have different value sets: no aligned / conflicting): P(y = 1 | b) per
    # value and Cramer's V of (y, b) in the evaluation split (data.bias_strength)
    bias_strength: dict[str, Any] | None = None
    # where the bias is read (audit/_where.py): one linear probe at each block's / stage's output and at the
    # bottleneck (last), and probes fitted within each target class at the bottleneck (None: not measured)
    points: list[PointProbe] | None = None
    per_class: PerClassProbe | None = None


@dataclass
class AuditReport:
    """What :func:`audit_model` found: task accuracy, and per bias attribute its group metrics, bias
    extractability (privacy head), mutual information and counterfactual bias.

    Example::

        report = audit_model(model, test=splits.test, unbiased_train=splits.unbiased_train,
                             unbiased_val=splits.unbiased_val, head="fc")
        report.headline()["worst_group_accuracy"], report.attributes[0].bias_extractability
    """

    task_accuracy: float
    attributes: list[AttributeAudit]
    num_samples: int
    eval_split: str
    meta: dict[str, Any] = field(default_factory=dict)
    wall_time_s: float = 0.0
    majority_rate: float | None = None  # share of the evaluation split's most frequent target class
    # kept for plots, not serialised
    _z: Tensor | None = field(default=None, repr=False)
    _y: Tensor | None = field(default=None, repr=False)
    _pred: Tensor | None = field(default=None, repr=False)
    _b: Tensor | None = field(default=None, repr=False)
    # the outputs collected per split ("test", and "unbiased_train" / "unbiased_val" when probed): FFW's stronger
    # probes read the same bottleneck features instead of running the model again
    _outputs: dict[str, Outputs] = field(default_factory=dict, repr=False)

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if not k.startswith("_")}
        return out

    def below_majority(self) -> str | None:
        """The flag for a model that always answering the most frequent class would beat (None when it does not)."""
        if self.majority_rate is None or self.task_accuracy >= self.majority_rate:
            return None
        return below_majority_text(self.task_accuracy, self.majority_rate, split=f"the {self.eval_split} split")

    def headline(self) -> dict[str, Any]:
        """The main numbers, flat (for tables and benchmarks): those of the first bias attribute, except the
        worst group, which is the worst over every attribute's (target, bias) groups; with several attributes,
        ``per_attribute`` adds each one's conflicting accuracy, extractability and counterfactual bias."""
        a = self.attributes[0]
        out: dict[str, Any] = {
            "task_accuracy": self.task_accuracy,
            "aligned_accuracy": a.groups.aligned_accuracy,
            "conflicting_accuracy": a.groups.conflicting_accuracy,
            "worst_group_accuracy": a.groups.worst_group_accuracy,
            "mean_group_accuracy": a.groups.mean_group_accuracy,
            "bias_extractability": a.bias_extractability,
            "bias_mutual_information": a.bias_mutual_information,
            "counterfactual_bias": a.counterfactual_bias,
        }
        if len(self.attributes) > 1:
            out["worst_group_accuracy"] = min(x.groups.worst_group_accuracy for x in self.attributes)
            out["per_attribute"] = {
                x.name: {
                    "conflicting_accuracy": x.groups.conflicting_accuracy,
                    "bias_extractability": x.bias_extractability,
                    "counterfactual_bias": x.counterfactual_bias,
                }
                for x in self.attributes
            }
        if a.points is not None:  # where the first attribute's bias is read (FFW's report reads it before / after)
            out["where"] = where_table(a.points, a.per_class)
        return out


def below_majority_text(accuracy: float, majority: float, *, split: str) -> str:
    """The flag for an input model below the majority-class rate (the audit report's and FFW's, one wording)."""
    return (
        f"The input model is below the majority-class rate ({100 * accuracy:.1f} % vs {100 * majority:.1f} % on "
        f"{split}): always answering the most frequent class would do better. It has learnt little of the task; "
        "its bias numbers describe a model that does not work, and debiasing cannot add what it did not learn."
    )


@torch.no_grad()
def counterfactual_bias(
    model: nn.Module,
    dataset: BiasDataset,
    *,
    attribute: int = 0,
    max_samples: int = 2000,
    seed: int = 0,
    batch_size: int = 512,
    device="cpu",
) -> float:
    """FMD's counterfactual bias: mean |p_y(x) - p_y(x_cf)| over pairs that differ only in the bias
    attribute (x_cf = the same digit re-rendered with another, uniformly drawn, bias value)."""
    gen = torch.Generator().manual_seed(seed)
    n = min(len(dataset), max_samples)
    index = torch.randperm(len(dataset), generator=gen)[:n]
    b = dataset.draw_counterfactual_bias(index, generator=gen, attribute=attribute)
    was = model.training
    model.eval()
    total = 0.0
    for start in range(0, n, batch_size):
        idx = index[start : start + batch_size]
        y = dataset.y[idx].to(device)
        x = dataset.to_float(dataset.images[idx]).to(device)
        x_cf = dataset.counterfactual(idx, b[start : start + len(idx)]).to(device)
        p = model(x).softmax(1).gather(1, y[:, None])
        p_cf = model(x_cf).softmax(1).gather(1, y[:, None])
        total += float((p - p_cf).abs().sum())
    model.train(was)
    return total / n


def _collect(model: nn.Module, data, **kwargs) -> Outputs:
    """Outputs over ``data``; under torchrun each rank runs its share of the samples and the outputs
    (logits, bottleneck features, y, b) are all-gathered in dataset order, so every rank holds all of them."""
    return Outputs(*map_shards(len(data), lambda index: tuple(collect_outputs(model, data, indices=index, **kwargs))))


def _collect_points(
    model: nn.Module, data, points: list[str], *, head_name: str, seed: int = 0, **kwargs
) -> tuple[Outputs, dict[str, Tensor], dict[str, tuple[bool, int]]]:
    """:func:`_collect`, and the features at ``points`` read in the same forward passes (hooks on every point at
    once), gathered the same way: (outputs, features of the points that ran before the head in the order they ran,
    per point whether it was pooled and its width before any projection)."""
    seen: dict[str, Any] = {}

    def compute(index: Tensor) -> tuple:
        with tap_points(model, points, head=head_name, seed=seed) as taps:
            out = collect_outputs(model, data, indices=index, **kwargs)
        feats = taps.features(len(index))
        seen.update(order=taps.before_head(), read=taps.read)
        return (*out, *(feats.get(p) for p in points))

    rows = map_shards(len(data), compute)
    feats = {p: rows[4 + points.index(p)] for p in seen["order"] if rows[4 + points.index(p)] is not None}
    return Outputs(*rows[:4]), feats, seen["read"]


def audit_model(
    model: nn.Module,
    *,
    test,
    unbiased_train=None,
    unbiased_val=None,
    head: str | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    batch_size: int = 512,
    counterfactual: bool = True,
    eval_split: str = "test",
    probe_kwargs: dict | None = None,
    where: bool = True,
) -> AuditReport:
    """Audit ``model`` for bias.

    Task accuracy, target x bias group accuracies (both averaging conventions), aligned vs
    conflicting accuracy and worst group on ``test``; bias extractability = accuracy on ``test`` of a
    privacy head (Linear of the head's shape) trained on the bottleneck of ``unbiased_train`` with early
    stopping on ``unbiased_val``; counterfactual bias when the dataset can re-render samples.
    The datasets are any ``(x, y, b)`` datasets (the data contract, :class:`debiaskit.data.BiasData`).
    Under torchrun the forward passes are split across ranks and the bottleneck features gathered; the
    privacy head is then fitted on every rank from the same gathered features (same seed: the same head),
    so every rank returns the same report.
    ``where`` (with the unbiased sets): where the bias is read - one linear probe at the output of each block /
    stage before the head and at the bottleneck, read in the same forward passes, and probes fitted within each
    target class at the bottleneck (``AttributeAudit.points`` / ``per_class``; which points and how: the
    docstring of ``debiaskit/audit/_where.py``).

    Example::

        report = audit_model(model, test=splits.test, unbiased_train=splits.unbiased_train,
                             unbiased_val=splits.unbiased_val)
        report.headline()["bias_extractability"]
    """
    start = time.perf_counter()
    # the data contract: any (x, y, b) datasets, with common metadata (classes, bias classes) over the three
    test, unbiased_train, unbiased_val = as_bias_datasets(test, unbiased_train, unbiased_val)
    if test.b is None:
        raise DataError(f"{test.name} has no bias labels; discover pseudo-bias labels first (debiaskit discover)")
    probe = unbiased_train is not None and unbiased_val is not None
    kw: dict[str, Any] = dict(head=head, batch_size=batch_size, device=device)
    if probe and where:  # one pass per split reads the bottleneck and every point at once
        head_name = resolve_head(model, head)[0]
        points = spaced(probe_points(model, head_name))
        (out, f_test, read), (tr, f_tr, _), (va, f_va, _) = (
            _collect_points(model, d, points, head_name=head_name, seed=seed, **kw)
            for d in (test, unbiased_train, unbiased_val)
        )
    else:
        out = _collect(model, test, **kw)
        if probe:
            tr, va = _collect(model, unbiased_train, **kw), _collect(model, unbiased_val, **kw)
    pred = out.logits.argmax(1)
    if probe and (tr.b is None or va.b is None):
        raise DataError("the unbiased train/val sets need bias labels to train the privacy head")
    attributes = []
    n_attr = 1 if test.b.ndim == 1 else test.b.shape[1]
    for a in range(n_attr):
        name = test.bias_names[a] if a < len(test.bias_names) else f"bias{a}"
        b = test.bias(a)
        k = test.num_bias_classes_of(a)  # each attribute its own count: a binary one beside one with 5 values
        attribute = is_attribute_bias(test)  # aligned / conflicting only where y and b share their values
        groups = group_metrics(
            pred,
            out.y,
            b,
            num_classes=test.num_classes,
            num_bias=k,
            aligned=None if attribute else test.aligned_mask(a),
        )
        att = AttributeAudit(
            name=name, groups=groups, pseudo_labels=bool(test.info.get("pseudo_bias", False)), num_bias_classes=k
        )
        if attribute and test.num_classes == 2:
            att.bias_strength = bias_strength(out.y.numpy(), b.numpy(), num_bias=k)
        if probe:

            def col(t, a=a):
                return t if t.ndim == 1 else t[:, a]

            res = probe_bias(tr.z, col(tr.b), va.z, col(va.b), out.z, b, num_bias=k, seed=seed, **(probe_kwargs or {}))
            att.bias_extractability, att.bias_mutual_information = res.bias_extractability, res.mutual_information
            att.privacy_head_val_accuracy = res.val_accuracy
        if probe and where:
            bs = (col(tr.b), col(va.b), b)
            att.points = point_probes(f_tr, f_va, f_test, bs, bottleneck=(tr.z, va.z, out.z), num_bias=k, read=read)
            att.per_class = per_class_probe((tr.z, va.z, out.z), (tr.y, va.y, out.y), bs, num_bias=k)
        if counterfactual and test.render is not None:
            att.counterfactual_bias = counterfactual_bias(model, test, attribute=a, seed=seed, device=device)
        attributes.append(att)
    majority = majority_share(out.y)
    return AuditReport(
        task_accuracy=float((pred == out.y).float().mean()),
        attributes=attributes,
        num_samples=len(test),
        eval_split=eval_split,
        wall_time_s=time.perf_counter() - start,
        majority_rate=majority,
        _z=out.z,
        _y=out.y,
        _pred=pred,
        _b=test.bias(0),
        _outputs={"test": out, **({"unbiased_train": tr, "unbiased_val": va} if probe else {})},
    )
