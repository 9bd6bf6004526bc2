"""Benchmarks: the suites behind ``debiaskit bench``. Each runs methods x datasets x seeds, caches every finished
cell in its root folder (an interrupted suite resumes where it stopped) and writes its tables (Markdown + JSON).

- every registered method on a suite: :func:`run_compare`, then :func:`write_compare_results`; the suites are
  :data:`SUITES` (:func:`get_suite`; :func:`effective_suite` for another budget; :func:`register_suite` adds yours);
- vanilla models over rho: :func:`run_vanilla_suite`, :func:`write_vanilla_results`;
- FFW beside the published table: :func:`run_ffw_bench`;
- label-free methods: :func:`plan_cells` (a named plan), :func:`run_unsup`, :func:`write_unsup_results`;
- tabular data (UCI Adult, COMPAS) beside fairlearn: :func:`run_adult_bench`, :func:`write_adult_results`;
- FFW's development suite (8 datasets, biases and architectures; the pipelines of the stage ablation, ranked on
  D^u_val worst cell first): :func:`run_dev_suite`, :func:`write_dev_results`.

Example::

    from pathlib import Path
    from debiaskit.bench import effective_suite, run_compare, write_compare_results

    root, suite = Path("runs/compare"), effective_suite("toy", epochs=1)
    cells = run_compare(suite=suite, root=root, seeds=(0,), methods=["vanilla", "jtt"])
    write_compare_results(cells, root=root, suite=suite, command="my script", wall_time_s=0.0)
"""

from ._adult import ADULT_SUITE, COMPAS_SUITE, run_adult_bench, tabular_suite, write_adult_results
from ._common import fmt_pm, load_cell, machine_description, mean_std
from ._compare import (
    SUITES,
    Suite,
    available_methods,
    compare_table,
    effective_suite,
    get_suite,
    register_suite,
    run_compare,
    write_compare_results,
)
from ._dev import BUDGETS as DEV_BUDGETS
from ._dev import CELLS as DEV_CELLS
from ._dev import VARIANTS as DEV_VARIANTS
from ._dev import check_selection as check_dev_selection
from ._dev import run_dev_suite, write_dev_results
from ._dev import summary_rows as dev_summary_rows
from ._ffw import run_ffw_bench
from ._folders import (
    BENCH_CELL,
    BENCH_COMPARE_ROOT,
    BENCH_DEV_ROOT,
    BENCH_FFW_ROOT,
    BENCH_UNSUP_ROOT,
    BENCH_VANILLA_ROOT,
)
from ._launch import load_slurm_options
from ._unsup import (
    DEFAULT_METHODS,
    PLANS,
    grid_cells,
    label_free_methods,
    plan_cells,
    run_unsup,
    run_unsup_cell,
    summary_rows,
    summary_table,
    unsup_cell,
    write_unsup_results,
)
from ._vanilla import PAPER_VANILLA, run_vanilla_suite, vanilla_table, write_vanilla_results

# every suite of the comparison harness, registered here in one place (the tabular ones are defined beside their
# per-cell measurements)
register_suite(ADULT_SUITE)
register_suite(COMPAS_SUITE)

__all__ = [
    "Suite",
    "SUITES",
    "get_suite",
    "register_suite",
    "effective_suite",
    "run_compare",
    "write_compare_results",
    "run_vanilla_suite",
    "write_vanilla_results",
    "run_ffw_bench",
    "plan_cells",
    "run_unsup",
    "write_unsup_results",
    "run_adult_bench",
    "write_adult_results",
    "run_dev_suite",
    "write_dev_results",
]
# Names imported here but not in __all__ are internal: for debiaskit's other packages and its CLI (importable,
# undocumented, may change). tests/test_public_api.py holds the reviewed lists of both.
