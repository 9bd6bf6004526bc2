"""Datasets from disk: tensors:PATH (.safetensors / .npz) and folder:DIR (images + metadata.csv)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from debiaskit.data import (
    BiasDataset,
    LazyBiasDataset,
    describe,
    iterate_batches,
    make_splits,
    save_tensor_file,
    splits_from_spec,
)
from debiaskit.errors import ConfigError, DataError


def _biased_rows(n=1600, rho=0.9, seed=0, features=6):
    g = np.random.default_rng(seed)
    y = g.integers(0, 2, n)
    b = np.where(g.random(n) < rho, y, 1 - y)
    x = (g.normal(size=(n, features)) + y[:, None] + 2 * b[:, None]).astype(np.float32)
    return x, y, b


@pytest.fixture()
def npz_with_split(tmp_path):
    x, y, b = _biased_rows()
    split = np.arange(len(y)) % 10
    split = np.select([split < 6, split == 6, split == 7, split == 8], [0, 1, 2, 4], default=-1)
    path = tmp_path / "rows.npz"
    np.savez(path, x=x, y=y, b=b, split=split, bias_names=np.array(["colour"]))
    return path, (x, y, b, split)


def test_npz_with_split_codes(npz_with_split):
    path, (x, y, b, split) = npz_with_split
    splits = make_splits(f"tensors:{path}", seed=0)
    assert len(splits.train) == int((split == 0).sum()) and len(splits.test) == int((split == 4).sum())
    assert splits.unbiased_test is None  # code 3 unused: optional
    assert isinstance(splits.train, BiasDataset) and splits.train.bias_names == ("colour",)
    assert torch.allclose(splits.unbiased_val.x, torch.from_numpy(x[split == 2]))
    assert splits.spec["sha256"] and splits.spec["dataset"] == f"tensors:{path.resolve()}"
    assert splits.spec["bias_pairing"] == [0, 1]
    assert torch.equal(splits.test.aligned, torch.from_numpy(b[split == 4] == y[split == 4]))


def test_rebuild_from_spec_and_refuse_a_changed_file(npz_with_split):
    path, (x, y, b, split) = npz_with_split
    splits = make_splits(f"tensors:{path}", seed=0)
    again = splits_from_spec(json.loads(json.dumps(splits.spec)))
    assert torch.equal(again.train.images, splits.train.images)
    np.savez(path, x=x + 1, y=y, b=b, split=split)
    with pytest.raises(DataError, match="not the file this run was made from"):
        splits_from_spec(splits.spec)
    path.unlink()
    with pytest.raises(DataError, match="is gone"):
        splits_from_spec(splits.spec)


def test_splits_drawn_when_the_file_has_none(tmp_path):
    x, y, b = _biased_rows(n=2000, rho=0.9)
    path = tmp_path / "rows.npz"
    np.savez(path, x=x, y=y, b=b)
    splits = make_splits(f"tensors:{path}", seed=3)
    for name in ("unbiased_train", "unbiased_val", "unbiased_test", "test"):
        counts = getattr(splits, name).summary()["group_counts"]
        assert len({n for row in counts for n in row}) == 1, name  # group-balanced
    assert 0.85 < splits.train.summary()["realised_rho"] < 0.95  # D^b keeps the data's own bias
    total = sum(len(d) for _, d in splits.items())
    assert total == len(y)  # every sample in exactly one split
    assert "stratified by (y, b)" in splits.spec["splits_from"]
    other = make_splits(f"tensors:{path}", seed=4)
    assert not torch.equal(other.test.x, splits.test.x)  # the seed draws


def test_too_small_groups_ask_for_a_split_array(tmp_path):
    x, y, b = _biased_rows(n=300, rho=0.99)
    path = tmp_path / "rows.npz"
    np.savez(path, x=x, y=y, b=b)
    with pytest.raises(DataError, match="Add a `split` array"):
        make_splits(f"tensors:{path}")


@pytest.mark.parametrize(
    "arrays, message",
    [
        (lambda x, y, b: {"x": x, "y": y}, "lacks b"),
        (lambda x, y, b: {"x": x, "y": y.astype(np.float32), "b": b}, "y must be an integer array"),
        (lambda x, y, b: {"x": x[:10], "y": y, "b": b}, "same length"),
        (lambda x, y, b: {"x": x, "y": y, "b": b, "split": np.full(len(y), 7)}, "unknown split codes"),
        (lambda x, y, b: {"x": x, "y": y - 1, "b": b}, ">= 0"),
        (lambda x, y, b: {"x": np.where(x > 2, np.nan, x), "y": y, "b": b}, "NaN"),
    ],
)
def test_bad_tensor_files_are_clear_errors(tmp_path, arrays, message):
    x, y, b = _biased_rows()
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays(x, y, b))
    with pytest.raises(DataError, match=message):
        make_splits(f"tensors:{path}")


def test_npz_with_pickled_objects_is_refused(tmp_path):
    x, y, b = _biased_rows(n=20)
    path = tmp_path / "pickled.npz"
    np.savez(path, x=x, y=y, b=np.array([object()] * 20, dtype=object))
    with pytest.raises(DataError, match="pickled objects"):
        make_splits(f"tensors:{path}")


def test_other_suffixes_and_missing_files(tmp_path):
    (tmp_path / "data.pt").write_bytes(b"not ours")
    with pytest.raises(DataError, match=r"\.safetensors or \.npz"):
        make_splits(f"tensors:{tmp_path / 'data.pt'}")
    with pytest.raises(DataError, match="does not exist"):
        make_splits(f"tensors:{tmp_path / 'nope.safetensors'}")
    (tmp_path / "broken.safetensors").write_bytes(b"\xff" * 16)
    with pytest.raises(DataError, match="not a safetensors file"):
        make_splits(f"tensors:{tmp_path / 'broken.safetensors'}")


def test_safetensors_memory_mapped_and_lazy(tmp_path):
    g = torch.Generator().manual_seed(0)
    n = 400
    y = torch.randint(0, 2, (n,), generator=g)
    b = torch.where(torch.rand(n, generator=g) < 0.9, y, 1 - y)
    x = torch.randint(0, 256, (n, 1, 8, 8), generator=g, dtype=torch.uint8)
    split = torch.tensor([0, 0, 1, 2, 4] * (n // 5))
    path = save_tensor_file(tmp_path / "images.safetensors", x=x, y=y, b=b, split=split, bias_names=("place",))
    with pytest.raises(ConfigError, match="never replaces"):
        save_tensor_file(path, x=x, y=y, b=b)
    lazy = make_splits(f"tensors:{path}", params={"lazy": "1"})
    eager = make_splits(f"tensors:{path}")
    assert isinstance(lazy.train, LazyBiasDataset) and isinstance(eager.train, BiasDataset)
    assert lazy.train.bias_names == ("place",)
    first = next(iter(iterate_batches(lazy.test, batch_size=16))).x
    assert first.dtype == torch.float32 and float(first.max()) <= 1.0  # uint8 images scaled to [0, 1]
    assert torch.allclose(first, eager.test.x[:16])
    assert torch.allclose(first, x[split == 4][:16].float() / 255)


def _image_folder(root: Path, *, n=48, split_values=None, size=(10, 12)):
    from PIL import Image

    g = np.random.default_rng(0)
    (root / "imgs" / "sub").mkdir(parents=True)
    rows = ["img_filename,y,place,split"]
    for i in range(n):
        y, b = i % 2, (i // 2) % 2
        pixels = (g.random((*size, 3)) * 60 + 150 * y).astype(np.uint8)
        Image.fromarray(pixels).save(root / "imgs" / "sub" / f"{i}.png")
        split = split_values[i % len(split_values)] if split_values else ""
        rows.append(f"imgs/sub/{i}.png,{y},{b},{split}")
    (root / "metadata.csv").write_text("\n".join(rows) + "\n")
    return root


def test_image_folder_with_named_splits_decoded_in_workers(tmp_path):
    root = _image_folder(tmp_path, split_values=["train", "train", "unbiased_train", "unbiased_val", "test", "unused"])
    name = f"folder:{root}"
    splits = make_splits(name, params={"bias_column": "place", "size": 8, "workers": 2})
    assert isinstance(splits.train, LazyBiasDataset) and len(splits.train) == 16 and splits.unbiased_test is None
    assert splits.train.bias_names == ("place",) and splits.train.input_shape == (3, 8, 8)
    batch = next(iter(iterate_batches(splits.test, batch_size=4)))
    assert batch.x.shape == (4, 3, 8, 8) and batch.b is not None
    info = describe(name, params={"bias_column": "place"})
    assert info["num_classes"] == 2 and info["bias_attributes"] == ["place"]
    again = splits_from_spec(splits.spec)
    assert torch.equal(again.test.y, splits.test.y)
    (root / "metadata.csv").write_text((root / "metadata.csv").read_text().replace(",1,0,train", ",1,1,train", 1))
    with pytest.raises(DataError, match="metadata.csv changed"):
        splits_from_spec(splits.spec)


def test_image_folder_with_waterbirds_codes(tmp_path):
    root = _image_folder(tmp_path, n=80, split_values=["0", "0", "1", "1", "2"])
    splits = make_splits(
        f"folder:{root}", params={"bias_column": "place", "split_names": "train,unbiased,test", "workers": 0}
    )
    assert len(splits.train) == 32 and len(splits.test) == 16
    du = [splits.unbiased_train, splits.unbiased_val, splits.unbiased_test]
    assert [len(d) for d in du] == [20, 8, 4]  # 60/20/20 inside each of the 4 (y, b) groups
    assert sorted(torch.cat([d.index for d in du]).tolist()) == [i for i in range(80) if i % 5 in (2, 3)]
    with pytest.raises(DataError, match="no samples in split.s. unbiased_train, unbiased_val"):
        make_splits(f"folder:{root}", params={"bias_column": "place", "split_names": "train,unused,test"})


def test_image_folder_errors(tmp_path):
    root = _image_folder(tmp_path, split_values=["train"])
    with pytest.raises(DataError, match="no bias column"):
        make_splits(f"folder:{root}")  # the CSV calls it 'place'
    with pytest.raises(ConfigError, match="takes the params"):
        make_splits(f"folder:{root}", params={"colour": "1"})
    (root / "imgs" / "sub" / "3.png").unlink()
    with pytest.raises(DataError, match="do not exist"):
        make_splits(f"folder:{root}", params={"bias_column": "place"})
    with pytest.raises(DataError, match="metadata.csv does not exist"):
        make_splits(f"folder:{tmp_path / 'elsewhere'}")


@pytest.fixture()
def cli(monkeypatch, capsys):
    """Run the console script in-process: (exit code, stdout, stderr on one line)."""
    from debiaskit.cli import main

    def run(*args):
        monkeypatch.setattr(sys, "argv", ["debiaskit", *map(str, args)])
        monkeypatch.setenv("COLUMNS", "1000")
        with pytest.raises(SystemExit) as exc:
            main()
        out, err = capsys.readouterr()
        return exc.value.code or 0, out, " ".join(err.split())

    return run


def test_cli_data_show_and_train_on_a_tensors_file(npz_with_split, tmp_path, cli):
    path, _ = npz_with_split
    code, out, err = cli("data", "show", f"tensors:{path}")
    assert code == 0, err
    assert "groups train: (y0,b0)=" in out and "split` array" in out
    run = tmp_path / "run"
    code, out, err = cli(
        "train", "--dataset", f"tensors:{path}", "--model", "mlp", "--epochs", "1", "--out", run, "--no-progress"
    )
    assert code == 0, err
    meta = json.loads((run / "run.json").read_text())
    assert meta["data"]["sha256"] and meta["data"]["path"] == str(path.resolve())
    assert cli("audit", run)[0] == 0


def test_cli_data_show_of_an_image_folder(tmp_path, cli):
    root = _image_folder(tmp_path, split_values=["train", "unbiased_train", "unbiased_val", "test"])
    code, out, err = cli("data", "show", f"folder:{root}", "--param", "bias_column=place", "--param", "workers=0")
    assert code == 0, err
    assert "your image folder (48 images" in out and "groups test:" in out


def test_cli_refuses_a_missing_file_before_any_work(tmp_path, cli):
    code, _, err = cli("train", "--dataset", f"tensors:{tmp_path / 'nope.npz'}", "--out", tmp_path / "run")
    assert code == 2 and "does not exist" in err
    assert not (tmp_path / "run").exists()


def test_bias_columns_give_counterfactual_rows(tmp_path):
    x, y, b = _biased_rows(n=2000)
    x = np.concatenate([x, np.eye(2)[b]], 1).astype(np.float32)
    path = tmp_path / "rows.npz"
    np.savez(path, x=x, y=y, b=b, bias_columns=np.array([6, 7]))
    test = make_splits(f"tensors:{path}").test
    rows = test.counterfactual(torch.arange(4), 1 - test.b[:4])
    assert torch.equal(rows[:, :6], test.x[:4, :6])  # every other column kept
    assert torch.equal(rows[:, 6:].argmax(1), 1 - test.b[:4]) and torch.equal(rows[:, 6:].sum(1), torch.ones(4))
    np.savez(path, x=x, y=y, b=b, bias_columns=np.array([6, 6]))
    with pytest.raises(DataError, match="distinct column indices"):
        make_splits(f"tensors:{path}")
