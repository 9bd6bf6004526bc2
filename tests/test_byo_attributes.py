"""Several bias attributes of different cardinalities (a binary one beside one with 5 values): each attribute
keeps its own number of classes through the data contract, the audit (group tables, privacy heads, MI) and
the reports - no empty columns, no head with outputs for values that do not exist."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from debiaskit.audit import audit_model, to_markdown
from debiaskit.data import (
    BiasDataset,
    as_bias_data,
    as_bias_datasets,
    make_splits,
    relabel_bias,
    save_tensor_file,
    user_splits,
)
from debiaskit.errors import DataError

CARDS = (2, 5)


def _rows(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows whose features hold both attributes one-hot (a linear probe reads each one perfectly)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    b = torch.stack([torch.randint(0, CARDS[0], (n,), generator=g), torch.randint(0, CARDS[1], (n,), generator=g)], 1)
    x = torch.cat(
        [
            nn.functional.one_hot(y, 3),
            nn.functional.one_hot(b[:, 0], 2),
            nn.functional.one_hot(b[:, 1], 5),
            0.1 * torch.randn(n, 3, generator=g),
        ],
        1,
    ).float()
    return x, y, b


class Model(nn.Module):
    """Reads y from its first three features: perfect accuracy in every group."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Identity()
        self.fc = nn.Linear(13, 3)
        with torch.no_grad():
            self.fc.weight.zero_()
            self.fc.weight[:, :3] = 10 * torch.eye(3)
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(self.body(x))


class Lazy(Dataset):
    """A dataset that says nothing about its labels: the contract reads them."""

    def __init__(self, x, y, b):
        self.x, self.labels, self.groups = x, y, b

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.labels[i], self.groups[i]


@pytest.mark.parametrize("wrap", [lambda x, y, b: TensorDataset(x, y, b), lambda x, y, b: Lazy(x, y, b)])
def test_each_attribute_has_its_own_class_count_in_the_contract(wrap):
    data = as_bias_data(wrap(*_rows(200, 0)))
    assert data.bias_cardinalities == CARDS and data.num_bias_classes == 5  # the largest, for one-number readers
    counts = data.summary()["group_counts"]
    assert [len(counts[f"attribute{a}"][0]) for a in range(2)] == [2, 5]  # no empty column for attribute 0
    # splits given together share each attribute's count (a value missing from one split is still counted)
    x, y, b = _rows(40, 1)
    b[:, 1] = b[:, 1].clamp(max=2)
    small, big = as_bias_datasets(wrap(x, y, b), wrap(*_rows(200, 2)))
    assert small.bias_cardinalities == big.bias_cardinalities == CARDS


def test_an_int_count_still_applies_to_every_attribute_and_a_tuple_to_each():
    x, y, b = _rows(100, 0)
    assert as_bias_data(TensorDataset(x, y, b), num_bias_classes=6).bias_cardinalities == (6, 6)
    data = as_bias_data(TensorDataset(x, y, b), num_bias_classes=(3, 5))
    assert data.bias_cardinalities == (3, 5) and data.num_bias_classes == 5
    with pytest.raises(DataError, match=r"bias labels of attribute 1 \(bias1\) must lie in \[0, 3\]"):
        BiasDataset(images=x, y=y, b=b, num_classes=3, num_bias_classes=5, bias_cardinalities=(2, 4))
    with pytest.raises(DataError, match="one number of bias classes per attribute: 2 attributes, got 3"):
        as_bias_data(TensorDataset(x, y, b), num_bias_classes=(2, 5, 2))
    relabelled = relabel_bias(as_bias_data(TensorDataset(x, y, b)), b.flip(1), num_bias_classes=(5, 2))
    assert relabelled.bias_cardinalities == (5, 2)


def test_counterfactual_values_stay_inside_each_attribute():
    x, y, b = _rows(400, 0)
    data = BiasDataset(images=x, y=y, b=b, num_classes=3, num_bias_classes=5, bias_cardinalities=CARDS)
    gen = torch.Generator().manual_seed(0)
    index = torch.arange(400)
    for attribute in (0, 1, None):
        new = data.draw_counterfactual_bias(index, generator=gen, attribute=attribute)
        changed = [0, 1] if attribute is None else [attribute]
        for a in range(2):
            assert int(new[:, a].max()) < CARDS[a] and int(new[:, a].min()) >= 0
            assert bool((new[:, a] != b[:, a]).all()) if a in changed else torch.equal(new[:, a], b[:, a])


def test_audit_sizes_group_tables_and_probes_per_attribute(monkeypatch):
    import debiaskit.audit._audit as audit_module

    sizes, probe = [], audit_module.probe_bias
    monkeypatch.setattr(audit_module, "probe_bias", lambda *a, **k: sizes.append(k["num_bias"]) or probe(*a, **k))
    parts = {
        n: TensorDataset(*_rows(size, seed))
        for n, size, seed in (("train", 300, 0), ("unbiased_train", 600, 1), ("unbiased_val", 300, 2), ("test", 600, 3))
    }
    splits = user_splits(**parts, bias_names=("sex", "region"))
    report = audit_model(
        Model(), head="fc", test=splits.test, unbiased_train=splits.unbiased_train, unbiased_val=splits.unbiased_val
    )
    sex, region = report.attributes
    assert [len(sex.groups.group_accuracy[0]), len(region.groups.group_accuracy[0])] == [2, 5]
    assert not np.isnan(np.array(sex.groups.group_accuracy)).any()  # no empty columns
    assert (sex.num_bias_classes, region.num_bias_classes) == CARDS
    # one privacy head per attribute, with as many outputs as it has values (MI normalised by log 2 and log 5)
    assert sizes == list(CARDS)
    assert sex.bias_extractability > 0.9 and region.bias_extractability > 0.9  # chance: 0.5 and 0.2
    md = to_markdown(report)
    assert "| y \\ b | 0 | 1 |\n" in md and "| y \\ b | 0 | 1 | 2 | 3 | 4 |\n" in md
    assert "chance 50.00" in md and "chance 20.00" in md


def test_a_tensors_file_with_two_attributes_keeps_both_counts(tmp_path):
    x, y, b = _rows(1200, 0)
    path = save_tensor_file(tmp_path / "rows.safetensors", x=x, y=y, b=b, bias_names=("sex", "region"))
    splits = make_splits(f"tensors:{path}", seed=0)
    assert all(d.bias_cardinalities == CARDS for _, d in splits.items())
    assert splits.bias_cardinalities == CARDS
    counts = splits.test.summary()["group_counts"]
    assert [len(counts[f"attribute{a}"][0]) for a in range(2)] == [2, 5]
