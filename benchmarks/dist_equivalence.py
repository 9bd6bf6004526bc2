"""How far a 2-rank run (torchrun, gloo, 2 CPU processes) is from the 1-process run, per method, for FFW and
for the audit: the numbers behind the tolerance of tests/test_dist.py (the same cases: tests/dist_cases.py).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/dist_equivalence.py

Prints a Markdown table: max |difference| over the final weights, over the method's float state, and the
number of differing entries of integer / boolean state (error sets, pseudo-bias, masks).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path.insert(0, str(TESTS))
import dist_cases  # noqa: E402


def compare(ref: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> dict[str, float]:
    out = {"weights": 0.0, "float state": 0.0, "discrete entries differing": 0}
    for key, a in ref.items():
        b = got[key]
        if not a.is_floating_point():
            out["discrete entries differing"] += int((a != b).sum())
            continue
        diff = (a.double() - b.double()).abs().max().item() if a.numel() else 0.0
        group = "weights" if key.startswith("model.") else "float state"
        out[group] = max(out[group], diff)
    return out


def main() -> None:
    torch.set_num_threads(1)
    splits = dist_cases.toy_splits()
    reference = dist_cases.reference_model(splits)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(out / "reference.safetensors"))
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            str(TESTS / "dist_worker.py"),
            str(out),
        ]
        subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        agree = json.loads((out / "agree.json").read_text())["agree"]
        print(
            "| case | weights: max abs diff | float state: max abs diff | discrete entries differing | ranks identical |"
        )
        print("|---|---|---|---|---|")
        for name in dist_cases.trainable_methods():
            c = compare(dist_cases.train_method(name, splits), load_file(str(out / f"{name}.safetensors")))
            print(
                f"| {name} | {c['weights']:.1e} | {c['float state']:.1e} | {c['discrete entries differing']} | {agree[name]} |"
            )
        c = compare(dist_cases.ffw_case(reference, splits), load_file(str(out / "ffw.safetensors")))
        print(
            f"| FFW (gates, masks, D^u_val history) | - | {c['float state']:.1e} | {c['discrete entries differing']} | {agree['ffw']} |"
        )
        audit1, audit2 = dist_cases.audit_case(reference, splits), json.loads((out / "audit.json").read_text())
        diff = max(abs(audit1[k] - audit2[k]) for k in audit1)
        print(f"| audit (headline numbers) | - | {diff:.1e} | - | - |")


if __name__ == "__main__":
    main()
