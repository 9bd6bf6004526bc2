"""The kind of folder discovery writes (pseudo bias labels + report), for ``_io.atomic_folder``."""

from .._io import FolderKind, register_folder_kind

DISCOVER_FOLDER = register_folder_kind(
    FolderKind(
        "discover",
        "report.json",
        ("discover",),
        describe="a discover folder",
        files=("pseudo_bias.safetensors", "report.json", "report.md"),
        legacy=lambda m: "rule" in m and "quality" in m,
    )
)
