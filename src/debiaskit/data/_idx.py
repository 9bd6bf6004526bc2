"""Reading IDX files (the MNIST file format), raw or gzip-compressed, with checksums."""

from __future__ import annotations

import gzip
import hashlib
import math
from pathlib import Path

import numpy as np
from numpy.typing import DTypeLike

from ..errors import DataError

# IDX type codes -> numpy dtypes (big-endian where it matters).
_IDX_DTYPES: dict[int, DTypeLike] = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_bytes(path: Path) -> bytes:
    """Return the decompressed content of ``path`` (``.gz`` is detected by magic bytes)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"IDX file not found: {path}")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise DataError(f"{path} is a damaged gzip file ({exc}); delete it and prepare the data again") from exc
    return raw


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()  # noqa: S324 - checksum, not security


def parse_idx(data: bytes, *, name: str = "<bytes>") -> np.ndarray:
    """Parse IDX bytes into an array, checking the header against the payload length."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(f"{name} is not an IDX file (bad magic number)")
    type_code, ndim = data[2], data[3]
    if type_code not in _IDX_DTYPES:
        raise DataError(f"{name}: unknown IDX type code 0x{type_code:02x}")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise DataError(f"{name} is truncated (incomplete header)")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[type_code])
    expected = header_len + math.prod(shape) * dtype.itemsize  # Python ints: a forged header cannot overflow
    if len(data) != expected:
        raise DataError(
            f"{name} is truncated or corrupt: header announces shape {shape} "
            f"({expected} bytes) but the file holds {len(data)} bytes"
        )
    return np.frombuffer(data, dtype=dtype, offset=header_len).reshape(shape).astype(dtype.newbyteorder("="))


def load_idx(path: Path, *, expected_md5: str | None = None) -> np.ndarray:
    """Load an IDX file, verifying the MD5 of its decompressed content when given."""
    data = read_bytes(path)
    if expected_md5 is not None and md5(data) != expected_md5:
        raise DataError(
            f"checksum mismatch for {path}: expected MD5 {expected_md5}, got {md5(data)}. "
            "The file is corrupt or is not the expected release; delete it and run "
            "`debiaskit data prepare` again"
        )
    return parse_idx(data, name=str(path))


def write_idx(path: Path, array: np.ndarray, *, compress: bool = False) -> None:
    """Write ``array`` (uint8 or int32) as an IDX file; used by tests and fixtures."""
    codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C}
    array = np.asarray(array)
    code = codes[array.dtype]
    header = bytes([0, 0, code, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    Path(path).write_bytes(gzip.compress(payload) if compress else payload)
