"""FFW with several bias attributes of different cardinalities (a binary one beside one with 5 values): every
attribute keeps its own number of classes - privacy and MLP heads sized per attribute, each MI normalised by its
own log K, the dependence / readability terms scaled by its own K - 1, the eraser fitted on each one's one-hot,
and the stronger probes' chance that of the attribute they read."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import debiaskit.ffw._run as run_module
from debiaskit.data import as_bias_datasets, user_splits
from debiaskit.ffw import FFWConfig, find_fantastic_weights
from debiaskit.ffw._run import first_attribute_classes, probe_readings
from debiaskit.ffw._search import _Search
from debiaskit.ffw._step import ffw_step
from debiaskit.models import collect_outputs

CARDS = (2, 5)
OFFSETS = (3, 5)  # where each attribute's one-hot starts in the features


def _rows(n: int, seed: int) -> TensorDataset:
    """13 features: one-hot y (3), one-hot b0 (2), one-hot b1 (5), noise (3): both attributes perfectly readable."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    b = torch.stack([torch.randint(0, k, (n,), generator=g) for k in CARDS], 1)
    x = torch.cat(
        [
            nn.functional.one_hot(y, 3),
            nn.functional.one_hot(b[:, 0], 2),
            nn.functional.one_hot(b[:, 1], 5),
            0.1 * torch.randn(n, 3, generator=g),
        ],
        1,
    ).float()
    return TensorDataset(x, y, b)


class Model(nn.Module):
    """A gated identity layer, then a head that reads y from the first three features (bottleneck = input)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(13, 13)
        self.fc = nn.Linear(13, 3)
        with torch.no_grad():
            self.body.weight.copy_(torch.eye(13))
            self.body.bias.zero_()
            self.fc.weight.zero_()
            self.fc.weight[:, :3] = 10 * torch.eye(3)
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(self.body(x))


def _data():
    return as_bias_datasets(_rows(600, 1), _rows(400, 2))


def _oracle(heads: list[nn.Linear]) -> None:
    """Each head reads its attribute's one-hot with near-certainty (normalised MI of a perfect reader: ~1)."""
    with torch.no_grad():
        for h, k, off in zip(heads, CARDS, OFFSETS):
            h.weight.zero_()
            h.bias.zero_()
            h.weight[:k, off : off + k] = 50 * torch.eye(k)


def _search(**overrides) -> _Search:
    train, val = _data()
    assert train.bias_cardinalities == CARDS and train.num_bias_classes == 5
    cfg = FFWConfig(lda_ridge=1e-3, batch_size=200, seed=0, **overrides)
    return _Search(Model(), head="fc", train=train, val=val, config=cfg, device="cpu", callback=None)


def test_heads_mi_and_readability_use_each_attributes_own_class_count():
    search = _search(adversary="mlp")
    assert [h.out_features for h in search.heads] == list(CARDS)  # no dead outputs for the binary attribute
    assert [h[-1].out_features for h in search.mlps] == list(CARDS)
    _oracle(search.heads)
    rec = search.evaluate(hard=True)
    assert rec["bias"] == pytest.approx(1.0)
    # MI of a perfect reader is ~1 for each attribute (a binary one divided by log 5 would give 0.43 + 1)
    assert rec["mi"] == pytest.approx(2.0, abs=0.03)
    # closed-form readability ~1 per attribute (the binary one's divided by 5 - 1 would give 0.25 + 1)
    assert rec["readability"] == pytest.approx(2.0, abs=0.1)
    assert rec["lda_bias"] > 0.99


@pytest.mark.parametrize("adversary", ["head", "lda"])
def test_the_training_term_uses_each_attributes_own_class_count(adversary):
    search = _search(adversary=adversary, gamma=0.0)
    _oracle(search.heads)
    if search.lda is not None:
        search.lda.fit(torch.stack([x for x, _, _ in _rows(600, 1)]))
    stats = search.train_epoch()
    assert stats["train_mi"] == pytest.approx(2.0, abs=0.15)  # ~1 per attribute, in every step
    if adversary == "lda":  # the same term on a whole split, within each target class
        assert search.evaluate(hard=True)["dependence"] == pytest.approx(2.0, abs=0.1)


def test_ffw_step_takes_one_class_count_per_attribute():
    model = Model()
    heads = [nn.Linear(13, k) for k in CARDS]
    _oracle(heads)
    x, y, b = _rows(300, 3).tensors
    gate = nn.Parameter(torch.ones(()))  # a stand-in for the gates: J's gradient reaches it through the logits
    model.fc.register_forward_pre_hook(lambda m, inp: (inp[0] * gate,))
    out = ffw_step(model, "fc", [gate], heads, x, y, b, gamma=1.0, num_bias=CARDS)
    assert out["mi"] == pytest.approx(2.0, abs=0.03)
    with pytest.raises(ValueError, match="one number of bias classes per attribute"):
        ffw_step(model, "fc", [gate], heads, x, y, b, gamma=1.0, num_bias=(2, 5, 3))


def test_the_eraser_and_its_readings_cover_each_attribute_with_its_own_classes():
    train, val = _data()
    result = find_fantastic_weights(
        Model(),
        head="fc",
        train=train,
        val=val,
        gamma=0.0,
        max_epochs=1,
        batch_size=200,
        progress=False,
        erase="linear",
        no_harm=False,
    )
    assert [h.out_features for h in result.privacy_heads] == list(CARDS)
    eraser = result.summary()["eraser"]
    assert eraser["rank"] == (2 - 1) + (5 - 1)  # K - 1 directions per attribute
    # the whole-split readability, ~1 per attribute before the eraser (0.25 + 1 with the largest K for both)
    assert eraser["val_readability_before"] == pytest.approx(2.0, abs=0.15)
    assert eraser["val_readability_after"] < 0.1
    z = collect_outputs(result.model, train, head=result.head)
    for a, k in enumerate(CARDS):  # every class of each attribute has the same mean on D^u_train
        means = torch.stack([z.z[z.b[:, a] == c].double().mean(0) for c in range(k)])
        assert float((means - means.mean(0)).abs().max()) < 1e-4


def test_the_stronger_probes_read_the_first_attribute_with_its_own_chance(monkeypatch):
    splits = user_splits(
        train=_rows(300, 0),
        unbiased_train=_rows(300, 1),
        unbiased_val=_rows(200, 2),
        test=_rows(300, 3),
        bias_names=("sex", "region"),
    )
    assert first_attribute_classes(splits) == 2 and splits.num_bias_classes == 5
    seen = []
    monkeypatch.setattr(run_module, "probe_suite", lambda *a, **k: seen.append(k["num_bias"]) or {})
    probe_readings(Model(), splits, head="fc")
    assert seen == [2]


def test_the_default_conditional_eraser_and_head_refit_handle_every_attribute():
    train, val = _data()
    result = find_fantastic_weights(
        Model(), head="fc", train=train, val=val, gamma=0.0, max_epochs=1, batch_size=200, progress=False, no_harm=False
    )
    eraser = result.summary()["eraser"]
    assert eraser["kind"] == "conditional" and eraser["rank"] >= (2 - 1) + (5 - 1)
    assert eraser["within_target_available"] <= 3 * ((2 - 1) + (5 - 1))  # per target class: K - 1 per attribute
    assert result.head_refit.head == result.head and result.head_refit.train_samples == len(train)
    z = collect_outputs(result.model, train, head=result.head)
    for a, k in enumerate(CARDS):  # linear guardedness of each attribute survives the within-target directions
        means = torch.stack([z.z[z.b[:, a] == c].double().mean(0) for c in range(k)])
        assert float((means - means.mean(0)).abs().max()) < 1e-4
