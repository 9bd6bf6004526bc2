"""Your own data from disk: ``tensors:PATH`` (.safetensors / .npz) and ``folder:DIR`` (images + metadata.csv).

Both are dataset names everywhere a name is taken (``make_splits``, ``describe``, ``debiaskit train
--dataset``, ``debiaskit data show``); a run records the file's SHA-256 so that ``load_run(...).splits()``
rebuilds exactly the same splits, or refuses with the reason.

``tensors:PATH`` - one file holding arrays (read safely: safetensors, or ``.npz`` with ``allow_pickle=False``):

====================  =====================================================================================
``x``                 (N, ...) inputs: float (used as given), uint8 (images: scaled to [0, 1]) or another
                      integer type (token ids: passed through unchanged)
``y``                 (N,) integer targets in [0, num_classes)
``b``                 (N,) integer bias labels, or (N, A) for A bias attributes
``split`` (optional)  (N,) integer split codes: 0 = train (D^b), 1 = unbiased_train (D^u_train),
                      2 = unbiased_val (D^u_val), 3 = unbiased_test (D^u_test), 4 = test, 5 = unbiased
                      (debiaskit divides these 60/20/20 into D^u train / val / test inside each (y, b)
                      group, seeded), -1 = not used
``aligned`` (opt.)    (N,) or (N, A) bool: which samples are bias-aligned (default: b equals the most
                      frequent bias value of the sample's class in D^b)
``bias_names`` (opt.) npz: an array of strings; safetensors: metadata ``bias_names`` = "name1,name2"
``bias_columns``      (num_bias_classes,) integer (optional, tabular rows (N, F) with one bias attribute):
                      column ``bias_columns[k]`` of x is the one-hot indicator of bias value k - the
                      protected attribute is an input. It defines counterfactual rows (the same row with
                      another bias value: those columns set to their off / on values, the file's min / max),
                      which the audit's counterfactual bias and FMD (``debiaskit unlearn``) need
``cf`` (optional)     same shape and dtype as x, one bias attribute b (N,): the counterfactual input of each
                      row (the same content with another bias value: an edited image, a flipped row), for
                      data no rule can re-render; used like ``bias_columns`` (not both)
====================  =====================================================================================

Without ``split``, debiaskit draws the splits itself (:func:`draw_splits`, stratified by (y, b)): the same
number c of samples is held out from every (y, b) group, c = ``holdout`` (``--param holdout``, default 0.5)
times the smallest group, at most ``unbiased_size`` / groups. D^u_train / D^u_val smaller than 25 per (y, b)
group or 100 in all (skewed data) are said before any compute (:class:`~debiaskit.errors.SmallSplitWarning`,
with the numbers and the remedies), for splits drawn here and splits from the file alike.
A ``.safetensors`` file is memory-mapped: splits of more than ``IN_MEMORY_BYTES`` of inputs (or any with
``--param lazy=1``) stay on disk and are read item by item; smaller ones are sliced into memory (the fast
path). ``.npz`` members are read whole by NumPy (use .safetensors for data larger than memory).

``folder:DIR`` - an image folder in the Waterbirds / CelebA-style layout::

    DIR/metadata.csv     one row per image: path (relative to DIR), y, b [, split]
    DIR/<any sub-folders>/<images>

Column names: ``path`` (or ``image`` / ``filename`` / ``img_filename``), ``y``, ``b``, ``split``; others with
``--param path_column=... target_column=... bias_column=place[,other] split_column=...``. ``split`` holds
names (train, unbiased_train, unbiased_val, unbiased_test, test, unbiased, or empty = not used) or the
integer codes above; ``--param split_names=train,unbiased,test`` maps codes 0, 1, 2 to other names
(Waterbirds' 0/1/2: its validation rows become D^u, divided 60/20/20 per group). Images are decoded with Pillow in DataLoader workers (``--param workers=N``), converted to
``mode`` (RGB; ``L`` for grayscale) and resized to ``size`` x ``size`` (default: the first image's size),
as float (C, H, W) in [0, 1]. Labels come from the CSV.

Checked once, at the edge (``data show``, ``train``, ``make_splits``, a run's rebuild), before any compute:
metadata.csv is a regular UTF-8 file inside DIR (a BOM is fine; duplicated columns, rows with another number
of fields are refused with their line); every row's path is relative and its real path (every symbolic link
followed) lies inside DIR; every image is decoded completely once (a text file, a truncated image is refused
with its line and row, not in a DataLoader worker). A run records a fingerprint of the images: their names and
sizes (default), or names and SHA-256 of every file with ``--param hash=content`` (images replaced by others of
the same size are then refused when the run's data is rebuilt). Labels of both kinds (and of
:func:`~debiaskit.data.user_splits`) need two target classes and two values per bias attribute.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
import stat
import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PureWindowsPath
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .._validate import OPEN_UNIT_INTERVAL, require
from ..errors import ConfigError, DataError
from ._dataset import (
    BiasDataset,
    check_bias_names,
    check_user_labels,
    group_counts,
    infer_cardinalities,
    warn_small_unbiased,
)
from ._user import LazyBiasDataset, user_splits

USER_FORMATS = ("tensors", "folder")
SPLIT_CODES = {0: "train", 1: "unbiased_train", 2: "unbiased_val", 3: "unbiased_test", 4: "test", 5: "unbiased"}
UNUSED = -1
UNBIASED_SHARES = (0.6, 0.2, 0.2)  # code 5 / "unbiased": divided into D^u train / val / test inside each (y, b) group
REQUIRED_SPLITS = ("train", "unbiased_train", "unbiased_val", "test")
IN_MEMORY_BYTES = 2 << 30  # inputs of a split above this stay memory-mapped (lazy)
DRAW_SHARES = {"unbiased_train": 0.36, "unbiased_val": 0.12, "unbiased_test": 0.12, "test": 0.40}
DEFAULT_HOLDOUT = 0.5
DRAW_RULE = (
    "drawn by debiaskit (no `split` in the data), stratified by (y, b) with seed {seed}: from every "
    "non-empty (y, b) group the same number c of samples is held out (c = --param holdout x the smallest "
    "group, at most unbiased_size / groups), so the held-out sets are group-balanced: 40% of them are the test set, 36% "
    "D^u_train, 12% D^u_val, 12% D^u_test (per group); every other sample is D^b (train), with the data's "
    "own bias"
)
USER_SPLIT_DOCS = {
    "train": "D^b: your biased training samples",
    "unbiased_train": "D^u_train: small set with bias labels (FFW's gates, the audit's privacy head)",
    "unbiased_val": "D^u_val: all selection happens here",
    "unbiased_test": "D^u_test: reported only (optional)",
    "test": "test: reported, never used for selection",
}
HOLDOUT_HELP = (
    f"when debiaskit draws the splits (no `split` in the data): the share of the smallest (y, b) group "
    f"held out from every group for test and D^u (default {DEFAULT_HOLDOUT}); raise it for larger D^u"
)
TENSOR_PARAMS: dict[str, tuple[Any, str]] = {
    "lazy": (
        "auto",
        "1: keep every split on disk (memory-mapped .safetensors); 0: load into memory; "
        f"auto: lazy when a split holds more than {IN_MEMORY_BYTES >> 30} GiB of inputs",
    ),
    "holdout": (None, HOLDOUT_HELP),
}
FOLDER_PARAMS: dict[str, tuple[Any, str]] = {
    "size": (None, "resize every image to size x size (default: the first image's size)"),
    "mode": ("RGB", "Pillow mode the images are converted to: RGB (3 channels) or L (grayscale)"),
    "workers": (2, "DataLoader worker processes that decode and resize the images"),
    "path_column": (None, "metadata.csv column of the image paths (default: path / image / filename / img_filename)"),
    "target_column": ("y", "metadata.csv column of the targets"),
    "bias_column": ("b", "metadata.csv column(s) of the bias labels, comma-separated for several attributes"),
    "split_column": ("split", "metadata.csv column of the splits (optional)"),
    "split_names": (None, "comma-separated split names for the integer codes 0, 1, 2, ... of the split column"),
    "holdout": (None, HOLDOUT_HELP),
    "hash": (
        "names",
        "what a run's fingerprint of the images covers: names (names and sizes, fast) or content "
        "(SHA-256 of every file: a run refuses images replaced by others of the same size)",
    ),
}
TEXT_PARAMS = {
    "tensors": ("lazy",),
    "folder": ("mode", "path_column", "target_column", "bias_column", "split_column", "split_names", "hash"),
}


# -- names ------------------------------------------------------------------------------------------------
def is_user_dataset(name: str) -> bool:
    return isinstance(name, str) and name.split(":", 1)[0] in USER_FORMATS and ":" in name


def parse_user_dataset(name: str) -> tuple[str, Path]:
    """``"tensors:data/x.safetensors"`` -> ("tensors", Path); a clear error for anything else."""
    kind, _, where = name.partition(":")
    if kind not in USER_FORMATS or not where:
        raise ConfigError(
            f"a dataset from disk is tensors:PATH (.safetensors / .npz) or folder:DIR (with metadata.csv), got {name!r}"
        )
    return kind, Path(where).expanduser()


_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """SHA-256 of a file (remembered per path, size and modification time within this process)."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                digest.update(chunk)
        _SHA_CACHE[key] = digest.hexdigest()
    return _SHA_CACHE[key]


# -- reading a tensors file -------------------------------------------------------------------------------
_ST_DTYPES = {
    "F16": np.float16,
    "F32": np.float32,
    "F64": np.float64,
    "U8": np.uint8,
    "I8": np.int8,
    "I16": np.int16,
    "I32": np.int32,
    "I64": np.int64,
    "BOOL": np.bool_,
    "U16": np.uint16,
    "U32": np.uint32,
    "U64": np.uint64,
}


def _read_safetensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Memory-map every tensor of a .safetensors file (format: 8-byte header length, JSON header, data)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise DataError(f"{path} is not a safetensors file (shorter than its header)")
        (n,) = struct.unpack("<Q", head)
        if n > min(size - 8, 100 << 20):
            raise DataError(f"{path} is not a safetensors file (header length {n} does not fit the file)")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"{path} is not a safetensors file (unreadable header: {exc})") from exc
    meta = header.pop("__metadata__", None) or {}
    arrays: dict[str, np.ndarray] = {}
    for key, info in header.items():
        dtype = _ST_DTYPES.get(info.get("dtype"))
        if dtype is None:
            raise DataError(
                f"{path}: tensor {key!r} has dtype {info.get('dtype')}, which debiaskit cannot read "
                f"without a copy; store it as one of {', '.join(_ST_DTYPES)}"
            )
        start, end = info["data_offsets"]
        shape = tuple(info["shape"])
        if end - start != int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize or 8 + n + end > size:
            raise DataError(f"{path}: tensor {key!r} does not match its declared shape {shape}; the file is damaged")
        if end == start:
            arrays[key] = np.zeros(shape, dtype=dtype)
        else:
            arrays[key] = np.memmap(path, dtype=dtype, mode="r", offset=8 + n + start, shape=shape)
    return arrays, {str(k): str(v) for k, v in meta.items()}


def _read_npz(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except ValueError as exc:  # object arrays need pickle, which we never allow
        raise DataError(
            f"{path} holds pickled objects ({exc}); debiaskit loads only plain numeric arrays "
            "(np.savez with numeric / string arrays)"
        ) from exc
    except (OSError, EOFError) as exc:
        raise DataError(f"{path} is not a readable .npz file ({exc})") from exc
    meta: dict[str, str] = {}
    for key in ("bias_names", "class_names"):
        if key in arrays:
            meta[key] = ",".join(str(v) for v in np.atleast_1d(arrays.pop(key)))
    return arrays, meta


def read_tensor_file(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The arrays of a tensors file (memory-mapped for .safetensors) and its string metadata, validated."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"tensors file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        arrays, meta = _read_safetensors(path)
    elif suffix == ".npz":
        arrays, meta = _read_npz(path)
    else:
        raise DataError(f"{path}: a tensors file is .safetensors or .npz, got {suffix or 'no suffix'}")
    _validate_arrays(arrays, where=str(path))
    names = tuple(meta["bias_names"].split(",")) if meta.get("bias_names") else None
    _check_bias_names(names, np.asarray(arrays["b"]), where=str(path))
    check_user_labels(np.asarray(arrays["y"]), np.asarray(arrays["b"]), where=str(path), bias_names=names)
    return arrays, meta


def _check_bias_names(names: tuple[str, ...] | None, b: np.ndarray, *, where: str) -> None:
    cols = b[:, None] if b.ndim == 1 else b
    values = max(len(np.unique(cols[:, a])) for a in range(cols.shape[1]))
    check_bias_names(names, attributes=cols.shape[1], values=values, where=where)


def _validate_arrays(arrays: dict[str, np.ndarray], *, where: str) -> None:
    missing = [k for k in ("x", "y", "b") if k not in arrays]
    if missing:
        raise DataError(
            f"{where} lacks {', '.join(missing)} (it holds: {', '.join(sorted(arrays)) or 'nothing'}); "
            "a tensors file holds x (N, ...), y (N,), b (N,) or (N, A), optional split (N,)"
        )
    x, y, b = arrays["x"], arrays["y"], arrays["b"]
    for key, arr in (("x", x), ("y", y), ("b", b)):
        if arr.ndim == 0:  # len() of a 0-d array is a TypeError
            raise DataError(
                f"{where}: {key} is a single value (0 dimensions); a tensors file holds x (N, ...), "
                "y (N,), b (N,) or (N, A) - one entry per sample along the first axis"
            )
    n = len(y)
    if len(x) != n or len(b) != n:
        raise DataError(f"{where}: x, y and b must have the same length N, got {len(x)}, {n}, {len(b)}")
    if n == 0:
        raise DataError(f"{where} holds no samples")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise DataError(f"{where}: x must be float or integer, got {x.dtype}")
    for key, arr, ndims in (("y", y, (1,)), ("b", b, (1, 2)), ("split", arrays.get("split"), (1,))):
        if arr is None:
            continue
        if not np.issubdtype(arr.dtype, np.integer) or arr.ndim not in ndims:
            raise DataError(
                f"{where}: {key} must be an integer array of shape (N,){' or (N, A)' if key == 'b' else ''}, "
                f"got {arr.dtype} {arr.shape}"
            )
        if len(arr) != n:
            raise DataError(f"{where}: {key} has length {len(arr)}, expected N = {n}")
    if int(y.min()) < 0 or int(b.min()) < 0:
        raise DataError(f"{where}: y and b must be class indices >= 0 (found {int(y.min())}, {int(b.min())})")
    if "split" in arrays:
        bad = sorted(set(np.unique(arrays["split"]).tolist()) - set(SPLIT_CODES) - {UNUSED})
        if bad:
            raise DataError(
                f"{where}: unknown split codes {bad[:5]}; codes: "
                + ", ".join(f"{c} = {s}" for c, s in SPLIT_CODES.items())
                + ", -1 = not used"
            )
    if "aligned" in arrays and (arrays["aligned"].shape[0] != n or arrays["aligned"].dtype != np.bool_):
        raise DataError(f"{where}: aligned must be a bool array of length N = {n}")
    if np.issubdtype(x.dtype, np.floating) and not isinstance(x, np.memmap) and not np.isfinite(x).all():
        raise DataError(f"{where}: x holds NaN or infinite values")


class ArraySamples(Dataset):
    """Samples of in-file arrays (memory-mapped), one item at a time; labels as attributes (no pass needed)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, b: np.ndarray) -> None:
        self.x = x
        self.y = torch.from_numpy(np.array(y, dtype=np.int64))  # labels: small, copied out of the file
        self.b = torch.from_numpy(np.array(b, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return _to_input(np.array(self.x[i])), self.y[i], self.b[i]


def _to_input(x: np.ndarray) -> Tensor:
    t = torch.from_numpy(np.ascontiguousarray(x))
    if t.dtype == torch.uint8:
        return t.float() / 255.0
    if t.is_floating_point():
        return t.float()
    return t.long()


# -- splits ---------------------------------------------------------------------------------------------
def _group_keys(y: np.ndarray, b: np.ndarray) -> np.ndarray:
    cols = [y.astype(np.int64)] + (
        [b.astype(np.int64)] if b.ndim == 1 else [b[:, a].astype(np.int64) for a in range(b.shape[1])]
    )
    return np.unique(np.stack(cols, 1), axis=0, return_inverse=True)[1].reshape(-1)


def draw_splits(
    y: np.ndarray, b: np.ndarray, *, seed: int, unbiased_size: int = 10000, holdout: float = DEFAULT_HOLDOUT
) -> tuple[np.ndarray, str, str]:
    """Split codes for data without a ``split`` array (see ``DRAW_RULE``), the rule in words, and what gives
    larger D^u splits (for the warning when they are small)."""
    groups = _group_keys(y, b)
    rng = np.random.default_rng([int(seed), 20])
    members = [rng.permutation(np.flatnonzero(groups == g)) for g in range(int(groups.max()) + 1)]
    sizes = [len(m) for m in members]
    smallest = int(np.argmin(sizes))
    cap = max(4, unbiased_size // len(members))
    c = min(int(holdout * sizes[smallest]), cap)
    first = members[smallest][0]
    where = f"the smallest group (y={int(y[first])}, b={b[first].tolist()}) has {sizes[smallest]} samples"
    if c < 4:
        needed = 4 / sizes[smallest]  # the holdout that would reach c = 4, if any below 1 does
        todo = (
            (f"raise --param holdout to at least {math.ceil(needed * 100) / 100:g}, " if needed < 0.99 else "")
            + "add a `split` array / column (codes "
            + ", ".join(f"{k} = {v}" for k, v in SPLIT_CODES.items())
            + ", -1 = not used) or use more samples"
        )
        raise DataError(
            f"{where}: holdout {holdout} of it is {c} sample(s), too few to hold out group-balanced D^u "
            f"and test sets (at least 4 per group). {todo[0].upper()}{todo[1:]}"
        )
    counts = {k: max(1, int(round(share * c))) for k, share in DRAW_SHARES.items() if k != "unbiased_train"}
    counts["unbiased_train"] = c - sum(counts.values())
    if counts["unbiased_train"] < 1:
        counts["test"] -= 1 - counts["unbiased_train"]
        counts["unbiased_train"] = 1
    codes = np.zeros(len(y), dtype=np.int64)  # 0 = train (D^b) unless held out
    inverse = {v: k for k, v in SPLIT_CODES.items()}
    for m in members:
        start = 0
        for name in ("test", "unbiased_train", "unbiased_val", "unbiased_test"):
            codes[m[start : start + counts[name]]] = inverse[name]
            start += counts[name]
    rule = (
        DRAW_RULE.format(seed=seed) + f"; here c = {c} per group (holdout {holdout} x {sizes[smallest]}, at most "
        f"{cap}), {len(members)} non-empty groups"
    )
    remedy = (
        f"They were drawn by debiaskit: c = {c} samples held out from every (y, b) group, of which D^u_train "
        f"gets {counts['unbiased_train']} and D^u_val {counts['unbiased_val']}. For larger ones: raise --param "
        f"holdout (now {holdout}, the share held out of the smallest group; {where}), raise --unbiased-size "
        f"(now {unbiased_size}: c is at most unbiased_size / {len(members)} groups = {cap}), give your own "
        "`split` array / column (1 = D^u_train, 2 = D^u_val, 5 = unbiased rows divided 60/20/20 per group), "
        "or use more samples"
    )
    return codes, rule, remedy


GIVEN_REMEDY = (
    "They come from your `split` array / column: put more rows into D^u_train / D^u_val (codes 1 / 2, "
    "or 5 = unbiased rows divided 60/20/20 per (y, b) group), or use more samples"
)


def _holdout(params: dict, *, given_split: bool, where: str) -> float:
    """--param holdout: a share in (0, 1), only for splits debiaskit draws (refused, not ignored, otherwise)."""
    value = params.get("holdout")
    if value is None:
        return DEFAULT_HOLDOUT
    if given_split:
        raise ConfigError(
            f"{where}: --param holdout only applies when debiaskit draws the splits; this data has its "
            "own split (array / column): drop holdout, or change the split"
        )
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    return float(require("holdout", value, OPEN_UNIT_INTERVAL, hint=HOLDOUT_HELP))


def _cap(index: np.ndarray, size: int | None, *, seed: int, stream: int, what: str) -> np.ndarray:
    if size is None or size >= len(index):
        return index
    if size <= 0:
        raise ConfigError(f"{what} must be positive, got {size}")
    return np.sort(np.random.default_rng([int(seed), stream]).choice(index, size=size, replace=False))


def _split_indices(
    codes: np.ndarray,
    y: np.ndarray,
    b: np.ndarray,
    *,
    seed: int,
    train_size: int | None,
    test_size: int | None,
    where: str,
) -> dict[str, np.ndarray]:
    out = {name: np.flatnonzero(codes == code) for code, name in SPLIT_CODES.items() if name != "unbiased"}
    pool = np.flatnonzero(codes == 5)
    if len(pool):  # "unbiased" rows: D^u train / val / test, stratified by (y, b)
        groups = _group_keys(y[pool], b[pool])
        rng = np.random.default_rng([int(seed), 23])
        parts: dict[str, list] = {"unbiased_train": [], "unbiased_val": [], "unbiased_test": []}
        for g in range(int(groups.max()) + 1):
            m = rng.permutation(pool[groups == g])
            cut1 = int(round(UNBIASED_SHARES[0] * len(m)))
            cut2 = cut1 + int(round(UNBIASED_SHARES[1] * len(m)))
            for name, part in zip(parts, (m[:cut1], m[cut1:cut2], m[cut2:])):
                parts[name].append(part)
        for name, chunks in parts.items():
            out[name] = np.sort(np.concatenate([out[name], *chunks])).astype(np.int64)
    empty = [name for name in REQUIRED_SPLITS if len(out[name]) == 0]
    if empty:
        raise DataError(
            f"{where}: no samples in split(s) {', '.join(empty)}; every one of "
            f"{', '.join(REQUIRED_SPLITS)} needs samples (unbiased_test is optional; rows marked "
            "'unbiased' (code 5) are divided into all three D^u splits)"
        )
    out["train"] = _cap(out["train"], train_size, seed=seed, stream=21, what="train_size")
    out["test"] = _cap(out["test"], test_size, seed=seed, stream=22, what="test_size")
    return out


def _lazy_flag(params: dict) -> str:
    v = str(params.get("lazy", "auto")).strip().lower()
    v = {"1": "1", "1.0": "1", "true": "1", "0": "0", "0.0": "0", "false": "0"}.get(v, v)
    if v not in ("auto", "1", "0"):
        raise ConfigError(f"--param lazy must be auto, 1 or 0, got {params.get('lazy')!r}")
    return v


def make_tensor_splits(
    path: Path | str,
    *,
    params: dict | None = None,
    seed: int = 0,
    unbiased_size: int = 10000,
    train_size: int | None = None,
    test_size: int | None = None,
    expected_sha256: str | None = None,
    **_ignored,
):
    """The splits of a tensors file (see the module docstring); ``expected_sha256`` refuses a changed file."""
    path = Path(path).expanduser()
    params = dict(params or {})
    unknown = set(params) - set(TENSOR_PARAMS)
    if unknown:
        raise ConfigError(f"tensors:PATH takes the params {', '.join(TENSOR_PARAMS)}; got {', '.join(sorted(unknown))}")
    lazy = _lazy_flag(params)
    arrays, meta = read_tensor_file(path)
    sha = file_sha256(path)
    if expected_sha256 is not None and sha != expected_sha256:
        raise DataError(
            f"{path} is not the file this run was made from (SHA-256 {sha[:12]}... != recorded "
            f"{expected_sha256[:12]}...): restore the original file to rebuild the run's data"
        )
    x, y, b = arrays["x"], np.asarray(arrays["y"]), np.asarray(arrays["b"])
    holdout = _holdout(params, given_split="split" in arrays, where=str(path))
    if "split" in arrays:
        codes, rule = (
            np.asarray(arrays["split"]),
            "from the file's `split` array (codes "
            + ", ".join(f"{k} = {v}" for k, v in SPLIT_CODES.items())
            + ", -1 = not used)",
        )
        remedy = GIVEN_REMEDY
    else:
        codes, rule, remedy = draw_splits(y, b, seed=seed, unbiased_size=unbiased_size, holdout=holdout)
    index = _split_indices(codes, y, b, seed=seed, train_size=train_size, test_size=test_size, where=str(path))
    warn_small_unbiased(y, b, index, dataset=path.name, remedy=remedy)
    bias_names = tuple(meta["bias_names"].split(",")) if meta.get("bias_names") else None
    aligned = np.asarray(arrays["aligned"]) if "aligned" in arrays else None
    num_classes, num_bias = (
        int(y.max()) + 1,
        infer_cardinalities(torch.from_numpy(np.array(b, dtype=np.int64))),
    )  # one count per attribute
    flip = _column_flipper(arrays, num_bias=num_bias[0], where=str(path))
    given_cf = _given_counterfactuals(arrays, where=str(path))
    item_bytes = int(np.prod(x.shape[1:], dtype=np.int64)) * x.dtype.itemsize
    integer_inputs = np.issubdtype(x.dtype, np.integer) and x.dtype != np.uint8
    samples = ArraySamples(x, y, b)
    built = {}
    for name, idx in index.items():
        if len(idx) == 0:
            built[name] = None
            continue
        al = None if aligned is None else torch.from_numpy(aligned[idx])
        stay_lazy = lazy == "1" or (lazy == "auto" and len(idx) * item_bytes > IN_MEMORY_BYTES) or integer_inputs
        if stay_lazy:
            built[name] = LazyBiasDataset(
                samples,
                index=torch.from_numpy(idx),
                name=f"{path.name}/{name}",
                labels=(samples.y[idx], samples.b[idx]),
                aligned=al,
                num_classes=num_classes,
                num_bias_classes=num_bias,
                bias_names=bias_names,
            )
        else:
            built[name] = BiasDataset(
                images=torch.from_numpy(np.ascontiguousarray(x[idx])),
                y=samples.y[idx],
                b=samples.b[idx],
                num_classes=num_classes,
                num_bias_classes=max(num_bias),
                bias_cardinalities=num_bias,
                name=f"{path.name}/{name}",
                bias_names=bias_names or _bias_names(b),
                aligned=al,
                render=_given_renderer(given_cf, idx)
                if given_cf is not None
                else None
                if flip is None
                else _renderer(flip, x, idx),
            )
            if (
                isinstance(x, np.memmap)
                and np.issubdtype(x.dtype, np.floating)
                and not torch.isfinite(built[name].images).all()
            ):
                raise DataError(f"{path}: x holds NaN or infinite values in split {name}")
    spec = {
        "dataset": f"tensors:{path.resolve()}",
        "format": path.suffix.lower().lstrip("."),
        "path": str(path.resolve()),
        "sha256": sha,
        "size_bytes": path.stat().st_size,
        "params": params,
        "seed": seed,
        "unbiased_size": unbiased_size,
        "train_size": train_size,
        "test_size": test_size,
        "splits_from": rule,
    }
    return user_splits(**built, num_classes=num_classes, num_bias_classes=num_bias, bias_names=bias_names, spec=spec)


def _column_flipper(arrays: dict[str, np.ndarray], *, num_bias: int, where: str):
    """From ``bias_columns``: rows -> the same rows with another bias value (None without the key)."""
    if "bias_columns" not in arrays:
        return None
    cols = np.asarray(arrays["bias_columns"]).astype(np.int64)
    x, b = arrays["x"], arrays["b"]
    if x.ndim != 2 or b.ndim != 1 or not np.issubdtype(x.dtype, np.floating):
        raise DataError(
            f"{where}: bias_columns is for tabular rows: float x (N, F) and one bias attribute b (N,); "
            f"got x {x.dtype} {x.shape}, b {b.shape}"
        )
    if cols.shape != (num_bias,) or cols.min() < 0 or cols.max() >= x.shape[1] or len(set(cols.tolist())) != len(cols):
        raise DataError(
            f"{where}: bias_columns must hold {num_bias} distinct column indices of x (one per bias value), "
            f"got {cols.tolist()}"
        )
    off = torch.from_numpy(np.asarray(x[:, cols].min(0), dtype=np.float32))
    on = torch.from_numpy(np.asarray(x[:, cols].max(0), dtype=np.float32))
    index = torch.from_numpy(cols)

    def flip(rows: Tensor, new_b: Tensor) -> Tensor:
        out = rows.clone().float()
        out[:, index] = off
        out[torch.arange(len(out)), index[new_b.long()]] = on[new_b.long()]
        return out

    return flip


def _given_counterfactuals(arrays: dict[str, np.ndarray], *, where: str) -> np.ndarray | None:
    """The file's ``cf`` array (the counterfactual input of each row), checked against x and b; None without it."""
    if "cf" not in arrays:
        return None
    cf, x, b = arrays["cf"], arrays["x"], arrays["b"]
    if "bias_columns" in arrays:
        raise DataError(f"{where} holds both cf and bias_columns: two sources of counterfactuals; keep one")
    if cf.shape != x.shape or cf.dtype != x.dtype:
        raise DataError(
            f"{where}: cf must have the shape and dtype of x (the counterfactual input of each row), "
            f"got cf {cf.dtype} {cf.shape}, x {x.dtype} {x.shape}"
        )
    if b.ndim != 1:
        raise DataError(
            f"{where}: cf is the counterfactual for one bias attribute; b has {b.shape[1]} "
            "(keep the attribute cf changes in b)"
        )
    if np.issubdtype(cf.dtype, np.floating) and not isinstance(cf, np.memmap) and not np.isfinite(cf).all():
        raise DataError(f"{where}: cf holds NaN or infinite values")
    return cf


def _given_renderer(cf: np.ndarray, idx: np.ndarray):
    """A renderer that returns the given counterfactual of each row (the drawn new bias value is the only
    other one of a binary attribute; with more values, cf is the one counterfactual the file gives)."""
    rows = torch.from_numpy(np.ascontiguousarray(cf[idx]))
    return lambda index, new_b: rows[torch.as_tensor(index)]


def _renderer(flip, x: np.ndarray, idx: np.ndarray):
    rows = torch.from_numpy(np.ascontiguousarray(x[idx], dtype=np.float32))
    return lambda index, new_b: flip(rows[torch.as_tensor(index)], torch.as_tensor(new_b))


def _bias_names(b: np.ndarray) -> tuple[str, ...]:
    return ("bias",) if b.ndim == 1 else tuple(f"bias{a}" for a in range(b.shape[1]))


# -- image folders -----------------------------------------------------------------------------------------
PATH_COLUMNS = ("path", "image", "filename", "img_filename", "file")


class ImageFolderSamples(Dataset):
    """Images listed in metadata.csv, decoded and resized on access (in DataLoader workers). ``files`` are the
    real paths checked at the edge (inside DIR, no symbolic link on the way), opened without following a link."""

    def __init__(self, files: list[str], y: np.ndarray, b: np.ndarray, *, size: tuple[int, int], mode: str) -> None:
        self.files, self.size, self.mode = files, size, mode
        self.y = torch.from_numpy(y.astype(np.int64))
        self.b = torch.from_numpy(b.astype(np.int64))

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        return load_image(Path(self.files[i]), size=self.size, mode=self.mode), self.y[i], self.b[i]


def _read_no_follow(path: Path | str) -> bytes:
    """A regular file's bytes, refusing a symbolic link in its last component (one swapped in after the check)
    and anything that is not a regular file (a FIFO would block: opened non-blocking, then refused)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise OSError(f"{path} is not a regular file")
        return f.read()


def load_image(path: Path, *, size: tuple[int, int] | None, mode: str) -> Tensor:
    """One image as float (C, H, W) in [0, 1]: converted to ``mode`` and resized (bilinear) to ``size`` (H, W)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(_read_no_follow(path))) as img:
            img = img.convert(mode)
            if size is not None and img.size != (size[1], size[0]):
                img = img.resize((size[1], size[0]), Image.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8)
    except (OSError, Image.DecompressionBombError) as exc:  # UnidentifiedImageError is an OSError
        raise DataError(f"cannot read image {path}: {exc}") from exc
    t = torch.from_numpy(arr.copy())
    t = t[None] if t.ndim == 2 else t.permute(2, 0, 1)
    return t.float() / 255.0


# -- metadata.csv: read once, checked at the edge ----------------------------------------------------------
_SAFE_NAME = re.compile(r"[A-Za-z0-9_ .()#%/+\-]{1,64}")  # no ":" or "=": a config / password line is not a header


def _show(value: str) -> str:
    """A value of the user's file, short and printable, for an error message."""
    value = "".join(c if c.isprintable() else "?" for c in value)
    return repr(value if len(value) <= 80 else value[:77] + "...")


def _describe_header(header: list[str]) -> str:
    """The columns, only when the first line looks like column names: a file that is not a metadata file
    (a config, a password file) is described, never echoed."""
    if header and len(header) <= 64 and all(_SAFE_NAME.fullmatch(c) for c in header):
        return f"its columns: {', '.join(header)}"
    return (
        f"its first line is not a header of column names ({len(header)} field(s)); metadata.csv starts with "
        "a header such as path,y,b,split"
    )


def _metadata_text(root: Path) -> tuple[Path, str, str]:
    """(DIR's real path, metadata.csv's text, its SHA-256): a regular file inside DIR (a symbolic link leaving DIR is
    refused), UTF-8 with or without a BOM."""
    csv_path = root / "metadata.csv"
    if not root.is_dir() or not (csv_path.is_file() or csv_path.is_symlink()):
        raise DataError(
            f"{csv_path} does not exist; folder:DIR needs DIR/metadata.csv with columns path, y, b [, split]"
        )
    real_root = root.resolve()
    real = Path(os.path.realpath(csv_path))
    if not real.is_relative_to(real_root):
        raise DataError(
            f"{csv_path} is a symbolic link leading outside {root}: metadata.csv must be a file inside "
            "the dataset folder"
        )
    try:
        raw = _read_no_follow(real)
    except OSError as exc:
        raise DataError(
            f"{csv_path} cannot be read as a metadata file ({exc.strerror or exc}); it must be a regular "
            "file inside the dataset folder"
        ) from exc
    try:
        return real_root, raw.decode("utf-8-sig"), hashlib.sha256(raw).hexdigest()  # Excel writes a BOM
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{csv_path} line {line}: not UTF-8 text (byte {exc.start}); save metadata.csv as UTF-8 "
            "CSV (path, y, b [, split])"
        ) from exc


def _parse_metadata(text: str, *, csv_path: Path) -> tuple[list[str], list[dict], list[int]]:
    """(header, rows as dicts, each row's line number); a clear error, with the line, for anything that is not
    a CSV table with one value per column."""
    reader = csv.reader(io.StringIO(text, newline=""))
    rows, lines = [], []
    try:
        header = [c.strip() for c in next(reader, [])]
        if not header or header == [""]:
            raise DataError(
                f"{csv_path} line 1: expected a header of column names (path, y, b [, split]), got an empty line"
            )
        dups = sorted({c for c in header if header.count(c) > 1})
        if dups:
            shown = ", ".join(c if _SAFE_NAME.fullmatch(c) else _show(c) for c in dups)
            raise DataError(f"{csv_path} line 1: duplicated column(s) {shown}: every column name must appear once")
        for row in reader:
            if not row:
                continue  # a blank line
            if len(row) != len(header):
                raise DataError(
                    f"{csv_path} line {reader.line_num}: {len(row)} field(s), expected {len(header)} "
                    f"(one per column of the header); {_describe_header(header)}"
                )
            rows.append(dict(zip(header, row)))
            lines.append(reader.line_num)
    except csv.Error as exc:
        raise DataError(
            f"{csv_path} line {reader.line_num}: not valid CSV ({exc}); expected rows of "
            "comma-separated values under a header (path, y, b [, split])"
        ) from exc
    if not rows:
        raise DataError(f"{csv_path} lists no images (a header and one row per image expected)")
    return header, rows, lines


def _column(header: list[str], wanted: str | None, fallbacks: tuple[str, ...], *, what: str, csv_path: Path) -> str:
    options = [wanted] if wanted else list(fallbacks)
    for c in options:
        if c in header:
            return c
    raise DataError(
        f"{csv_path} line 1: no {what} ({' / '.join(options)}); {_describe_header(header)}. "
        f"Name it with --param {what.split()[0]}_column=NAME"
    )


def _int_column(rows: list[dict], column: str, *, csv_path: Path, lines: list[int]) -> np.ndarray:
    out = np.empty(len(rows), dtype=np.int64)
    for i, row in enumerate(rows):
        try:
            out[i] = int(str(row[column]).strip())
        except ValueError as exc:
            raise DataError(
                f"{csv_path} line {lines[i]}: {column} = {_show(row[column])} is not an integer class "
                "index (0..K-1 expected)"
            ) from exc
    if len(out) and out.min() < 0:
        i = int(np.argmin(out))
        raise DataError(f"{csv_path} line {lines[i]}: {column} = {int(out[i])}; class indices are 0..K-1 (>= 0)")
    return out


def _image_files(root: Path, real_root: Path, paths: list[str], *, csv_path: Path, lines: list[int]) -> list[str]:
    """Each row's real path: relative, inside DIR after every symbolic link is followed, an existing regular
    file. Refused with the row's line and value (a listed path is never opened before this check)."""
    out, missing = [], []
    for i, q in enumerate(paths):
        where = f"{csv_path} line {lines[i]} (row {i + 1})"
        if not q:
            raise DataError(f"{where}: the path is empty; every row names an image file relative to {root}")
        if os.path.isabs(q) or q.startswith(("/", "\\")) or PureWindowsPath(q).drive:
            raise DataError(
                f"{where}: path {_show(q)} is absolute; paths in metadata.csv are relative to {root} and stay inside it"
            )
        if os.path.normpath(q).split(os.sep)[0] == "..":
            raise DataError(
                f"{where}: path {_show(q)} climbs out of {root} with '..'; images must lie inside the dataset folder"
            )
        real = Path(os.path.realpath(real_root / q))
        if not real.is_relative_to(real_root):
            raise DataError(
                f"{where}: path {_show(q)} leads outside {root} through a symbolic link (to a file "
                "elsewhere); images must lie inside the dataset folder"
            )
        if not real.exists():
            missing.append(f"line {lines[i]}: {_show(q)}")
        elif not real.is_file():
            raise DataError(f"{where}: path {_show(q)} is not a file (a folder or a device); every row names an image")
        out.append(str(real))
    if missing:
        raise DataError(f"{len(missing)} image(s) listed in {csv_path} do not exist under {root}, e.g. {missing[0]}")
    return out


_DECODED: dict[tuple[str, int, int], str] = {}


def _decode_once(file: str) -> str:
    """Decode one image completely (a truncated file fails here, not in a DataLoader worker); its SHA-256.
    Remembered per path, size and modification time within this process (``data show`` reads twice)."""
    from PIL import Image

    st = os.stat(file)
    key = (file, st.st_size, st.st_mtime_ns)
    if key not in _DECODED:
        raw = _read_no_follow(file)
        with Image.open(io.BytesIO(raw)) as img:
            img.load()
        _DECODED[key] = hashlib.sha256(raw).hexdigest()
    return _DECODED[key]


def _check_images(files: list[str], paths: list[str], *, csv_path: Path, lines: list[int]) -> list[str]:
    """Every image decoded once, at the edge (threads: Pillow decodes without the GIL); each file's SHA-256.
    The first bad one (in row order) is refused with its line and path."""
    from PIL import Image

    def one(i: int):
        try:
            return _decode_once(files[i])
        except Image.UnidentifiedImageError:
            return DataError(
                f"{csv_path} line {lines[i]} (row {i + 1}): {_show(paths[i])} is not an image Pillow "
                "can read (PNG, JPEG, BMP, ...); every row must list an image file"
            )
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            return DataError(
                f"{csv_path} line {lines[i]} (row {i + 1}): {_show(paths[i])} is a damaged or "
                f"unreadable image ({type(exc).__name__}: {str(exc)[:120]}); replace or drop it"
            )

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        results = list(pool.map(one, range(len(files))))
    for r in results:
        if isinstance(r, DataError):
            raise r
    return results


def _fingerprint(paths: list[str], files: list[str], digests: list[str], *, how: str) -> str:
    """What a run records of the images: names and sizes (default, the format of earlier runs) or names and
    contents (``--param hash=content``)."""
    if how == "content":
        return hashlib.sha256("\n".join(f"{q}|sha256:{d}" for q, d in zip(paths, digests)).encode()).hexdigest()
    return hashlib.sha256("\n".join(f"{q}|{os.stat(f).st_size}" for q, f in zip(paths, files)).encode()).hexdigest()


FINGERPRINT_TEXT = {
    "names": "names and sizes; pass --param hash=content to cover contents",
    "content": "names and contents (SHA-256 of every image file)",
}


def _split_codes(
    rows: list[dict], column: str, names: list[str] | None, *, csv_path: Path, lines: list[int]
) -> np.ndarray:
    by_name = {v: k for k, v in SPLIT_CODES.items()}
    out = np.empty(len(rows), dtype=np.int64)
    for i, row in enumerate(rows):
        v = str(row[column]).strip()
        if v in ("", "-1", "none", "unused"):
            out[i] = UNUSED
        elif v in by_name:
            out[i] = by_name[v]
        elif v.lstrip("-").isdigit():
            out[i] = _code_to_split(int(v), names, by_name, where=f"{csv_path} line {lines[i]}")
        else:
            raise DataError(
                f"{csv_path} line {lines[i]}: split {_show(v)} is not one of {', '.join(by_name)} (or a code)"
            )
    return out


def _code_to_split(code: int, names: list[str] | None, by_name: dict[str, int], *, where: str) -> int:
    if names is not None:
        if not 0 <= code < len(names):
            raise DataError(f"{where}: split code {code} has no name in split_names {names}")
        name = names[code]
    elif code in SPLIT_CODES:
        name = SPLIT_CODES[code]
    else:
        raise DataError(
            f"{where}: split code {code} is not one of {SPLIT_CODES} (or -1 = not used); "
            "map other codes with --param split_names=..."
        )
    if name in ("", "unused", "none", "-1"):
        return UNUSED
    if name not in by_name:
        raise DataError(f"{where}: split name {name!r} is not one of {', '.join(by_name)} (or unused)")
    return by_name[name]


def _folder_params(params: dict | None) -> dict[str, Any]:
    params = dict(params or {})
    unknown = set(params) - set(FOLDER_PARAMS)
    if unknown:
        raise ConfigError(f"folder:DIR takes the params {', '.join(FOLDER_PARAMS)}; got {', '.join(sorted(unknown))}")
    out = {k: params.get(k, default) for k, (default, _) in FOLDER_PARAMS.items()}
    if out["size"] is not None:
        out["size"] = int(out["size"])
        if out["size"] <= 0:
            raise ConfigError(f"--param size must be positive, got {out['size']}")
    out["workers"] = int(out["workers"])
    if out["mode"] not in ("RGB", "L"):
        raise ConfigError(f"--param mode must be RGB or L, got {out['mode']!r}")
    if out["hash"] not in FINGERPRINT_TEXT:
        raise ConfigError(
            f"--param hash must be names (the default: names and sizes) or content (SHA-256 of every "
            f"image), got {out['hash']!r}"
        )
    return out


def read_image_folder(root: Path | str, params: dict | None = None) -> dict[str, Any]:
    """Parse and check DIR/metadata.csv and every image it lists (inside DIR, decodable), at the edge."""
    root = Path(root).expanduser()
    p = _folder_params(params)
    real_root, text, sha = _metadata_text(root)
    csv_path = root / "metadata.csv"
    header, rows, lines = _parse_metadata(text, csv_path=csv_path)
    path_col = _column(header, p["path_column"], PATH_COLUMNS, what="path column", csv_path=csv_path)
    y_col = _column(header, p["target_column"], (), what="target column", csv_path=csv_path)
    b_cols = [
        _column(header, c.strip(), (), what="bias column", csv_path=csv_path) for c in str(p["bias_column"]).split(",")
    ]
    y = _int_column(rows, y_col, csv_path=csv_path, lines=lines)
    b = np.stack([_int_column(rows, c, csv_path=csv_path, lines=lines) for c in b_cols], 1)
    b = b[:, 0] if len(b_cols) == 1 else b
    check_user_labels(y, b, where=str(csv_path), bias_names=tuple(b_cols))
    paths = [str(r[path_col]).strip() for r in rows]
    files = _image_files(root, real_root, paths, csv_path=csv_path, lines=lines)
    codes = None
    if p["split_column"] in header:
        names = [s.strip() for s in p["split_names"].split(",")] if p["split_names"] else None
        codes = _split_codes(rows, p["split_column"], names, csv_path=csv_path, lines=lines)
    digests = _check_images(files, paths, csv_path=csv_path, lines=lines)
    first = load_image(Path(files[0]), size=None, mode=p["mode"])
    size = (p["size"], p["size"]) if p["size"] else tuple(first.shape[1:])
    return {
        "root": root,
        "csv": csv_path,
        "paths": paths,
        "files": files,
        "y": y,
        "b": b,
        "codes": codes,
        "size": size,
        "channels": int(first.shape[0]),
        "params": p,
        "bias_names": tuple(b_cols) if len(b_cols) > 1 or b_cols[0] != "b" else None,
        "metadata_sha256": sha,
        "images_fingerprint": _fingerprint(paths, files, digests, how=p["hash"]),
    }


def make_folder_splits(
    root: Path | str,
    *,
    params: dict | None = None,
    seed: int = 0,
    unbiased_size: int = 10000,
    train_size: int | None = None,
    test_size: int | None = None,
    expected: dict[str, str] | None = None,
    **_ignored,
):
    """The splits of an image folder (see the module docstring); ``expected`` checksums refuse changed data."""
    info = read_image_folder(root, params)
    covered = "contents" if info["params"]["hash"] == "content" else "names and sizes"
    for key, what in (("metadata_sha256", "metadata.csv"), ("images_fingerprint", f"the image files ({covered})")):
        if expected and expected.get(key) and expected[key] != info[key]:
            raise DataError(
                f"{info['root']}: {what} changed since this run was made ({info[key][:12]}... != recorded "
                f"{expected[key][:12]}...): restore the original data to rebuild the run's splits"
            )
    y, b = info["y"], info["b"]
    holdout = _holdout(info["params"], given_split=info["codes"] is not None, where=str(info["csv"]))
    if info["codes"] is not None:
        codes, rule = info["codes"], f"from the {info['params']['split_column']!r} column of metadata.csv"
        remedy = GIVEN_REMEDY
    else:
        codes, rule, remedy = draw_splits(y, b, seed=seed, unbiased_size=unbiased_size, holdout=holdout)
    index = _split_indices(codes, y, b, seed=seed, train_size=train_size, test_size=test_size, where=str(info["csv"]))
    warn_small_unbiased(y, b, index, dataset=info["root"].name, remedy=remedy)
    samples = ImageFolderSamples(info["files"], y, b, size=info["size"], mode=info["params"]["mode"])
    num_classes, num_bias = (
        int(y.max()) + 1,
        infer_cardinalities(torch.from_numpy(np.array(b, dtype=np.int64))),
    )  # one count per attribute
    built = {
        name: None
        if len(idx) == 0
        else LazyBiasDataset(
            samples,
            index=torch.from_numpy(idx),
            name=f"{info['root'].name}/{name}",
            labels=(samples.y[idx], samples.b[idx]),
            num_classes=num_classes,
            num_bias_classes=num_bias,
            bias_names=info["bias_names"],
            num_workers=info["params"]["workers"],
        )
        for name, idx in index.items()
    }
    spec = {
        "dataset": f"folder:{info['root'].resolve()}",
        "format": "folder",
        "path": str(info["root"].resolve()),
        "metadata_sha256": info["metadata_sha256"],
        "images_fingerprint": info["images_fingerprint"],
        "images": len(info["paths"]),
        "params": {k: v for k, v in info["params"].items() if v is not None},
        "input_shape": [info["channels"], *info["size"]],
        "seed": seed,
        "unbiased_size": unbiased_size,
        "train_size": train_size,
        "test_size": test_size,
        "splits_from": rule,
    }
    return user_splits(
        **built, num_classes=num_classes, num_bias_classes=num_bias, bias_names=info["bias_names"], spec=spec
    )


# -- the registry's hooks ------------------------------------------------------------------------------------
def make_user_splits(name: str, *, params: dict | None = None, **kwargs):
    kind, where = parse_user_dataset(name)
    kwargs.pop("unbiased_fractions", None)
    if kind == "tensors":
        return make_tensor_splits(where, params=params, **kwargs)
    return make_folder_splits(where, params=params, **kwargs)


def user_splits_from_spec(spec: dict[str, Any]):
    """Rebuild the splits a run recorded; refuses data that changed since (by its checksums)."""
    kind, where = parse_user_dataset(spec["dataset"])
    kwargs = {k: spec[k] for k in ("seed", "unbiased_size", "train_size", "test_size") if k in spec}
    if not where.exists():
        raise DataError(
            f"the run's data {where} is gone (it was recorded with "
            f"{'SHA-256 ' + spec['sha256'][:12] + '...' if spec.get('sha256') else 'its checksums'}); "
            "put it back at that path to rebuild the run's splits"
        )
    if kind == "tensors":
        return make_tensor_splits(where, params=spec.get("params"), expected_sha256=spec.get("sha256"), **kwargs)
    params = {k: v for k, v in (spec.get("params") or {}).items() if k in FOLDER_PARAMS}
    return make_folder_splits(
        where, params=params, expected={k: spec.get(k) for k in ("metadata_sha256", "images_fingerprint")}, **kwargs
    )


def describe_user_dataset(name: str, *, params: dict | None = None) -> dict[str, Any]:
    kind, where = parse_user_dataset(name)
    if kind == "tensors":
        arrays, meta = read_tensor_file(where)
        x, y, b = arrays["x"], np.asarray(arrays["y"]), np.asarray(arrays["b"])
        info = {
            "description": f"your tensors file ({where.suffix.lstrip('.')}, {len(y)} samples, x {x.dtype} "
            f"{tuple(x.shape[1:])})",
            "source": "a user file, read safely (safetensors memory-mapped / npz without pickle)",
            "files": str(where.resolve()),
            "sha256": file_sha256(where),
            "normalisation": "uint8 x / 255; float x as given; integer x passed through",
            "params": {k: {"default": d, "help": h} for k, (d, h) in TENSOR_PARAMS.items()},
            "splits_from": "the file's `split` array" if "split" in arrays else "drawn by debiaskit (no `split` array)",
        }
        names = meta.get("bias_names")
    else:
        folder = read_image_folder(where, params)
        y, b = folder["y"], folder["b"]
        info = {
            "description": f"your image folder ({len(y)} images, {folder['channels']} x {folder['size'][0]} x "
            f"{folder['size'][1]} after resizing)",
            "source": "images listed in metadata.csv (each decoded once when the folder is read), decoded with "
            "Pillow in DataLoader workers",
            "files": str(where.resolve()),
            "metadata_sha256": folder["metadata_sha256"],
            "fingerprint": FINGERPRINT_TEXT[folder["params"]["hash"]],
            "normalisation": "pixel / 255 (float in [0, 1])",
            "params": {k: {"default": d, "help": h} for k, (d, h) in FOLDER_PARAMS.items()},
            "splits_from": "the split column of metadata.csv"
            if folder["codes"] is not None
            else "drawn by debiaskit (no split column)",
        }
        names = ",".join(folder["bias_names"]) if folder["bias_names"] else None
    n_attr = 1 if b.ndim == 1 else b.shape[1]
    info.update(
        {
            "name": name,
            "prepared": True,
            "bias_attributes": names.split(",") if names else list(_bias_names(b)),
            "num_classes": int(y.max()) + 1,
            "num_bias_classes": max(infer_cardinalities(torch.from_numpy(np.array(b, dtype=np.int64)))),
            "bias_cardinalities": list(infer_cardinalities(torch.from_numpy(np.array(b, dtype=np.int64)))),
            "attributes": n_attr,
            "splits": USER_SPLIT_DOCS,
        }
    )
    return info


def user_text_params(name: str) -> tuple[str, ...]:
    kind = name.split(":", 1)[0]
    return TEXT_PARAMS.get(kind, ())


def user_param_names(name: str) -> tuple[str, tuple[str, ...]]:
    """("tensors:PATH" or "folder:DIR", the params that kind takes), for the CLI's check of names."""
    kind, _ = parse_user_dataset(name)
    return ("tensors:PATH", tuple(TENSOR_PARAMS)) if kind == "tensors" else ("folder:DIR", tuple(FOLDER_PARAMS))


def split_group_counts(splits) -> dict[str, Any]:
    """(y, b) group counts of every split (for ``data show`` and the train printout)."""
    return {
        name: group_counts(d.y, d.b, num_classes=d.num_classes, num_bias=d.bias_cardinalities)
        for name, d in splits.items()
        if d.b is not None
    }


def save_tensor_file(
    path: Path | str,
    *,
    x: Tensor,
    y: Tensor,
    b: Tensor,
    split: Tensor | None = None,
    bias_names: tuple[str, ...] | None = None,
) -> Path:
    """Write a tensors file debiaskit reads (``.safetensors``), atomically, refusing to replace a file.

    Example::

        save_tensor_file("my-data.safetensors", x=x, y=y, b=b, split=split)   # split: codes SPLIT_CODES
    """
    from safetensors.torch import save

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ConfigError(f"save_tensor_file writes .safetensors, got {path}")
    if path.exists():
        raise ConfigError(f"{path} exists; debiaskit never replaces a file it did not create: choose another path")
    tensors = {"x": x.contiguous(), "y": y.long().contiguous(), "b": b.long().contiguous()}
    if split is not None:
        tensors["split"] = split.long().contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    # serialised in memory: safetensors' save_file would leave its own .tmpXXXXXX beside the user's files if killed
    tmp.write_bytes(save(tensors, metadata={"bias_names": ",".join(bias_names)} if bias_names else None))
    try:
        os.link(tmp, path)  # exclusive: fails if the path appeared meanwhile
    finally:
        tmp.unlink(missing_ok=True)
    return path
