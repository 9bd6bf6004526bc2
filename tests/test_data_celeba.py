"""CelebA as a first-class dataset: make_splits("celeba"), spec round-trip, cache, errors and the CLI.

The fixture is a 60-image CelebA folder in the real layout (img_align_celeba/*.jpg 16 x 20, all 40
attribute names, list_eval_partition.txt). Every image is a solid colour whose blue channel encodes its
file number (4 * i), so a test can check that images and labels stay paired through every subsample.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from debiaskit.audit import audit_model
from debiaskit.cli import app
from debiaskit.cli._common import parse_params
from debiaskit.data import dataset_names, describe, make_splits, parse_name, splits_from_spec
from debiaskit.errors import ConfigError, DataError
from debiaskit.runs import load_run

ATTRS = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose "
    "Black_Hair Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee "
    "Gray_Hair Heavy_Makeup High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard "
    "Oval_Face Pale_Skin Pointy_Nose Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair "
    "Wavy_Hair Wearing_Earrings Wearing_Hat Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young"
).split()

# per official partition: {(blond, male): count}
LAYOUT = {
    0: {(0, 1): 12, (1, 0): 12, (0, 0): 3, (1, 1): 3},  # train: 24 of 30 majority-paired -> rho 0.8
    1: {(0, 0): 5, (0, 1): 5, (1, 0): 5, (1, 1): 5},  # valid: 5 per group
    2: {(0, 1): 4, (1, 0): 3, (0, 0): 2, (1, 1): 1},  # test: not balanced
}
runner = CliRunner()


def make_celeba_folder(root, *, seed=0):
    """Write the fixture; return {file name: (blond, male, partition, number)}."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    rows = [
        (blond, male, part) for part, groups in LAYOUT.items() for (blond, male), n in groups.items() for _ in range(n)
    ]
    order = rng.permutation(len(rows))  # partitions interleaved in file order, as in a real folder
    (root / "img_align_celeba").mkdir(parents=True)
    lines, parts, table = [str(len(rows)), " ".join(ATTRS)], [], {}
    for i, r in enumerate(order):
        blond, male, part = rows[r]
        name = f"{i + 1:06d}.jpg"
        values = rng.choice([-1, 1], len(ATTRS))
        values[ATTRS.index("Blond_Hair")], values[ATTRS.index("Male")] = 2 * blond - 1, 2 * male - 1
        lines.append(name + " " + " ".join(f"{v:2d}" for v in values))
        parts.append(f"{name} {part}\n")
        Image.new("RGB", (16, 20), (60 + 120 * blond, 60 + 120 * male, 4 * i)).save(
            root / "img_align_celeba" / name, quality=95
        )
        table[name] = (blond, male, part, i)
    (root / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    (root / "list_eval_partition.txt").write_text("".join(parts))
    return table


@pytest.fixture
def celeba(tmp_path, monkeypatch):
    monkeypatch.delenv("DEBIASKIT_CELEBA", raising=False)
    monkeypatch.setenv("DEBIASKIT_DATA", str(tmp_path / "cache"))
    root = tmp_path / "celeba"
    return root, make_celeba_folder(root)


def _check_pairing(split, table, partition):
    """Labels, partition and pixels of every sample agree with the file it came from."""
    files = split.info["files"]
    assert len(files) == len(split) and split.info["partition"] == {0: "train", 1: "valid", 2: "test"}[partition]
    for k, f in enumerate(files):
        blond, male, part, number = table[f]
        assert part == partition and (int(split.y[k]), int(split.b[k])) == (blond, male)
        assert abs(float(split.images[k, 2].float().mean()) - 4 * number) < 6  # JPEG keeps solid colours


def _groups(split):
    return {(t, a): int(((split.y == t) & (split.b == a)).sum()) for t in (0, 1) for a in (0, 1)}


def test_splits_partitions_balance_and_rho(celeba):
    root, table = celeba
    splits = make_splits(
        "celeba", params={"root": str(root), "target": "Blond_Hair", "bias": "Male", "size": 8}, seed=0
    )
    assert [len(s) for _, s in splits.items()] == [30, 12, 4, 4, 10]
    assert splits.train.images.shape == (30, 3, 8, 8) and splits.train.images.dtype == torch.uint8
    assert splits.num_classes == 2 and splits.num_bias_classes == 2 and splits.train.bias_names == ("Male",)
    # blond <-> female is the majority pairing of the train partition: 24 of 30 aligned
    assert splits.train.summary()["realised_rho"] == pytest.approx(0.8)
    assert splits.train.info["majority_pairing"] == [1, 0]
    for name, part in (("train", 0), ("unbiased_train", 1), ("unbiased_val", 1), ("unbiased_test", 1), ("test", 2)):
        _check_pairing(getattr(splits, name), table, part)
    # D^u: 5 per valid group -> 3 / 1 / 1 per group, disjoint, each balanced
    assert _groups(splits.unbiased_train) == {g: 3 for g in _groups(splits.unbiased_train)}
    assert _groups(splits.unbiased_val) == _groups(splits.unbiased_test) == {(0, 0): 1, (0, 1): 1, (1, 0): 1, (1, 1): 1}
    used = [f for n in ("unbiased_train", "unbiased_val", "unbiased_test") for f in getattr(splits, n).info["files"]]
    assert len(set(used)) == 20
    # the official test partition, unbalanced as it is
    assert _groups(splits.test) == {(0, 0): 2, (0, 1): 4, (1, 0): 3, (1, 1): 1}
    assert splits.spec["params"] == {
        "root": str(root.absolute()),
        "target": "Blond_Hair",
        "bias": "Male",
        "size": 8,
        "cache": 1,
    }


def test_unbiased_size_caps_the_balanced_subsample(celeba):
    root, _ = celeba
    splits = make_splits("celeba", params={"root": str(root), "size": 4}, seed=0, unbiased_size=16)
    assert [len(splits.unbiased_train), len(splits.unbiased_val), len(splits.unbiased_test)] == [8, 4, 4]
    for split in (splits.unbiased_train, splits.unbiased_val, splits.unbiased_test):
        assert len(set(_groups(split).values())) == 1  # balanced
    with pytest.raises(DataError, match="2 image.*per Blond_Hair x Male group: too few"):
        make_splits("celeba", params={"root": str(root), "size": 4}, seed=0, unbiased_size=8)


def test_sizes_subsample_deterministically_from_seed(celeba):
    root, table = celeba
    params = {"root": str(root), "size": 4}
    a = make_splits("celeba", params=params, seed=3, train_size=10, test_size=5)
    b = make_splits("celeba", params=params, seed=3, train_size=10, test_size=5)
    c = make_splits("celeba", params=params, seed=4, train_size=10, test_size=5)
    assert len(a.train) == 10 and len(a.test) == 5
    for name in ("train", "unbiased_train", "unbiased_val", "unbiased_test", "test"):
        assert getattr(a, name).info["files"] == getattr(b, name).info["files"]
        assert torch.equal(getattr(a, name).images, getattr(b, name).images)
    assert a.train.info["files"] != c.train.info["files"]
    assert a.unbiased_train.info["files"] != c.unbiased_train.info["files"]
    _check_pairing(a.train, table, 0)
    _check_pairing(a.test, table, 2)
    with pytest.raises(ConfigError, match=r"train_size must lie in \(0, 30\], got 31"):
        make_splits("celeba", params=params, train_size=31)
    with pytest.raises(ConfigError, match=r"test_size must lie in \(0, 10\], got 0"):
        make_splits("celeba", params=params, test_size=0)


def test_spec_round_trip_and_checksum(celeba, tmp_path, monkeypatch):
    root, _ = celeba
    splits = make_splits(
        "celeba", params={"root": str(root), "bias": "Eyeglasses", "size": 4}, seed=1, train_size=20, unbiased_size=16
    )
    spec = json.loads(json.dumps(splits.spec))  # what run.json holds
    rebuilt = splits_from_spec(spec)
    for (name, s), (_, r) in zip(splits.items(), rebuilt.items()):
        assert torch.equal(s.images, r.images) and torch.equal(s.y, r.y) and torch.equal(s.b, r.b), name
        assert torch.equal(s.aligned, r.aligned) and s.info["files"] == r.info["files"], name
    assert rebuilt.spec == splits.spec and rebuilt.train.bias_names == ("Eyeglasses",)
    # a moved folder is found through $DEBIASKIT_CELEBA; the annotation checksum must still match
    moved = tmp_path / "moved"
    root.rename(moved)
    with pytest.raises(DataError, match="built from, .*celeba, does not exist; set DEBIASKIT_CELEBA=DIR"):
        splits_from_spec(spec)
    monkeypatch.setenv("DEBIASKIT_CELEBA", str(moved))
    assert torch.equal(splits_from_spec(spec).test.images, splits.test.images)
    attr = moved / "list_attr_celeba.txt"
    attr.write_text(attr.read_text().replace(" 1", "-1", 1))
    with pytest.raises(DataError, match="annotation files in .* differ from the ones this run was built from"):
        splits_from_spec(spec)


def test_root_from_environment_and_missing_folder_errors(celeba, tmp_path, monkeypatch):
    root, _ = celeba
    with pytest.raises(
        DataError,
        match="root.*DEBIASKIT_CELEBA=DIR.*img_align_celeba/\\*.jpg, list_attr_celeba.txt and list_eval_partition.txt",
    ):
        make_splits("celeba")
    monkeypatch.setenv("DEBIASKIT_CELEBA", str(root))
    splits = make_splits("celeba", params={"size": 4})
    assert splits.spec["params"]["root"] == str(root.absolute()) and len(splits.train) == 30
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="missing list_attr_celeba.txt in .*empty.*img_align_celeba"):
        make_splits("celeba", params={"root": str(empty)})
    (root / "list_eval_partition.txt").unlink()
    with pytest.raises(DataError, match="missing list_eval_partition.txt"):
        make_splits("celeba")


def test_bad_params(celeba):
    root, _ = celeba
    with pytest.raises(ConfigError, match="unknown CelebA target attribute 'Blonde'; available: .*Blond_Hair"):
        make_splits("celeba", params={"root": str(root), "target": "Blonde"})
    with pytest.raises(ConfigError, match="unknown CelebA bias attribute 'Gender'"):
        make_splits("celeba", params={"root": str(root), "bias": "Gender"})
    with pytest.raises(ConfigError, match="target and bias must be different attributes, both are 'Male'"):
        make_splits("celeba", params={"root": str(root), "target": "Male"})
    with pytest.raises(ConfigError, match=r"no parameter\(s\) \['rho'\]"):
        make_splits("celeba", params={"root": str(root), "rho": 0.99})
    with pytest.raises(ConfigError, match="size must be an integer >= 1, got 2.5"):
        make_splits("celeba", params={"root": str(root), "size": 2.5})


def test_cache_serves_second_load(celeba, tmp_path):
    root, table = celeba
    params = {"root": str(root), "size": 8}
    first = make_splits("celeba", params=params, seed=0, unbiased_size=16)
    cached = list((tmp_path / "cache" / "celeba").glob("*-s8/*.npy"))
    # whole partitions (train, test) are cached; a part of valid (16 of 20) is decoded, never cached
    assert sorted(p.name for p in cached) == ["test.npy", "train.npy"]
    for name, (_, _, part, _) in table.items():
        if part != 1:
            (root / "img_align_celeba" / name).unlink()  # only the cache can serve train / test now
    second = make_splits("celeba", params=params, seed=0, train_size=7, unbiased_size=16)
    assert torch.equal(second.test.images, first.test.images)
    _check_pairing(second.train, table, 0)
    # another size is another cache entry, and cache=0 never reads or writes one
    with pytest.raises(DataError, match="missing CelebA image"):
        make_splits("celeba", params={**params, "size": 4})
    with pytest.raises(DataError, match="missing CelebA image"):
        make_splits("celeba", params={**params, "cache": 0})


def test_registry_and_text_params(celeba):
    root, _ = celeba
    assert "celeba" in dataset_names() and "biased-toy" in dataset_names()
    info = describe("celeba", params={"root": str(root)})
    assert info["prepared"] and info["files"] == str(root.absolute()) and "bring your own folder" in info["description"]
    assert not describe("celeba")["prepared"]  # neither root nor $DEBIASKIT_CELEBA
    with pytest.raises(ConfigError, match="'celeba' is not a recipe x image source"):
        parse_name("celeba")
    assert parse_params(None, ["root=/a=b", "size=16"], text_keys=("root",)) == {"root": "/a=b", "size": 16.0}
    with pytest.raises(ConfigError, match="is not a number"):  # other datasets: numbers only, as before
        parse_params(None, ["root=/data"])


def test_cli_list_show_prepare(celeba, monkeypatch):
    root, _ = celeba
    monkeypatch.setenv("COLUMNS", "300")
    from debiaskit.cli._common import console

    monkeypatch.setattr(console, "width", 300)  # the console may exist already, sized for an 80-column CI log
    res = runner.invoke(app, ["data", "list"])
    assert res.exit_code == 0 and "celeba" in res.output and "bring your own folder" in res.output
    res = runner.invoke(app, ["data", "show", "celeba", "--root", str(root), "--param", "size=8", "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert {k: v["size"] for k, v in info["split_sizes"].items()} == {
        "train": 30,
        "unbiased_train": 12,
        "unbiased_val": 4,
        "unbiased_test": 4,
        "test": 10,
    }
    assert info["split_sizes"]["train"]["realised_rho"] == pytest.approx(0.8)
    res = runner.invoke(app, ["data", "show", "celeba"])
    assert res.exit_code == 0 and "DEBIASKIT_CELEBA" in res.output
    res = runner.invoke(app, ["data", "prepare", "celeba", "--from", str(root)])
    assert res.exit_code == 0, res.output
    from debiaskit.data._celeba import celeba_cache_dir, read_celeba_index

    folder = celeba_cache_dir(read_celeba_index(root), 64)
    assert sorted(p.name for p in folder.glob("*.npy")) == ["test.npy", "train.npy", "valid.npy"]


@pytest.mark.parametrize("model", ["simple-conv", "resnet18-imagenet"])
def test_cli_train_and_reload_run(celeba, tmp_path, model):
    root, _ = celeba
    run = tmp_path / "run"
    res = runner.invoke(
        app,
        [
            "train",
            "--dataset",
            "celeba",
            "--param",
            f"root={root}",
            "--param",
            "size=16",
            "--param",
            "target=Blond_Hair",
            "--model",
            model,
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--out",
            str(run),
            "--no-progress",
        ],
    )
    assert res.exit_code == 0, res.output
    meta = json.loads((run / "run.json").read_text())
    assert meta["status"] == "finished" and meta["data"]["dataset"] == "celeba"
    assert meta["model"]["input_shape"] == [3, 16, 16] and meta["data_summary"]["test"]["size"] == 10
    loaded = load_run(run)
    splits = loaded.splits()
    assert len(splits.train) == 30 and splits.spec == meta["data"]
    with torch.no_grad():
        assert loaded.model(splits.test.x).shape == (10, 2)
    # the audit reads the unbalanced official test partition's groups (both averaging conventions)
    report = audit_model(
        loaded.model,
        test=splits.test,
        unbiased_train=splits.unbiased_train,
        unbiased_val=splits.unbiased_val,
        head=loaded.head,
    )
    groups = report.attributes[0].groups
    assert groups.group_counts == [[2, 4], [3, 1]] and report.attributes[0].name == "Male"
    assert 0.0 <= groups.worst_group_accuracy <= groups.mean_group_accuracy <= 1.0
