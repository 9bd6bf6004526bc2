"""Fault injection, concurrent and killed writers: exactly one writer wins, nothing is lost, nothing is left.

Real processes: a helper process holds an output (``atomic_folder``) until told to finish, or is SIGKILLed
while holding it; and two ``debiaskit train`` processes race for the same ``--out`` (issue 11, case 3).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import interruptible
from debiaskit.runs import load_run

TRAIN = [
    "train",
    "--dataset",
    "biased-toy",
    "--model",
    "mlp",
    "--epochs",
    "1",
    "--unbiased-size",
    "600",
    "--no-progress",
]
HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from debiaskit._io import atomic_folder
    from debiaskit.train import RUN_FOLDER
    from debiaskit.runs import write_json
    out, ready, go = map(Path, sys.argv[1:4])
    with atomic_folder(out, kind=RUN_FOLDER, force=sys.argv[4] == "force") as staging:
        write_json(staging / "run.json", {"kind": "train", "status": "finished", "model": {}, "by": "holder"})
        ready.write_text("holding")
        while not go.exists():
            time.sleep(0.05)
""")


def _holder(tmp_path: Path, out: Path, *, force: bool = False) -> tuple[subprocess.Popen, Path]:
    ready, go = tmp_path / "ready", tmp_path / "go"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(out), str(ready), str(go), "force" if force else "-"])
    deadline = time.time() + 60
    while not ready.exists():
        assert proc.poll() is None and time.time() < deadline, "the holder process did not start"
        time.sleep(0.05)
    return proc, go


def test_second_writer_fails_at_once_while_the_first_holds_the_output(cli, tmp_path):
    out = tmp_path / "run"
    proc, go = _holder(tmp_path, out)
    try:
        start = time.perf_counter()
        code, err = cli(*TRAIN, "--out", out)
        assert code == 2 and f"another process (pid {proc.pid}) is writing {out} right now" in err, err
        assert time.perf_counter() - start < 30 and not out.exists()  # refused before training
    finally:
        go.write_text("go")
        assert proc.wait(timeout=60) == 0
    assert '"by": "holder"' in (out / "run.json").read_text()  # the first writer's folder, intact
    code, err = cli(*TRAIN, "--out", out)  # now finished: refused as a finished run, not busy
    assert code == 2 and "is a finished run; choose another --out or pass --force" in err


def test_a_killed_writer_leaves_no_lock_and_its_staging_is_cleaned(cli, tmp_path):
    out = tmp_path / "run"
    proc, _ = _holder(tmp_path, out)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    stale = [p.name for p in tmp_path.glob(".run.staging-*")]
    assert len(stale) == 1 and not out.exists()  # what SIGKILL leaves behind
    code, err = cli(*TRAIN, "--out", out)
    assert code == 0, err
    assert load_run(out).record.kind == "train"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ready", "run"]  # staging and lock gone


def test_two_train_processes_racing_for_one_out(tmp_path):
    script = Path(sys.executable).with_name("debiaskit")
    if not script.is_file():
        pytest.skip("the debiaskit console script is not installed next to this python")
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "1000"}
    procs = [
        subprocess.Popen(
            [str(script), *TRAIN, "--seed", str(seed), "--out", str(out)],
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for seed in (0, 1)
    ]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(" ".join(err.split()) for code, err in results if code == 2)
    assert ("is writing" in loser or "is a finished run" in loser) and "Traceback" not in loser, loser
    winner_seed = [0, 1][[code for code, _ in results].index(0)]
    assert load_run(out).record.train.seed == winner_seed  # the winner's run, complete
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_forced_replacements_are_exclusive_too(cli, tmp_path, toy_run_dir):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(toy_run_dir, out)
    proc, go = _holder(tmp_path, out, force=True)
    try:
        code, err = cli(*TRAIN, "--out", out, "--force")
        assert code == 2 and "is writing" in err, err
    finally:
        go.write_text("go")
        assert proc.wait(timeout=60) == 0
    assert '"by": "holder"' in (out / "run.json").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["go", "ready", "run"]


def test_ctrl_c_during_train_says_so_and_leaves_only_its_checkpoint(tmp_path):
    script = Path(sys.executable).with_name("debiaskit")
    if not script.is_file():
        pytest.skip("the debiaskit console script is not installed next to this python")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "1000"}
    args = [a if a != "1" else "500" for a in TRAIN]  # long enough to be interrupted
    proc = subprocess.Popen(
        [str(script), *args, "--out", str(tmp_path / "run")],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=interruptible,
    )
    deadline = time.time() + 120
    while not any(p.stat().st_size for p in tmp_path.glob(".run.staging-*/train_log.jsonl")):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "interrupted (Ctrl-C)" in err and "Traceback" not in err, err
    # the checkpoint of the last finished epoch stays for `train --resume` (issue 12); nothing else does
    assert "--resume" in " ".join(out.split()), out
    assert [p.name for p in tmp_path.iterdir()] == [".run.partial"]
    assert [p.name for p in (tmp_path / ".run.partial").iterdir()] == ["checkpoint.safetensors"]
