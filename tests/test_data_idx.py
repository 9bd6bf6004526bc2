"""IDX parsing: raw and gzip, round trip, damaged files, checksums."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from debiaskit.data._idx import load_idx, md5, parse_idx, read_bytes, write_idx
from debiaskit.errors import DataError


@pytest.fixture
def images():
    return np.random.default_rng(0).integers(0, 256, (7, 5, 4), dtype=np.uint8)


@pytest.mark.parametrize("compress", [False, True])
def test_round_trip_uint8(tmp_path, images, compress):
    path = tmp_path / ("x.idx.gz" if compress else "x.idx")
    write_idx(path, images, compress=compress)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == compress
    out = load_idx(path)
    assert out.dtype == np.uint8 and out.shape == (7, 5, 4)
    np.testing.assert_array_equal(out, images)


def test_round_trip_int32_is_big_endian_on_disk(tmp_path):
    arr = np.array([1, -2, 70000], dtype=np.int32)
    write_idx(tmp_path / "a", arr)
    raw = (tmp_path / "a").read_bytes()
    assert raw[:4] == bytes([0, 0, 0x0C, 1]) and raw[4:8] == (3).to_bytes(4, "big")
    assert raw[8:12] == (1).to_bytes(4, "big", signed=True)
    np.testing.assert_array_equal(load_idx(tmp_path / "a"), arr)


def test_header_layout_matches_mnist_labels(tmp_path):
    labels = np.arange(10, dtype=np.uint8)
    write_idx(tmp_path / "l", labels)
    raw = (tmp_path / "l").read_bytes()
    assert raw[:4] == b"\x00\x00\x08\x01"  # the magic 2049 of train-labels-idx1-ubyte
    assert len(raw) == 8 + 10


def test_truncated_payload(tmp_path, images):
    write_idx(tmp_path / "x", images)
    data = (tmp_path / "x").read_bytes()[:-3]
    with pytest.raises(DataError, match=r"truncated or corrupt.*\(7, 5, 4\)"):
        parse_idx(data, name="x")


def test_truncated_header():
    with pytest.raises(DataError, match="incomplete header"):
        parse_idx(bytes([0, 0, 8, 3, 0, 0]), name="h")


def test_trailing_garbage_is_an_error(tmp_path, images):
    write_idx(tmp_path / "x", images)
    with pytest.raises(DataError, match="truncated or corrupt"):
        parse_idx((tmp_path / "x").read_bytes() + b"\x00", name="x")


@pytest.mark.parametrize("header", [b"\x01\x00\x08\x01", b"PK\x03\x04", b"\x00\x01\x08\x01"])
def test_bad_magic(header):
    with pytest.raises(DataError, match="not an IDX file"):
        parse_idx(header + b"\x00" * 8, name="bad")


def test_unknown_type_code():
    with pytest.raises(DataError, match="unknown IDX type code 0x07"):
        parse_idx(bytes([0, 0, 7, 1, 0, 0, 0, 1, 5]), name="t")


def test_checksum_is_of_decompressed_content(tmp_path, images):
    write_idx(tmp_path / "x.gz", images, compress=True)
    good = md5(gzip.decompress((tmp_path / "x.gz").read_bytes()))
    np.testing.assert_array_equal(load_idx(tmp_path / "x.gz", expected_md5=good), images)
    with pytest.raises(DataError) as err:
        load_idx(tmp_path / "x.gz", expected_md5="0" * 32)
    msg = str(err.value)
    assert "checksum mismatch" in msg and good in msg and "debiaskit data prepare" in msg


def test_damaged_gzip(tmp_path, images):
    write_idx(tmp_path / "x.gz", images, compress=True)
    raw = (tmp_path / "x.gz").read_bytes()
    (tmp_path / "x.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="damaged gzip"):
        read_bytes(tmp_path / "x.gz")


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_idx(tmp_path / "nope")
