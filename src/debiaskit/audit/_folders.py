"""The kind of folder an audit writes (``audit.json`` + report), for the output rule of ``_io.atomic_folder``."""

from .._io import FolderKind, register_folder_kind

AUDIT_FOLDER = register_folder_kind(
    FolderKind(
        "audit",
        "audit.json",
        ("audit",),
        describe="an audit report folder",
        files=("audit.json", "report.md", "*.png"),
        legacy=lambda m: "attributes" in m and "task_accuracy" in m,
    )
)
