"""The kind of folder FFW writes (``ffw.json``, the pruned model, its masks), for ``_io.atomic_folder``."""

from .._io import FolderKind, register_folder_kind

FFW_FOLDER = register_folder_kind(
    FolderKind(
        "ffw",
        "ffw.json",
        ("ffw",),
        describe="a finished FFW folder",
        files=("ffw.json", "report.md", "model.safetensors", "masks.safetensors"),
    )
)
