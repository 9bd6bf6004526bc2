"""Fault injection, datasets from disk: a `folder:` row stays inside its folder, every image is decoded once at the
edge, the fingerprint can cover contents, CSVs are read robustly, and labels nothing can be learned from are
refused - all before any compute, with the file, the line and what was expected (CLI: exit 2, no traceback)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from debiaskit.data import make_splits, splits_from_spec, user_splits
from debiaskit.errors import ConfigError, DataError, SmallSplitWarning

SPLITS = ["train", "train", "unbiased_train", "unbiased_val", "test"]
FOLDER_PARAMS = ["--param", "bias_column=place", "--param", "workers=0"]


def _png(path: Path, value: int, size=(10, 12)) -> None:
    from PIL import Image

    g = np.random.default_rng(value)
    Image.fromarray((g.random((*size, 3)) * 60 + 3 * value).astype(np.uint8)).save(path)


def _folder(root: Path, *, n: int = 40, header: str = "img_filename,y,place,split", rows=None) -> Path:
    """DIR/imgs/<i>.png and DIR/metadata.csv: y = i % 2, place = (i // 2) % 2, splits cycling over SPLITS."""
    (root / "imgs").mkdir(parents=True)
    lines = [header]
    for i in range(n):
        _png(root / "imgs" / f"{i}.png", i)
        lines.append(f"imgs/{i}.png,{i % 2},{(i // 2) % 2},{SPLITS[i % len(SPLITS)]}")
    for k, row in (rows or {}).items():
        lines[k] = row
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    return root


def _plant(root: Path, row: int, path: str) -> None:
    """Row ``row`` (1-based, line row + 1) of metadata.csv lists ``path``."""
    lines = (root / "metadata.csv").read_text().splitlines()
    cells = lines[row].split(",")
    lines[row] = ",".join([path, *cells[1:]])
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")


@pytest.fixture
def no_compute(monkeypatch):
    import debiaskit.audit._run as audit_run
    import debiaskit.train._run as train_run

    def boom(*a, **k):
        raise AssertionError("compute started before the data was checked")

    monkeypatch.setattr(train_run, "fit", boom)
    monkeypatch.setattr(audit_run, "audit_model", boom)


def _refused_everywhere(cli, root: Path, tmp_path: Path, *needles: str) -> None:
    """`data show`, `train` and the Python loader all refuse the folder, naming ``needles``; nothing written."""
    code, out = cli("data", "show", f"folder:{root}", *FOLDER_PARAMS)
    assert code == 2 and all(n in out for n in needles), out
    assert "Traceback" not in out
    code, out = cli(
        "train",
        "--dataset",
        f"folder:{root}",
        *FOLDER_PARAMS,
        "--model",
        "mlp",
        "--epochs",
        "1",
        "--no-progress",
        "--out",
        tmp_path / "run",
    )
    assert code == 2 and all(n in out for n in needles), out
    assert not (tmp_path / "run").exists()
    with pytest.raises(DataError) as exc:
        make_splits(f"folder:{root}", params={"bias_column": "place", "workers": 0})
    assert all(n in " ".join(str(exc.value).split()) for n in needles)


# -- rows stay inside the folder ------------------------------------------------------------------------------
def test_a_planted_dotdot_row_is_refused_with_its_line(cli, tmp_path, no_compute):
    root = _folder(tmp_path / "ds")
    (tmp_path / "outside").mkdir()
    _png(tmp_path / "outside" / "7.png", 7)  # a real image, outside the folder
    _plant(root, 8, "../outside/7.png")
    _refused_everywhere(cli, root, tmp_path, "line 9 (row 8)", "'../outside/7.png'", "climbs out of")


def test_an_absolute_row_is_refused_and_never_opened(cli, tmp_path, no_compute, monkeypatch):
    root = _folder(tmp_path / "ds")
    good = make_splits(f"folder:{root}", params={"bias_column": "place", "workers": 0})
    _plant(root, 3, "/etc/passwd")
    opened = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda p, *a, **k: opened.append(str(p)) or real_open(p, *a, **k))
    _refused_everywhere(cli, root, tmp_path, "line 4 (row 3)", "'/etc/passwd'", "is absolute")
    with pytest.raises(DataError, match="is absolute"):  # a run's spec (audit, load_run) too
        splits_from_spec(good.spec)
    assert not any("passwd" in p for p in opened)


def test_a_symlinked_image_leading_outside_is_refused(cli, tmp_path, no_compute):
    root = _folder(tmp_path / "ds")
    (tmp_path / "outside").mkdir()
    _png(tmp_path / "outside" / "secret.png", 1)
    (root / "imgs" / "5.png").unlink()
    (root / "imgs" / "5.png").symlink_to(tmp_path / "outside" / "secret.png")
    _refused_everywhere(cli, root, tmp_path, "line 7 (row 6)", "'imgs/5.png'", "through a symbolic link")


def test_a_parent_folder_symlink_leading_outside_is_refused(cli, tmp_path, no_compute):
    root = _folder(tmp_path / "ds")
    (tmp_path / "outside").mkdir()
    _png(tmp_path / "outside" / "0.png", 0)
    (root / "linked").symlink_to(tmp_path / "outside", target_is_directory=True)
    _plant(root, 1, "linked/0.png")
    _refused_everywhere(cli, root, tmp_path, "line 2 (row 1)", "'linked/0.png'", "through a symbolic link")


def test_symlinks_inside_the_folder_are_fine(tmp_path):
    root = _folder(tmp_path / "ds")
    (root / "alias").symlink_to(root / "imgs", target_is_directory=True)
    _plant(root, 1, "alias/0.png")
    splits = make_splits(f"folder:{root}", params={"bias_column": "place", "workers": 0})
    assert len(splits.train) == 16


def test_a_metadata_file_symlinked_outside_is_refused_without_echoing_it(cli, tmp_path, no_compute):
    root = _folder(tmp_path / "ds")
    secret = tmp_path / "passwd"
    secret.write_text("root:x:0:0:SECRET-LINE:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n")
    (root / "metadata.csv").unlink()
    (root / "metadata.csv").symlink_to(secret)
    _refused_everywhere(cli, root, tmp_path, "metadata.csv is a symbolic link leading outside")
    code, out = cli("data", "show", f"folder:{root}")
    assert "SECRET" not in out
    (root / "metadata.csv").unlink()  # a copy inside the folder: described, not echoed
    (root / "metadata.csv").write_text(secret.read_text())
    code, out = cli("data", "show", f"folder:{root}")
    assert code == 2 and "not a header of column names" in out and "SECRET" not in out, out


# -- every image decoded once, at the edge -------------------------------------------------------------------------
def test_a_text_file_listed_as_an_image_is_refused_at_the_edge(cli, tmp_path, no_compute):
    root = _folder(tmp_path / "ds")
    (root / "imgs" / "11.png").write_text("I am not a picture\n")
    _refused_everywhere(cli, root, tmp_path, "line 13 (row 12)", "'imgs/11.png'", "is not an image")


def test_a_symlink_to_a_text_file_inside_is_refused_at_the_edge(cli, tmp_path, no_compute):
    root = _folder(tmp_path / "ds")
    (root / "notes.txt").write_text("some notes\n")
    (root / "imgs" / "2.png").unlink()
    (root / "imgs" / "2.png").symlink_to(root / "notes.txt")
    _refused_everywhere(cli, root, tmp_path, "line 4 (row 3)", "'imgs/2.png'", "is not an image")


def test_a_truncated_image_is_refused_at_the_edge(tmp_path):
    root = _folder(tmp_path / "ds")
    data = (root / "imgs" / "4.png").read_bytes()
    (root / "imgs" / "4.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"line 6 \(row 5\): 'imgs/4.png' is a damaged or unreadable image"):
        make_splits(f"folder:{root}", params={"bias_column": "place", "workers": 0})


# -- the fingerprint ---------------------------------------------------------------------------------------------
def _swap(a: Path, b: Path) -> None:
    da, db = a.read_bytes(), b.read_bytes()
    a.write_bytes(db)
    b.write_bytes(da)


def test_swapped_images_are_refused_at_load_with_hash_content(cli, tmp_path):
    root = _folder(tmp_path / "ds")
    code, out = cli("data", "show", f"folder:{root}", *FOLDER_PARAMS)
    assert code == 0 and "fingerprint: names and sizes; pass --param hash=content" in out, out
    code, out = cli("data", "show", f"folder:{root}", *FOLDER_PARAMS, "--param", "hash=content")
    assert code == 0 and "fingerprint: names and contents (SHA-256 of every image file" in out, out
    run = tmp_path / "run"
    code, out = cli(
        "train",
        "--dataset",
        f"folder:{root}",
        *FOLDER_PARAMS,
        "--param",
        "hash=content",
        "--model",
        "mlp",
        "--epochs",
        "1",
        "--no-progress",
        "--out",
        run,
    )
    assert code == 0, out
    by_names = make_splits(f"folder:{root}", params={"bias_column": "place", "workers": 0})
    # swap two images of the same byte size (same sizes: the default fingerprint cannot see it)
    sizes = {}
    for p in sorted((root / "imgs").iterdir()):
        sizes.setdefault(p.stat().st_size, []).append(p)
    a, b = next(v for v in sizes.values() if len(v) >= 2)[:2]
    assert a.read_bytes() != b.read_bytes()
    _swap(a, b)
    code, out = cli("audit", run)
    assert code == 2 and "the image files (contents) changed since this run was made" in out, out
    assert not (run / "audit").exists()
    splits_from_spec(by_names.spec)  # the default covers names and sizes only (stated in data show)
    with pytest.raises(ConfigError, match="hash must be names .* or content"):
        make_splits(f"folder:{root}", params={"bias_column": "place", "hash": "md5"})


# -- CSV robustness ------------------------------------------------------------------------------------------------
def test_a_utf8_bom_is_accepted(tmp_path):
    root = _folder(tmp_path / "ds", header="path,y,place,split")
    text = (root / "metadata.csv").read_text()
    (root / "metadata.csv").write_bytes(b"\xef\xbb\xbf" + text.encode())
    splits = make_splits(f"folder:{root}", params={"bias_column": "place", "workers": 0})
    assert len(splits.train) == 16


def test_duplicated_columns_are_refused_by_name(tmp_path):
    root = _folder(tmp_path / "ds", header="img_filename,y,place,place")
    with pytest.raises(DataError, match=r"metadata.csv line 1: duplicated column\(s\) place"):
        make_splits(f"folder:{root}", params={"bias_column": "place"})


def test_a_short_row_says_its_line_and_what_was_expected(tmp_path):
    root = _folder(tmp_path / "ds", rows={5: "imgs/4.png,0,1"})
    with pytest.raises(
        DataError,
        match=r"line 6: 3 field\(s\), expected 4 .*its columns: img_filename, y, place, "
        r"split",
    ):
        make_splits(f"folder:{root}", params={"bias_column": "place"})
    root = _folder(tmp_path / "ds2", rows={3: "imgs/2.png,1.5,0,train"})
    with pytest.raises(DataError, match=r"line 4: y = '1.5' is not an integer class index"):
        make_splits(f"folder:{root}", params={"bias_column": "place"})
    (root / "metadata.csv").write_bytes(b"path,y,b\n\xff\xfe,0,1\n")
    with pytest.raises(DataError, match="line 2: not UTF-8 text"):
        make_splits(f"folder:{root}")


# -- labels nothing can be learned from ---------------------------------------------------------------------------
def _rows(n=400, seed=0):
    g = np.random.default_rng(seed)
    y = g.integers(0, 2, n)
    b = np.where(g.random(n) < 0.8, y, 1 - y)
    return g.normal(size=(n, 4)).astype(np.float32), y, b


def test_one_target_class_is_refused_before_any_compute(cli, tmp_path, no_compute):
    x, y, b = _rows()
    path = tmp_path / "one.npz"
    np.savez(path, x=x, y=np.zeros_like(y), b=b)
    for cmd in (
        ["data", "show", f"tensors:{path}"],
        ["train", "--dataset", f"tensors:{path}", "--model", "mlp", "--out", tmp_path / "run"],
    ):
        code, out = cli(*cmd)
        assert code == 2 and "every sample has target y = 0: a classifier needs at least two target classes" in out
    assert not (tmp_path / "run").exists()
    root = _folder(tmp_path / "ds", header="img_filename,cls,place,split")
    text = (root / "metadata.csv").read_text().replace(",1,", ",0,")
    (root / "metadata.csv").write_text(
        "\n".join(
            ",".join([r.split(",")[0], "0", *r.split(",")[2:]]) if i else r for i, r in enumerate(text.splitlines())
        )
        + "\n"
    )
    with pytest.raises(DataError, match="every sample has target y = 0"):
        make_splits(f"folder:{root}", params={"bias_column": "place", "target_column": "cls"})


def test_a_bias_attribute_with_one_value_is_refused(tmp_path):
    x, y, b = _rows()
    path = tmp_path / "flat.npz"
    np.savez(path, x=x, y=y, b=np.stack([b, np.ones_like(b)], 1), bias_names=np.array(["colour", "site"]))
    with pytest.raises(DataError, match=r"bias attribute site has one value \(b = 1 in every sample\)"):
        make_splits(f"tensors:{path}")


@pytest.mark.parametrize(
    "y_of, message",
    [
        (lambda y: y - 1, r"must be class indices >= 0|class indices 0..K-1"),
        (lambda y: np.where(y == 1, 1000, 0), r"targets y holds class index 1000 .* only 400 samples"),
        (lambda y: y + 0.5, "y must be an integer array"),
    ],
)
def test_labels_outside_0_to_k_are_refused(tmp_path, y_of, message):
    x, y, b = _rows()
    path = tmp_path / "bad.npz"
    np.savez(path, x=x, y=y_of(y), b=b)
    with pytest.raises(DataError, match=message):
        make_splits(f"tensors:{path}")


def test_a_zero_dimensional_x_is_a_clear_error(tmp_path):
    _, y, b = _rows()
    path = tmp_path / "scalar.npz"
    np.savez(path, x=np.float32(3.0), y=y, b=b)
    with pytest.raises(DataError, match=r"x is a single value \(0 dimensions\)"):
        make_splits(f"tensors:{path}")


def test_bias_names_of_the_values_get_the_hint(tmp_path):
    x, y, b = _rows()
    path = tmp_path / "named.npz"
    np.savez(path, x=x, y=y, b=b, bias_names=np.array(["red", "green"]))
    with pytest.raises(DataError, match="did you mean to name the values. bias_names names the attributes"):
        make_splits(f"tensors:{path}")
    parts = {
        n: TensorDataset(torch.from_numpy(x[i::4]), torch.from_numpy(y[i::4]), torch.from_numpy(b[i::4]))
        for i, n in enumerate(("train", "unbiased_train", "unbiased_val", "test"))
    }
    with pytest.raises(DataError, match="2 name.s. .red, green. for 1 bias attribute.s. - did you mean"):
        user_splits(**parts, bias_names=("red", "green"))
    with pytest.raises(DataError, match="every sample has target y = 1"):
        user_splits(
            **{n: TensorDataset(d.tensors[0], torch.ones_like(d.tensors[1]), d.tensors[2]) for n, d in parts.items()}
        )


# -- options -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args, message",
    [
        (["--rho", "0.99", "--param", "rho=0.5"], "--rho 0.99 and --param rho=0.5 both set rho: give it once"),
        (["--param", "rho=0.9", "--param", "rho=0.5"], "--param rho=0.9 and --param rho=0.5 both set rho"),
    ],
)
def test_an_option_and_a_param_setting_the_same_value_are_refused(cli, tmp_path, no_compute, args, message):
    code, out = cli("train", "--dataset", "biased-toy", "--model", "mlp", *args, "--out", tmp_path / "run")
    assert code == 2 and message in out, out
    code, out = cli("data", "show", "biased-toy", *args)
    assert code == 2 and message in out, out
    code, out = cli("data", "show", "celeba", "--root", tmp_path, "--param", f"root={tmp_path}")
    assert code == 2 and "both set root" in out, out
    code, out = cli(
        "train",
        "--dataset",
        "biased-toy",
        "--model",
        "mlp",
        "--method",
        "gce",
        "--method-param",
        "q=0.7",
        "--method-param",
        "q=0.5",
        "--out",
        tmp_path / "run",
    )
    assert code == 2 and "--method-param q is given twice (0.7 and 0.5)" in out, out


def test_small_splits_built_in_python_warn_like_the_cli(tmp_path):
    x, y, b = _rows(n=2000)
    t = [torch.from_numpy(a) for a in (x, y, b)]
    parts = {
        "train": TensorDataset(*(a[:1600] for a in t)),
        "unbiased_train": TensorDataset(*(a[1600:1640] for a in t)),
        "unbiased_val": TensorDataset(*(a[1640:1680] for a in t)),
        "test": TensorDataset(*(a[1680:] for a in t)),
    }
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        user_splits(**parts)
    said = [str(w.message) for w in record if issubclass(w.category, SmallSplitWarning)]
    assert len(said) == 1 and "user_splits: the unbiased splits are small: D^u_train holds 40 samples" in said[0]
    assert "at least 25 per (y, b) group and 100 in all" in said[0] and "datasets you gave user_splits" in said[0]
    big = {
        "train": TensorDataset(*(a[:800] for a in t)),
        "unbiased_train": TensorDataset(*(a[800:1200] for a in t)),
        "unbiased_val": TensorDataset(*(a[1200:1600] for a in t)),
        "test": TensorDataset(*(a[1600:] for a in t)),
    }
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        user_splits(**big)
    assert not [w for w in record if issubclass(w.category, SmallSplitWarning)]
