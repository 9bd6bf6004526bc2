"""The public surface: a small flat API at the top, each entry documented with an example; the CLI lists
the methods and their choices."""
from __future__ import annotations

import inspect
import subprocess
import sys

from typer.testing import CliRunner

import debiaskit
from debiaskit.cli import app
from debiaskit.methods import METHODS

runner = CliRunner()


def test_the_documented_api_imports_from_the_top():
    from debiaskit import (BiasDataset, audit_model, build_method, build_model, discover_pseudo_bias,  # noqa: F401
                           find_fantastic_weights, fit, make_splits)
    assert set(debiaskit.__all__) >= {"make_splits", "build_model", "fit", "audit_model", "find_fantastic_weights",
                                      "discover_pseudo_bias", "build_method", "BiasDataset"}


def test_every_public_name_has_a_docstring_with_an_example():
    for name in debiaskit.__all__:
        if name == "__version__":
            continue
        doc = inspect.getdoc(getattr(debiaskit, name)) or ""
        assert "Example" in doc, f"debiaskit.{name} has no example in its docstring"


def test_importing_debiaskit_stays_light():
    code = "import sys, debiaskit; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"   # the API is imported on first use


def test_methods_list_shows_every_method_and_what_it_needs(monkeypatch):
    from rich.console import Console

    from debiaskit.cli import cmd_methods
    monkeypatch.setattr(cmd_methods, "console", Console(width=250))   # a wide table: one line per method
    res = runner.invoke(app, ["methods", "list"])
    assert res.exit_code == 0, res.output
    for name in METHODS:
        assert f" {name} " in res.output
    assert "bias labels" in res.output and "post hoc" in res.output and "summary" in res.output
    res = runner.invoke(app, ["methods", "list", "--verbose"])
    assert "lambda_up = 50" in res.output and "(ours" in res.output


def test_train_help_lists_every_registered_method():
    res = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "400"})
    assert res.exit_code == 0
    help_text = " ".join(res.output.split())
    for name in METHODS:   # read from the method files, without importing torch
        assert name in help_text, name
