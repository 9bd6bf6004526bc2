"""CelebA from the standard on-disk layout (never downloaded by debiaskit).

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

Example::

    from debiaskit.data import load_celeba
    test = load_celeba("~/data/celeba", split="test", target="Blond_Hair", bias="Male", size=64)
    test.summary()   # {'size': 19962, 'realised_rho': ...}
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, DataError
from ._dataset import BiasDataset

PARTITIONS = {"train": 0, "valid": 1, "test": 2}
ATTR_FILE = "list_attr_celeba.txt"
PARTITION_FILE = "list_eval_partition.txt"
IMAGE_DIR = "img_align_celeba"


def read_celeba_attributes(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    """Parse ``list_attr_celeba.txt`` -> (image names, attribute names, int8 matrix of -1/1)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"missing {path.name} in {path.parent} (CelebA's attribute annotations)")
    lines = path.read_text().splitlines()
    if len(lines) < 2 or not lines[0].strip().isdigit():
        raise DataError(f"{path}: the first line must be the number of images (CelebA's header)")
    count, names = int(lines[0].strip()), lines[1].split()
    rows = [line.split() for line in lines[2:] if line.strip()]
    if len(rows) != count:
        raise DataError(f"{path}: the header announces {count} images but {len(rows)} rows follow")
    bad = next((r for r in rows if len(r) != len(names) + 1), None)
    if bad is not None:
        raise DataError(f"{path}: row {bad[0]!r} has {len(bad) - 1} values for {len(names)} attributes")
    try:
        values = np.array([[int(v) for v in r[1:]] for r in rows], dtype=np.int8)
    except ValueError as exc:
        raise DataError(f"{path}: attribute values must be -1 or 1 ({exc})") from exc
    if values.size and not np.isin(values, (-1, 1)).all():
        raise DataError(f"{path}: attribute values must be -1 or 1")
    return [r[0] for r in rows], names, values


def read_celeba_partition(path: Path) -> dict[str, int]:
    """Parse ``list_eval_partition.txt`` -> {image name: 0/1/2}. A CSV-style header line is skipped."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"missing {path.name} in {path.parent} (CelebA's official train/valid/test split)")
    out = {}
    for i, line in enumerate(path.read_text().splitlines()):
        parts = line.replace(",", " ").split()
        if not parts or (i == 0 and not parts[-1].isdigit()):
            continue
        if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
            raise DataError(f"{path}: line {i + 1} should be 'IMAGE.jpg 0|1|2', got {line!r}")
        out[parts[0]] = int(parts[1])
    return out


def _load_image(path: Path, size: int) -> np.ndarray:
    from PIL import Image

    if not path.is_file():
        raise DataError(f"missing CelebA image {path}")
    with Image.open(path) as img:
        img = img.convert("RGB")
        w, h = img.size
        s = min(w, h)  # centre square crop keeps the face's aspect ratio
        img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
        img = img.resize((size, size), Image.BILINEAR)
        return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)


def load_celeba(root: Path | str, *, split: str = "train", target: str = "Blond_Hair", bias: str = "Male",
                size: int = 64, limit: int | None = None) -> BiasDataset:
    """One official CelebA partition as a :class:`BiasDataset` (y = target, b = bias, both 0/1).

    ``split`` is ``train``, ``valid`` or ``test``; ``limit`` keeps the first N images of the partition
    (debugging: the full training partition is 162,770 images, ~2 GB at 64 x 64).
    """
    root = Path(root).expanduser()
    if split not in PARTITIONS:
        raise ConfigError(f"split must be one of {', '.join(PARTITIONS)}, got {split!r}")
    if size < 1:
        raise ConfigError(f"size must be positive, got {size}")
    if not root.is_dir():
        raise DataError(f"CelebA folder {root} does not exist; it must hold {IMAGE_DIR}/, {ATTR_FILE} and {PARTITION_FILE}")
    files, names, values = read_celeba_attributes(root / ATTR_FILE)
    for attr, role in ((target, "target"), (bias, "bias")):
        if attr not in names:
            raise ConfigError(f"unknown CelebA {role} attribute {attr!r}; available: {', '.join(names)}")
    if target == bias:
        raise ConfigError("target and bias must be different attributes")
    partition = read_celeba_partition(root / PARTITION_FILE)
    missing = [f for f in files if f not in partition]
    if missing:
        raise DataError(f"{PARTITION_FILE} has no partition for {len(missing)} image(s), e.g. {missing[0]}")
    part = np.array([partition[f] for f in files])
    y_all = (values[:, names.index(target)] == 1).astype(np.int64)
    b_all = (values[:, names.index(bias)] == 1).astype(np.int64)
    majority = _majority_pairing(y_all[part == 0], b_all[part == 0])
    keep = np.flatnonzero(part == PARTITIONS[split])
    if limit is not None:
        keep = keep[:limit]
    if len(keep) == 0:
        raise DataError(f"CelebA partition {split!r} is empty in {root}")
    images = np.stack([_load_image(root / IMAGE_DIR / files[i], size) for i in keep])
    y, b = torch.from_numpy(y_all[keep]), torch.from_numpy(b_all[keep])
    return BiasDataset(
        images=torch.from_numpy(images), y=y, b=b, num_classes=2, num_bias_classes=2,
        name=f"celeba-{target}-{bias}/{split}", bias_names=(bias,), mean=0.5, std=0.5,
        aligned=b == torch.from_numpy(majority)[y],
        info={"source": "celeba", "root": str(root), "target": target, "bias": bias, "size": size,
              "majority_pairing": majority.tolist(), "files": [files[i] for i in keep]},
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


def load_celeba_splits(root: Path | str, *, target: str = "Blond_Hair", bias: str = "Male",
                       size: int = 64, limit: int | None = None) -> dict[str, BiasDataset]:
    """All three official partitions: ``{"train": ..., "valid": ..., "test": ...}``."""
    return {s: load_celeba(root, split=s, target=target, bias=bias, size=size, limit=limit) for s in PARTITIONS}
