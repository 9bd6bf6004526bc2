"""The sample container every layer speaks: images x, target y and bias label(s) b."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..errors import DataError, SmallSplitWarning


class Batch(NamedTuple):
    """One mini-batch. ``b`` is None for data without bias labels; ``index`` points into the dataset."""

    x: Tensor
    y: Tensor
    b: Tensor | None
    # a field named like tuple.index (a public name since the first release): the field wins at runtime
    index: Tensor  # type: ignore[assignment]


@dataclass
class BiasDataset(Dataset):
    """In-memory samples with targets and bias labels.

    ``images`` holds the inputs, (N, ...) of any shape: uint8 images (N, C, H, W) - stored compactly, like
    the reference implementations store their coloured digits - are turned into floats as
    ``(images / 255 - mean) / std`` per batch; floating-point inputs (images, tabular rows, feature
    vectors) as ``(images - mean) / std``.
    ``b`` is (N,) for one bias attribute or (N, A) for several (``bias_names`` names them).
    ``bias_cardinalities`` gives each attribute its own number of classes (a binary attribute beside one with
    5 values: ``(2, 5)``); default ``num_bias_classes`` for every attribute. ``num_bias_classes`` is the
    largest of them (what a reader of a single number gets); per attribute use :meth:`num_bias_classes_of`.
    ``aligned`` marks bias-aligned samples (b equals the bias value paired with y), per attribute.
    ``render`` (optional) re-renders samples with other bias values: it gives counterfactual pairs.

    Example::

        data = make_splits("biased-mnist", params={"rho": 0.99}, seed=0).train
        x, y, b = data[0]                       # one sample: float input, target, bias label
        unlabelled = data.without_bias_labels()  # what a label-free method trains on
    """

    images: Tensor
    y: Tensor
    b: Tensor | None
    num_classes: int
    num_bias_classes: int
    name: str = "dataset"
    bias_names: tuple[str, ...] = ("bias",)
    mean: float = 0.0
    std: float = 1.0
    aligned: Tensor | None = None
    render: Callable[[Tensor, Tensor], Tensor] | None = field(default=None, repr=False)
    info: dict[str, Any] = field(default_factory=dict)
    bias_cardinalities: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        n = len(self.y)
        if (
            not isinstance(self.images, Tensor)
            or self.images.ndim < 2
            or not (self.images.dtype == torch.uint8 or self.images.is_floating_point())
        ):
            what = (
                f"{self.images.dtype} {tuple(self.images.shape)}"
                if isinstance(self.images, Tensor)
                else type(self.images).__name__
            )
            raise DataError(
                f"{self.name}: inputs must be a uint8 or floating-point tensor of shape (N, ...), got {what}"
            )
        if len(self.images) != n or (self.b is not None and len(self.b) != n):
            raise DataError(f"{self.name}: images, y and b must have the same length")
        if n == 0:
            raise DataError(f"{self.name}: the split is empty; use a larger size or another rho")
        check_labels(self.y, self.num_classes, what=f"{self.name} targets")
        self.bias_cardinalities = resolve_cardinalities(
            self.b, self.num_bias_classes, self.bias_cardinalities, name=self.name
        )
        if self.bias_cardinalities:
            self.num_bias_classes = max(self.bias_cardinalities)
        if self.b is not None:
            check_bias_labels(self.b, self.bias_cardinalities, self.bias_names, name=self.name)

    def __len__(self) -> int:
        return len(self.y)

    def to_float(self, images: Tensor) -> Tensor:
        if images.dtype == torch.uint8:
            return (images.float() / 255.0 - self.mean) / self.std
        return (images.float() - self.mean) / self.std

    def __getitem__(self, i: int):
        b = self.b[i] if self.b is not None else torch.tensor(-1)
        return self.to_float(self.images[i : i + 1])[0], self.y[i], b

    @property
    def x(self) -> Tensor:
        """All inputs as floats (materialised; fine for evaluation-sized splits)."""
        return self.to_float(self.images)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.images.shape[1:])

    def bias(self, attribute: int | str = 0) -> Tensor:
        """Bias labels of one attribute, as (N,)."""
        if self.b is None:
            raise DataError(f"{self.name} has no bias labels")
        if self.b.ndim == 1:
            return self.b
        col = self.bias_names.index(attribute) if isinstance(attribute, str) else attribute
        return self.b[:, col]

    def num_bias_classes_of(self, attribute: int | str = 0) -> int:
        """Number of classes of one bias attribute."""
        return attribute_cardinality(self, attribute)

    def aligned_mask(self, attribute: int | str = 0) -> Tensor | None:
        if self.aligned is None:
            return None
        if self.aligned.ndim == 1:
            return self.aligned
        col = self.bias_names.index(attribute) if isinstance(attribute, str) else attribute
        return self.aligned[:, col]

    def subset(self, index: Tensor, *, name: str | None = None) -> BiasDataset:
        index = torch.as_tensor(index, dtype=torch.long)
        render = None
        if self.render is not None:
            parent_render, parent_index = self.render, index
            render = lambda idx, new_b: parent_render(parent_index[idx], new_b)  # noqa: E731
        return BiasDataset(
            images=self.images[index],
            y=self.y[index],
            b=None if self.b is None else self.b[index],
            num_classes=self.num_classes,
            num_bias_classes=self.num_bias_classes,
            name=name or self.name,
            bias_names=self.bias_names,
            mean=self.mean,
            std=self.std,
            aligned=None if self.aligned is None else self.aligned[index],
            render=render,
            info=dict(self.info),
            bias_cardinalities=self.bias_cardinalities,
        )

    def without_bias_labels(self) -> BiasDataset:
        """The same samples with no bias labels (what a label-free method may see)."""
        out = self.subset(torch.arange(len(self)))
        out.b, out.aligned = None, None
        return out

    def draw_counterfactual_bias(
        self, index: Tensor, *, generator: torch.Generator, attribute: int | None = None
    ) -> Tensor:
        """Bias labels for counterfactual copies of samples ``index``: each changed attribute moves to a
        DIFFERENT value, uniformly among the other values of that attribute (a pair that differs in nothing
        would only dilute a counterfactual measure). ``attribute``: change only that attribute (the audit,
        per attribute); None: change every attribute (FMD's counterfactual samples). The one draw of
        counterfactuals in debiaskit, so the audit's counterfactual bias and FMD's are comparable; the
        caller gets new labels to render (:meth:`counterfactual`), never the old ones.

        Example::

            new_b = data.draw_counterfactual_bias(index, generator=torch.Generator().manual_seed(0))
            x_cf = data.counterfactual(index, new_b)
        """
        if self.b is None:
            raise DataError(f"{self.name} has no bias labels to change")
        b = self.b[torch.as_tensor(index)].clone()

        def shift(column: Tensor, k: int) -> Tensor:  # each attribute within its own values
            return (column + torch.randint(1, k, (len(column),), generator=generator)) % k

        if b.ndim == 1:
            return shift(b, self.num_bias_classes)
        for a in range(b.shape[1]) if attribute is None else [attribute]:
            b[:, a] = shift(b[:, a], self.num_bias_classes_of(a))
        return b

    def counterfactual(self, index: Tensor, new_b: Tensor) -> Tensor:
        """Float inputs of samples ``index`` re-rendered with bias labels ``new_b`` (same content)."""
        if self.render is None:
            raise DataError(f"{self.name} cannot render counterfactual samples (its recipe has no renderer)")
        return self.to_float(self.render(torch.as_tensor(index), torch.as_tensor(new_b)))

    def summary(self) -> dict[str, Any]:
        return summarise(self)


def check_labels(labels: Tensor, num: int, *, what: str) -> None:
    if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise DataError(f"{what} must be integer class indices, got dtype {labels.dtype}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num):
        raise DataError(f"{what} must lie in [0, {num - 1}], found range [{int(labels.min())}, {int(labels.max())}]")


def check_user_labels(
    y: np.ndarray, b: np.ndarray | None, *, where: str, bias_names: tuple[str, ...] | None = None
) -> None:
    """Refuse labels nothing can be learned or audited from, at the edge (before any compute): targets that
    are not class indices 0..K-1, a single target class, a bias attribute with a single value. A class index
    above the number of samples is refused too: K classes cannot be realised by fewer samples (it is a typo
    or another column, and would size a head or a group table by it)."""
    y = np.asarray(y)
    n = len(y)
    _check_indices(y, what="targets y", where=where, n=n)
    classes = np.unique(y)
    if len(classes) < 2:
        raise DataError(
            f"{where}: every sample has target y = {int(classes[0])}: a classifier needs at least two "
            "target classes (y holds class indices 0..K-1, K >= 2); check the target column / array"
        )
    if b is None:
        return
    b = np.asarray(b)
    cols = b[:, None] if b.ndim == 1 else b
    for a in range(cols.shape[1]):
        name = bias_names[a] if bias_names and a < len(bias_names) else ("b" if b.ndim == 1 else f"b[:, {a}]")
        _check_indices(cols[:, a], what=f"bias labels {name}", where=where, n=n)
        values = np.unique(cols[:, a])
        if len(values) < 2:
            raise DataError(
                f"{where}: bias attribute {name} has one value (b = {int(values[0])} in every sample): "
                "there is no bias to measure or remove; a bias attribute needs at least two values"
            )


def _check_indices(values: np.ndarray, *, what: str, where: str, n: int) -> None:
    if not np.issubdtype(values.dtype, np.integer):
        raise DataError(f"{where}: {what} must be integer class indices 0..K-1, got {values.dtype}")
    lo, hi = int(values.min()), int(values.max())
    if lo < 0:
        raise DataError(f"{where}: {what} must be class indices 0..K-1, found {lo} (sample {int(np.argmin(values))})")
    if hi >= n:
        raise DataError(
            f"{where}: {what} holds class index {hi} (sample {int(np.argmax(values))}) but there are only "
            f"{n} samples: class indices are 0..K-1 for K classes (is it another column?)"
        )


def check_bias_names(names, *, attributes: int, values: int, where: str) -> None:
    """``bias_names`` names the bias attributes (columns of b), one name each; a list as long as the number of
    bias *values* is the usual mix-up, said as such."""
    if names is None or len(names) == attributes:
        return
    hint = (
        " - did you mean to name the values? bias_names names the attributes (columns)" if len(names) == values else ""
    )
    raise DataError(
        f"{where}: bias_names has {len(names)} name(s) ({', '.join(map(str, names))}) for {attributes} "
        f"bias attribute(s){hint}; give one name per column of b"
    )


def resolve_cardinalities(b: Tensor | None, num_bias_classes: int | None, given, *, name: str) -> tuple[int, ...]:
    """Each bias attribute's number of classes: ``given`` (an int for all, or one per attribute) or else
    ``num_bias_classes`` for all; () without bias labels. Refuses a count per attribute of the wrong length."""
    if b is None:
        return tuple(int(k) for k in given) if isinstance(given, (tuple, list)) else ()
    n_attr = 1 if b.ndim == 1 else b.shape[1]
    value = num_bias_classes if given is None else given
    if value is None:
        raise DataError(f"{name}: bias labels without a number of bias classes; give num_bias_classes")
    if isinstance(value, (tuple, list)):
        if len(value) != n_attr:
            raise DataError(
                f"{name}: one number of bias classes per attribute: {n_attr} attributes, got {len(value)} "
                f"({list(value)})"
            )
        return tuple(int(k) for k in value)
    return (int(value),) * n_attr


def infer_cardinalities(b: Tensor) -> tuple[int, ...]:
    """max(b) + 1 of each attribute (at least 2: a bias needs two values)."""
    columns = [b] if b.ndim == 1 else list(b.T)
    return tuple(max(int(c.max()) + 1, 2) if c.numel() else 2 for c in columns)


def attribute_cardinality(data, attribute: int | str = 0) -> int:
    """Number of classes of one bias attribute of ``data`` (by index or name)."""
    cards = data.bias_cardinalities
    col = data.bias_names.index(attribute) if isinstance(attribute, str) else attribute
    return cards[col] if cards and col < len(cards) else data.num_bias_classes


def check_bias_labels(b: Tensor, cards: tuple[int, ...], names: tuple[str, ...], *, name: str) -> None:
    if b.ndim == 1:
        check_labels(b, cards[0], what=f"{name} bias labels")
        return
    for a, k in enumerate(cards):
        label = names[a] if a < len(names) else f"bias{a}"
        check_labels(b[:, a], k, what=f"{name} bias labels of attribute {a} ({label})")


# ``info["bias_kind"]`` of datasets whose bias is a protected attribute with its own values (Adult's sex,
# COMPAS's race), not a recoloured copy of the target's value set: "aligned" / "realised rho" mean nothing there,
# the bias strength is P(y = 1 | b) per bias value and Cramer's V of (y, b)
ATTRIBUTE_BIAS = "attribute"


def is_attribute_bias(data) -> bool:
    """Whether ``data``'s bias is a protected attribute (y and b do not share their value sets)."""
    return (getattr(data, "info", None) or {}).get("bias_kind") == ATTRIBUTE_BIAS


def cramers_v(y, b) -> float:
    """Cramer's V of the (y, b) contingency table: sqrt(chi^2 / (n (min(r, c) - 1))) over the values present,
    in [0, 1] (0: independent; for two binary variables it is |phi|). 0 when either is constant."""
    y, b = np.asarray(y).astype(np.int64), np.asarray(b).astype(np.int64)
    _, yi = np.unique(y, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    table = np.zeros((yi.max() + 1, bi.max() + 1)) if len(y) else np.zeros((1, 1))
    np.add.at(table, (yi, bi), 1)
    r, c = table.shape
    if min(r, c) < 2:
        return 0.0
    n = table.sum()
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / n
    chi2 = float(((table - expected) ** 2 / expected).sum())
    return float(np.sqrt(chi2 / (n * (min(r, c) - 1))))


def bias_strength(y, b, *, num_bias: int) -> dict[str, Any]:
    """How strongly a (binary-target) split ties y to a protected attribute b: P(y = 1 | b = v) per bias value
    (None where no row has that value) and Cramer's V of (y, b)."""
    y, b = np.asarray(y), np.asarray(b)
    rates = [float((y[b == v] == 1).mean()) if (b == v).any() else None for v in range(num_bias)]
    return {"p_y1_given_b": rates, "cramers_v": cramers_v(y, b)}


def summarise(data) -> dict[str, Any]:
    out: dict[str, Any] = {"size": len(data)}
    aligned = getattr(data, "aligned", None)
    b = getattr(data, "b", None)
    if is_attribute_bias(data) and b is not None and b.ndim == 1:
        out["bias_strength"] = bias_strength(data.y.numpy(), b.numpy(), num_bias=data.num_bias_classes)
    elif aligned is not None:
        if aligned.ndim == 1:
            out["realised_rho"] = float(aligned.float().mean())
        else:
            out["realised_rho"] = {n: float(a.float().mean()) for n, a in zip(data.bias_names, aligned.T)}
    if b is not None:
        out["group_counts"] = group_counts(
            data.y,
            b,
            num_classes=data.num_classes,
            num_bias=getattr(data, "bias_cardinalities", None) or data.num_bias_classes,
        )
    return out


def group_counts(
    y: Tensor, b: Tensor, *, num_classes: int, num_bias: int | tuple[int, ...]
) -> list[list[int]] | dict[str, list[list[int]]]:
    """Samples per (target, bias) group: ``counts[y][b]`` (per attribute for (N, A) bias labels; ``num_bias`` one
    number for all attributes or one per attribute)."""
    if b.ndim == 2:
        cards = num_bias if isinstance(num_bias, (tuple, list)) else (num_bias,) * b.shape[1]
        return {
            f"attribute{a}": _group_counts_1d(y, b[:, a], num_classes=num_classes, num_bias=cards[a])
            for a in range(b.shape[1])
        }
    return _group_counts_1d(
        y, b, num_classes=num_classes, num_bias=num_bias[0] if isinstance(num_bias, (tuple, list)) else num_bias
    )


def _group_counts_1d(y: Tensor, b: Tensor, *, num_classes: int, num_bias: int) -> list[list[int]]:
    flat = y.long() * num_bias + b.long()
    return torch.bincount(flat, minlength=num_classes * num_bias).view(num_classes, num_bias).tolist()


# D^u_train / D^u_val below these sizes are said before any compute (SmallSplitWarning): with 25 samples a
# group's accuracy has a standard error of up to 10 points (sqrt(0.25 / 25)), and one sample moves it by 4
# points, so a worst-group selection on D^u_val (early stopping, FFW's tau level, hyper-parameters) is mostly
# noise; with 100 in all the unbiased accuracy moves by a point per sample and its standard error reaches 5.
MIN_UNBIASED_PER_GROUP = 25
MIN_UNBIASED_TOTAL = 100


def small_unbiased_splits(y: np.ndarray, b: np.ndarray, index: dict[str, np.ndarray]) -> list[str]:
    """What is too small in D^u_train / D^u_val (``index``: split name -> sample positions in ``y`` / ``b``):
    their size and smallest (target, bias) group, over the groups present anywhere in ``y`` / ``b`` (per
    attribute for (N, A) bias labels). Empty when both are large enough."""
    y, b = np.asarray(y), np.asarray(b)
    cols = b[:, None] if b.ndim == 1 else b
    present = [np.unique(np.stack([y, cols[:, a]], 1), axis=0).tolist() for a in range(cols.shape[1])]
    found = []
    for split, label in (("unbiased_train", "D^u_train"), ("unbiased_val", "D^u_val")):
        idx = index.get(split)
        if idx is None:
            continue
        idx = np.asarray(idx)
        smallest = min(
            (
                (int(((y[idx] == t) & (cols[idx, a] == v)).sum()), t, v, a)
                for a, pairs in enumerate(present)
                for t, v in pairs
            )
        )
        n, t, v, a = smallest
        if n < MIN_UNBIASED_PER_GROUP or len(idx) < MIN_UNBIASED_TOTAL:
            which = f"b={v}" if cols.shape[1] == 1 else f"b[{a}]={v}"
            found.append(f"{label} holds {len(idx)} samples, {n} in its smallest (y, b) group (y={t}, {which})")
    return found


def warn_small_unbiased(
    y: np.ndarray, b: np.ndarray, index: dict[str, np.ndarray], *, dataset: str, remedy: str
) -> None:
    """A :class:`SmallSplitWarning` (before any compute) when D^u_train or D^u_val is small; ``remedy`` says
    how these splits were made and what gives larger ones."""
    found = small_unbiased_splits(y, b, index)
    if found:
        warnings.warn(
            SmallSplitWarning(
                f"{dataset}: the unbiased splits are small: {'; '.join(found)}. Everything selected on D^u_val "
                f"(early stopping, FFW's tau level, hyper-parameters) and the audit's privacy head (fitted on "
                f"D^u_train) want at least {MIN_UNBIASED_PER_GROUP} per (y, b) group and {MIN_UNBIASED_TOTAL} in all: "
                f"below that a group's accuracy has a standard error above 10 points. {remedy}"
            ),
            stacklevel=3,
        )


class _Indexed(Dataset):
    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int):
        x, y, *rest = self.dataset[i]
        b = rest[0] if rest else torch.tensor(-1)
        return x, torch.as_tensor(y), torch.as_tensor(b), i


def iterate_batches(
    dataset: Dataset,
    *,
    batch_size: int,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    device: str | torch.device = "cpu",
    indices: Tensor | None = None,
    drop_last: bool = False,
) -> Iterator[Batch]:
    """Yield :class:`Batch` es from a BiasDataset (fast path) or any dataset of (x, y, b) tuples.

    ``indices`` restricts to (and, with ``shuffle``, permutes) a subset - e.g. one rank's shard or a
    re-weighted sample drawn by a method.
    """
    n = len(dataset)  # type: ignore[arg-type]
    order = torch.arange(n) if indices is None else torch.as_tensor(indices, dtype=torch.long)
    if shuffle:
        order = order[torch.randperm(len(order), generator=generator)]
    if isinstance(dataset, BiasDataset):
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            if drop_last and len(idx) < batch_size:
                break
            b = None if dataset.b is None else dataset.b[idx].to(device)
            yield Batch(dataset.to_float(dataset.images[idx]).to(device), dataset.y[idx].to(device), b, idx)
        return
    # any other map-style dataset (a LazyBiasDataset among them): items loaded and collated on demand, in
    # DataLoader workers when the dataset asks for them (image decoding, resizing)
    # to a GPU: batches collated into pinned (page-locked) memory and copied asynchronously
    cuda = torch.device(device).type == "cuda"
    loader = DataLoader(
        torch.utils.data.Subset(_Indexed(dataset), order.tolist()),
        batch_size=batch_size,
        shuffle=False,
        drop_last=drop_last,
        num_workers=int(getattr(dataset, "num_workers", 0) or 0),
        pin_memory=cuda,
    )
    for x, y, b, idx in loader:
        has_bias = bool((b >= 0).all())
        yield Batch(
            x.to(device, non_blocking=cuda),
            y.long().to(device, non_blocking=cuda),
            b.long().to(device, non_blocking=cuda) if has_bias else None,
            idx,
        )


SPLIT_NAMES = ("train", "unbiased_train", "unbiased_val", "unbiased_test", "test")


@dataclass
class Splits:
    """The five splits of a biased benchmark, plus the spec that rebuilds them exactly.

    Each split is a :class:`BiasDataset` or any dataset of the data contract seen through
    :func:`~debiaskit.data.as_bias_data` (build yours with :func:`~debiaskit.data.user_splits`);
    ``unbiased_test`` may be None for user data (it is only reported).

    Example::

        splits = make_splits("colored-mnist", params={"rho": 0.99}, seed=0)
        splits.train, splits.unbiased_train, splits.unbiased_val, splits.test   # D^b, D^u_train, D^u_val, test
        same = splits_from_spec(splits.spec)                                   # rebuilt exactly
    """

    train: Any
    unbiased_train: Any
    unbiased_val: Any
    unbiased_test: Any
    test: Any
    spec: dict[str, Any] = field(default_factory=dict)

    def items(self):
        return [(n, getattr(self, n)) for n in SPLIT_NAMES if getattr(self, n) is not None]

    @property
    def num_classes(self) -> int:
        return self.train.num_classes

    @property
    def num_bias_classes(self) -> int:
        return self.train.num_bias_classes

    @property
    def bias_cardinalities(self) -> tuple[int, ...]:
        """Each bias attribute's number of classes (common to every split)."""
        return tuple(self.train.bias_cardinalities)
