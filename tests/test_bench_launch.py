"""`bench compare --launcher slurm`: Slurm options, one submitit job per (seed, value) group, cached and resumable
cells. Run through submitit's local executor (the same jobs as subprocesses of this machine)."""

from __future__ import annotations

import json
import sys

import pytest

from debiaskit.bench import run_compare
from debiaskit.bench._launch import GroupJob, SlurmOptions, load_slurm_options
from debiaskit.errors import ConfigError

LOCAL = SlurmOptions(cluster="local", time_min=10, cpus_per_task=1)


def test_slurm_options_come_from_a_file_then_flags(tmp_path):
    (tmp_path / "s.json").write_text(
        json.dumps({"partition": "gpu", "time_min": 30, "gpus_per_task": 1, "additional": {"account": "lab"}})
    )
    (tmp_path / "s.toml").write_text('partition = "cpu"\ncpus_per_task = 8\n')
    opts = load_slurm_options(tmp_path / "s.json", time_min=90, partition=None)
    assert (opts.partition, opts.time_min, opts.gpus_per_task, opts.device) == ("gpu", 90, 1, "cuda")
    params = opts.executor_parameters()
    assert params["slurm_partition"] == "gpu" and params["slurm_gpus_per_task"] == 1 and params["timeout_min"] == 90
    assert params["slurm_additional_parameters"] == {"account": "lab"}
    assert load_slurm_options(tmp_path / "s.toml").cpus_per_task == 8
    (tmp_path / "bad.json").write_text(json.dumps({"partiton": "gpu"}))
    with pytest.raises(ConfigError, match="unknown option.*partiton"):
        load_slurm_options(tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="time_min must be a positive integer"):
        load_slurm_options(None, time_min=0)
    with pytest.raises(ConfigError, match="does not exist"):
        load_slurm_options(tmp_path / "missing.json")


def test_slurm_without_sbatch_is_a_clear_error_before_any_compute(tmp_path, monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(ConfigError, match="sbatch is not on this machine"):
        run_compare(
            suite="toy",
            root=tmp_path,
            seeds=(0,),
            methods=["vanilla"],
            launcher="slurm",
            slurm=SlurmOptions(),
            echo=lambda s: None,
        )
    assert not any(tmp_path.iterdir())
    with pytest.raises(ConfigError, match="launcher must be one of local, slurm"):
        run_compare(suite="toy", root=tmp_path, seeds=(0,), methods=["vanilla"], launcher="pbs", echo=lambda s: None)


def test_slurm_flags_need_the_slurm_launcher(monkeypatch, capsys, tmp_path):
    from debiaskit.cli import main

    monkeypatch.setattr(
        sys,
        "argv",
        ["debiaskit", "bench", "compare", "--suite", "toy", "--out", str(tmp_path), "--slurm-partition", "gpu"],
    )
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2 and "need --launcher slurm" in capsys.readouterr().err


def test_a_requeued_job_is_the_same_group():
    """Preemption / timeout: submitit calls checkpoint() and resubmits what it returns - the same group,
    which then skips its finished cells."""
    job = GroupJob({"suite": "toy", "seeds": (0,), "values": (0.95,)}, run=len)
    again = job.checkpoint()
    assert again.function.group == job.group and again.function.run is len


def test_compare_through_submitit_resumes_from_cached_cells(tmp_path):
    """A group whose vanilla cell is already on disk (a preempted job's work) submits one job that computes only
    the missing cell; a second call submits nothing; both return the same table."""
    quiet = lambda s: None  # noqa: E731
    run_compare(suite="toy", root=tmp_path, seeds=(0,), methods=["vanilla"], vanilla_from=None, echo=quiet)
    vanilla = tmp_path / "toy" / "rho0.95" / "vanilla" / "seed0" / "result.json"
    stamp = vanilla.stat().st_mtime_ns
    messages: list[str] = []
    cells = run_compare(
        suite="toy",
        root=tmp_path,
        seeds=(0,),
        methods=["vanilla", "groupdro"],
        vanilla_from=None,
        launcher="slurm",
        slurm=LOCAL,
        echo=messages.append,
    )
    assert any("submitted 1 of 1" in m for m in messages), messages
    assert [c["method"] for c in cells] == ["vanilla", "groupdro"]
    assert vanilla.stat().st_mtime_ns == stamp  # the cached cell was read, not recomputed
    assert list((tmp_path / ".submitit").iterdir())  # the job's logs
    messages.clear()
    again = run_compare(
        suite="toy",
        root=tmp_path,
        seeds=(0,),
        methods=["vanilla", "groupdro"],
        vanilla_from=None,
        launcher="slurm",
        slurm=LOCAL,
        echo=messages.append,
    )
    assert any("nothing to submit" in m for m in messages), messages
    assert again == cells
