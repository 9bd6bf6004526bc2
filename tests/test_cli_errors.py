"""CLI error paths: bad input exits with code 2 and a clear message; existing runs stay untouched.

``debiaskit.cli.main`` turns a DebiaskitError into "error: ..." on stderr and exit code 2; CliRunner on
``app`` sees the raised exception instead. Both are tested, plus one real subprocess of the script.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from debiaskit.cli import app, main
from debiaskit.data._cifar import write_cifar_binary
from debiaskit.errors import ConfigError, DataError, RunExistsError
from debiaskit.runs import RUN_FILE, write_json

runner = CliRunner()


def run_main(args, monkeypatch, capsys) -> tuple[int, str]:
    """Run ``main()`` as the console script would; return (exit code, stderr on one line)."""
    monkeypatch.setattr(sys, "argv", ["debiaskit", *map(str, args)])
    monkeypatch.setenv("COLUMNS", "1000")  # rich would otherwise wrap (and maybe split) long paths
    with pytest.raises(SystemExit) as exc:
        main()
    err = capsys.readouterr().err
    return exc.value.code, " ".join(err.split())  # rich wraps long lines


def _finished_run(folder: Path) -> dict:
    folder.mkdir(parents=True)
    write_json(folder / RUN_FILE, {"kind": "train", "status": "finished", "marker": "keep me"})
    (folder / "model.safetensors").write_bytes(b"old weights")
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir()}


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--dataset", "nope-mnist", "--out", "{tmp}/r"], "unknown dataset 'nope-mnist'; available:"),
        (
            ["train", "--dataset", "biased-toy", "--rho", "1.5", "--out", "{tmp}/r"],
            "rho is 1.5, expected a number in [0, 1]",
        ),
        (
            ["train", "--dataset", "biased-toy", "--param", "rho_left=0.9", "--out", "{tmp}/r"],
            "has no parameter(s) ['rho_left']",
        ),
        (
            ["train", "--dataset", "biased-toy", "--model", "vgg", "--unbiased-size", "600", "--out", "{tmp}/r"],
            "unknown model 'vgg'; available:",
        ),
        (
            ["train", "--dataset", "biased-toy", "--unbiased-size", "600", "--train-size", "0", "--out", "{tmp}/r"],
            "train_size must lie in (0, 1400]",
        ),
        (["audit", "{tmp}/missing-run"], "run folder {tmp}/missing-run does not exist"),
        (["data", "show", "biased-svhn"], "unknown dataset 'biased-svhn'"),
        (["data", "prepare", "cifar10"], "run `debiaskit data prepare cifar10 --from DIR`"),
    ],
)
def test_errors_exit_2_with_message(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.setenv("DEBIASKIT_DATA", str(tmp_path / "cache"))
    code, err = run_main([a.format(tmp=tmp_path) for a in args], monkeypatch, capsys)
    assert code == 2
    assert err.startswith("error:") and message.format(tmp=tmp_path) in err, err
    assert not (tmp_path / "r").exists()  # nothing half-written


def test_existing_run_untouched_without_force(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    before = _finished_run(run)
    code, err = run_main(["train", "--dataset", "biased-toy", "--epochs", "1", "--out", run], monkeypatch, capsys)
    assert code == 2 and "is a finished run; choose another --out or pass --force" in err
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no staging folder left behind


def test_cli_runner_sees_the_exception_types(tmp_path):
    res = runner.invoke(app, ["train", "--dataset", "biased-toy", "--rho", "1.5", "--out", str(tmp_path / "r")])
    assert isinstance(res.exception, ConfigError) and res.exit_code != 0
    _finished_run(tmp_path / "done")
    res = runner.invoke(app, ["train", "--dataset", "biased-toy", "--out", str(tmp_path / "done")])
    assert isinstance(res.exception, RunExistsError)
    res = runner.invoke(app, ["audit", str(tmp_path / "nothing")])
    assert isinstance(res.exception, DataError)


def test_prepare_cifar10_from_folder_through_cli(tmp_path, monkeypatch):
    monkeypatch.setenv("DEBIASKIT_DATA", str(tmp_path / "cache"))
    folder = tmp_path / "dl" / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        write_cifar_binary(
            folder / f"{name}.bin", rng.integers(0, 256, (4, 3, 32, 32), dtype=np.uint8), np.arange(4) % 10
        )
    res = runner.invoke(app, ["data", "prepare", "cifar10", "--from", str(tmp_path / "dl")])
    assert res.exit_code == 0, res.output
    assert "cifar10 ready" in res.output
    assert (tmp_path / "cache" / "cifar10" / "cifar-10-batches-bin" / "test_batch.bin").stat().st_size == 4 * 3073


def test_console_script_exit_code(tmp_path):
    script = Path(sys.executable).with_name("debiaskit")
    if not script.is_file():
        pytest.skip("the debiaskit console script is not installed next to this python")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DEBIASKIT_DATA": str(tmp_path / "cache")}
    proc = subprocess.run(
        [str(script), "train", "--dataset", "biased-toy", "--rho", "1.5", "--out", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "rho is 1.5, expected a number in [0, 1]" in " ".join(proc.stderr.split()) and "Traceback" not in proc.stderr
    assert not (tmp_path / "r").exists()
