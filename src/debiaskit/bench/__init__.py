"""Benchmarks: suites that run methods x datasets x seeds, resumable, and write tables."""
from ._folders import BENCH_CELL, BENCH_COMPARE_ROOT, BENCH_FFW_ROOT, BENCH_UNSUP_ROOT, BENCH_VANILLA_ROOT
from ._common import fmt_pm, load_cell, machine_description, mean_std
from ._vanilla import PAPER_VANILLA, run_vanilla_suite, vanilla_table, write_vanilla_results
from ._launch import load_slurm_options
from ._compare import (SUITES, Suite, available_methods, compare_table, effective_suite, get_suite, register_suite,
                       run_compare, write_compare_results)
from ._adult import ADULT_SUITE, run_adult_bench, write_adult_results
from ._ffw import run_ffw_bench
from ._unsup import (DEFAULT_METHODS, PLANS, grid_cells, label_free_methods, plan_cells, run_unsup, run_unsup_cell,
                     summary_rows, summary_table, unsup_cell, write_unsup_results)

# every suite of the comparison harness, registered here in one place (adult's is defined beside its measurements)
register_suite(ADULT_SUITE)

__all__ = ["Suite", "SUITES", "get_suite", "register_suite", "effective_suite", "run_compare", "write_compare_results",
           "run_vanilla_suite", "write_vanilla_results", "run_ffw_bench", "run_unsup", "write_unsup_results",
           "run_adult_bench", "write_adult_results"]
# Names imported here but not in __all__ are internal: for debiaskit's other packages and its CLI (importable,
# undocumented, may change). tests/test_public_api.py holds the reviewed lists of both.
