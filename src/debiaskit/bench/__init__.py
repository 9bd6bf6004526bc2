"""Benchmarks: suites that run methods x datasets x seeds, resumable, and write tables."""
from ._common import fmt_pm, load_cell, machine_description, mean_std
from ._vanilla import PAPER_VANILLA, run_vanilla_suite, vanilla_table, write_vanilla_results

__all__ = ["PAPER_VANILLA", "fmt_pm", "load_cell", "machine_description", "mean_std", "run_vanilla_suite",
           "vanilla_table", "write_vanilla_results"]
