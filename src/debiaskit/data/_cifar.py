"""CIFAR-10 from a folder the user already has (debiaskit never downloads it).

Accepted inputs for ``debiaskit data prepare cifar10 --from DIR``:

* the official *binary* version: ``cifar-10-batches-bin/data_batch_{1..5}.bin`` and ``test_batch.bin``
  (records of 1 label byte + 3072 image bytes, channel-first 3 x 32 x 32), or the folder itself;
* the official *python* version: ``cifar-10-batches-py/data_batch_{1..5}`` and ``test_batch``, read
  with a restricted unpickler that only rebuilds numpy arrays (no arbitrary code from a pickle);
* either archive (``cifar-10-binary.tar.gz`` / ``cifar-10-python.tar.gz``) as the path itself.

The cache always holds the binary version. Images load as uint8 (N, 3, 32, 32).

There is no published per-file checksum of the binary batches, so instead of an MD5 the loader checks
the structure: record length, record count per file, labels in 0..9.
"""

from __future__ import annotations

import io
import pickle
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._io import atomic_folder, write_json
from ..errors import DataError
from ._folders import DATA_CACHE
from ._sources import ImageArrays, ImageSource

RECORD_BYTES = 1 + 3 * 32 * 32
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
BIN_DIR = "cifar-10-batches-bin"
PY_DIR = "cifar-10-batches-py"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
HOW_TO_GET = (
    "CIFAR-10 cannot be downloaded by debiaskit. Get the binary or python version of CIFAR-10 "
    "yourself, then run `debiaskit data prepare cifar10 --from DIR` (DIR holds cifar-10-batches-bin/ "
    "or cifar-10-batches-py/, or is the .tar.gz archive)."
)


# --- binary version -------------------------------------------------------------------------------


def parse_cifar_binary(data: bytes, *, name: str = "<bytes>") -> tuple[np.ndarray, np.ndarray]:
    """Parse binary CIFAR-10 records -> (images uint8 (N, 3, 32, 32), labels uint8 (N,))."""
    if len(data) == 0 or len(data) % RECORD_BYTES:
        raise DataError(
            f"{name}: {len(data)} bytes is not a whole number of CIFAR-10 records "
            f"({RECORD_BYTES} bytes each: 1 label byte + 3072 image bytes); the file is truncated, "
            "or it is not the CIFAR-10 binary version (CIFAR-100 records have 2 label bytes)"
        )
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, RECORD_BYTES)
    labels = records[:, 0].copy()
    if labels.max() > 9:
        raise DataError(f"{name}: label {int(labels.max())} out of range 0..9; not a CIFAR-10 binary batch")
    return records[:, 1:].reshape(-1, 3, 32, 32).copy(), labels


def write_cifar_binary(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Write images (N, 3, 32, 32) uint8 and labels as binary CIFAR-10 records (for the cache and tests)."""
    images = np.asarray(images, dtype=np.uint8).reshape(len(images), -1)
    labels = np.asarray(labels, dtype=np.uint8).reshape(-1, 1)
    if images.shape[1] != RECORD_BYTES - 1 or len(images) != len(labels):
        raise DataError(f"CIFAR-10 records need N x 3072 image bytes and N labels, got {images.shape}, {labels.shape}")
    Path(path).write_bytes(np.concatenate([labels, images], axis=1).tobytes())


def _read_binary_folder(folder: Path) -> ImageArrays:
    parts = {}
    for stem in (*TRAIN_FILES, TEST_FILE):
        path = folder / f"{stem}.bin"
        if not path.is_file():
            raise DataError(f"missing CIFAR-10 file {path.name} in {folder}. {HOW_TO_GET}")
        parts[stem] = parse_cifar_binary(path.read_bytes(), name=str(path))
    train = [parts[s] for s in TRAIN_FILES]
    return ImageArrays(
        np.concatenate([t[0] for t in train]),
        np.concatenate([t[1] for t in train]),
        parts[TEST_FILE][0],
        parts[TEST_FILE][1],
        origin=str(folder),
    )


# --- python version, through a restricted unpickler -----------------------------------------------


def _numpy_globals() -> dict[tuple[str, str], object]:
    try:  # numpy >= 2
        from numpy._core import multiarray, numeric
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    allowed: dict[tuple[str, str], object] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for mod in ("numpy.core", "numpy._core"):
        allowed[(f"{mod}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{mod}.multiarray", "scalar")] = multiarray.scalar
        if hasattr(numeric, "_frombuffer"):
            allowed[(f"{mod}.numeric", "_frombuffer")] = numeric._frombuffer
    # protocol-2 pickles written by Python 3 store bytes as _codecs.encode(str, "latin1"): pure data
    import _codecs

    allowed[("_codecs", "encode")] = _codecs.encode
    for mod in ("builtins", "__builtin__"):  # harmless containers only
        allowed.update({(mod, n): getattr(__import__("builtins"), n) for n in ("set", "frozenset", "bytearray")})
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that can only rebuild numpy arrays and plain containers: a pickle that names any
    other global (os.system, ...) is refused before anything runs."""

    allowed = _numpy_globals()

    def find_class(self, module: str, name: str):
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR-10 batch") from None


def load_python_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one python-version CIFAR-10 batch safely -> (images (N, 3, 32, 32), labels (N,))."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"missing CIFAR-10 file {path.name} in {path.parent}. {HOW_TO_GET}")
    try:
        obj = _RestrictedUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a data problem
        raise DataError(f"{path} is not a valid CIFAR-10 python batch: {exc}") from exc
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a dict with 'data' and 'labels', got {type(obj).__name__}")
    obj = {(k.decode() if isinstance(k, bytes) else k): v for k, v in obj.items()}
    if "data" not in obj or "labels" not in obj:
        raise DataError(f"{path}: the batch has no 'data'/'labels' entries (keys: {sorted(map(str, obj))})")
    data, labels = np.asarray(obj["data"]), np.asarray(obj["labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise DataError(
            f"{path}: expected uint8 data of shape (N, 3072) and N labels, got {data.dtype} "
            f"{data.shape} and {labels.shape}"
        )
    if labels.min() < 0 or labels.max() > 9:
        raise DataError(f"{path}: labels must lie in 0..9")
    return data.reshape(-1, 3, 32, 32).copy(), labels.astype(np.uint8)


def _read_python_folder(folder: Path) -> ImageArrays:
    train = [load_python_batch(folder / s) for s in TRAIN_FILES]
    test = load_python_batch(folder / TEST_FILE)
    return ImageArrays(
        np.concatenate([t[0] for t in train]),
        np.concatenate([t[1] for t in train]),
        test[0],
        test[1],
        origin=str(folder),
    )


# --- locating the files ---------------------------------------------------------------------------


def _locate(root: Path) -> tuple[str, Path] | None:
    """('bin' | 'py', folder) for the first CIFAR-10 layout found at root, root/<layout dir> or one level down."""
    candidates = [
        root,
        root / BIN_DIR,
        root / PY_DIR,
        *sorted(p for p in root.glob("*/*") if p.is_dir()),
        *sorted(p for p in root.iterdir() if p.is_dir()),
    ]
    for folder in candidates:
        if (folder / f"{TEST_FILE}.bin").is_file():
            return "bin", folder
        if (folder / TEST_FILE).is_file():
            return "py", folder
    return None


def read_cifar10(path: Path) -> ImageArrays:
    """Read CIFAR-10 (binary or python version, folder or .tar.gz) into arrays; see the module doc."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{path} does not exist. {HOW_TO_GET}")
    if path.is_file():
        if not tarfile.is_tarfile(path):
            raise DataError(f"{path} is neither a folder nor a tar archive. {HOW_TO_GET}")
        with tempfile.TemporaryDirectory(prefix="debiaskit-cifar-") as tmp, tarfile.open(path) as tar:
            try:
                tar.extractall(tmp, filter="data")  # "data" filter: no absolute paths, links out, devices
            except tarfile.FilterError as exc:
                raise DataError(
                    f"{path} holds an unsafe member ({exc}): refusing to unpack it; use the official "
                    f"archive. {HOW_TO_GET}"
                ) from exc
            except (tarfile.TarError, EOFError, OSError) as exc:
                raise DataError(f"{path} is a damaged archive ({exc}); download it again. {HOW_TO_GET}") from exc
            return _read_found(Path(tmp), shown=path)
    return _read_found(path, shown=path)


def _read_found(root: Path, *, shown: Path) -> ImageArrays:
    found = _locate(root)
    if found is None:
        raise DataError(f"no CIFAR-10 batches (test_batch.bin or test_batch) under {shown}. {HOW_TO_GET}")
    kind, folder = found
    return _read_binary_folder(folder) if kind == "bin" else _read_python_folder(folder)


# --- the source -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CifarSource(ImageSource):
    """CIFAR-10 as an image source (colour, (N, 3, 32, 32)); prepared only from the user's own copy."""

    def is_prepared(self) -> bool:
        return (self.cache_dir() / BIN_DIR / f"{TEST_FILE}.bin").is_file()

    def prepare(self, *, from_folder: Path | None = None, force: bool = False) -> Path:
        """Copy the user's CIFAR-10 (any accepted layout) into the cache as the binary version."""
        target = self.cache_dir()
        if from_folder is None:
            if self.is_prepared() and not force:
                self.load()  # structural check
                return target
            raise DataError(f"{self.name} is not prepared. {HOW_TO_GET}")
        arrays = read_cifar10(Path(from_folder))
        with atomic_folder(target, kind=DATA_CACHE, force=True, inputs=(Path(from_folder),)) as swap:
            out = swap / BIN_DIR
            out.mkdir(parents=True)
            # the binary cache keeps the official split of the training set into five batches
            for stem, images, labels in zip(
                TRAIN_FILES, np.array_split(arrays.train_images, 5), np.array_split(arrays.train_labels, 5)
            ):
                write_cifar_binary(out / f"{stem}.bin", images, labels)
            write_cifar_binary(out / f"{TEST_FILE}.bin", arrays.test_images, arrays.test_labels)
            _read_binary_folder(out)  # verify before anything is replaced
            write_json(swap / DATA_CACHE.marker, {"kind": "data-cache", "source": self.name})
        return target

    def load(self, **kwargs) -> ImageArrays:
        if not self.is_prepared():
            raise DataError(f"{self.name} is not prepared (looked in {self.cache_dir()}). {HOW_TO_GET}")
        return _read_binary_folder(self.cache_dir() / BIN_DIR)


CIFAR10 = CifarSource(
    name="cifar10",
    description="CIFAR-10 colour images (50k train / 10k test, 3x32x32), from your own copy",
    num_classes=10,
    class_names=CIFAR10_CLASSES,
    how_to_get=HOW_TO_GET,
    channels=3,
)
