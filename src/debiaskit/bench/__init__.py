"""Benchmarks: suites that run methods x datasets x seeds, resumable, and write tables."""
from ._common import fmt_pm, load_cell, machine_description, mean_std
from ._vanilla import PAPER_VANILLA, run_vanilla_suite, vanilla_table, write_vanilla_results
from ._launch import load_slurm_options
from ._compare import (SUITES, Suite, available_methods, compare_table, effective_suite, get_suite, run_compare,
                       write_compare_results)
from ._adult import run_adult_bench, write_adult_results   # after _compare: registers the "adult" suite
from ._ffw import run_ffw_bench
from ._dev import BUDGETS as DEV_BUDGETS, CELLS as DEV_CELLS, VARIANTS as DEV_VARIANTS
from ._dev import check_selection as check_dev_selection, run_dev_suite, summary_rows as dev_summary_rows, write_dev_results
from ._unsup import (DEFAULT_METHODS, PLANS, grid_cells, label_free_methods, plan_cells, run_unsup, run_unsup_cell,
                     summary_rows, summary_table, unsup_cell, write_unsup_results)

__all__ = ["DEV_BUDGETS", "DEV_CELLS", "DEV_VARIANTS", "check_dev_selection", "dev_summary_rows", "run_dev_suite",
           "write_dev_results", "DEFAULT_METHODS", "PAPER_VANILLA", "PLANS", "SUITES", "Suite", "available_methods", "compare_table",
           "effective_suite", "fmt_pm", "get_suite", "grid_cells", "label_free_methods", "load_cell",
           "load_slurm_options", "machine_description", "mean_std", "plan_cells", "run_adult_bench", "run_compare",
           "run_ffw_bench", "run_unsup", "run_unsup_cell", "run_vanilla_suite", "summary_rows", "summary_table",
           "unsup_cell", "vanilla_table", "write_adult_results", "write_compare_results", "write_unsup_results",
           "write_vanilla_results"]
