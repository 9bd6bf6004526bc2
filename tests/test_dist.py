"""Data parallelism under torchrun (gloo, 2 CPU processes): every method, FFW and the audit equal the 1-process run.

Tolerance: every float tensor (final weights, per-sample / per-group method state, gates, D^u_val history)
within ``TOL`` = 1e-4 of the 1-process run after 2 epochs; every integer / boolean tensor (JTT's error set,
CALM's pseudo-bias, DCWP's mined set, FFW's hard masks, the selected epoch) exactly equal. With the same
global batch the two runs do the same arithmetic up to the order of floating-point sums (DDP's gradient
all-reduce, gathered batch statistics); measured differences are <= 1e-5 (CPU, torch 2.13). A sharding
or synchronisation bug moves weights by a whole Adam step (1e-3) or more.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).parent))
import dist_cases  # noqa: E402
from debiaskit import _dist  # noqa: E402
from debiaskit.errors import ConfigError  # noqa: E402

TOL = 1e-4
TESTS = Path(__file__).parent


def torchrun(args: list[str], *, env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node 2 ARGS`` with one torch thread per process."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **env, "OMP_NUM_THREADS": "1"}
    )
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def assert_close(reference: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> None:
    assert sorted(reference) == sorted(got)
    for key, ref in reference.items():
        other = got[key]
        assert ref.shape == other.shape, key
        if ref.is_floating_point():
            diff = (ref.double() - other.double()).abs().max().item() if ref.numel() else 0.0
            assert diff <= TOL, f"{key}: max |difference| {diff:.3g} > {TOL}"
        else:
            assert torch.equal(ref, other), f"{key}: {int((ref != other).sum())} entries differ"


@pytest.fixture(scope="module")
def splits():
    return dist_cases.toy_splits()


@pytest.fixture(scope="module")
def reference(splits):
    return dist_cases.reference_model(splits)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory, reference):
    """One torchrun launch: every method trained on 2 ranks, then the audit and FFW of ``reference``."""
    out = tmp_path_factory.mktemp("two-ranks")
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(out / "reference.safetensors"))
    torchrun([str(TESTS / "dist_worker.py"), str(out)], env={"DEBIASKIT_DATA": str(out / "data")})
    return out


# -- helpers ---------------------------------------------------------------------------------------------------
def test_shard_follows_distributed_sampler_and_covers_the_global_batches():
    order = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    shards = [_dist.shard(order, rank=r, world=2) for r in range(2)]
    assert [s.tolist() for s in shards] == [order[0::2].tolist(), order[1::2].tolist()]
    # per-rank batch B/W: step k of the ranks together is the global batch order[kB:(k+1)B]
    b = 4
    for k in range(3):
        together = sorted(torch.cat([s[k * b // 2 : (k + 1) * b // 2] for s in shards]).tolist())
        assert together == sorted(order[k * b : (k + 1) * b].tolist())
    # a length that does not divide: padded with the first entries (as DistributedSampler), equal shard sizes
    shards = [_dist.shard(order[:7], rank=r, world=3) for r in range(3)]
    assert [len(s) for s in shards] == [3, 3, 3]
    assert sorted(torch.cat(shards).tolist()) == sorted(order[:7].tolist() + order[:2].tolist())
    assert torch.equal(_dist.shard(order, rank=0, world=1), order)


def test_global_batch_must_divide_by_the_ranks():
    assert _dist.per_rank_batch(256, 4) == 64
    with pytest.raises(ConfigError, match="global batch"):
        _dist.per_rank_batch(100, 3)


def test_collectives_are_identities_on_one_process():
    t = torch.arange(6.0).view(3, 2)
    assert _dist.all_gather(t) is t and _dist.all_gather_with_grad(t) is t and _dist.all_reduce_sum(t) is t
    assert torch.equal(_dist.map_shards(5, lambda i: i * 2), torch.arange(5) * 2)
    assert _dist.description() == {"world_size": 1, "backend": None}


# -- 2 ranks = 1 rank ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", dist_cases.trainable_methods())
def test_two_ranks_train_every_method_like_one_rank(method, splits, two_ranks):
    agree = json.loads((two_ranks / "agree.json").read_text())
    assert agree["world_size"] == 2 and agree["backend"] == "gloo"
    assert agree["agree"][method], "the ranks ended with different weights or method state"
    assert_close(dist_cases.train_method(method, splits), load_file(str(two_ranks / f"{method}.safetensors")))


def test_train_resume_on_two_ranks_equals_the_uninterrupted_run(two_ranks):
    """Rank 0 writes the checkpoint, every rank reads it: interrupted after epoch 1 and resumed, the 2-rank run
    ends with bitwise the weights of the uninterrupted 2-rank run (vanilla; LfF with its per-sample EMAs)."""
    assert json.loads((two_ranks / "agree.json").read_text())["resumed_equal"] == {"vanilla": True, "lff": True}


def test_two_rank_ffw_selects_and_stops_like_one_rank(splits, reference, two_ranks):
    assert json.loads((two_ranks / "agree.json").read_text())["agree"]["ffw"]
    expected = dist_cases.ffw_case(reference, splits)
    assert len(expected["history.val_hard"]) > 2  # the search ran several epochs (not only the initial record)
    assert_close(expected, load_file(str(two_ranks / "ffw.safetensors")))


def test_two_rank_audit_equals_one_rank(splits, reference, two_ranks):
    got = json.loads((two_ranks / "audit.json").read_text())
    expected = dist_cases.audit_case(reference, splits)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=TOL), key


# -- the command line under torchrun ---------------------------------------------------------------------------
def test_torchrun_cli_train_audit_ffw_write_one_folder_each(tmp_path):
    """`torchrun -m debiaskit train`, then the `audit` and `ffw` commands under torchrun: one finished folder
    each, rank 0 the only writer, the processes recorded, and the same numbers as the 1-process commands."""
    from debiaskit.audit import audit_run
    from debiaskit.ffw import ffw_run
    from debiaskit.runs import load_run
    from debiaskit.train import TrainConfig, train_run

    env = {"DEBIASKIT_DATA": str(tmp_path / "data")}
    common = [
        "--dataset",
        "biased-toy",
        "--rho",
        "0.95",
        "--model",
        "mlp",
        "--epochs",
        "1",
        "--batch-size",
        "64",
        "--train-size",
        "384",
        "--unbiased-size",
        "600",
        "--no-progress",
    ]
    torchrun(["-m", "debiaskit", "train", *common, "--out", str(tmp_path / "run2")], env=env)
    run2 = load_run(tmp_path / "run2")
    record = json.loads((tmp_path / "run2" / "run.json").read_text())
    assert (record["world_size"], record["backend"], record["per_rank_batch"]) == (2, "gloo", 32)
    assert record["status"] == "finished"
    assert [p.name for p in tmp_path.iterdir() if p.name != "data"] == ["run2"]  # no staging or lock left behind

    _, _ = train_run(
        dataset="biased-toy",
        params={"rho": 0.95},
        model="mlp",
        train_size=384,
        unbiased_size=600,
        config=TrainConfig(epochs=1, batch_size=64, seed=0),
        out=tmp_path / "run1",
        progress=False,
    )
    run1 = load_run(tmp_path / "run1")
    assert json.loads((tmp_path / "run1" / "run.json").read_text())["world_size"] == 1
    assert_close(run1.model.state_dict(), run2.model.state_dict())

    # audit and FFW of the same (1-process) run, on 2 ranks and on 1
    ffw_args = ["--mode", "unstructured", "--max-levels", "1", "--max-epochs-per-level", "2", "--no-progress"]
    commands = [
        ["audit", str(tmp_path / "run1"), "--out", str(tmp_path / "audit2")],
        ["ffw", str(tmp_path / "run1"), "--out", str(tmp_path / "ffw2"), *ffw_args],
    ]
    torchrun([str(TESTS / "dist_cli.py"), json.dumps(commands)], env=env)  # the two commands in one launch
    report1, _ = audit_run(tmp_path / "run1", out=tmp_path / "audit1")
    audit2 = json.loads((tmp_path / "audit2" / "audit.json").read_text())
    assert (audit2["meta"]["world_size"], audit2["meta"]["backend"]) == (2, "gloo")
    assert audit2["task_accuracy"] == pytest.approx(report1.task_accuracy, abs=TOL)
    got, expected = audit2["attributes"][0], report1.attributes[0]
    for key in ("bias_extractability", "bias_mutual_information", "privacy_head_val_accuracy", "counterfactual_bias"):
        assert got[key] == pytest.approx(getattr(expected, key), abs=TOL), key
    assert got["groups"]["worst_group_accuracy"] == pytest.approx(expected.groups.worst_group_accuracy, abs=TOL)

    ffw1 = ffw_run(
        tmp_path / "run1",
        mode="unstructured",
        out=tmp_path / "ffw1",
        max_levels=1,
        max_epochs_per_level=2,
        no_harm=False,
    )  # as dist_cli.py: the guard recorded, not enforced, on a near-chance toy model
    info2 = json.loads((tmp_path / "ffw2" / "ffw.json").read_text())
    assert info2["world_size"] == 2 and info2["status"] == "finished"
    assert info2["search"]["selected"]["epoch"] == ffw1.info["search"]["selected"]["epoch"]
    masks2 = load_file(str(tmp_path / "ffw2" / "masks.safetensors"))
    masks1 = {k: v.to(torch.uint8) for k, v in ffw1.result.masks.items()}
    assert masks2.keys() == masks1.keys() and all(torch.equal(masks1[k], masks2[k]) for k in masks1)
