"""Image sources: IDX folders (fake tiny MNIST), CIFAR-10 (binary / python / archive), CelebA layout."""

from __future__ import annotations

import gzip
import os
import pickle
import tarfile

import numpy as np
import pytest
import torch

from debiaskit.data import SOURCES, get_source, make_splits
from debiaskit.data._celeba import load_celeba, load_celeba_splits  # internals: tested through their modules
from debiaskit.data._cifar import CIFAR10, parse_cifar_binary, read_cifar10, write_cifar_binary
from debiaskit.data._idx import md5, write_idx
from debiaskit.errors import ConfigError, DataError


@pytest.fixture
def data_root(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("DEBIASKIT_DATA", str(root))
    return root


# --- IDX sources (MNIST) --------------------------------------------------------------------------


def _fake_mnist(folder, *, n_train=60, n_test=20, seed=0):
    """Write a tiny MNIST in torchvision's layout (DIR/MNIST/raw/*.gz); return {key: md5}."""
    rng = np.random.default_rng(seed)
    raw = folder / "MNIST" / "raw"
    raw.mkdir(parents=True)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": (np.arange(n_train) % 10).astype(np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": (np.arange(n_test) % 10).astype(np.uint8),
    }
    stems = {
        "train_images": "train-images-idx3-ubyte",
        "train_labels": "train-labels-idx1-ubyte",
        "test_images": "t10k-images-idx3-ubyte",
        "test_labels": "t10k-labels-idx1-ubyte",
    }
    sums = {}
    for key, stem in stems.items():
        write_idx(raw / f"{stem}.gz", arrays[key], compress=True)
        sums[key] = md5(gzip.decompress((raw / f"{stem}.gz").read_bytes()))
    return arrays, sums


def test_prepare_mnist_from_torchvision_folder(tmp_path, data_root, monkeypatch):
    arrays, sums = _fake_mnist(tmp_path / "user")
    mnist = get_source("mnist")
    for key, value in sums.items():
        monkeypatch.setitem(mnist.md5, key, value)
    assert not mnist.is_prepared()
    folder = mnist.prepare(from_folder=tmp_path / "user")
    assert folder == data_root / "mnist" and mnist.is_prepared()
    loaded = mnist.load()
    np.testing.assert_array_equal(loaded.train_images, arrays["train_images"])
    np.testing.assert_array_equal(loaded.test_labels, arrays["test_labels"])
    splits = make_splits("biased-mnist", params={"rho": 0.9}, seed=0, unbiased_size=20)
    assert len(splits.train) == 40 and len(splits.test) == 20
    assert splits.train.images.shape == (40, 3, 28, 28)


def test_prepare_refuses_wrong_checksum_and_keeps_cache(tmp_path, data_root, monkeypatch):
    _, sums = _fake_mnist(tmp_path / "user")
    mnist = get_source("mnist")
    for key, value in sums.items():
        monkeypatch.setitem(mnist.md5, key, value)
    mnist.prepare(from_folder=tmp_path / "user")
    before = sorted(p.name for p in (data_root / "mnist").iterdir())
    _fake_mnist(tmp_path / "other", seed=1)  # different content, checksums no longer match
    with pytest.raises(DataError, match="checksum mismatch"):
        mnist.prepare(from_folder=tmp_path / "other")
    assert sorted(p.name for p in (data_root / "mnist").iterdir()) == before
    mnist.load()  # the old, verified cache still loads


def test_prepare_from_folder_without_idx_files(tmp_path, data_root):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no IDX files"):
        get_source("mnist").prepare(from_folder=tmp_path / "empty")


def test_missing_source_says_how_to_get_it(data_root):
    for name in ("mnist", "fashion-mnist"):
        with pytest.raises(DataError) as err:
            make_splits(f"biased-{name}", seed=0)
        assert f"debiaskit data prepare {name}" in str(err.value) and "--from" in str(err.value)


def test_unknown_source():
    with pytest.raises(DataError, match="available: .*mnist"):
        get_source("svhn")


# --- CIFAR-10 -------------------------------------------------------------------------------------


def _cifar_arrays(n_per_batch=4, seed=0):
    rng = np.random.default_rng(seed)
    n = 6 * n_per_batch  # 5 training batches + test batch
    images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    return images, labels


def _write_cifar_bin(folder, images, labels, n_per_batch=4):
    folder.mkdir(parents=True)
    for i in range(5):
        sl = slice(i * n_per_batch, (i + 1) * n_per_batch)
        write_cifar_binary(folder / f"data_batch_{i + 1}.bin", images[sl], labels[sl])
    write_cifar_binary(folder / "test_batch.bin", images[5 * n_per_batch :], labels[5 * n_per_batch :])


def _write_cifar_py(folder, images, labels, n_per_batch=4, protocol=2):
    folder.mkdir(parents=True)
    names = [f"data_batch_{i + 1}" for i in range(5)] + ["test_batch"]
    for i, name in enumerate(names):
        sl = slice(i * n_per_batch, (i + 1) * n_per_batch)
        batch = {
            b"batch_label": name.encode(),
            b"labels": [int(v) for v in labels[sl]],
            b"data": images[sl].reshape(n_per_batch, 3072),
            b"filenames": [b"x.png"] * n_per_batch,
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))


def test_cifar_binary_record_layout():
    """One record = label byte, then the red, green and blue 32 x 32 planes (row-major)."""
    rec = bytes([7]) + bytes(range(256)) * 12
    images, labels = parse_cifar_binary(rec)
    assert labels.tolist() == [7] and images.shape == (1, 3, 32, 32)
    assert images[0, 0, 0, :4].tolist() == [0, 1, 2, 3]  # red plane starts the payload
    assert images[0, 1, 0, 0] == (1024 % 256) and images[0, 2, 31, 31] == 255


def test_read_cifar_binary_fixture(tmp_path):
    images, labels = _cifar_arrays()
    _write_cifar_bin(tmp_path / "dl" / "cifar-10-batches-bin", images, labels)
    arrays = read_cifar10(tmp_path / "dl")
    np.testing.assert_array_equal(arrays.train_images, images[:20])
    np.testing.assert_array_equal(arrays.train_labels, labels[:20])
    np.testing.assert_array_equal(arrays.test_images, images[20:])
    assert (tmp_path / "dl" / "cifar-10-batches-bin" / "test_batch.bin").stat().st_size == 4 * 3073


@pytest.mark.parametrize("protocol", [2, 5])
def test_read_cifar_python_version_equals_binary(tmp_path, protocol):
    images, labels = _cifar_arrays()
    _write_cifar_py(tmp_path / "py" / "cifar-10-batches-py", images, labels, protocol=protocol)
    arrays = read_cifar10(tmp_path / "py")
    np.testing.assert_array_equal(arrays.train_images, images[:20])
    np.testing.assert_array_equal(arrays.test_labels, labels[20:])


def test_cifar_python_legacy_numpy_names(tmp_path):
    """The official batches were pickled by Python 2 / numpy 1 (numpy.core.multiarray._reconstruct)."""
    images, labels = _cifar_arrays()
    folder = tmp_path / "cifar-10-batches-py"
    _write_cifar_py(folder, images, labels)
    for path in folder.iterdir():
        raw = path.read_bytes()
        assert b"numpy._core.multiarray" in raw
        path.write_bytes(raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    np.testing.assert_array_equal(read_cifar10(tmp_path).train_images, images[:20])


class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_cifar_python_pickle_cannot_run_code(tmp_path):
    images, labels = _cifar_arrays()
    folder = tmp_path / "cifar-10-batches-py"
    _write_cifar_py(folder, images, labels)
    pwned = tmp_path / "pwned"
    (folder / "data_batch_2").write_bytes(pickle.dumps({b"data": _Evil(pwned), b"labels": [0]}, protocol=2))
    with pytest.raises(DataError, match=r"data_batch_2.*posix\.system|data_batch_2.*system.*not allowed"):
        read_cifar10(tmp_path)
    assert not pwned.exists()


def test_cifar_archive(tmp_path):
    images, labels = _cifar_arrays()
    _write_cifar_bin(tmp_path / "src" / "cifar-10-batches-bin", images, labels)
    archive = tmp_path / "cifar-10-binary.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-bin", arcname="cifar-10-batches-bin")
    np.testing.assert_array_equal(read_cifar10(archive).test_images, images[20:])


def test_cifar_wrong_record_length(tmp_path):
    images, labels = _cifar_arrays()
    folder = tmp_path / "cifar-10-batches-bin"
    _write_cifar_bin(folder, images, labels)
    path = folder / "data_batch_3.bin"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(DataError, match=r"data_batch_3\.bin.*not a whole number of CIFAR-10 records.*3073"):
        read_cifar10(tmp_path)


def test_cifar_label_out_of_range(tmp_path):
    with pytest.raises(DataError, match="label 12 out of range"):
        parse_cifar_binary(bytes([12]) + bytes(3072), name="b")


def test_cifar_missing_file(tmp_path):
    images, labels = _cifar_arrays()
    folder = tmp_path / "cifar-10-batches-bin"
    _write_cifar_bin(folder, images, labels)
    (folder / "data_batch_4.bin").unlink()
    with pytest.raises(DataError, match=r"missing CIFAR-10 file data_batch_4\.bin.*--from"):
        read_cifar10(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(DataError, match="no CIFAR-10 batches"):
        read_cifar10(tmp_path / "elsewhere")


def test_corrupted_cifar10_end_to_end(tmp_path, data_root):
    with pytest.raises(DataError, match=r"cannot be downloaded.*--from"):
        make_splits("corrupted-cifar10", seed=0)
    with pytest.raises(DataError, match="--from"):
        CIFAR10.prepare()
    images, labels = _cifar_arrays(n_per_batch=10)
    _write_cifar_bin(tmp_path / "user" / "cifar-10-batches-bin", images, labels, n_per_batch=10)
    CIFAR10.prepare(from_folder=tmp_path / "user")
    assert CIFAR10.is_prepared() and "cifar10" in SOURCES
    splits = make_splits("corrupted-cifar10", params={"rho": 0.5}, seed=0, unbiased_size=20)
    assert splits.train.images.shape == (30, 3, 32, 32) and splits.train.images.dtype == torch.uint8
    assert len(splits.test) == 10 and splits.train.bias_names == ("corruption",)
    # colour content survives: re-rendered with brightness (family 6) every test image is exactly
    # 0.6 x + 0.4 of its own colours (the test split keeps the official test order)
    cf = splits.test.render(torch.arange(10), torch.full((10,), 6))
    expected = np.round((images[50:].astype(np.float32) / 255 * 0.6 + 0.4) * 255)
    assert np.abs(cf.numpy().astype(np.float32) - expected).max() <= 1


def test_colour_source_only_with_colour_recipes():
    from debiaskit.data import dataset_names

    names = dataset_names()
    assert "corrupted-cifar10" in names and "corrupted-mnist" in names and "corrupted-fashion-mnist" in names
    assert "biased-cifar10" not in names
    with pytest.raises(ConfigError, match="unknown dataset 'biased-cifar10'"):
        make_splits("biased-cifar10")


# --- CelebA ---------------------------------------------------------------------------------------

CELEBA_ATTRS = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose "
    "Black_Hair Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee "
    "Gray_Hair Heavy_Makeup High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard "
    "Oval_Face Pale_Skin Pointy_Nose Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair "
    "Wavy_Hair Wearing_Earrings Wearing_Hat Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young"
).split()

# name, blond, male, eyeglasses, partition, colour
CELEBA_ROWS = [
    ("000001.jpg", 1, 0, 0, 0, (250, 220, 60)),
    ("000002.jpg", 1, 0, 1, 0, (240, 210, 70)),
    ("000003.jpg", 1, 1, 0, 0, (230, 200, 50)),
    ("000004.jpg", 0, 1, 0, 0, (40, 30, 20)),
    ("000005.jpg", 0, 1, 1, 0, (50, 40, 30)),
    ("000006.jpg", 0, 0, 0, 0, (60, 50, 40)),
    ("000007.jpg", 0, 0, 0, 1, (70, 60, 50)),
    ("000008.jpg", 1, 1, 0, 2, (200, 180, 90)),
    ("000009.jpg", 0, 0, 1, 2, (20, 20, 20)),
]


def _fake_celeba(root, rows=CELEBA_ROWS):
    from PIL import Image

    (root / "img_align_celeba").mkdir(parents=True)
    lines = [str(len(rows)), " ".join(CELEBA_ATTRS)]
    for name, blond, male, glasses, _, colour in rows:
        values = [-1] * len(CELEBA_ATTRS)
        for attr, v in (("Blond_Hair", blond), ("Male", male), ("Eyeglasses", glasses)):
            values[CELEBA_ATTRS.index(attr)] = 1 if v else -1
        lines.append(name + " " + " ".join(f"{v:2d}" for v in values))  # the real file pads to width 2
        Image.new("RGB", (36, 44), colour).save(root / "img_align_celeba" / name, quality=95)
    (root / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    (root / "list_eval_partition.txt").write_text("".join(f"{r[0]} {r[4]}\n" for r in rows))
    return root


def test_celeba_train_partition(tmp_path):
    root = _fake_celeba(tmp_path / "celeba")
    train = load_celeba(root, split="train", size=8)
    assert train.images.shape == (6, 3, 8, 8) and train.images.dtype == torch.uint8
    assert train.y.tolist() == [1, 1, 1, 0, 0, 0] and train.b.tolist() == [0, 0, 1, 1, 1, 0]
    # majority pairing on the training partition: blond <-> female, not blond <-> male (4 of 6 samples)
    assert train.info["majority_pairing"] == [1, 0]
    assert train.aligned.tolist() == [True, True, False, True, True, False]
    # solid colours survive crop + resize + JPEG within a few levels
    assert (train.images[0].float().mean((1, 2)) - torch.tensor([250.0, 220, 60])).abs().max() < 6
    assert train.to_float(train.images).min() >= -1 and train.x.shape == (6, 3, 8, 8)


def test_celeba_majority_pairing_is_one_to_one():
    from debiaskit.data._celeba import _majority_pairing

    # CelebA-like counts: non-blond (y=0) is mostly female (3 of 5), blond (y=1) all female; the
    # one-to-one pairing covering most samples is still blond <-> female, non-blond <-> male
    y = np.array([0, 0, 0, 0, 0, 1, 1, 1])
    b = np.array([0, 0, 0, 1, 1, 0, 0, 0])
    assert _majority_pairing(y, b).tolist() == [1, 0]
    assert _majority_pairing(y, 1 - b).tolist() == [0, 1]


def test_celeba_other_partitions_and_target(tmp_path):
    root = _fake_celeba(tmp_path / "celeba")
    parts = load_celeba_splits(root, size=4)
    assert [len(parts[s]) for s in ("train", "valid", "test")] == [6, 1, 2]
    test = parts["test"]
    assert test.y.tolist() == [1, 0] and test.b.tolist() == [1, 0] and test.aligned.tolist() == [False, False]
    glasses = load_celeba(root, split="train", target="Eyeglasses", size=4)
    assert glasses.y.tolist() == [0, 1, 0, 0, 1, 0] and glasses.name.startswith("celeba-Eyeglasses-Male")
    assert len(load_celeba(root, split="train", size=4, limit=2)) == 2


def test_celeba_errors(tmp_path):
    root = _fake_celeba(tmp_path / "celeba")
    with pytest.raises(ConfigError, match="unknown CelebA target attribute 'Blonde'.*Blond_Hair"):
        load_celeba(root, target="Blonde")
    with pytest.raises(ConfigError, match="split must be one of"):
        load_celeba(root, split="val")
    (root / "img_align_celeba" / "000008.jpg").unlink()
    with pytest.raises(DataError, match="missing CelebA image .*000008.jpg"):
        load_celeba(root, split="test")
    text = (root / "list_attr_celeba.txt").read_text().replace("9\n", "10\n", 1)
    (root / "list_attr_celeba.txt").write_text(text)
    with pytest.raises(DataError, match="announces 10 images but 9 rows"):
        load_celeba(root)
    (root / "list_eval_partition.txt").unlink()
    (root / "list_attr_celeba.txt").write_text(text.replace("10\n", "9\n", 1))
    with pytest.raises(DataError, match="missing list_eval_partition.txt"):
        load_celeba(root)
    with pytest.raises(DataError, match="does not exist"):
        load_celeba(tmp_path / "nowhere")
