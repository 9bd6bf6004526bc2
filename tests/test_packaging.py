"""The package metadata says what the code needs: one version, the license file, type hints shipped, and
Python / torch floors no lower than the APIs the code calls."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _floor(spec: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.search(r">=\s*([\d.]+)", spec).group(1).split("."))


def test_the_version_has_one_source():
    project = PROJECT["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert PROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "debiaskit.__version__"}
    assert re.search(r'^__version__ = "\d+\.\d+\.\d+"$', (ROOT / "src/debiaskit/__init__.py").read_text(), re.M)


def test_license_and_type_hints_ship():
    assert PROJECT["project"]["license"] == {"text": "MIT"}
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert (ROOT / "src/debiaskit/py.typed").is_file()
    assert "py.typed" in PROJECT["tool"]["setuptools"]["package-data"]["debiaskit"]


def _uses(pattern: str) -> list[Path]:
    return [p for p in (ROOT / "src").rglob("*.py") if re.search(pattern, p.read_text())]


def test_floors_cover_the_apis_the_code_calls():
    python = _floor(PROJECT["project"]["requires-python"])
    torch = _floor(next(d for d in PROJECT["project"]["dependencies"] if d.startswith("torch")))
    if _uses(r"\bimport tomllib\b"):
        assert python >= (3, 11), "tomllib is in the standard library from Python 3.11"
    if _uses(r"torch\.amp\.GradScaler\("):
        assert torch >= (2, 3), "torch.amp.GradScaler(device) exists from torch 2.3"
    if _uses(r"\.set_submodule\("):
        assert torch >= (2, 5), "nn.Module.set_submodule exists from torch 2.5"
