"""The kind of folder ``debiaskit unlearn`` (FMD, ``methods/fmd.py``) writes: a run folder of its own kind, plus
its report (``unlearn.md``) and trade-off plot."""

from .._io import FolderKind, register_folder_kind
from ..train import RUN_FOLDER

UNLEARN_FOLDER = register_folder_kind(
    FolderKind(
        "unlearn",
        "run.json",
        ("unlearn",),
        describe="a finished unlearn run (`debiaskit unlearn`)",
        files=RUN_FOLDER.files + ("unlearn.md", "unlearn_tradeoff.png"),
    )
)
