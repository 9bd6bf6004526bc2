"""The FFW benchmark's plan and tables, on fixture cells (no search is run here)."""

from __future__ import annotations

from pathlib import Path

from debiaskit.bench._ffw import PAPER_OBJECTIVE, _ffw_command, _write, plan


def _cell(task, bias, *, probes=True, own=0.1, mode="unstructured"):
    out = {
        "params": {"mode": mode},
        "before": {
            "task_accuracy": 0.77,
            "bias_extractability": 0.97,
            "conflicting_accuracy": 0.74,
            "worst_group_accuracy": 0.1,
        },
        "after": {
            "task_accuracy": task,
            "bias_extractability": bias,
            "conflicting_accuracy": task,
            "worst_group_accuracy": 0.8,
        },
        "sparsity": 0.38,
        "selected": {"epoch": 10, "tau": 0.002, "val_hard": {"task": task, "bias": own}},
        "stop_reason": "agree",
        "epochs": 10,
        "search_time_s": 100.0,
        "vanilla_train_time_s": 400.0,
        "run_dir": "/v/biased-mnist-rho0.99-seed0",
        "inference": {"speedup_vs_original": 1.0},
        "parameter_sparsity": 0.3,
    }
    if probes:
        out["probes"] = {
            "before": {"audit": 0.97, "mlp": 0.99, "linear": 0.99, "sgd5": 0.9},
            "after": {"audit": bias, "mlp": 0.35, "linear": 0.2, "sgd5": 0.1},
        }
    return out


def test_plan_puts_the_new_defaults_the_paper_term_and_the_cost_ratio_first(tmp_path):
    cells = plan(root=tmp_path, vanilla_root=Path("/v"), tables=(), rhos=(0.99, 0.995), seeds=(0, 1, 2), full=False)
    keys = [c.key for c in cells]
    assert keys[:6] == [
        "t2-unstructured-rho0.99-seed0",
        "t2-structured-rho0.99-seed0",
        "t2-unstructured-rho0.995-seed0",
        "t2-structured-rho0.995-seed0",
        "t2paper-unstructured-rho0.99-seed0",
        "t2paper-unstructured-rho0.995-seed0",
    ]
    assert keys[6:9] == ["ratio-rho0.99-seed0", "ratio-rho0.99-seed1", "ratio-rho0.99-seed2"]  # every seed
    paper = next(c for c in cells if c.key.startswith("t2paper"))
    assert paper.params["adversary"] == PAPER_OBJECTIVE["adversary"] == "head"
    assert "adversary" not in next(c for c in cells if c.key.startswith("t2-")).params  # library defaults
    cmd = _ffw_command(Path("/v/r"), {"mode": "unstructured", "gamma": 10.0, "adversary": "head"}, Path("/o"))
    assert cmd == "debiaskit ffw /v/r --mode unstructured --gamma 10 --adversary head --out /o"
    cmd = _ffw_command(Path("/v/r"), {"mode": "structured", "input_weights": True, "include_head": False}, Path("/o"))
    assert cmd == "debiaskit ffw /v/r --mode structured --input-weights --no-include-head --out /o"  # typer's flags


def test_tables_show_every_probe_and_the_one_process_cost_ratio(tmp_path):
    cells = plan(
        root=tmp_path,
        vanilla_root=Path("/v"),
        tables=("table2", "paper", "ratio"),
        rhos=(0.99,),
        seeds=(0,),
        full=False,
    )
    results = {
        "t2-unstructured-rho0.99-seed0": _cell(0.961, 0.11),
        "t2paper-unstructured-rho0.99-seed0": _cell(0.965, 0.32, own=0.1),
        "t2-structured-rho0.99-seed0": _cell(0.90, 0.3, probes=False, mode="structured"),
        "ratio-rho0.99-seed0": {
            "search_s": 120.0,
            "search_epochs": 12,
            "vanilla_epochs": 10,
            "vanilla_epoch_s": 50.0,
            "ratio": 0.24,
            "load_before": [2.0, 2, 2],
            "load_after": [3.0, 3, 3],
        },
    }
    text = _write(tmp_path, cells, results, "debiaskit bench ffw", 1.0, False).read_text()
    row = next(line for line in text.splitlines() if line.startswith("| FFW unstructured, paper's bias term | 0.99"))
    assert "96.50 +- 0.00 (n=1) | 32.00 +- 0.00 (n=1) | 35.00 +- 0.00 (n=1) | 20.00" in row
    assert next(line for line in text.splitlines() if line.startswith("| vanilla | 0.99")).count("99.00") == 2
    structured = next(line for line in text.splitlines() if line.startswith("| FFW structured | 0.99"))
    assert "| - | - | - |" in structured  # a cell without probe readings shows dashes, not zeros
    assert "**0.24x** the vanilla training time" in text


def test_the_cost_ratio_is_given_per_seed_and_as_mean_and_spread(tmp_path):
    cells = plan(root=tmp_path, vanilla_root=Path("/v"), tables=("ratio",), rhos=(0.99,), seeds=(0, 1), full=False)
    one = {
        "search_epochs": 16,
        "vanilla_epochs": 10,
        "vanilla_epoch_s": 25.0,
        "load_before": [1.0, 1, 1],
        "load_after": [1.0, 1, 1],
    }
    results = {
        "ratio-rho0.99-seed0": {**one, "search_s": 70.0, "ratio": 0.28},
        "ratio-rho0.99-seed1": {**one, "search_s": 80.0, "ratio": 0.32},
    }
    text = _write(tmp_path, cells, results, "debiaskit bench ffw", 1.0, False).read_text()
    assert "**0.30 +- 0.03x (n=2)** the vanilla training time" in text
    assert "seed 0: FFW 70 s (16 epochs) vs 10 x 25.0 s = 0.28x" in text and "seed 1:" in text
    # a failed cell is left out of the ratio (and the report is still written)
    results["ratio-rho0.99-seed1"] = {"error": "killed"}
    text = _write(tmp_path, cells, results, "debiaskit bench ffw", 1.0, False).read_text()
    assert "**0.28x** the vanilla training time" in text and "seed 1: FFW" not in text
