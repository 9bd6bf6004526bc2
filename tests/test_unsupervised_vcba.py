"""The VCBA-style two-stage baseline: label-free, re-initialises for stage 2, weights from pseudo-bias."""

from __future__ import annotations

import torch

from debiaskit.methods import build_method, get_method
from debiaskit.models import build_model
from debiaskit.train import TrainConfig, fit


def _train(data):
    torch.manual_seed(0)
    model = build_model("mlp", num_classes=data.num_classes, input_shape=data.input_shape)
    method, _ = build_method("vcba", dataset="biased-toy", stage1_epochs=1)
    result = fit(
        model, data, method=method, config=TrainConfig(epochs=2, batch_size=128, seed=0), progress=False, head="fc"
    )
    return result, method


def test_vcba_label_free_and_two_stage(toy_splits):
    clean = toy_splits.train
    garbage = clean.subset(torch.arange(len(clean)))
    garbage.b = torch.randint(0, clean.num_bias_classes, (len(clean),), generator=torch.Generator().manual_seed(5))
    r1, m1 = _train(clean)
    r2, _ = _train(garbage)
    assert all(torch.equal(a, b) for a, b in zip(r1.model.state_dict().values(), r2.model.state_dict().values()))
    assert m1.stage == 2 and m1.pseudo is not None and 0 < m1.diagnostics["rho_hat"] <= 1
    assert "mi" in r1.history[-1]
    assert get_method("vcba").uses_bias_labels is False
