"""Run under torchrun by tests/test_dist.py: train every method (tests/dist_cases.py) on W ranks.

Rank 0 writes OUT/<method>.safetensors (the final model's and the method's tensors), OUT/audit.json and
OUT/ffw.safetensors (the audit and FFW of the model in OUT/reference.safetensors, written by the test) and
OUT/agree.json (whether every rank ended with bitwise the same tensors).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

import dist_cases  # noqa: E402
from debiaskit import _dist  # noqa: E402
from debiaskit.models import build_model  # noqa: E402

RESUMED = ("vanilla", "lff")  # interrupted and resumed too (LfF: per-sample state in the checkpoint)


def main(out: Path, methods: list[str]) -> None:
    torch.set_num_threads(1)
    assert _dist.init_from_env(), "run me with torchrun"
    try:
        splits = dist_cases.toy_splits()
        agree, resumed = {}, {}
        for name in methods:
            tensors = dist_cases.train_method(name, splits)
            agree[name] = _dist.replicas_agree(list(tensors.values()))
            if _dist.is_main_process():
                save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / f"{name}.safetensors"))
            if name in RESUMED:  # train --resume on 2 ranks: bitwise the uninterrupted 2-rank run
                again = dist_cases.train_interrupted_then_resumed(name, splits, out / f"{name}.ckpt.safetensors")
                resumed[name] = all(torch.equal(v, tensors[k]) for k, v in again.items())
        model = build_model("mlp", num_classes=splits.num_classes, input_shape=splits.train.input_shape)
        model.load_state_dict(load_file(str(out / "reference.safetensors")))
        headline = dist_cases.audit_case(model, splits)
        ffw = dist_cases.ffw_case(model, splits)
        agree["ffw"] = _dist.replicas_agree(list(ffw.values()))
        if _dist.is_main_process():
            (out / "audit.json").write_text(json.dumps(headline))
            save_file({k: v.contiguous() for k, v in ffw.items()}, str(out / "ffw.safetensors"))
            (out / "agree.json").write_text(
                json.dumps(
                    {
                        "world_size": _dist.rank_and_world()[1],
                        "backend": _dist.backend(),
                        "agree": agree,
                        "resumed_equal": resumed,
                    }
                )
            )
        _dist.barrier()  # both ranks done before either tears the process group down
    finally:
        _dist.shutdown()
    # Under load, gloo's threads sometimes abort a rank at interpreter exit, after the group was destroyed and every
    # result was written ("terminate called without an active exception"): the results are what the tests check, so
    # leave without the interpreter's teardown.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2].split(",") if len(sys.argv) > 2 else dist_cases.trainable_methods())
