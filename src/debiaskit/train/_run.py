"""Train a model (zoo or your own) on a dataset (named, from disk, or your own splits) and write a complete,
rebuildable run folder."""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import _dist
from .._io import PARTIAL_FILES, real_dir, remove_owned
from .._io import log as _log
from ..data import Splits, make_splits
from ..discover import DYNAMICS_FILE, save_dynamics
from ..errors import ConfigError, DebiaskitError, RunExistsError
from ..models import infer_head, instantiate, resolve_head
from ..runs import DataRecord, MethodRecord, ModelRecord, RunRecord, TrainRecord, check_signing_key, save_run
from ._dynamics import DynamicsRecorder
from ._folders import RUN_FOLDER
from ._loop import FitResult, TrainConfig, TrainingMethod, fit


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def train_run(
    *,
    dataset: str | Splits,
    out: Path,
    model: Any = "simple-conv-small",
    model_args: dict | None = None,
    head: str | None = None,
    params: dict | None = None,
    config: TrainConfig | None = None,
    method: TrainingMethod | None = None,
    method_config: dict[str, Any] | None = None,
    data_seed: int | None = None,
    unbiased_size: int | None = None,
    train_size: int | None = None,
    test_size: int | None = None,
    splits: Splits | None = None,
    device: str = "cpu",
    force: bool = False,
    progress: bool = True,
    record_dynamics: bool = False,
    resume: bool = False,
    readings: Callable[..., dict[str, Any] | None] | None = None,
) -> tuple[Path, FitResult]:
    """Train ``model`` on ``dataset`` and write ``out`` atomically.

    The folder holds ``model.safetensors``, ``run.json`` (model spec, data spec, training config,
    method, seed, package versions, wall time) and ``train_log.jsonl``. While training, a checkpoint
    of the last finished epoch lives in the hidden sibling ``.OUT.partial/``; after an interruption
    (Ctrl-C, a crash, a kill) ``resume=True`` with the same arguments continues from it and writes the
    weights an uninterrupted run would have written.

    ``dataset``: a dataset name (``debiaskit data list``), your data on disk (``tensors:PATH``,
    ``folder:DIR``) or your own :class:`~debiaskit.data.Splits` (``debiaskit.data.user_splits``; a run
    folder cannot rebuild in-memory objects, so the CLI commands then need the data again - save it with
    ``debiaskit.data.save_tensor_file`` to make the run self-contained). ``model``: a zoo name, your
    ``package.module:factory`` (``model_args`` for it; ``num_classes`` / ``in_channels`` / ``in_features`` /
    ``input_shape`` are filled in where the factory takes them), a factory, or an ``nn.Module`` (trained in
    place). ``head``: the classifier module (default: ``model.head_name``, or the only nn.Linear with
    ``num_classes`` outputs).

    Under ``torchrun`` every rank trains its shard (``config.batch_size`` is the global batch) and rank 0
    alone writes the folder; run.json records ``world_size``, ``backend`` and ``per_rank_batch``.

    Example::

        out, result = train_run(dataset="biased-mnist", params={"rho": 0.99}, out=Path("runs/v0"),
                                config=TrainConfig(epochs=5, seed=0))
        out, result = train_run(dataset="tensors:my-data.safetensors", model="mynets:resnet",
                                model_args={"width": 32}, head="classifier", out=Path("runs/mine"))

    ``readings``: called as ``readings(model, splits, head=head)`` once training is done (on every rank: it may run
    collectives); what it returns is recorded in run.json (``readings``, signed with the record). ``debiaskit train``
    passes FFW's ``vanilla_readings`` (the model's audit and probe readings, which ``debiaskit ffw`` then reuses
    instead of recomputing them; training never imports the audit itself: layers). A readings function that refuses
    the data (a debiaskit error, e.g. no bias labels) is logged and nothing is recorded: the run is written.
    """
    out = Path(out)
    config = config or TrainConfig()
    world = _dist.rank_and_world()[1]
    per_rank_batch = _dist.per_rank_batch(config.batch_size, world)
    method = method or TrainingMethod()
    _dist.check_device(device)
    check_signing_key()  # run.json is signed at the end: a bad key is said now, not after training
    if config.sync_bn:
        _dist.check_sync_bn(device)  # before any data is loaded
    checkpoint = partial_dir(out) / CHECKPOINT_FILE
    # rank 0 writes (the folder is checked and locked before any compute); the other ranks train their shard
    with _dist.rank0_folder(out, kind=RUN_FOLDER, force=force) as staging:
        main = staging is not None
        if main:
            _check_partial(out, resume=resume, force=force)
        if isinstance(dataset, Splits):
            splits = dataset
        elif splits is None:
            splits = make_splits(
                dataset,
                params=params,
                seed=config.seed if data_seed is None else data_seed,
                unbiased_size=unbiased_size,
                train_size=train_size,
                test_size=test_size,
            )
        torch.manual_seed(config.seed)
        net, model_spec = instantiate(
            model, args=model_args, num_classes=splits.num_classes, input_shape=tuple(splits.train.input_shape)
        )
        head, _ = resolve_head(net, head or infer_head(net, num_classes=splits.num_classes))  # a wrong name: error now
        recorder = DynamicsRecorder(method) if record_dynamics else None
        if main:
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            real_dir(checkpoint.parent, what=_PARTIAL)  # a link planted meanwhile: refused, never written through
        try:
            with (
                open(staging / "train_log.jsonl", "w") if staging is not None else contextlib.nullcontext()
            ) as log_file:

                def log(record: dict) -> None:
                    if log_file is not None:  # rank 0 (the other ranks pass no log)
                        log_file.write(json.dumps(record) + "\n")
                        log_file.flush()

                result = fit(
                    net,
                    splits.train,
                    method=recorder or method,
                    config=config,
                    num_classes=splits.num_classes,
                    head=head,
                    device=device,
                    progress=progress,
                    log=log if main else None,
                    checkpoint=checkpoint,
                    resume=resume,  # rank 0 writes it, every rank reads it
                    checkpoint_meta={"data": splits.spec, "model": model_spec, "method_config": method_config or {}},
                )
        except BaseException:
            if main:  # nothing resumable was written: leave nothing behind (an empty folder only)
                remove_owned(checkpoint.parent, (), what=_PARTIAL)
            raise
        if (
            staging is not None and result.resumed_from_epoch
        ):  # the epochs before the interruption are in the history, not in the stream
            (staging / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in result.history))
        if recorder is not None:
            recorder.close()
        recorded = _readings(readings, result.model, splits, head)
        if staging is None:
            return out, result  # rank0_folder waits for rank 0 to publish the folder
        if recorder is not None:
            save_dynamics(recorder.dynamics(), staging / DYNAMICS_FILE)
        state = method.state()
        flags = method.conflict_flags()
        if flags is not None:  # scored here against the true labels (report only); the method never reads them
            state["pseudo_bias_flags"] = flags.report(splits.train)
        record = RunRecord(
            kind="train",
            created=_now(),
            model=ModelRecord.from_dict(
                {
                    **model_spec,
                    "num_classes": splits.num_classes,
                    "input_shape": list(splits.train.input_shape),
                    "head": head,
                },
                file="the model's record",
                prefix="model",
            ),
            data=DataRecord.from_dict(splits.spec, file="the splits' spec", prefix="data"),
            data_summary={name: split.summary() for name, split in splits.items()},
            train=TrainRecord(
                epochs=config.epochs,
                batch_size=config.batch_size,
                lr=config.lr,
                weight_decay=config.weight_decay,
                optimizer=config.optimizer,
                seed=config.seed,
                extra=config.extra,
                selection=result.selection,
                selected_epoch=result.selected_epoch,
                amp=config.amp,
                sync_bn=config.sync_bn,
            ),
            method=MethodRecord(
                name=method.name,
                uses_bias_labels=method.uses_bias_labels,
                config=method_config or {},
                state=state,
                # which defaults it ran with when the dataset family has none of its own
                other={
                    "defaults": getattr(method, "defaults_note", None)
                    or "the dataset family's own (or the only) defaults"
                },
            ),
            final_train_metrics=result.history[-1] if result.history else {},
            wall_time_s=result.wall_time_s,
            device=str(device),
            world_size=world,
            backend=_dist.backend(),
            per_rank_batch=per_rank_batch,
            dynamics=DYNAMICS_FILE if recorder is not None else None,
            readings=recorded,
        )
        save_run(staging, model=result.model, record=record)
    _remove_partial(partial_dir(out))  # the finished folder supersedes its checkpoint
    return out, result


def _readings(
    fn: Callable[..., dict[str, Any] | None] | None, model: nn.Module, splits: Splits, head: str
) -> dict[str, Any] | None:
    """What ``fn`` records about the trained model (None without one, or when it refuses the data: the run the
    training produced is worth more than its readings, which a later command can compute)."""
    if fn is None:
        return None
    try:
        return fn(model, splits, head=head)
    except DebiaskitError as exc:
        _log.warning("the trained model's readings were not recorded (%s); commands that need them compute them", exc)
        return None


CHECKPOINT_FILE = "checkpoint.safetensors"
_PARTIAL = "an interrupted run's checkpoint"


def partial_dir(out: Path) -> Path:
    """Where an unfinished run keeps its checkpoint: the hidden sibling ``.OUT.partial``."""
    out = Path(out)
    return out.parent / f".{out.name}.partial"


def _check_partial(out: Path, *, resume: bool, force: bool) -> None:
    partial = partial_dir(out)
    exists = real_dir(partial, what=_PARTIAL)  # a symbolic link in its place: refused, its target untouched
    if resume:
        if not (exists and (partial / CHECKPOINT_FILE).is_file()):
            raise ConfigError(f"nothing to resume: {partial / CHECKPOINT_FILE} does not exist; start without --resume")
    elif exists:
        if not force:
            raise RunExistsError(
                f"an interrupted run of {out} is kept in {partial}: pass --resume (with the same "
                "arguments) to continue it, or --force to start afresh"
            )
        left = remove_owned(partial, PARTIAL_FILES, what=_PARTIAL)
        if left:
            raise RunExistsError(
                f"{partial} holds files train did not write ({', '.join(left[:5])}); move them away first"
            )


def _remove_partial(partial: Path) -> None:
    """Remove a checkpoint folder this command wrote - and nothing else: files train did not write stay
    (and then so does the folder)."""
    left = remove_owned(partial, PARTIAL_FILES, what=_PARTIAL)
    if left:
        _log.warning("%s holds files train did not write (%s); it is left as it is", partial, ", ".join(left[:5]))
