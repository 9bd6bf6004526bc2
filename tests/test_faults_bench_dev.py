"""Fault injection, `debiaskit bench dev`: an unknown budget, cell or pipeline, or no seed, is refused at the edge
with what was wrong and what exists, exit code 2, before any folder is made or anything is trained."""

from __future__ import annotations

import pytest

import debiaskit.bench._dev as dev


@pytest.mark.parametrize(
    "args, message",
    [
        (["--budget", "huge"], "unknown budget 'huge'; choose one of smoke, dev, full"),
        (["--cell", "biased-mnist-0.5"], "unknown cell(s) 'biased-mnist-0.5'; available: biased-mnist-0.99,"),
        (["--variant", "ffw-fancy"], "unknown variant(s) 'ffw-fancy'; available: ffw-default,"),
        (["--seeds", "0"], "no seed to run"),
    ],
)
def test_bench_dev_refuses_a_bad_selection_before_any_compute(cli, tmp_path, monkeypatch, args, message):
    def boom(*a, **k):
        raise AssertionError("compute started")

    for name in ("train_run", "find_fantastic_weights", "apply_stages"):
        monkeypatch.setattr(dev, name, boom)
    code, err = cli("bench", "dev", "--out", tmp_path / "dev", "--budget", "smoke", *args)
    assert code == 2 and err.startswith("error:") and message in err and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []


def test_bench_dev_lists_its_cells_and_pipelines_without_running(cli, tmp_path):
    code, out = cli("bench", "dev", "--out", tmp_path / "dev", "--cell", "list")
    assert code == 0 and all(name in out for name in (*dev.CELLS, *dev.VARIANTS)), out
    assert list(tmp_path.iterdir()) == []
