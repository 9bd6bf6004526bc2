"""CelebA from the standard on-disk layout (never downloaded by debiaskit: bring your own folder).

Expected under ``root``::

    img_align_celeba/000001.jpg ...
    list_attr_celeba.txt       line 1: number of images; line 2: the 40 attribute names;
                               then "000001.jpg -1  1 ..." (values -1 / 1)
    list_eval_partition.txt    "000001.jpg 0" (0 = train, 1 = valid, 2 = test)

The target is one attribute (``Blond_Hair`` by default, or e.g. ``Eyeglasses``), the bias another
(``Male``). ``aligned`` marks the *majority pairing*: the one-to-one pairing of target and bias values that
covers most samples of the official training partition (Blond_Hair x Male: blond <-> female,
not blond <-> male, the usual bias-aligned groups of LfF / Group DRO). Images are centre-cropped to a square,
resized to ``size`` x ``size`` with Pillow (bilinear) and kept as uint8 (N, 3, size, size).

Two entry points:

* :func:`load_celeba` - one official partition as a :class:`BiasDataset` (Python only);
* the registered dataset ``celeba`` - ``make_splits("celeba", params={"root": DIR, ...})`` and
  ``debiaskit train --dataset celeba --param root=DIR``; the folder is the ``root`` param or, when it is
  not given, the environment variable ``DEBIASKIT_CELEBA``. Its five splits:

  - ``train``: the official *train* partition (biased; its realised rho is the share of aligned samples);
  - ``unbiased_train`` / ``unbiased_val`` / ``unbiased_test``: a (target x bias) group-balanced subsample of
    the official *valid* partition, split 60/20/20 inside each group (the usual "small unbiased set with
    bias labels" that FFW / DFR use); ``unbiased_size`` caps its total: per group
    min(smallest valid group, unbiased_size // 4) images;
  - ``test``: the official *test* partition, NOT balanced (report worst-group and both averaging
    conventions, as the audit does).

Resized images of whole partitions are cached as uint8 ``.npy`` files under ``$DEBIASKIT_DATA/celeba/``,
keyed by a SHA-256 of the two annotation files, the folder and ``size``; ``debiaskit data prepare celeba
--from DIR`` fills that cache (at 64 x 64) ahead of time.

Example::

    from debiaskit.data import load_celeba, make_splits
    test = load_celeba("~/data/celeba", split="test", target="Blond_Hair", bias="Male", size=64)
    test.summary()   # {'size': 19962, 'realised_rho': ...}
    splits = make_splits("celeba", params={"root": "~/data/celeba", "size": 64}, seed=0)
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._io import write_json
from .._validate import check_param_names
from ..errors import ConfigError, DataError
from ._dataset import BiasDataset
from ._registry import Splits, StandaloneDataset, register_dataset
from ._sources import data_root

PARTITIONS = {"train": 0, "valid": 1, "test": 2}
ATTR_FILE = "list_attr_celeba.txt"
PARTITION_FILE = "list_eval_partition.txt"
IMAGE_DIR = "img_align_celeba"
ENV_VAR = "DEBIASKIT_CELEBA"
CACHE_VERSION = "v1-centre-crop-bilinear"  # bump when the image pipeline changes: old caches are ignored
EXPECTED = f"{IMAGE_DIR}/*.jpg, {ATTR_FILE} and {PARTITION_FILE}"
HOW_TO_GET = (
    f"CelebA cannot be downloaded by debiaskit: bring your own copy of the aligned CelebA folder "
    f"(it must hold {EXPECTED}) and pass it as the `root` param (`--param root=DIR`, "
    f"`data show celeba --root DIR`) or set {ENV_VAR}=DIR."
)

# name -> (default, help); ``root`` None means "$DEBIASKIT_CELEBA"
CELEBA_PARAMS: dict[str, tuple[Any, str]] = {
    "root": (None, f"the CelebA folder ({EXPECTED}); default ${ENV_VAR}"),
    "target": ("Blond_Hair", "target attribute (one of the 40 CelebA attributes, e.g. Eyeglasses)"),
    "bias": ("Male", "bias attribute (another CelebA attribute)"),
    "size": (64, "images are centre-cropped to a square and resized to size x size"),
    "cache": (1, "1: cache resized partitions under $DEBIASKIT_DATA/celeba (fast reloads); 0: never write"),
}
TEXT_PARAMS = ("root", "target", "bias")
CELEBA_SPLIT_DOCS = {
    "train": "D^b: the official CelebA train partition (biased; realised rho = share of majority-paired samples)",
    "unbiased_train": "D^u_train: 60% of a (target x bias) group-balanced subsample of the official valid partition",
    "unbiased_val": "D^u_val: 20% of that balanced subsample (balanced groups); all selection happens here",
    "unbiased_test": "D^u_test: 20% of that balanced subsample (balanced groups)",
    "test": "the official test partition, NOT group-balanced: read worst-group and group-mean accuracy; "
    "reported, never used for selection",
}


# --- annotation files -----------------------------------------------------------------------------


def read_celeba_attributes(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    """Parse ``list_attr_celeba.txt`` -> (image names, attribute names, int8 matrix of -1/1)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"missing {path.name} in {path.parent} (CelebA's attribute annotations)")
    return _parse_attributes(path.read_text(), path)


def _parse_attributes(text: str, path: Path) -> tuple[list[str], list[str], np.ndarray]:
    lines = text.splitlines()
    if len(lines) < 2 or not lines[0].strip().isdigit():
        raise DataError(f"{path}: the first line must be the number of images (CelebA's header)")
    count, names = int(lines[0].strip()), lines[1].split()
    body = [line for line in lines[2:] if line.strip()]
    if len(body) != count:
        raise DataError(f"{path}: the header announces {count} images but {len(body)} rows follow")
    fast = _parse_values_fast(body, len(names))
    if fast is not None:
        return fast[0], names, fast[1]
    rows = [line.split() for line in body]  # slow path: find the row that is wrong and say so
    bad = next((r for r in rows if len(r) != len(names) + 1), None)
    if bad is not None:
        raise DataError(f"{path}: row {bad[0]!r} has {len(bad) - 1} values for {len(names)} attributes")
    try:
        values = np.array([[int(v) for v in r[1:]] for r in rows], dtype=np.int64)
    except ValueError as exc:
        raise DataError(f"{path}: attribute values must be -1 or 1 ({exc})") from exc
    if values.size and not np.isin(values, (-1, 1)).all():
        raise DataError(f"{path}: attribute values must be -1 or 1")
    return [r[0] for r in rows], names, values.astype(np.int8)


def _parse_values_fast(body: list[str], num_attrs: int) -> tuple[list[str], np.ndarray] | None:
    """(file names, int8 values) in ~1 s for the real 202,599 rows, or None if anything is off.

    Python's per-token split and int() take ~20 s on the real file; numpy's C text parser does the
    values in one call. Every valid value ("-1" or "1") holds exactly one "1", so counting "1"s checks
    each row's length; the ±1 check afterwards catches values such as "11" that would fool the count.
    """
    import warnings

    pairs = [line.split(None, 1) for line in body]
    if any(len(p) != 2 or p[1].count("1") != num_attrs for p in pairs):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)  # numpy warns (not raises) on junk
            values = np.fromstring(" ".join(p[1] for p in pairs), dtype=np.int64, sep=" ")
    except (ValueError, DeprecationWarning):
        return None
    if values.size != len(body) * num_attrs or not np.isin(values, (-1, 1)).all():
        return None
    return [p[0] for p in pairs], values.astype(np.int8).reshape(len(body), num_attrs)


def read_celeba_partition(path: Path) -> dict[str, int]:
    """Parse ``list_eval_partition.txt`` -> {image name: 0/1/2}. A CSV-style header line is skipped."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"missing {path.name} in {path.parent} (CelebA's official train/valid/test split)")
    return _parse_partition(path.read_text(), path)


def _parse_partition(text: str, path: Path) -> dict[str, int]:
    out = {}
    for i, line in enumerate(text.splitlines()):
        parts = line.replace(",", " ").split()
        if not parts or (i == 0 and not parts[-1].isdigit()):
            continue
        if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
            raise DataError(f"{path}: line {i + 1} should be 'IMAGE.jpg 0|1|2', got {line!r}")
        out[parts[0]] = int(parts[1])
    return out


@dataclass(frozen=True)
class CelebaIndex:
    """The annotations of one CelebA folder: file names, attributes, official partition, checksum."""

    root: Path
    files: list[str]
    names: list[str]
    values: np.ndarray  # (N, 40) int8, -1 / 1
    partition: np.ndarray  # (N,) 0 = train, 1 = valid, 2 = test
    sha256: str  # of the two annotation files: the identity of the data for caches and specs

    def labels(self, attribute: str, *, role: str = "attribute") -> np.ndarray:
        if attribute not in self.names:
            raise ConfigError(f"unknown CelebA {role} attribute {attribute!r}; available: {', '.join(self.names)}")
        return (self.values[:, self.names.index(attribute)] == 1).astype(np.int64)

    def members(self, split: str) -> np.ndarray:
        """Row indices of an official partition, in file order."""
        return np.flatnonzero(self.partition == PARTITIONS[split])


def read_celeba_index(root: Path | str) -> CelebaIndex:
    """Read and check both annotation files of a CelebA folder (images are not opened)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(
            f"CelebA folder {root} does not exist; it must hold {IMAGE_DIR}/, {ATTR_FILE} and {PARTITION_FILE}"
        )
    attr_path, part_path = root / ATTR_FILE, root / PARTITION_FILE
    if not attr_path.is_file():
        raise DataError(
            f"missing {ATTR_FILE} in {root} (CelebA's attribute annotations); a CelebA folder holds {EXPECTED}"
        )
    attr_bytes = attr_path.read_bytes()
    files, names, values = _parse_attributes(attr_bytes.decode(), attr_path)
    if not part_path.is_file():
        raise DataError(
            f"missing {PARTITION_FILE} in {root} (CelebA's official train/valid/test split); "
            f"a CelebA folder holds {EXPECTED}"
        )
    part_bytes = part_path.read_bytes()
    partition = _parse_partition(part_bytes.decode(), part_path)
    missing = [f for f in files if f not in partition]
    if missing:
        raise DataError(f"{PARTITION_FILE} has no partition for {len(missing)} image(s), e.g. {missing[0]}")
    digest = hashlib.sha256()
    for blob in (attr_bytes, b"\0", part_bytes):
        digest.update(blob)
    return CelebaIndex(
        root=root,
        files=files,
        names=names,
        values=values,
        partition=np.array([partition[f] for f in files], dtype=np.int8),
        sha256=digest.hexdigest(),
    )


# --- images and their cache -----------------------------------------------------------------------


def _load_image(path: Path, size: int) -> np.ndarray:
    from PIL import Image

    if not path.is_file():
        raise DataError(f"missing CelebA image {path}")
    with Image.open(path) as file:
        img = file.convert("RGB")
    w, h = img.size
    s = min(w, h)  # centre square crop keeps the face's aspect ratio
    img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    img = img.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)


def _decode(index: CelebaIndex, rows: np.ndarray, size: int) -> np.ndarray:
    out = np.empty((len(rows), 3, size, size), dtype=np.uint8)  # preallocated: no 2x peak from np.stack
    for i, row in enumerate(rows):
        out[i] = _load_image(index.root / IMAGE_DIR / index.files[row], size)
    return out


def celeba_cache_dir(index: CelebaIndex, size: int) -> Path:
    """``$DEBIASKIT_DATA/celeba/<key>-s<size>``; the key hashes annotations, folder and pipeline version."""
    key = hashlib.sha256(f"{index.sha256}|{index.root.resolve()}|{CACHE_VERSION}".encode()).hexdigest()[:20]
    return data_root() / "celeba" / f"{key}-s{size}"


def _read_cache(path: Path, count: int, size: int) -> np.ndarray | None:
    """The memory-mapped cached partition, or None when absent or not of the expected shape."""
    if not path.is_file():
        return None
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        return None  # truncated or foreign file: rebuilt below
    return arr if arr.dtype == np.uint8 and arr.shape == (count, 3, size, size) else None


def _write_cache(path: Path, images: np.ndarray, meta: dict) -> None:
    """Atomic: write a temporary file next to ``path`` and rename it (concurrent writers are harmless)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, images, allow_pickle=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    write_json(path.parent / "cache.json", meta)  # what the folder holds, for a curious user


def partition_images(
    index: CelebaIndex, split: str, positions: np.ndarray | None = None, *, size: int, cache: bool = True
) -> np.ndarray:
    """uint8 images of an official partition, or of ``positions`` (sorted, within the partition).

    A cached partition is read memory-mapped; a whole partition decoded from JPEG is written to the
    cache; a subset is decoded without caching (decoding the whole partition would cost far more).
    """
    rows = index.members(split)
    positions = np.arange(len(rows)) if positions is None else np.asarray(positions, dtype=np.int64)
    path = celeba_cache_dir(index, size) / f"{split}.npy"
    cached = _read_cache(path, len(rows), size) if cache else None
    if cached is not None:
        return np.ascontiguousarray(cached[positions])
    images = _decode(index, rows[positions], size)
    if cache and len(positions) == len(rows) and len(rows):
        _write_cache(
            path,
            images,
            {
                "root": str(index.root.resolve()),
                "annotations_sha256": index.sha256,
                "size": size,
                "pipeline": CACHE_VERSION,
            },
        )
    return images


# --- one partition --------------------------------------------------------------------------------


def load_celeba(
    root: Path | str,
    *,
    split: str = "train",
    target: str = "Blond_Hair",
    bias: str = "Male",
    size: int = 64,
    limit: int | None = None,
    cache: bool = False,
) -> BiasDataset:
    """One official CelebA partition as a :class:`BiasDataset` (y = target, b = bias, both 0/1).

    ``split`` is ``train``, ``valid`` or ``test``; ``limit`` keeps the first N images of the partition
    (debugging: the full training partition is 162,770 images, ~2 GB at 64 x 64). ``cache=True`` reads
    and writes the resized-image cache of ``make_splits("celeba")``.
    """
    if split not in PARTITIONS:
        raise ConfigError(f"split must be one of {', '.join(PARTITIONS)}, got {split!r}")
    if size < 1:
        raise ConfigError(f"size must be positive, got {size}")
    index = read_celeba_index(root)
    y_all, b_all, majority = _targets(index, target, bias)
    positions = np.arange(len(index.members(split)))
    if limit is not None:
        positions = positions[:limit]
    if len(positions) == 0:
        raise DataError(f"CelebA partition {split!r} is empty in {index.root}")
    images = partition_images(index, split, positions, size=size, cache=cache)
    return _dataset(
        index,
        split,
        index.members(split)[positions],
        images,
        y_all,
        b_all,
        majority,
        target=target,
        bias=bias,
        size=size,
        name=f"celeba-{target}-{bias}/{split}",
    )


def _targets(index: CelebaIndex, target: str, bias: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y_all = index.labels(target, role="target")
    b_all = index.labels(bias, role="bias")
    if target == bias:
        raise ConfigError("target and bias must be different attributes")
    train = index.members("train")
    return y_all, b_all, _majority_pairing(y_all[train], b_all[train])


def _dataset(
    index: CelebaIndex,
    split: str,
    rows: np.ndarray,
    images: np.ndarray,
    y_all: np.ndarray,
    b_all: np.ndarray,
    majority: np.ndarray,
    *,
    target: str,
    bias: str,
    size: int,
    name: str,
) -> BiasDataset:
    y, b = torch.from_numpy(y_all[rows]), torch.from_numpy(b_all[rows])
    return BiasDataset(
        images=torch.from_numpy(images),
        y=y,
        b=b,
        num_classes=2,
        num_bias_classes=2,
        name=name,
        bias_names=(bias,),
        mean=0.5,
        std=0.5,
        aligned=b == torch.from_numpy(majority)[y],
        info={
            "source": "celeba",
            "root": str(index.root),
            "target": target,
            "bias": bias,
            "size": size,
            "partition": split,
            "majority_pairing": majority.tolist(),
            "files": [index.files[i] for i in rows],
        },
    )


def _majority_pairing(y: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The one-to-one pairing target value -> bias value that covers the most training samples.

    For two binary attributes it is either identity (y=k <-> b=k) or the swap; a one-to-one pairing
    (not the per-class majority) keeps both bias values aligned with some class, as in LfF's CelebA:
    per-class majority would pair *both* hair colours with female. Ties go to identity.
    """
    if len(y) == 0:
        raise DataError("CelebA's training partition is empty: the majority pairing is undefined")
    identity = int((y == b).sum())
    return np.array([0, 1]) if identity >= len(y) - identity else np.array([1, 0])


def load_celeba_splits(
    root: Path | str, *, target: str = "Blond_Hair", bias: str = "Male", size: int = 64, limit: int | None = None
) -> dict[str, BiasDataset]:
    """All three official partitions: ``{"train": ..., "valid": ..., "test": ...}``."""
    return {s: load_celeba(root, split=s, target=target, bias=bias, size=size, limit=limit) for s in PARTITIONS}


# --- the registered dataset "celeba" --------------------------------------------------------------


def celeba_root(root: Path | str | None = None) -> Path:
    """The CelebA folder: ``root`` if given, else ``$DEBIASKIT_CELEBA``; a DataError says how to set it."""
    if root is None or str(root) == "":
        env = os.environ.get(ENV_VAR)
        if not env:
            raise DataError(
                f"no CelebA folder given: pass the `root` param (`--param root=DIR`) or set "
                f"{ENV_VAR}=DIR; the folder must hold {EXPECTED}. {HOW_TO_GET}"
            )
        root = env
    return Path(root).expanduser().absolute()


def resolve_celeba_params(params: dict | None) -> dict[str, Any]:
    """Defaults filled in, types checked; ``root`` becomes the absolute folder actually used."""
    params = check_param_names(params, CELEBA_PARAMS, owner="dataset celeba")
    out = {k: params.get(k, default) for k, (default, _) in CELEBA_PARAMS.items()}
    for key in ("target", "bias"):
        if not isinstance(out[key], str) or not out[key]:
            raise ConfigError(f"celeba param {key} must be an attribute name, got {out[key]!r}")
    for key, low in (("size", 1), ("cache", 0)):
        value = out[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value < low:
            raise ConfigError(f"celeba param {key} must be an integer >= {low}, got {value!r}")
        out[key] = int(value)
    if out["cache"] not in (0, 1):
        raise ConfigError(f"celeba param cache must be 0 or 1, got {out['cache']}")
    if out["target"] == out["bias"]:
        raise ConfigError(f"celeba target and bias must be different attributes, both are {out['target']!r}")
    out["root"] = str(celeba_root(out["root"]))
    return out


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), stream])  # same streams as the recipe datasets' splits


def _subsample(count: int, size: int | None, *, what: str, seed: int, stream: int) -> np.ndarray:
    """Sorted positions: all ``count`` or a seeded uniform draw of ``size`` of them."""
    if size is None:
        return np.arange(count)
    if not 0 < size <= count:
        raise ConfigError(f"{what} must lie in (0, {count}], got {size}")
    return np.sort(_rng(seed, stream).permutation(count)[:size])


def _balanced_positions(
    y: np.ndarray,
    b: np.ndarray,
    *,
    unbiased_size: int,
    fractions: tuple[float, float, float],
    seed: int,
    target: str,
    bias: str,
) -> list[np.ndarray]:
    """Three sorted position arrays (60/20/20 inside every target x bias group), each group-balanced.

    Per group: min(smallest group, unbiased_size // 4) images, drawn from seed; val and test take
    round(20%) each but at least one, train the rest (3 / 1 / 1 of 5; 110 / 36 / 36 of 182).
    """
    if unbiased_size < 4:
        raise ConfigError(f"unbiased_size must be at least 4 (one image per target x bias group), got {unbiased_size}")
    groups = [np.flatnonzero((y == t) & (b == a)) for t in (0, 1) for a in (0, 1)]
    smallest = min(len(g) for g in groups)
    if smallest == 0:
        t, a = divmod(next(i for i, g in enumerate(groups) if len(g) == 0), 2)
        raise DataError(
            f"CelebA's valid partition has no image with {target}={t} and {bias}={a}: "
            "a group-balanced unbiased set is impossible; choose other attributes"
        )
    per_group = min(smallest, unbiased_size // 4)
    # val and test get their share but at least one image per group; train the rest
    n_val, n_test = (max(1, int(round(f * per_group))) for f in fractions[1:])
    cut1, cut2 = per_group - n_val - n_test, per_group - n_test
    if cut1 < 1:
        raise DataError(
            f"the balanced subsample of CelebA's valid partition has {per_group} image(s) per "
            f"{target} x {bias} group: too few to split {list(fractions)} into unbiased train/val/test "
            "(each needs at least one per group); use a larger unbiased_size or other attributes"
        )
    parts: list[list[np.ndarray]] = [[], [], []]
    for g, members in enumerate(groups):
        chosen = _rng(seed, 20 + g).permutation(members)[:per_group]
        for k, piece in enumerate((chosen[:cut1], chosen[cut1:cut2], chosen[cut2:])):
            parts[k].append(piece)
    return [np.sort(np.concatenate(p)) for p in parts]


def make_celeba_splits(
    *,
    params: dict | None = None,
    seed: int = 0,
    unbiased_size: int = 10000,
    train_size: int | None = None,
    test_size: int | None = None,
    unbiased_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
    expected_sha256: str | None = None,
) -> Splits:
    """The five splits of CelebA (see the module doc); what ``make_splits("celeba", ...)`` calls.

    ``train_size`` / ``test_size`` draw a seeded uniform subsample of the official train / test
    partition; ``unbiased_size`` caps the balanced subsample of the valid partition. ``expected_sha256``
    (from a run's spec) refuses a folder whose annotation files differ from the ones trained on.

    Example::

        splits = make_celeba_splits(params={"root": "~/data/celeba", "target": "Blond_Hair", "bias": "Male"})
        splits.train.summary()   # {'size': 162770, 'realised_rho': 0.99...}
    """
    resolved = resolve_celeba_params(params)
    if len(unbiased_fractions) != 3 or abs(sum(unbiased_fractions) - 1) > 1e-6 or min(unbiased_fractions) <= 0:
        raise ConfigError(f"unbiased_fractions must be three positive shares summing to 1, got {unbiased_fractions}")
    index = read_celeba_index(resolved["root"])
    if expected_sha256 is not None and index.sha256 != expected_sha256:
        raise DataError(
            f"the CelebA annotation files in {index.root} differ from the ones this run was built "
            f"from (SHA-256 {index.sha256[:12]}... != {expected_sha256[:12]}...): use the same folder"
        )
    target, bias, size, cache = resolved["target"], resolved["bias"], resolved["size"], bool(resolved["cache"])
    y_all, b_all, majority = _targets(index, target, bias)
    rows = {s: index.members(s) for s in PARTITIONS}
    for s, r in rows.items():
        if len(r) == 0:
            raise DataError(f"CelebA's official {s} partition is empty in {index.root} ({PARTITION_FILE})")
    train_pos = _subsample(len(rows["train"]), train_size, what="train_size", seed=seed, stream=0)
    test_pos = _subsample(len(rows["test"]), test_size, what="test_size", seed=seed, stream=1)
    valid = rows["valid"]
    unbiased = _balanced_positions(
        y_all[valid],
        b_all[valid],
        unbiased_size=unbiased_size,
        fractions=unbiased_fractions,
        seed=seed,
        target=target,
        bias=bias,
    )
    # the three unbiased splits come from one decode of the valid images they use
    u_all = np.sort(np.concatenate(unbiased))
    u_images = partition_images(index, "valid", u_all, size=size, cache=cache)
    plan = {
        "train": ("train", train_pos, partition_images(index, "train", train_pos, size=size, cache=cache)),
        **{
            name: ("valid", pos, u_images[np.searchsorted(u_all, pos)])
            for name, pos in zip(("unbiased_train", "unbiased_val", "unbiased_test"), unbiased)
        },
        "test": ("test", test_pos, partition_images(index, "test", test_pos, size=size, cache=cache)),
    }
    built = {
        name: _dataset(
            index,
            part,
            rows[part][pos],
            images,
            y_all,
            b_all,
            majority,
            target=target,
            bias=bias,
            size=size,
            name=f"celeba/{name}",
        )
        for name, (part, pos, images) in plan.items()
    }
    spec = {
        "dataset": "celeba",
        "params": resolved,
        "seed": seed,
        "unbiased_size": unbiased_size,
        "train_size": train_size,
        "test_size": test_size,
        "unbiased_fractions": list(unbiased_fractions),
        "annotations_sha256": index.sha256,
    }
    return Splits(**built, spec=spec)


def celeba_from_spec(spec: dict[str, Any]) -> Splits:
    """Rebuild a run's CelebA splits. The recorded folder is used when it exists, else ``$DEBIASKIT_CELEBA``
    (a moved copy); either way the annotation checksum must match the recorded one."""
    params = dict(spec.get("params") or {})
    recorded = params.get("root")
    if recorded is not None and not Path(recorded).is_dir():
        if not os.environ.get(ENV_VAR):
            raise DataError(
                f"the CelebA folder these splits were built from, {recorded}, does not exist; "
                f"set {ENV_VAR}=DIR to a copy with the same annotation files"
            )
        params["root"] = None  # a moved copy: fall back to the environment variable
    kwargs: dict[str, Any] = {k: spec[k] for k in ("seed", "unbiased_size", "train_size", "test_size") if k in spec}
    if "unbiased_fractions" in spec:
        kwargs["unbiased_fractions"] = tuple(spec["unbiased_fractions"])
    return make_celeba_splits(params=params, expected_sha256=spec.get("annotations_sha256"), **kwargs)


def describe_celeba(params: dict | None = None) -> dict[str, Any]:
    """What the ``celeba`` dataset is and whether its folder is found (``root`` param or $DEBIASKIT_CELEBA)."""
    params = dict(params or {})
    target = params.get("target", CELEBA_PARAMS["target"][0])
    bias = params.get("bias", CELEBA_PARAMS["bias"][0])
    try:
        root = celeba_root(params.get("root"))
        files, prepared = (
            str(root),
            all(p.exists() for p in (root / IMAGE_DIR, root / ATTR_FILE, root / PARTITION_FILE)),
        )
    except DataError:
        files, prepared = f"not found: pass --root DIR (or --param root=DIR) or set {ENV_VAR}=DIR", False
    return {
        "name": "celeba",
        "description": f"CelebA, bring your own folder: target {target} vs bias {bias} (real attributes; "
        "any two of the 40 via params target / bias)",
        "source": f"aligned CelebA faces from your own folder ({EXPECTED}); never downloaded",
        "files": files,
        "prepared": prepared,
        "how_to_get": HOW_TO_GET,
        "bias_attributes": [bias],
        "num_classes": 2,
        "num_bias_classes": 2,
        "params": {
            k: {"default": d if k != "root" else f"${ENV_VAR}", "help": h} for k, (d, h) in CELEBA_PARAMS.items()
        },
        "normalisation": "(x/255 - 0.5) / 0.5",
        "splits": CELEBA_SPLIT_DOCS,
    }


def prepare_celeba(*, from_folder: Path | None = None, force: bool = False, size: int = 64) -> Path:
    """Check a CelebA folder and cache its three partitions resized to ``size`` (``data prepare celeba``).

    ``force`` re-decodes partitions that are already cached.
    """
    index = read_celeba_index(celeba_root(from_folder))
    folder = celeba_cache_dir(index, size)
    for split in PARTITIONS:
        path = folder / f"{split}.npy"
        if force:
            path.unlink(missing_ok=True)
        partition_images(index, split, size=size, cache=True)
    return folder


CELEBA = register_dataset(
    StandaloneDataset(
        name="celeba",
        make_splits=make_celeba_splits,
        from_spec=celeba_from_spec,
        describe=describe_celeba,
        prepare=prepare_celeba,
        text_params=TEXT_PARAMS,
        param_names=tuple(CELEBA_PARAMS),
    )
)
