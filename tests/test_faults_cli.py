"""Command-line output faults: KEY=VALUE values that are not numbers, paths that look like rich markup or emoji
codes, Python's warning format, discover's advice, and the default folder of structured FFW with input weights.

Every refusal exits 2 with one ``error:`` line and no traceback, before any compute; every printed path is the
path itself, character for character.
"""

from __future__ import annotations

import shutil
import sys
import warnings

import pytest

from debiaskit.cli import main
from debiaskit.ffw import default_out

FFW_FAST = [
    "--max-levels",
    "1",
    "--max-epochs-per-level",
    "1",
    "--tune-epochs",
    "0",
    "--no-strong-probes",
    "--no-progress",
]


def run_cli(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of the console script run in-process; nothing re-wrapped or joined."""
    monkeypatch.setattr(sys, "argv", ["debiaskit", *map(str, args)])
    monkeypatch.setenv("COLUMNS", "1000")
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--method", "lff", "--method-param", "q=nan"], "--method-param q: 'nan' is not a finite number"),
        (["--method", "lff", "--method-param", "q=Infinity"], "--method-param q: 'Infinity' is not a finite number"),
        (["--method", "lff", "--method-param", "q=abc"], "--method-param q: 'abc' is not a number"),
        (["--method", "lff", "--method-param", "q="], "--method-param q: the value is empty"),
        (["--method", "lff", "--method-param", "=0.5"], "--method-param takes KEY=VALUE"),
        (["--param", "rho=nan"], "--param rho: 'nan' is not a finite number"),
        (["--param", "rho=-inf"], "--param rho: '-inf' is not a finite number"),
        (["--param", "rho="], "--param rho: '' is not a number"),
        (["--param", "rho=high"], "--param rho: 'high' is not a number"),
        (["--model", "mlp", "--model-arg", "hidden=nan"], "--model-arg hidden: 'nan' is not a finite number"),
        (["--model", "mlp", "--model-arg", "hidden=1e999"], "--model-arg hidden: '1e999' is not a finite number"),
        (["--model", "mlp", "--model-arg", "hidden="], "--model-arg hidden: the value is empty"),
    ],
)
def test_key_value_options_refuse_nan_inf_empty_and_words(monkeypatch, capsys, tmp_path, args, message):
    code, out, err = run_cli(monkeypatch, capsys, "train", "--dataset", "biased-toy", "--out", tmp_path / "r", *args)
    assert code == 2, err
    assert err.startswith("error:") and message in " ".join(err.split()), err
    assert "Traceback" not in err + out
    assert not (tmp_path / "r").exists()


def test_model_args_that_are_text_stay_text():
    from debiaskit.models import parse_model_args

    assert parse_model_args(["norm=batch", "width=4", "scale=0.5"]) == {"norm": "batch", "width": 4, "scale": 0.5}


@pytest.mark.parametrize("name", ["x[bold]y", "a:smile:b", "[red]r[/red]", "p[link=file:///etc]q"])
def test_a_printed_path_is_the_path_itself(monkeypatch, capsys, tmp_path, name):
    """An error naming the folder and a finished command's "written:" line print it literally."""
    folder = tmp_path / name / "missing"
    code, out, err = run_cli(monkeypatch, capsys, "audit", folder)
    assert code == 2 and str(folder) in err, err
    code, out, err = run_cli(
        monkeypatch,
        capsys,
        "train",
        "--dataset",
        "biased-toy",
        "--model",
        "mlp",
        "--epochs",
        "1",
        "--unbiased-size",
        "600",
        "--train-size",
        "200",
        "--test-size",
        "100",
        "--out",
        tmp_path / name / "run",
        "--no-progress",
    )
    assert code == 0, err
    assert f"run folder: {tmp_path / name / 'run'}\n" in out, out
    assert "😄" not in out + err


def test_emoji_codes_and_markup_in_error_and_warning_lines(monkeypatch, capsys, tmp_path):
    import debiaskit.cli as cli_module

    cli_module._show_warning("a:smile:b [bold]x[/bold]", UserWarning, "somefile.py", 12)
    assert capsys.readouterr().err.strip() == "warning: a:smile:b [bold]x[/bold]"


def test_warnings_are_one_line_without_source_path(monkeypatch, capsys):
    """A warning raised inside a command prints as 'warning: <message>': no file, no line number, no code."""

    def warn():
        warnings.warn("the source of mynets changed since training; the weights still fit", UserWarning, stacklevel=2)
        return []

    monkeypatch.setattr("debiaskit.data.dataset_names", warn)  # `data list` reads it inside the command
    before = warnings.showwarning
    code, out, err = run_cli(monkeypatch, capsys, "data", "list")
    assert code == 0, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines == ["warning: the source of mynets changed since training; the weights still fit"], err
    assert ".py" not in err and "UserWarning" not in err and "warnings.warn" not in err
    assert warnings.showwarning is before  # the library and Python callers keep Python's format


def test_discover_does_not_advise_an_out_option_it_has_not(monkeypatch, capsys, tmp_path, toy_run_dir):
    run = tmp_path / "run"
    shutil.copytree(toy_run_dir, run)
    (run / "discover").write_text("my notes")  # a file where discover writes its folder
    code, out, err = run_cli(monkeypatch, capsys, "discover", run)
    text = " ".join(err.split())
    assert code == 2 and text.startswith("error:"), err
    assert "choose another --out" not in text and "--out " not in text.replace("has no --out:", "")
    assert "discover has no --out" in text and "RUN_DIR/discover" in text
    assert (run / "discover").read_text() == "my notes"


def test_input_weights_has_its_own_default_folder(monkeypatch, capsys, tmp_path, toy_run_dir):
    run = tmp_path / "run"
    assert default_out(run, "structured", 10.0, input_weights=True) != default_out(run, "structured", 10.0)
    assert default_out(run, "structured", 10.0, input_weights=True).name == "ffw-structured-g10-input-weights"
    shutil.copytree(toy_run_dir, run)
    code, out, err = run_cli(monkeypatch, capsys, "ffw", run, "--mode", "structured", "--input-weights", *FFW_FAST)
    assert code == 0, err
    assert (run / "ffw-structured-g10-input-weights" / "ffw.json").is_file()
    assert not (run / "ffw-structured-g10").exists()
    assert f"written: {run / 'ffw-structured-g10-input-weights'}/" in out
