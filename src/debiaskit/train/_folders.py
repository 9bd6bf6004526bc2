"""The kind of folder training writes (a run folder), for the output rule of :func:`debiaskit._io.atomic_folder`."""

from .._io import FolderKind, register_folder_kind

# what a run folder may hold (also an unlearn run's, see methods/_folders.py)
RUN_FILES = (
    "run.json",
    "model.safetensors",
    "train_log.jsonl",
    "dynamics.safetensors",
    "result.json",
    "checkpoint*.safetensors",
)
# one kind per writer: `train --force` never replaces an unlearn run, nor `unlearn --force` a training run (both are
# run.json folders, told apart by run.json's `kind`); a compare cell's run.json (`compare-cell`) is a bench cell's
RUN_FOLDER = register_folder_kind(
    FolderKind(
        "run",
        "run.json",
        ("train",),
        describe="a finished run",
        files=RUN_FILES,
        legacy=lambda m: m.get("status") == "finished" and "model" in m,
    )
)  # 0.1.0's runs, before `kind`: training runs
