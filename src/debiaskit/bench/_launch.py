"""Where the comparison harness runs its cells: local worker processes (``--launcher local``, ``--jobs N``)
or a Slurm cluster through submitit (``--launcher slurm``), one job per (seed, value) group.

The unit of work is the same in both: a (seed, value) group - the group's vanilla cell first, then its
other methods, then the post-hoc methods on its vanilla model - run by the harness's group runner (``bench/_compare.py``). Cells are
written atomically and skipped when finished, so a job that Slurm preempts or times out is requeued by
submitit (:class:`GroupJob` is ``Checkpointable``) and resumes at its first unfinished cell, and a second
``bench compare`` submits only the groups that still have unfinished cells.

Slurm settings come from flags or a small JSON / TOML file (``--slurm-config``)::

    {"partition": "gpu", "time_min": 120, "gpus_per_task": 1, "cpus_per_task": 8, "mem_gb": 32,
     "additional": {"account": "my-lab"}}

``cluster`` in that file (default ``"slurm"``) can be ``"local"`` or ``"debug"`` - submitit's executors
that run the same jobs on this machine (subprocesses / in-process); the tests use them.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ..errors import ConfigError

LAUNCHERS = ("local", "slurm")
CLUSTERS = ("slurm", "local", "debug")
SUBMITIT_FOLDER = ".submitit"


@dataclass(frozen=True)
class SlurmOptions:
    """What each Slurm job asks for. ``time_min``: wall-clock limit per job (a group that needs longer is
    requeued and resumes at its first unfinished cell); ``gpus_per_task`` > 0 runs the cells on ``cuda``.
    ``additional``: any other sbatch option, by name (``{"account": "lab", "qos": "high"}``)."""

    partition: str | None = None
    time_min: int = 120
    gpus_per_task: int = 0
    cpus_per_task: int = 4
    mem_gb: int | None = None
    array_parallelism: int = 64
    additional: dict[str, Any] = field(default_factory=dict)
    cluster: str = "slurm"

    def __post_init__(self) -> None:
        if self.cluster not in CLUSTERS:
            raise ConfigError(f"slurm cluster must be one of {', '.join(CLUSTERS)}, got {self.cluster!r}")
        for name in ("time_min", "cpus_per_task", "array_parallelism"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"slurm {name} must be a positive integer, got {value!r}")
        if not isinstance(self.gpus_per_task, int) or self.gpus_per_task < 0:
            raise ConfigError(f"slurm gpus_per_task must be an integer >= 0, got {self.gpus_per_task!r}")
        if self.mem_gb is not None and (not isinstance(self.mem_gb, int) or self.mem_gb < 1):
            raise ConfigError(f"slurm mem_gb must be a positive integer, got {self.mem_gb!r}")
        if not isinstance(self.additional, dict):
            raise ConfigError(f"slurm additional must be a table of sbatch options, got {self.additional!r}")

    @property
    def device(self) -> str:
        return "cuda" if self.gpus_per_task > 0 else "cpu"

    def executor_parameters(self) -> dict[str, Any]:
        """submitit AutoExecutor parameters (generic ones, and slurm_* ones that other executors ignore)."""
        params: dict[str, Any] = {
            "timeout_min": self.time_min,
            "cpus_per_task": self.cpus_per_task,
            "slurm_array_parallelism": self.array_parallelism,
            "name": "debiaskit-compare",
        }
        if self.mem_gb is not None:
            params["mem_gb"] = self.mem_gb
        if self.partition:
            params["slurm_partition"] = self.partition
        if self.gpus_per_task:
            params["slurm_gpus_per_task"] = self.gpus_per_task
        if self.additional:
            params["slurm_additional_parameters"] = dict(self.additional)
        return params


def load_slurm_options(path: Path | None = None, **overrides: Any) -> SlurmOptions:
    """Options from a JSON or TOML file (keys: the fields of :class:`SlurmOptions`), then ``overrides``
    (flags; None = not given)."""
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"--slurm-config {path} does not exist")
        try:
            if path.suffix == ".toml":
                import tomllib

                values = tomllib.loads(path.read_text())
            else:
                values = json.loads(path.read_text())
        except (ValueError, OSError) as exc:
            raise ConfigError(
                f"--slurm-config {path} is not valid {'TOML' if path.suffix == '.toml' else 'JSON'}: {exc}"
            ) from None
        if not isinstance(values, dict):
            raise ConfigError(f"--slurm-config {path} must hold one table of options")
        known = {f.name for f in fields(SlurmOptions)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                f"--slurm-config {path}: unknown option(s) {unknown}; known: {', '.join(sorted(known))} "
                "(other sbatch options go under 'additional')"
            )
    options = SlurmOptions(**values)
    given = {k: v for k, v in overrides.items() if v is not None}
    return replace(options, **given) if given else options


def _submitit():
    try:
        import submitit
    except ImportError:
        raise ConfigError(
            "--launcher slurm needs submitit: pip install 'debiaskit[slurm]' (or pip install submitit)"
        ) from None
    return submitit


try:  # an optional extra: without it only --launcher local works
    from submitit.helpers import Checkpointable as _JobBase
except ImportError:  # pragma: no cover - CI installs the extra
    _JobBase = object


class GroupJob(_JobBase):
    """One (seed, value) group of a comparison suite as a submitit job. ``Checkpointable``: when Slurm
    preempts it or its time runs out, submitit requeues the same call - finished cells are on disk, so the
    requeued job resumes at the group's first unfinished cell."""

    def __init__(self, group: dict[str, Any], run: Callable[[dict[str, Any]], int]) -> None:
        self.group = group
        self.run = run  # a module-level function (pickled by reference): the harness's group runner

    def __call__(self) -> int:
        return self.run(dict(self.group))


def run_groups_with_submitit(
    groups: list[dict[str, Any]],
    *,
    root: Path,
    options: SlurmOptions,
    run: Callable[[dict[str, Any]], int],
    unfinished: Callable[[dict[str, Any]], bool],
    echo: Callable[[str], None] = print,
) -> None:
    """Submit every group with ``unfinished(group)`` as one job calling ``run(group)`` (a job array on Slurm),
    wait for all, report failures. The harness passes both (it knows its cells; this module only launches)."""
    submitit = _submitit()
    if options.cluster == "slurm" and shutil.which("sbatch") is None:
        raise ConfigError(
            "--launcher slurm: sbatch is not on this machine's PATH (not a Slurm login node); run "
            "from the cluster's login node, or use --launcher local"
        )
    todo = [g for g in groups if unfinished(g)]
    if not todo:
        echo(f"every cell of the {len(groups)} (seed, value) groups is finished: nothing to submit")
        return
    folder = Path(root) / SUBMITIT_FOLDER / "%j"
    executor = submitit.AutoExecutor(folder=folder, cluster=options.cluster)
    executor.update_parameters(**options.executor_parameters())
    jobs = []
    with executor.batch():
        for g in todo:
            jobs.append(
                (g, executor.submit(GroupJob({**g, "threads": options.cpus_per_task, "device": options.device}, run)))
            )
    echo(
        f"submitted {len(jobs)} of {len(groups)} (seed, value) groups to {options.cluster} ({json.dumps(asdict(options))}); "
        f"job logs under {Path(root) / SUBMITIT_FOLDER}"
    )
    failures = 0
    for g, job in jobs:
        try:
            job.result()
        except Exception as exc:  # noqa: BLE001 - a failed job must not lose the others' cells
            failures += 1
            first = str(exc).strip().splitlines()
            echo(
                f"  FAILED job {job.job_id} (seed={g['seeds'][0]}, value={g['values'][0]}): "
                f"{first[-1] if first else type(exc).__name__}; log: {job.paths.stderr}"
            )
    if failures:
        echo(f"{failures} job(s) failed; their finished cells are kept - rerun the same command to retry the rest")
