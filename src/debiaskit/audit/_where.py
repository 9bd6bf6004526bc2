"""Where the bias is: one cheap linear probe at the output of each block / stage and at the bottleneck, and a
linear probe fitted within each target class.

Which points are read (:func:`probe_points`; forward hooks, so a model torch.fx cannot trace works too):

- in an ``nn.Sequential`` the children run in their order: each child that is a weight layer (a leaf module with
  parameters that is not a normalisation layer: a conv, a linear) starts a block, the parameter-free leaves and
  normalisation layers after it (BatchNorm, ReLU, pooling) belong to it, and the block's point is the output of its
  last child (``conv-bn-relu`` is read after the ReLU); a composite child is one point (a torchvision-style
  ``layer1`` .. ``layer4`` stage), unless it holds the head or is itself a flat ``Sequential``, which are read by
  the same rule inside; children after the head are not read;
- in any other module: each child that holds the head or is a flat ``Sequential`` (e.g. ``features``) is read by
  the rule above inside it; any other child with parameters, normalisation layers and the head aside, is one point
  (parameter-free children - pooling, flatten, activations - add nothing a probe of the point before them lacks);
  a module whose only point is one composite child (a wrapper around a backbone) is read inside that child;
- only points that run before the head in the forward pass are kept, at most ``MAX_POINTS`` (evenly spaced, the
  last always kept).

Each point's output is read as (N, d), as ``debiaskit.discover`` reads layers: an image map is global-average-pooled
((N, C, H, W) -> (N, C)), a token sequence (N, L, C) averaged over its tokens, anything else flattened; more than
``MAX_DIMS`` dimensions are projected to ``MAX_DIMS`` by a fixed Gaussian random projection (seeded; linear
readability is about kept).

The probe (:func:`ridge_probe`): a ridge-regularised least-squares linear read-out of the one-hot bias on
standardised features (closed form: one SVD, then every L2 strength of ``RIDGE_GRID`` for free), fitted on
D^u_train, its strength chosen on D^u_val, read on the evaluation split. One family at every point, so that the
rows of a table compare; its numbers need not equal the privacy head's or the converged logistic probe's.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models import pool_features
from ._probe import _standardise

MAX_POINTS = 8  # blocks / stages read at most (evenly spaced, the last always kept)
MAX_DIMS = 2048  # a point wider than this after pooling is randomly projected to it
RIDGE_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)  # L2 strength x number of samples, chosen on D^u_val
WHERE_MARGIN = 0.10  # a point reads the bias when its probe beats chance by more than 10 points
BOTTLENECK = "bottleneck"
HEAD = "\0head"  # the head's entry in PointTaps.fired (no module is named so)
PROBE_TEXT = (
    "ridge linear read-out (closed form, standardised features, L2 chosen on D^u_val), fitted on D^u_train, "
    "read on the evaluation split; maps global-average-pooled"
)
_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)


@dataclass
class PointProbe:
    """The bias read at one point of the network: a block's / stage's output, or the bottleneck (the head's input)."""

    point: str  # module name; "bottleneck" for the head's input
    dims: int  # features the probe reads (after pooling / projection)
    accuracy: float  # probe accuracy on the evaluation split
    chance: float  # the majority bias value's share of the evaluation split
    readable: bool  # accuracy > chance + WHERE_MARGIN
    pooled: bool = False  # a spatial map, global-average-pooled
    projected_from: int | None = None  # dims before the random projection (None: not projected)
    kind: str = "block"  # "block" (a block's / stage's output) or "bottleneck" (the head's input; a module may be
    # named "bottleneck" too: the kind tells them apart)


@dataclass
class ClassProbe:
    """The bias read within one target class by a probe fitted on that class's bottleneck features alone."""

    target: int
    accuracy: float
    chance: float  # the majority bias value's share of this class in the evaluation split
    samples: int  # evaluation samples of this class


@dataclass
class PerClassProbe:
    """Per-class probes at the bottleneck: their mean (every class weighted equally) and the class read most."""

    mean_accuracy: float
    mean_chance: float
    worst_class: int  # the class whose probe beats its chance by the most
    worst_accuracy: float
    worst_chance: float
    readable: bool  # mean_accuracy > mean_chance + WHERE_MARGIN, or the worst class beats its chance by that much
    classes: list[ClassProbe] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)  # classes with fewer than two bias values to fit on


def probe_points(model: nn.Module, head: str) -> list[str]:
    """The modules whose outputs are read, in module order (the rule: this module's docstring); the bottleneck is
    read apart. Points that do not run before the head are dropped later, when the forward pass is seen."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    points = _points_in(model, "", head)
    if len(points) == 1:  # a wrapper around one backbone: its own stages
        inner = _points_in(model.get_submodule(points[0]), points[0] + ".", head)
        points = inner if len(inner) > 1 else points
    return points


def _is_leaf(m: nn.Module) -> bool:
    return next(m.children(), None) is None


def _is_weight_layer(m: nn.Module) -> bool:
    return _is_leaf(m) and not isinstance(m, _NORMS) and any(True for _ in m.parameters(recurse=False))


def _flat_sequential(m: nn.Module) -> bool:
    return isinstance(m, nn.Sequential) and len(m) > 0 and all(_is_leaf(c) for c in m.children())


def _holds(name: str, head: str) -> bool:
    return head.startswith(name + ".")


def _points_in(module: nn.Module, prefix: str, head: str) -> list[str]:
    if isinstance(module, nn.Sequential):
        return _sequential_points(module, prefix, head)
    points = []
    for name, child in module.named_children():
        full = prefix + name
        if full == head or isinstance(child, _NORMS):
            continue
        if _holds(full, head) or _flat_sequential(child):
            points += _points_in(child, full + ".", head)
        elif any(True for _ in child.parameters()):
            points.append(full)
    return points


def _sequential_points(seq: nn.Sequential, prefix: str, head: str) -> list[str]:
    points: list[str] = []
    block_end: str | None = None  # the last child of the open block
    for name, child in seq.named_children():
        full = prefix + name
        if full == head:
            break
        if _is_leaf(child):
            if _is_weight_layer(child) and block_end is not None:
                points.append(block_end)
            if _is_weight_layer(child) or block_end is not None:
                block_end = full
            continue
        if block_end is not None:
            points.append(block_end)
            block_end = None
        if _holds(full, head) or _flat_sequential(child):
            points += _points_in(child, full + ".", head)
            if _holds(full, head):
                return points
        elif any(True for _ in child.parameters()):
            points.append(full)
    if block_end is not None:
        points.append(block_end)
    return points


def spaced(points: list[str], limit: int = MAX_POINTS) -> list[str]:
    """At most ``limit`` of ``points``, evenly spaced, the last always kept."""
    if len(points) <= limit:
        return points
    step = (len(points) - 1) / (limit - 1)
    return [points[round(i * step)] for i in range(limit)]


class PointTaps:
    """Forward hooks on every point at once: each forward pass's outputs pooled to (N, d) as they are made.

    Forward passes that are not the collection's own (``collect_outputs`` first tries the input layout on two
    samples) come first; :meth:`features` keeps the last passes that make up the ``n`` rows collected."""

    def __init__(
        self, model: nn.Module, points: list[str], *, head: str | None = None, seed: int = 0, max_dims: int = MAX_DIMS
    ) -> None:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        self.points, self.seed, self.max_dims = points, seed, max_dims
        self.passes: list[dict[str, Tensor]] = []
        self.sizes: list[int] = []
        self.read: dict[str, tuple[bool, int]] = {}  # per point: pooled?, its width before any projection
        self.projections: dict[str, Tensor] = {}
        self.fired: dict[str, int] = {}  # when each point first ran (a count of hook calls), the head included
        self._handles = [model.register_forward_pre_hook(self._start)]
        if head is not None:
            self._handles.append(model.get_submodule(head).register_forward_pre_hook(self._head_runs))
        for name in points:
            module = model.get_submodule(name)
            self._handles.append(module.register_forward_hook(self._reader(name)))

    def _start(self, module: nn.Module, args) -> None:
        self.passes.append({})
        self.sizes.append(int(args[0].shape[0]) if args and isinstance(args[0], Tensor) else 0)

    def _head_runs(self, module: nn.Module, args) -> None:
        self.fired.setdefault(HEAD, len(self.fired))

    def _reader(self, name: str):
        def hook(module: nn.Module, args, output) -> None:
            self.fired.setdefault(name, len(self.fired))
            if not self.passes or name in self.passes[-1] or not isinstance(output, Tensor) or output.ndim < 2:
                return  # a module called twice in a pass: its first output (the block's)
            z = pool_features(output)
            self.read.setdefault(name, (output.ndim > 2, z.shape[1]))
            self.passes[-1][name] = self._project(name, z).cpu()

        return hook

    def _project(self, name: str, z: Tensor) -> Tensor:
        if z.shape[1] <= self.max_dims:
            return z
        if name not in self.projections:  # fixed per point: every split and rank projects the same way
            gen = torch.Generator().manual_seed(self.seed + len(self.projections))
            w = torch.randn(z.shape[1], self.max_dims, generator=gen) / math.sqrt(self.max_dims)
            self.projections[name] = w
        return z @ self.projections[name].to(z.device)

    def before_head(self) -> list[str]:
        """The points that ran before the head (in the order they ran); all that ran when no head was tapped."""
        end = self.fired.get(HEAD, len(self.fired))
        return sorted((p for p in self.points if self.fired.get(p, end) < end), key=self.fired.__getitem__)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()

    def features(self, n: int) -> dict[str, Tensor]:
        """Each point's (n, d) features: the last forward passes that hold the n rows collected (the earlier ones
        were the layout check's); a point missing from one of them is dropped."""
        total, first = 0, len(self.sizes)
        while first > 0 and total < n:
            first -= 1
            total += self.sizes[first]
        if total != n:
            return {}
        passes = self.passes[first:]
        return {p: torch.cat([x[p] for x in passes]) for p in self.points if all(p in x for x in passes)}


@contextmanager
def tap_points(model: nn.Module, points: list[str], *, head: str | None = None, seed: int = 0) -> Iterator[PointTaps]:
    """``with tap_points(model, names, head=head) as taps: ...forward passes...; taps.features(n)``."""
    taps = PointTaps(model, points, head=head, seed=seed)
    try:
        yield taps
    finally:
        taps.remove()


def majority_share(b: Tensor) -> float:
    """The share of the most frequent value of ``b`` (a constant guess's accuracy)."""
    return float(torch.bincount(b.long()).max()) / max(len(b), 1)


def ridge_probe(
    z_train: Tensor, b_train: Tensor, z_val: Tensor, b_val: Tensor, z_eval: Tensor, b_eval: Tensor, *, num_bias: int
) -> float:
    """Accuracy on (eval) of a ridge least-squares read-out of one-hot ``b`` from standardised features, fitted on
    (train), its L2 strength (x number of samples, :data:`RIDGE_GRID`) chosen on (val); ties keep the stronger L2."""
    s_train, s_val, s_eval = _standardise(z_train.double(), z_val.double(), z_eval.double())
    target = F.one_hot(b_train.long(), num_bias).double()
    offset = target.mean(0)
    # ridge through the eigen-decomposition of the smaller Gram matrix: every strength then costs two products
    if s_train.shape[1] <= len(s_train):  # W = V diag(1 / (e + l2 n)) V^T Z^T Y, Z^T Z = V diag(e) V^T
        e, v = torch.linalg.eigh(s_train.T @ s_train)
        left, right = v, v.T @ (s_train.T @ (target - offset))
    else:  # W = Z^T U diag(1 / (e + l2 n)) U^T Y, Z Z^T = U diag(e) U^T
        e, u = torch.linalg.eigh(s_train @ s_train.T)
        left, right = s_train.T @ u, u.T @ (target - offset)
    best, best_w = -1.0, None
    for l2 in sorted(RIDGE_GRID, reverse=True):
        w = left @ (right / (e.clamp(min=0) + l2 * len(s_train))[:, None])
        val = float(((s_val @ w + offset).argmax(1) == b_val).double().mean())
        if val > best:
            best, best_w = val, w
    assert best_w is not None
    return float(((s_eval @ best_w + offset).argmax(1) == b_eval).double().mean())


def point_probes(
    train: dict[str, Tensor],
    val: dict[str, Tensor],
    test: dict[str, Tensor],
    b: tuple[Tensor, Tensor, Tensor],
    *,
    bottleneck: tuple[Tensor, Tensor, Tensor],
    num_bias: int,
    read: dict[str, tuple[bool, int]],
) -> list[PointProbe]:
    """One :class:`PointProbe` per point present in all three splits (in their order), then the bottleneck's
    (``bottleneck`` = its train, val and eval features); bias labels ``b`` = (train, val, eval); ``read``: per point,
    whether its output was pooled and its width before any projection (``PointTaps.read``)."""
    chance = majority_share(b[2])

    def row(feats: tuple[Tensor, Tensor, Tensor], *, name: str, kind: str) -> PointProbe:
        acc = ridge_probe(feats[0], b[0], feats[1], b[1], feats[2], b[2], num_bias=num_bias)
        dims = feats[2].shape[1]
        pooled, width = read.get(name, (False, dims)) if kind == "block" else (False, dims)
        return PointProbe(
            point=name,
            dims=dims,
            accuracy=acc,
            chance=chance,
            readable=acc > chance + WHERE_MARGIN,
            pooled=pooled,
            projected_from=width if width != dims else None,
            kind=kind,
        )

    if len(torch.unique(b[0])) < 2:  # nothing to fit (the privacy head refuses such data first)
        return []
    rows = [row((train[n], val[n], test[n]), name=n, kind="block") for n in test if n in train and n in val]
    return rows + [row(bottleneck, name=BOTTLENECK, kind=BOTTLENECK)]


def per_class_probe(
    z: tuple[Tensor, Tensor, Tensor],
    y: tuple[Tensor, Tensor, Tensor],
    b: tuple[Tensor, Tensor, Tensor],
    *,
    num_bias: int,
) -> PerClassProbe | None:
    """A probe fitted within each target class (train / val / eval rows of that class only) on the bottleneck
    ``z``; None when no class has two bias values in each split."""
    done, skipped = [], []
    for c in sorted(int(v) for v in torch.unique(y[2])):
        rows = [yi == c for yi in y]
        bc = [bi[r] for bi, r in zip(b, rows)]
        if any(len(torch.unique(x)) < 2 for x in bc[:2]) or len(bc[2]) == 0:
            skipped.append(c)
            continue
        zc = [zi[r] for zi, r in zip(z, rows)]
        acc = ridge_probe(zc[0], bc[0], zc[1], bc[1], zc[2], bc[2], num_bias=num_bias)
        done.append(ClassProbe(target=c, accuracy=acc, chance=majority_share(bc[2]), samples=len(bc[2])))
    if not done:
        return None
    worst = max(done, key=lambda p: p.accuracy - p.chance)
    mean_acc = sum(p.accuracy for p in done) / len(done)
    mean_chance = sum(p.chance for p in done) / len(done)
    return PerClassProbe(
        mean_accuracy=mean_acc,
        mean_chance=mean_chance,
        worst_class=worst.target,
        worst_accuracy=worst.accuracy,
        worst_chance=worst.chance,
        readable=mean_acc > mean_chance + WHERE_MARGIN or worst.accuracy > worst.chance + WHERE_MARGIN,
        classes=done,
        skipped=skipped,
    )


def where_table(points: list[PointProbe] | None, per_class: PerClassProbe | None) -> dict[str, Any] | None:
    """The plain form of an attribute's probes (``AuditReport.headline()["where"]``, FFW's before / after)."""
    if points is None:
        return None
    return {
        "points": [asdict(p) for p in points],
        "per_class": asdict(per_class) if per_class is not None else None,
        "probe": PROBE_TEXT,
    }


def where_rows(where: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(point, dims, probe accuracy %, chance %) rows of the table ``where``, the per-class probe last."""
    rows = []
    for p in where.get("points") or []:
        dims = str(p["dims"]) + (" (pooled)" if p.get("pooled") else "")
        dims += f" (projected from {p['projected_from']})" if p.get("projected_from") else ""
        rows.append((point_label(p), dims, f"{100 * p['accuracy']:.1f}", f"{100 * p['chance']:.1f}"))
    pc = where.get("per_class")
    if pc:
        rows.append(
            (
                "within each class, mean (bottleneck)",
                "-",
                f"{100 * pc['mean_accuracy']:.1f}",
                f"{100 * pc['mean_chance']:.1f}",
            )
        )
        rows.append(
            (
                f"within class {pc['worst_class']}, read most (bottleneck)",
                "-",
                f"{100 * pc['worst_accuracy']:.1f}",
                f"{100 * pc['worst_chance']:.1f}",
            )
        )
    return rows


def most_read(points: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The point whose probe beats its chance by the most (the first of equals)."""
    return max(points, key=lambda p: p["accuracy"] - p["chance"], default=None)


def readable_upstream(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The upstream points that read the bias when the bottleneck does not (empty otherwise)."""
    neck = bottleneck_of(points)
    if neck is None or neck["readable"]:
        return []
    return [p for p in points if p is not neck and p["readable"]]


def _pct(v: float) -> str:
    return f"{100 * v:.1f} %"


def where_sentences(where: dict[str, Any], *, split: str = "evaluation") -> list[str]:
    """Sentences about where the bias is read, each derived from the table ``where`` (``AuditReport.headline()``'s
    ``where``: points and per-class probe), each naming where it was measured."""
    points, per_class = where.get("points") or [], where.get("per_class")
    out = []
    top = most_read(points)
    if top is not None:
        if top["readable"]:
            out.append(
                f"The bias is read most at {point_label(top)}: {_pct(top['accuracy'])} "
                f"(chance {_pct(top['chance'])}, {split} split)."
            )
        else:
            out.append(
                f"No point read reads the bias more than {100 * WHERE_MARGIN:.0f} points above chance with this "
                f"linear probe (highest: {point_label(top)}, {_pct(top['accuracy'])}, chance "
                f"{_pct(top['chance'])}, {split} split); a stronger probe may read more."
            )
    up = readable_upstream(points)
    if up:
        neck = bottleneck_of(points)
        assert neck is not None
        out.append(
            f"Readable upstream: the bottleneck reads {_pct(neck['accuracy'])} (not more than "
            f"{100 * WHERE_MARGIN:.0f} points above chance, {_pct(neck['chance'])}), but "
            + ", ".join(f"{point_label(p)} reads {_pct(p['accuracy'])}" for p in up)
            + ": the bias is still in the network before the head."
        )
    if per_class:
        out += per_class_sentences(per_class, points)
    return out


def per_class_sentences(
    pc: dict[str, Any], points: list[dict[str, Any]], *, when: str = "", before: dict[str, Any] | None = None
) -> list[str]:
    """The per-class probes in words (the audit's and FFW's reports): their mean and the class read most, and
    "Readable within classes" when they read the bias while the bottleneck probe over all classes does not.
    ``when``: e.g. " after FFW"; ``before``: the per-class record before, whose mean is quoted beside."""
    then = f" (before FFW {_pct(before['mean_accuracy'])})" if before else ""
    out = [
        f"Within each target class (a probe fitted per class at the bottleneck, classes weighted equally){when}: "
        f"{_pct(pc['mean_accuracy'])} on average{then} vs chance {_pct(pc['mean_chance'])}; read most in class "
        f"{pc['worst_class']} ({_pct(pc['worst_accuracy'])}, chance {_pct(pc['worst_chance'])})."
    ]
    neck = bottleneck_of(points)
    if pc["readable"] and neck is not None and not neck["readable"]:
        out.append(f"Readable within classes{when}: {within_class_text(pc)}.")
    return out


def within_class_text(pc: dict[str, Any]) -> str:
    """Which per-class probes read the bias (the three read most, by margin over their chance), beside the probe over
    all classes at the bottleneck, which reads it near chance."""
    hits = sorted(
        (c for c in pc.get("classes") or [] if c["accuracy"] > c["chance"] + WHERE_MARGIN),
        key=lambda c: c["chance"] - c["accuracy"],
    )
    named = ", ".join(f"{c['target']} ({_pct(c['accuracy'])}, chance {_pct(c['chance'])})" for c in hits[:3])
    more = f" and {len(hits) - 3} more" if len(hits) > 3 else ""
    where = (
        f"the probes fitted within class(es) {named}{more} read it"
        if hits
        else (
            f"the per-class probes read it on average ({_pct(pc['mean_accuracy'])}, chance {_pct(pc['mean_chance'])})"
        )
    )
    return (
        f"the probe over all classes reads near chance at the bottleneck, but {where} - the bias is still there, "
        "in a form that differs between classes"
    )


def point_label(p: dict[str, Any]) -> str:
    """A point's name in a sentence or a table."""
    return "the bottleneck (the head's input)" if p.get("kind") == BOTTLENECK else f"`{p['point']}`"


def point_key(p: dict[str, Any]) -> tuple[str, str]:
    """What matches a point before and after FFW: its kind and its module name."""
    return (p.get("kind", "block"), p["point"])


def bottleneck_of(points: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The bottleneck's row of a where table (None: not read)."""
    return next((p for p in points if p.get("kind") == BOTTLENECK), None)
