"""`debiaskit methods list` stays one line per method in an 80-column terminal; `methods show NAME` has the details."""

from __future__ import annotations

import sys

import pytest
from rich.console import Console
from typer.testing import CliRunner

from debiaskit.cli import app, cmd_methods, main
from debiaskit.methods import METHODS

runner = CliRunner()


def _run(monkeypatch, width: int, *args: str) -> str:
    monkeypatch.setattr(cmd_methods, "console", Console(width=width))
    res = runner.invoke(app, ["methods", *args])
    assert res.exit_code == 0, res.output
    return res.output


@pytest.mark.parametrize("width", [80, 120])
def test_methods_list_is_one_line_per_method_within_the_terminal(monkeypatch, width):
    out = _run(monkeypatch, width, "list")
    lines = out.splitlines()
    assert max(map(len, lines)) <= width
    for name in METHODS:
        rows = [line for line in lines if line.startswith(f"│ {name} ")]
        assert len(rows) == 1, (name, out)
    assert "bias labels" in out and "D^u" in out and "post hoc" in out


def test_a_wide_terminal_shows_the_whole_summary(monkeypatch):
    out = _run(monkeypatch, 400, "list")
    assert "ERM error set upsampled, then retrain" in out and "\u2026" not in out


def test_methods_show_gives_every_default_with_its_source(monkeypatch):
    out = _run(monkeypatch, 120, "show", "jtt")
    assert "Liu et al., ICML 2021" in out and "selection: last epoch" in out
    assert "lambda_up = 50" in out and "id_epochs = 1" in out and "(ours" in out
    assert "lff" not in out  # one method, not all of them


def test_methods_show_an_unknown_method_is_refused_with_the_names(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["debiaskit", "methods", "show", "jttt"])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "unknown method 'jttt'" in err and "jtt" in err and "Traceback" not in err
