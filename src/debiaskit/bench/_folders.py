"""The kinds of folder the benchmarks write: a cell (one method x value x seed) and each suite's root."""

from .._io import FolderKind, RootKind, register_folder_kind

BENCH_CELL = register_folder_kind(
    FolderKind(
        "bench-cell",
        "result.json",
        ("bench-cell",),
        describe="a benchmark cell",
        files=("result.json", "run.json", "model.safetensors", "*.png", "test_predictions.safetensors"),
        # harness cells (method_state), unsup cells (cell), fairlearn rows of bench adult (suite/method/seed only)
        legacy=lambda m: "method_state" in m or "cell" in m or {"suite", "method", "seed"} <= m.keys(),
    )
)


def _bench_root(
    command: str, files: tuple[str, ...], dirs: tuple[str, ...] = (), cells_at_top: bool = False
) -> RootKind:
    root = RootKind(
        f"bench-{command}",
        "bench.json",
        (f"bench-{command}",),
        files=("bench.json", *files) + dirs,
        describe=f"a `debiaskit bench {command}` suite folder",
        dirs=dirs,
        cells_at_top=cells_at_top,
        command=f"debiaskit bench {command}",
    )
    register_folder_kind(root)
    return root


BENCH_VANILLA_ROOT = _bench_root("vanilla", ("results.md", "results.json"), cells_at_top=True)
BENCH_COMPARE_ROOT = _bench_root("compare", (), dirs=("*",))  # `bench adult` shares it (the compare suite `adult`)
BENCH_UNSUP_ROOT = _bench_root("unsup", ("summary.md", "results.json", "discovery_over_time.png"), dirs=("*",))
BENCH_FFW_ROOT = _bench_root(
    "ffw", ("results.md", "results.json"), dirs=("cells", "ffw", "vanilla-short", "vanilla-other")
)
BENCH_DEV_ROOT = _bench_root("dev", (), dirs=("*",))  # BUDGET/results.md + BUDGET/CELL/seedS records
