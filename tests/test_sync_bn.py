"""``--sync-bn`` (TrainConfig.sync_bn): BatchNorm statistics over the global batch under torchrun.

torch 2.13's SyncBatchNorm synchronises GPU tensors only (cuda/xpu/hpu); with CPU tensors over gloo its forward
raises. So on CPU: one process trains exactly as plain BatchNorm (nothing to synchronise) and records the flag;
2 gloo ranks refuse the flag with a clear error before any data is loaded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch
from torch import nn

from debiaskit.train import TrainConfig, fit


class SmallBN(nn.Module):
    """Conv + BatchNorm2d + BatchNorm1d: both BN classes must come back after training."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(4, 8),
            nn.BatchNorm1d(8),
            nn.ReLU(),
        )
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(self.features(x))


def test_one_process_sync_bn_equals_batchnorm_and_gives_the_users_layers_back(toy_splits):
    results = {}
    for sync in (False, True):
        torch.manual_seed(0)
        model = SmallBN()
        res = fit(
            model,
            toy_splits.train,
            config=TrainConfig(epochs=1, batch_size=128, seed=0, sync_bn=sync),
            num_classes=10,
            head="fc",
            progress=False,
        )
        assert not any(isinstance(m, nn.SyncBatchNorm) for m in list(model.modules()) + list(res.model.modules()))
        assert isinstance(model.features[1], nn.BatchNorm2d) and isinstance(model.features[6], nn.BatchNorm1d)
        results[sync] = res.model.state_dict()
    assert results[True].keys() == results[False].keys()
    for key, value in results[False].items():  # the running statistics too: bit for bit
        assert torch.equal(value, results[True][key]), key


def _torchrun_train(tmp_path, *extra):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "debiaskit",
        "train",
        "--dataset",
        "biased-toy",
        "--rho",
        "0.95",
        "--model",
        "simple-conv-small",
        "--epochs",
        "1",
        "--batch-size",
        "64",
        "--train-size",
        "128",
        "--unbiased-size",
        "600",
        "--no-progress",
        "--out",
        str(tmp_path / "run"),
        *extra,
    ]
    return subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "DEBIASKIT_DATA": str(tmp_path / "data")},
    )


def test_sync_bn_on_two_gloo_ranks_is_a_clear_error_before_any_data(tmp_path):
    proc = _torchrun_train(tmp_path, "--sync-bn")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    text = " ".join(out.split())
    for rank in (0, 1):  # each rank: our message and exit code 2, not a crash
        assert f"error (rank {rank} of 2): --sync-bn with --device cpu under torchrun: torch 2.13" in text, out[-3000:]
    assert (
        "SyncBatchNorm synchronises statistics of GPU tensors only (cuda, xpu, hpu: NCCL), not of CPU tensors over gloo"
        in text
    )
    assert "exitcode : 2" in text
    assert not (tmp_path / "run").exists() and not (tmp_path / "data").exists()  # refused before data or output


def test_sync_bn_is_recorded_in_run_json(cli, tmp_path):
    code, err = cli(
        "train",
        "--dataset",
        "biased-toy",
        "--rho",
        "0.95",
        "--model",
        "simple-conv-small",
        "--epochs",
        "1",
        "--train-size",
        "256",
        "--unbiased-size",
        "600",
        "--no-progress",
        "--sync-bn",
        "--out",
        tmp_path / "r",
    )
    assert code == 0, err
    assert json.loads((tmp_path / "r" / "run.json").read_text())["train"]["sync_bn"] is True
    from debiaskit.runs import load_run

    assert not any(isinstance(m, nn.SyncBatchNorm) for m in load_run(tmp_path / "r").model.modules())
