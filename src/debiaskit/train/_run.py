"""Train a model on a named dataset and write a complete, rebuildable run folder."""
from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any

import torch

from ..data import Splits, make_splits
from ..models import build_model, default_head_name
from ..runs import RUN_FILE, WEIGHTS_FILE, atomic_folder, check_writable, package_versions, save_weights, write_json
from ._dynamics import DYNAMICS_FILE, DynamicsRecorder, save_dynamics
from ._loop import FitResult, TrainConfig, TrainingMethod, fit


def train_run(*, dataset: str, out: Path, model: str = "simple-conv-small", params: dict | None = None,
              config: TrainConfig | None = None, method: TrainingMethod | None = None,
              method_config: dict[str, Any] | None = None, data_seed: int | None = None,
              unbiased_size: int = 10000, train_size: int | None = None, test_size: int | None = None,
              splits: Splits | None = None, device: str = "cpu", force: bool = False,
              progress: bool = True, record_dynamics: bool = False) -> tuple[Path, FitResult]:
    """Train ``model`` on ``dataset`` and write ``out`` atomically.

    The folder holds ``model.safetensors``, ``run.json`` (model spec, data spec, training config,
    method, seed, package versions, wall time) and ``train_log.jsonl``.

    Example::

        out, result = train_run(dataset="biased-mnist", params={"rho": 0.99}, out=Path("runs/v0"),
                                config=TrainConfig(epochs=5, seed=0))
    """
    out = Path(out)
    check_writable(out, force=force)  # fail before spending any compute
    config = config or TrainConfig()
    method = method or TrainingMethod()
    if splits is None:
        splits = make_splits(dataset, params=params, seed=config.seed if data_seed is None else data_seed,
                             unbiased_size=unbiased_size, train_size=train_size, test_size=test_size)
    torch.manual_seed(config.seed)
    net = build_model(model, num_classes=splits.num_classes, input_shape=splits.train.input_shape)
    recorder = DynamicsRecorder(method) if record_dynamics else None
    with atomic_folder(out, force=force) as staging:
        log_path = staging / "train_log.jsonl"
        with open(log_path, "w") as log_file:
            def log(record: dict) -> None:
                log_file.write(json.dumps(record) + "\n")
                log_file.flush()

            result = fit(net, splits.train, method=recorder or method, config=config, num_classes=splits.num_classes,
                         head=default_head_name(net), device=device, progress=progress, log=log)
        save_weights(result.model, staging / WEIGHTS_FILE)
        if recorder is not None:
            recorder.close()
            save_dynamics(recorder.dynamics(), staging / DYNAMICS_FILE)
        state = method.state()
        flags = method.conflict_flags()
        if flags is not None:   # scored here against the true labels (report only); the method never reads them
            state["pseudo_bias_flags"] = flags.report(splits.train)
        meta = {
            "kind": "train",
            "status": "finished",
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "model": {"name": model, "num_classes": splits.num_classes,
                      "input_shape": list(splits.train.input_shape), "head": default_head_name(net)},
            "data": splits.spec,
            "data_summary": {name: split.summary() for name, split in splits.items()},
            "train": {"epochs": config.epochs, "batch_size": config.batch_size, "lr": config.lr,
                      "weight_decay": config.weight_decay, "optimizer": config.optimizer, "seed": config.seed,
                      "extra": config.extra, "selection": result.selection, "selected_epoch": result.selected_epoch},
            "method": {"name": method.name, "uses_bias_labels": method.uses_bias_labels,
                       "config": method_config or {}, "state": state},
            "final_train_metrics": result.history[-1] if result.history else {},
            "wall_time_s": result.wall_time_s,
            "device": device,
            "versions": package_versions(),
            "weights": WEIGHTS_FILE,
        }
        if recorder is not None:
            meta["dynamics"] = DYNAMICS_FILE
        write_json(staging / RUN_FILE, meta)
    return out, result
