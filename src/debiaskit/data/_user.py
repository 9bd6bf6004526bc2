"""The data contract: any map-style dataset of ``(x, y, b)`` works everywhere in debiaskit.

Fit, audit, FFW, discovery, every method and the comparison harness accept the same thing: an object
with ``__len__`` and ``__getitem__`` whose items are ``(x, y, b)`` - or ``(x, y)`` where no bias labels
are needed (label-free training, discovery). :func:`as_bias_data` is the one adapter every entry point
calls; it leaves the samples where they are (a lazy dataset stays lazy) and adds the few attributes the
library reads (labels, number of classes, bias classes, names, aligned flags).

* ``x``: a tensor of any shape - float (images, tabular rows, feature vectors, used as given) or integer
  (e.g. token ids, passed through unchanged). NumPy arrays are turned into tensors by the DataLoader.
* ``y``: an integer class index in ``[0, num_classes)`` (int or 0-d integer tensor).
* ``b``: an integer bias class in ``[0, num_bias_classes)``, or an integer tensor of shape ``(A,)`` for
  ``A`` bias attributes (one privacy head / MI term / group table per attribute), each attribute with its
  own number of classes (``bias_cardinalities``, e.g. ``(2, 5)``: a binary attribute beside one with 5 values).

Metadata is inferred where it is missing: ``num_classes = max(y) + 1``, each attribute's number of bias
classes ``max(b[:, a]) + 1`` (over every split given together; ``num_bias_classes`` is the largest), ``bias_names = ("bias",)`` (``bias0, bias1, ...`` for several
attributes). Reading the labels costs one pass over the dataset, made once and only when a label is
needed, unless the dataset exposes them as attributes ``y`` and ``b`` (tensors or arrays of length N;
``targets`` is read as ``y``) - then no sample is loaded. A dataset may also carry ``num_classes``,
``num_bias_classes`` (an int for every attribute), ``bias_cardinalities`` (one per attribute),
``bias_names`` and ``aligned`` ((N,) or (N, A) bool); passed keywords win.

``BiasDataset`` (in-memory tensors) is the fast path: batches are sliced, not collated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset

from ..errors import DataError
from ._dataset import (
    BiasDataset,
    Splits,
    _Indexed,
    attribute_cardinality,
    check_bias_names,
    check_user_labels,
    infer_cardinalities,
    resolve_cardinalities,
    summarise,
    warn_small_unbiased,
)


@runtime_checkable
class BiasData(Protocol):
    """What debiaskit needs from a dataset: ``len(data)`` and ``data[i] -> (x, y, b)`` or ``(x, y)``.

    Optional attributes are read when present (see the module docstring): ``y``, ``b``, ``num_classes``,
    ``num_bias_classes``, ``bias_names``, ``aligned``. A ``torch.utils.data.Dataset`` subclass with a
    ``__len__``, a ``TensorDataset(x, y, b)`` and :class:`BiasDataset` all satisfy it.

    Example::

        class MyData(torch.utils.data.Dataset):
            def __len__(self): return len(self.files)
            def __getitem__(self, i): return load(self.files[i]), self.labels[i], self.groups[i]
    """

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[Any, ...]: ...


class LazyBiasDataset(Dataset):
    """A user dataset seen through the contract: samples stay in ``source`` (loaded item by item, in
    DataLoader workers when ``num_workers > 0``); labels are read once and kept (N integers each).

    Made by :func:`as_bias_data`; exposes what the library reads from :class:`BiasDataset`
    (``y``, ``b``, ``num_classes``, ``num_bias_classes``, ``bias_cardinalities``, ``bias_names``, ``aligned``, ``bias()``,
    ``aligned_mask()``, ``subset()``, ``without_bias_labels()``, ``summary()``, ``input_shape``).
    """

    render = None  # no counterfactual renderer for user data: counterfactual metrics are left out

    def __init__(
        self,
        source,
        *,
        index: Tensor | None = None,
        name: str = "dataset",
        num_classes: int | None = None,
        num_bias_classes: int | Sequence[int] | None = None,
        bias_names: Sequence[str] | None = None,
        aligned: Tensor | None = None,
        labels: tuple[Tensor, Tensor | None] | None = None,
        has_bias: bool = True,
        num_workers: int = 0,
        info: dict[str, Any] | None = None,
        bias_override: Tensor | None = None,
    ) -> None:
        self.source = source
        self.bias_override = bias_override  # bias labels that replace the items' own (pseudo-bias labels)
        self.index = None if index is None else torch.as_tensor(index, dtype=torch.long)
        self.name = name
        self._num_classes = num_classes
        self._num_bias_classes = num_bias_classes  # None (inferred), an int for every attribute, or one per attribute
        self._bias_names = tuple(bias_names) if bias_names is not None else None
        self.aligned = aligned
        self._labels = labels
        self.has_bias = has_bias
        self.num_workers = num_workers
        self.info: dict[str, Any] = dict(info or {})

    # -- samples ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.source) if self.index is None else len(self.index)

    def __getitem__(self, i: int):
        j = int(i) if self.index is None else int(self.index[i])
        item = self.source[j]
        x, y, b = _split_item(item, where=f"{self.name}[{j}]")
        if not self.has_bias:
            return x, y, torch.tensor(-1)
        if self.bias_override is not None:
            return x, y, self.bias_override[i]
        return x, y, (torch.tensor(-1) if b is None else b)

    @property
    def input_shape(self) -> tuple[int, ...]:
        x = self[0][0]
        return tuple(torch.as_tensor(np.asarray(x)).shape) if not isinstance(x, Tensor) else tuple(x.shape)

    # -- labels and metadata ---------------------------------------------------------------------
    def labels(self) -> tuple[Tensor, Tensor | None]:
        """(y, b) of every sample, int64; read from the source's label attributes or in one pass."""
        if self._labels is None:
            self._labels = _read_labels(self.source, name=self.name, num_workers=self.num_workers)
            if self.index is not None:
                y, b = self._labels
                self._labels = (y[self.index], None if b is None else b[self.index])
        return self._labels

    @property
    def y(self) -> Tensor:
        return self.labels()[0]

    @property
    def b(self) -> Tensor | None:
        if not self.has_bias:
            return None
        return self.bias_override if self.bias_override is not None else self.labels()[1]

    @property
    def num_classes(self) -> int:
        if self._num_classes is None:
            y = self.y
            if len(y) == 0:
                raise DataError(f"{self.name} is empty: cannot infer num_classes")
            self._num_classes = int(y.max()) + 1
        return self._num_classes

    @num_classes.setter
    def num_classes(self, value: int) -> None:
        self._num_classes = int(value)

    @property
    def bias_cardinalities(self) -> tuple[int, ...]:
        """Each bias attribute's number of classes (inferred from the labels where not given)."""
        b = self.b
        if b is None:
            if self._num_bias_classes is None:
                raise DataError(
                    f"{self.name} has no bias labels (its items are (x, y)); num_bias_classes is unknown. "
                    "Give items (x, y, b) or pass num_bias_classes= to as_bias_data"
                )
            k = self._num_bias_classes
            return (k,) if isinstance(k, int) else tuple(k)
        if self._num_bias_classes is None:
            self._num_bias_classes = infer_cardinalities(b)
        self._num_bias_classes = resolve_cardinalities(b, None, self._num_bias_classes, name=self.name)
        return self._num_bias_classes

    @property
    def num_bias_classes(self) -> int:
        """The largest attribute's number of bias classes (per attribute: :meth:`num_bias_classes_of`)."""
        return max(self.bias_cardinalities)

    @num_bias_classes.setter
    def num_bias_classes(self, value: int | Sequence[int]) -> None:
        self._num_bias_classes = int(value) if isinstance(value, (int, np.integer)) else tuple(int(k) for k in value)

    def num_bias_classes_of(self, attribute: int | str = 0) -> int:
        """Number of classes of one bias attribute."""
        return attribute_cardinality(self, attribute)

    @property
    def bias_names(self) -> tuple[str, ...]:
        if self._bias_names is None:
            b = self.b
            n = 1 if b is None or b.ndim == 1 else b.shape[1]
            self._bias_names = ("bias",) if n == 1 else tuple(f"bias{a}" for a in range(n))
        return self._bias_names

    @bias_names.setter
    def bias_names(self, value: Sequence[str]) -> None:
        self._bias_names = tuple(value)

    def bias(self, attribute: int | str = 0) -> Tensor:
        b = self.b
        if b is None:
            raise DataError(f"{self.name} has no bias labels")
        if b.ndim == 1:
            return b
        return b[:, self.bias_names.index(attribute) if isinstance(attribute, str) else attribute]

    def aligned_mask(self, attribute: int | str = 0) -> Tensor | None:
        if self.aligned is None or not self.has_bias:
            return None
        if self.aligned.ndim == 1:
            return self.aligned
        return self.aligned[:, self.bias_names.index(attribute) if isinstance(attribute, str) else attribute]

    # -- views -----------------------------------------------------------------------------------
    def _copy(self, **changes) -> LazyBiasDataset:
        kw: dict[str, Any] = dict(
            index=self.index,
            name=self.name,
            num_classes=self._num_classes,
            num_bias_classes=self._num_bias_classes,
            bias_names=self._bias_names,
            aligned=self.aligned,
            labels=self._labels,
            has_bias=self.has_bias,
            num_workers=self.num_workers,
            info=self.info,
            bias_override=self.bias_override,
        )
        kw.update(changes)
        return LazyBiasDataset(self.source, **kw)

    def subset(self, index: Tensor, *, name: str | None = None) -> LazyBiasDataset:
        index = torch.as_tensor(index, dtype=torch.long)
        labels = self.labels()
        return self._copy(
            index=index if self.index is None else self.index[index],
            name=name or self.name,
            labels=(labels[0][index], None if labels[1] is None else labels[1][index]),
            aligned=None if self.aligned is None else self.aligned[index],
            bias_override=None if self.bias_override is None else self.bias_override[index],
        )

    def with_bias_labels(
        self,
        b: Tensor,
        *,
        num_bias_classes: int | Sequence[int],
        bias_names: Sequence[str] | None = None,
        aligned: Tensor | None = None,
        info: dict[str, Any] | None = None,
        name: str | None = None,
    ) -> LazyBiasDataset:
        """The same samples with other bias labels (e.g. discovered pseudo-bias labels)."""
        return self._copy(
            bias_override=b,
            has_bias=True,
            num_bias_classes=num_bias_classes,
            aligned=aligned,
            bias_names=tuple(bias_names) if bias_names is not None else self._bias_names,
            info=self.info if info is None else info,
            name=name or self.name,
        )

    def without_bias_labels(self) -> LazyBiasDataset:
        """The same samples with no bias labels (what a label-free method may see)."""
        return self._copy(has_bias=False, aligned=None)

    def summary(self) -> dict[str, Any]:
        return summarise(self)

    def __repr__(self) -> str:
        return f"LazyBiasDataset({self.name!r}, {len(self)} samples, source={type(self.source).__name__})"


def _split_item(item, *, where: str):
    if not isinstance(item, (tuple, list)) or len(item) not in (2, 3):
        what = (
            f"a {type(item).__name__} of length {len(item)}" if isinstance(item, (tuple, list)) else type(item).__name__
        )
        raise DataError(f"{where}: dataset items must be (x, y, b) or (x, y) tuples, got {what}")
    x, y = item[0], item[1]
    b = item[2] if len(item) == 3 else None
    if not isinstance(x, (Tensor, np.ndarray)):
        raise DataError(f"{where}: x must be a tensor (float or integer, any shape), got {type(x).__name__}")
    return x, y, b


def _as_label_tensor(values, *, what: str, n: int) -> Tensor:
    t = torch.as_tensor(np.asarray(values)) if not isinstance(values, Tensor) else values
    if t.is_floating_point() or t.dtype == torch.bool or t.is_complex():
        raise DataError(f"{what} must be integer class indices, got dtype {t.dtype}")
    if len(t) != n or t.ndim not in (1, 2):
        raise DataError(f"{what} must have shape ({n},) or ({n}, A), got {tuple(t.shape)}")
    return t.long()


def _read_labels(source, *, name: str, num_workers: int = 0) -> tuple[Tensor, Tensor | None]:
    """y and b of every item: from label attributes when the dataset has them, else one pass."""
    n = len(source)
    if isinstance(source, TensorDataset):
        tensors = source.tensors
        if len(tensors) not in (2, 3):
            raise DataError(
                f"{name}: a TensorDataset for debiaskit holds (x, y, b) or (x, y), got {len(tensors)} tensors"
            )
        return (
            _as_label_tensor(tensors[1], what=f"{name} targets y", n=n),
            None if len(tensors) == 2 else _as_label_tensor(tensors[2], what=f"{name} bias labels b", n=n),
        )
    y_attr = getattr(source, "y", None)
    if y_attr is None:
        y_attr = getattr(source, "targets", None)
    b_attr = getattr(source, "b", None)
    if y_attr is not None and not callable(y_attr) and b_attr is not None and not callable(b_attr):
        try:
            return (
                _as_label_tensor(y_attr, what=f"{name} targets y", n=n),
                _as_label_tensor(b_attr, what=f"{name} bias labels b", n=n),
            )
        except (TypeError, ValueError):
            pass  # attributes of another meaning: read the items instead
    if n == 0:
        raise DataError(f"{name} is empty")
    _split_item(source[0], where=f"{name}[0]")  # a clear error before the DataLoader's own
    ys, bs = [], []
    loader = DataLoader(_Indexed(source), batch_size=256, num_workers=num_workers)
    for _, y, b, _ in loader:
        ys.append(y)
        bs.append(b)
    y = torch.cat(ys)
    b = torch.cat(bs)
    if y.is_floating_point():
        raise DataError(f"{name}: targets y must be integer class indices, got {y.dtype}")
    if b.is_floating_point():
        raise DataError(f"{name}: bias labels b must be integer class indices, got {b.dtype}")
    has_bias = bool((b >= 0).all()) if b.numel() else False
    return y.long(), (b.long() if has_bias else None)


def as_bias_data(
    dataset,
    *,
    num_classes: int | None = None,
    num_bias_classes: int | Sequence[int] | None = None,
    bias_names: Sequence[str] | None = None,
    name: str | None = None,
    num_workers: int = 0,
):
    """Any ``(x, y, b)`` dataset as the library reads it (see :class:`BiasData`); samples are not copied.

    A :class:`BiasDataset` is returned as is (with the keywords applied); a ``TensorDataset`` of
    floating-point inputs becomes a :class:`BiasDataset` over the same tensors (the fast path); anything
    else a :class:`LazyBiasDataset` that loads items on demand (``num_workers`` DataLoader workers).
    Missing metadata is inferred from the labels (one pass, once, only when needed).

    Example::

        data = as_bias_data(TensorDataset(x, y, b))          # num_classes = y.max() + 1, ...
        data = as_bias_data(my_folder_dataset, num_classes=2, num_bias_classes=2, bias_names=["place"])
    """
    if dataset is None:
        return None
    if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
        raise DataError(
            f"expected a map-style dataset of (x, y, b) items (with __len__ and __getitem__), "
            f"got {type(dataset).__name__}"
        )
    if isinstance(dataset, BiasDataset):
        changes: dict[str, Any] = {}
        if num_classes is not None and num_classes != dataset.num_classes:
            changes["num_classes"] = int(num_classes)
        if num_bias_classes is not None and dataset.b is not None:
            cards = resolve_cardinalities(dataset.b, None, num_bias_classes, name=dataset.name)
            if cards != dataset.bias_cardinalities:
                changes.update(num_bias_classes=max(cards), bias_cardinalities=cards)
        if bias_names is not None:
            changes["bias_names"] = tuple(bias_names)
        if name is not None:
            changes["name"] = name
        return replace(dataset, **changes) if changes else dataset
    if isinstance(dataset, LazyBiasDataset):
        out = dataset._copy()
        if num_classes is not None:
            out.num_classes = num_classes
        if num_bias_classes is not None:
            out.num_bias_classes = num_bias_classes
        if bias_names is not None:
            out.bias_names = bias_names
        if name is not None:
            out.name = name
        return out
    label = name or getattr(dataset, "name", None) or type(dataset).__name__
    if (
        isinstance(dataset, TensorDataset)
        and len(dataset.tensors) in (2, 3)
        and dataset.tensors[0].is_floating_point()
        and dataset.tensors[0].ndim >= 2
    ):
        x, y = dataset.tensors[0], _as_label_tensor(dataset.tensors[1], what=f"{label} targets y", n=len(dataset))
        b = (
            None
            if len(dataset.tensors) == 2
            else _as_label_tensor(dataset.tensors[2], what=f"{label} bias labels b", n=len(dataset))
        )
        n_cls = num_classes if num_classes is not None else int(y.max()) + 1
        names = tuple(bias_names) if bias_names is not None else _default_bias_names(b)
        if b is None:
            return BiasDataset(
                images=x, y=y, b=None, num_classes=n_cls, num_bias_classes=2, name=label, bias_names=names
            )
        cards = resolve_cardinalities(
            b, None, num_bias_classes if num_bias_classes is not None else infer_cardinalities(b), name=label
        )
        return BiasDataset(
            images=x,
            y=y,
            b=b,
            num_classes=n_cls,
            num_bias_classes=max(cards),
            name=label,
            bias_names=names,
            bias_cardinalities=cards,
        )
    return LazyBiasDataset(
        dataset,
        name=label,
        num_classes=num_classes if num_classes is not None else _attr_int(dataset, "num_classes"),
        num_bias_classes=num_bias_classes if num_bias_classes is not None else _attr_cards(dataset),
        bias_names=bias_names if bias_names is not None else getattr(dataset, "bias_names", None),
        aligned=_attr_tensor(dataset, "aligned"),
        num_workers=num_workers,
    )


def _default_bias_names(b: Tensor | None) -> tuple[str, ...]:
    if b is None or b.ndim == 1:
        return ("bias",)
    return tuple(f"bias{a}" for a in range(b.shape[1]))


def _attr_int(dataset, key: str) -> int | None:
    v = getattr(dataset, key, None)
    return int(v) if isinstance(v, (int, np.integer)) and not isinstance(v, bool) else None


def _attr_cards(dataset) -> int | tuple[int, ...] | None:
    """The dataset's own ``bias_cardinalities`` (one per attribute) or ``num_bias_classes``, if it says."""
    cards = getattr(dataset, "bias_cardinalities", None)
    if isinstance(cards, (tuple, list)) and cards and all(isinstance(k, (int, np.integer)) for k in cards):
        return tuple(int(k) for k in cards)
    return _attr_int(dataset, "num_bias_classes")


def _attr_tensor(dataset, key: str) -> Tensor | None:
    v = getattr(dataset, key, None)
    if v is None or callable(v):
        return None
    t = torch.as_tensor(np.asarray(v)) if not isinstance(v, Tensor) else v
    return t.bool() if len(t) == len(dataset) else None


def as_bias_datasets(
    *datasets,
    num_classes: int | None = None,
    num_bias_classes: int | Sequence[int] | None = None,
    bias_names: Sequence[str] | None = None,
) -> list:
    """Several splits of one dataset through :func:`as_bias_data` with COMMON metadata: the number of
    classes and each attribute's number of bias classes inferred over all of them (a class missing from one
    split is still counted), so a privacy head trained on one split can be scored on another. ``None``
    stays ``None``."""
    adapted = [as_bias_data(d, bias_names=bias_names) for d in datasets]
    present = [d for d in adapted if d is not None]
    if not present:
        return adapted
    n_cls = num_classes if num_classes is not None else max(d.num_classes for d in present)
    labelled = [d for d in present if d.b is not None]
    if num_bias_classes is not None:
        n_bias = num_bias_classes
    elif labelled:
        n_bias = _common_cardinalities([d.bias_cardinalities for d in labelled])
    else:
        n_bias = None
    out: list[Any] = []
    for d in adapted:
        if d is None:
            out.append(None)
            continue
        out.append(as_bias_data(d, num_classes=n_cls, num_bias_classes=n_bias if d.b is not None else None))
    return out


def _common_cardinalities(per_split: list[tuple[int, ...]]) -> int | tuple[int, ...]:
    """Each attribute's largest count over the splits (one int when the splits disagree on the attributes)."""
    if len({len(c) for c in per_split}) != 1:
        return max(max(c) for c in per_split)
    return tuple(max(col) for col in zip(*per_split))


def relabel_bias(
    data,
    b: Tensor,
    *,
    num_bias_classes: int | Sequence[int],
    bias_names: Sequence[str] | None = None,
    aligned: Tensor | None = None,
    info: dict[str, Any] | None = None,
    name: str | None = None,
):
    """A copy of any contract dataset whose bias labels are ``b`` (N,) or (N, A) (e.g. pseudo-bias labels);
    the samples are shared, not copied. ``aligned`` / ``render`` of the old labels do not carry over.
    ``num_bias_classes``: an int for every attribute, or one per attribute."""
    data = as_bias_data(data)
    b = torch.as_tensor(b)
    if len(b) != len(data):
        raise DataError(f"new bias labels for {data.name} must have length {len(data)}, got {tuple(b.shape)}")
    b = _as_label_tensor(b, what=f"bias labels of {data.name}", n=len(data))
    if isinstance(data, BiasDataset):
        out = data.subset(torch.arange(len(data)), name=name)
        cards = resolve_cardinalities(b, None, num_bias_classes, name=out.name)
        return replace(
            out,
            b=b.clone(),
            num_bias_classes=max(cards),
            bias_cardinalities=cards,
            aligned=aligned,
            render=None,
            bias_names=tuple(bias_names) if bias_names is not None else out.bias_names,
            info=dict(data.info if info is None else info),
        )
    return data.with_bias_labels(
        b.clone(),
        num_bias_classes=num_bias_classes,
        bias_names=bias_names,
        aligned=aligned,
        info=dict(data.info if info is None else info),
        name=name,
    )


def require_bias_labels(data, *, what: str, split: str) -> None:
    """A clear error when ``data`` has no bias labels but ``what`` needs them."""
    if getattr(data, "b", None) is None:
        raise DataError(
            f"{what} needs bias labels on its {split} data, but its items carry none (they are (x, y)); "
            "give items (x, y, b), or pseudo-bias labels from `debiaskit discover`"
        )


def bias_pairing(y: Tensor, b: Tensor, *, num_classes: int, num_bias: int | Sequence[int]) -> Tensor:
    """The bias value each class is paired with in a biased set: the most frequent b of each y
    ((num_classes,) per attribute -> (num_classes,) or (A, num_classes)); -1 for a class with no sample."""
    if b.ndim == 2:
        cards = num_bias if isinstance(num_bias, (tuple, list)) else (num_bias,) * b.shape[1]
        return torch.stack(
            [bias_pairing(y, b[:, a], num_classes=num_classes, num_bias=cards[a]) for a in range(b.shape[1])]
        )
    return _pairing_1d(
        y, b, num_classes=num_classes, num_bias=num_bias[0] if isinstance(num_bias, Sequence) else num_bias
    )


def _pairing_1d(y: Tensor, b: Tensor, *, num_classes: int, num_bias: int) -> Tensor:
    counts = torch.bincount(y * num_bias + b, minlength=num_classes * num_bias).view(num_classes, num_bias)
    pairing = counts.argmax(1)
    pairing[counts.sum(1) == 0] = -1
    return pairing


def aligned_flags(y: Tensor, b: Tensor, pairing: Tensor) -> Tensor:
    """True where a sample's bias value is the one its class is paired with (see :func:`bias_pairing`)."""
    if b.ndim == 2:
        return torch.stack([pairing[a][y] == b[:, a] for a in range(b.shape[1])], 1)
    return pairing[y] == b


def with_aligned(data, pairing: Tensor):
    """``data`` with aligned flags from ``pairing`` unless it has its own."""
    if getattr(data, "aligned", None) is not None or data.b is None:
        return data
    flags = aligned_flags(data.y, data.b, pairing)
    if isinstance(data, BiasDataset):
        return replace(data, aligned=flags)
    out = data._copy()
    out.aligned = flags
    return out


def user_splits(
    *,
    train,
    unbiased_train,
    unbiased_val,
    test,
    unbiased_test=None,
    num_classes: int | None = None,
    num_bias_classes: int | Sequence[int] | None = None,
    bias_names: Sequence[str] | None = None,
    spec: dict[str, Any] | None = None,
):
    """:class:`~debiaskit.data.Splits` from your own datasets (D^b, D^u train / val / test, test).

    Every split goes through :func:`as_bias_data` with common metadata. Where a split does not say which
    samples are bias-aligned, ``aligned`` = its bias value is the one paired with its class in ``train``
    (D^b): the most frequent bias value of that class there (recorded in ``spec["bias_pairing"]``).
    ``unbiased_test`` may be left out (D^u_test is only reported). ``spec`` is what a run records to
    rebuild the data (default: ``{"dataset": "python"}``, which a run folder cannot rebuild on its own).

    Example::

        splits = user_splits(train=TensorDataset(x_b, y_b, b_b), unbiased_train=TensorDataset(...),
                             unbiased_val=..., test=...)
    """
    names = ("train", "unbiased_train", "unbiased_val", "unbiased_test", "test")
    given = [train, unbiased_train, unbiased_val, unbiased_test, test]
    for n, d in zip(names, given):
        if d is None and n != "unbiased_test":
            raise DataError(f"user_splits needs {n}; got None")
    adapted = as_bias_datasets(
        *given, num_classes=num_classes, num_bias_classes=num_bias_classes, bias_names=bias_names
    )
    adapted = [d if d is None else _named(d, n) for n, d in zip(names, adapted)]
    if spec is None:  # built in Python: the checks make_splits makes of a file's labels, and its warning
        _check_python_splits(dict(zip(names, adapted)), bias_names=bias_names)
    spec = dict(spec or {"dataset": "python", "params": {}})
    tr = adapted[0]
    if tr.b is not None:
        pairing = bias_pairing(tr.y, tr.b, num_classes=tr.num_classes, num_bias=tr.bias_cardinalities)
        adapted = [d if d is None else with_aligned(d, pairing) for d in adapted]
        spec.setdefault("bias_pairing", pairing.tolist())
    return Splits(**dict(zip(names, adapted)), spec=spec)


PYTHON_REMEDY = (
    "They are the datasets you gave user_splits: pass larger unbiased_train / unbiased_val datasets "
    "(more samples from every (y, b) group), or use more samples"
)


def _check_python_splits(splits: dict[str, Any], *, bias_names: Sequence[str] | None) -> None:
    """Labels of every split together: at least two classes, each bias attribute with two values, indices
    0..K-1, ``bias_names`` one per attribute; small D^u_train / D^u_val said (:class:`SmallSplitWarning`)."""
    present = {n: d for n, d in splits.items() if d is not None}
    y = torch.cat([d.y for d in present.values()]).numpy()
    bs = [d.b for d in present.values()]
    b = None if any(v is None for v in bs) or len({v.ndim for v in bs}) != 1 else torch.cat(bs).numpy()
    if b is not None:
        cols = b[:, None] if b.ndim == 1 else b
        check_bias_names(
            bias_names,
            attributes=cols.shape[1],
            where="user_splits",
            values=max(len(np.unique(cols[:, a])) for a in range(cols.shape[1])),
        )
    check_user_labels(y, b, where="user_splits", bias_names=None if bias_names is None else tuple(bias_names))
    if b is None:
        return
    index, start = {}, 0
    for n, d in present.items():
        index[n] = np.arange(start, start + len(d))
        start += len(d)
    warn_small_unbiased(y, b, index, dataset="user_splits", remedy=PYTHON_REMEDY)


def _named(data, split: str):
    base = data.name
    if base.endswith("/" + split) or base == split:
        return data
    return as_bias_data(data, name=f"{base}/{split}" if base not in ("dataset", "TensorDataset") else split)


def input_shape_of(data) -> tuple[int, ...]:
    """Shape of one input x (without the batch dimension)."""
    shape = getattr(data, "input_shape", None)
    if shape is not None:
        return tuple(shape)
    x = data[0][0]
    return tuple(torch.as_tensor(x).shape)
