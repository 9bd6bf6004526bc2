"""The kind of folder a data cache is (``debiaskit data prepare``), for ``_io.atomic_folder``."""

from .._io import FolderKind, register_folder_kind

DATA_CACHE = register_folder_kind(
    FolderKind(
        "data-cache",
        "source.json",
        ("data-cache", "debiaskit-adult-files"),
        describe="a debiaskit data cache",
        files=(
            "source.json",
            "*-ubyte",
            "*-ubyte.gz",
            "cifar-10-batches-bin",
            "adult.data",
            "adult.test",
            "adult.names",
            "compas-scores-two-years.csv",
        ),
        legacy_by_files=True,
    )
)  # "debiaskit-adult-files": the Adult caches of earlier versions, still ours
