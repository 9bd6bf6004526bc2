"""Benchmarks: suites that run methods x datasets x seeds, resumable, and write tables."""
from ._common import fmt_pm, load_cell, machine_description, mean_std
from ._vanilla import PAPER_VANILLA, run_vanilla_suite, vanilla_table, write_vanilla_results

__all__ = ["PAPER_VANILLA", "fmt_pm", "load_cell", "machine_description", "mean_std", "run_vanilla_suite",
           "vanilla_table", "write_vanilla_results"]
from ._compare import SUITES, Suite, available_methods, compare_table, run_compare, write_compare_results  # noqa: E402
from ._ffw import run_ffw_bench  # noqa: E402
from ._unsup import (PLANS, grid_cells, label_free_methods, plan_cells, run_unsup,  # noqa: E402
                     run_unsup_cell, summary_rows, summary_table, unsup_cell, write_unsup_results)
