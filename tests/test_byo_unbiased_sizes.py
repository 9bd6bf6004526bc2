"""Small D^u splits are said before any compute, with the numbers and what to do, and the held-out share is a
parameter: self-drawn D^u (part of the smallest (y, b) group held out from every group) can be tiny on skewed
tabular data, and everything selected on D^u_val (early stopping, FFW's tau level, hyper-parameters) is then
noise."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from debiaskit.data import make_splits
from debiaskit.errors import ConfigError, SmallSplitWarning


def _skewed(path, *, smallest: int, big: int = 3000, seed: int = 0):
    """Binary y and b, three large groups and one of ``smallest`` rows (y=1, b=0): skewed tabular data."""
    g = np.random.default_rng(seed)
    sizes = {(0, 0): big, (0, 1): big // 3, (1, 0): smallest, (1, 1): big}
    y = np.concatenate([np.full(n, t) for (t, _), n in sizes.items()])
    b = np.concatenate([np.full(n, a) for (_, a), n in sizes.items()])
    x = (g.normal(size=(len(y), 4)) + y[:, None]).astype(np.float32)
    np.savez(path, x=x, y=y, b=b)
    return path


def _small_warnings(record) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, SmallSplitWarning)]


def test_tiny_drawn_splits_warn_with_the_numbers_and_the_remedies(tmp_path):
    path = _skewed(tmp_path / "rows.npz", smallest=40)  # c = 20 per group: D^u_val gets 2 per group
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        splits = make_splits(f"tensors:{path}", seed=0)
    (msg,) = _small_warnings(record)
    val = splits.unbiased_val
    assert len(val) == 8 and f"D^u_val holds {len(val)} samples" in msg
    assert "2 in its smallest (y, b) group" in msg and "y=0, b=0" in msg
    assert f"D^u_train holds {len(splits.unbiased_train)} samples" in msg
    assert "at least 25 per (y, b) group and 100 in all" in msg
    assert "--param holdout (now 0.5" in msg and "the smallest group (y=1, b=0) has 40 samples" in msg
    assert "`split`" in msg and "--unbiased-size" in msg


def test_the_held_out_share_is_a_parameter(tmp_path):
    path = _skewed(tmp_path / "rows.npz", smallest=600)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        default = make_splits(f"tensors:{path}", seed=0)  # c = 300: D^u_val 36 per group
        smaller = make_splits(f"tensors:{path}", seed=0, params={"holdout": 0.1})  # c = 60: 7 per group
    assert _small_warnings(record) and all("now 0.1" in m for m in _small_warnings(record))
    assert len(default.unbiased_val) == 4 * 36 and len(smaller.unbiased_val) == 4 * 7
    assert default.spec["splits_from"].count("c = 300") == 1 and "holdout 0.1" in smaller.spec["splits_from"]


def test_enough_samples_give_no_warning(tmp_path):
    path = _skewed(tmp_path / "rows.npz", smallest=600)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        make_splits(f"tensors:{path}", seed=0)
    assert _small_warnings(record) == []


@pytest.mark.parametrize(
    "value, message",
    [
        (1.5, "holdout is 1.5, expected a number in (0, 1)"),
        (0.0, "holdout is 0.0, expected a number in (0, 1)"),
        ("half", "holdout is 'half', expected a number in (0, 1)"),
    ],
)
def test_a_bad_holdout_is_refused(tmp_path, value, message):
    path = _skewed(tmp_path / "rows.npz", smallest=600)
    with pytest.raises(ConfigError) as exc:
        make_splits(f"tensors:{path}", params={"holdout": value})
    assert message in str(exc.value)


def test_holdout_with_a_split_array_is_refused_not_ignored(tmp_path):
    y, b = np.arange(400) % 2, (np.arange(400) // 2) % 2
    path = tmp_path / "given.npz"
    np.savez(path, x=np.zeros((400, 3), np.float32), y=y, b=b, split=np.arange(400) % 5)
    with pytest.raises(ConfigError, match="holdout only applies when debiaskit draws the splits"):
        make_splits(f"tensors:{path}", params={"holdout": 0.3})
    with warnings.catch_warnings(record=True) as record:  # the user's own tiny D^u: said too, with its remedy
        warnings.simplefilter("always")
        make_splits(f"tensors:{path}")
    (msg,) = _small_warnings(record)
    assert "D^u_val holds 80 samples" in msg and "your `split`" in msg and "holdout" not in msg


def test_the_cli_says_it_before_training(cli, tmp_path, monkeypatch, capsys):
    import debiaskit.train._run as train_run

    path = _skewed(tmp_path / "rows.npz", smallest=40)
    before_training, fit = [], train_run.fit
    monkeypatch.setattr(
        train_run, "fit", lambda *a, **k: before_training.append(capsys.readouterr().err) or fit(*a, **k)
    )
    code, out = cli(
        "train",
        "--dataset",
        f"tensors:{path}",
        "--model",
        "mlp",
        "--epochs",
        "1",
        "--no-progress",
        "--out",
        tmp_path / "run",
    )
    assert code == 0, out
    said = " ".join(before_training[0].split())
    assert "warning: rows.npz: the unbiased splits are small" in said and "D^u_val holds 8 samples" in said
    assert "SmallSplitWarning" not in said and "warnings.warn" not in said  # said plainly, not as a Python warning
    code, out = cli("train", "--dataset", f"tensors:{path}", "--param", "holdout=2", "--out", tmp_path / "run2")
    assert code == 2 and "holdout is 2.0, expected a number in (0, 1)" in out and not (tmp_path / "run2").exists()


def test_adult_says_it_too(tmp_path, monkeypatch):
    from _adult_fixture import write_adult_folder
    from debiaskit.data import _adult

    monkeypatch.setenv("DEBIASKIT_DATA", str(tmp_path / "cache"))
    monkeypatch.setattr(_adult, "ADULT_SHA256", write_adult_folder(tmp_path / "uci"))
    _adult.prepare_adult(from_folder=tmp_path / "uci")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        splits = make_splits("adult", params={"bias": "race"}, seed=0)
    (msg,) = _small_warnings(record)
    assert f"D^u_val holds {len(splits.unbiased_val)} samples" in msg
    assert "--param holdout (now 0.25" in msg and "--unbiased-size" in msg


def test_too_few_to_draw_says_which_holdout_would_do(tmp_path):
    from debiaskit.errors import DataError

    path = _skewed(tmp_path / "rows.npz", smallest=6)  # holdout 0.5: c = 3 < 4
    with pytest.raises(DataError, match=r"holdout 0.5 of it is 3 sample\(s\).*Raise --param holdout to at least 0.67"):
        make_splits(f"tensors:{path}")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        splits = make_splits(f"tensors:{path}", params={"holdout": 0.67})
    assert len(splits.unbiased_val) == 4 and _small_warnings(record)  # drawn, and said to be tiny
