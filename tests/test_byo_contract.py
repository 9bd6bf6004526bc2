"""The data contract: any map-style (x, y, b) dataset goes through fit, audit, FFW, discover and the methods."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

from debiaskit.audit import audit_model
from debiaskit.data import BiasDataset, LazyBiasDataset, as_bias_data, as_bias_datasets, iterate_batches, user_splits
from debiaskit.discover import discover_pseudo_bias, with_pseudo_bias
from debiaskit.errors import DataError
from debiaskit.ffw import find_fantastic_weights
from debiaskit.methods import build_method
from debiaskit.train import TrainConfig, fit

sys.path.insert(0, str(Path(__file__).parent))
import user_models  # noqa: E402

# no_harm=False: the data contract on untrained models (the guard, tested in test_ffw_no_harm.py, would refuse them)
FFW_FAST = dict(max_levels=1, max_epochs_per_level=1, head_pretrain_epochs=1, batch_size=128, no_harm=False)


def _tensors(split) -> TensorDataset:
    """A debiaskit split as plain float (x, y, b) tensors: what a user holds."""
    return TensorDataset(split.x.clone(), split.y.clone().int(), split.b.clone())


class CountingDataset(Dataset):
    """A lazy user dataset: counts the items it loads; labels as attributes (so no pass is needed for them)."""

    def __init__(self, x, y, b, *, with_label_attributes=True):
        self._x, self._y, self._b = x, y, b
        self.loads = 0
        if with_label_attributes:
            self.y, self.b = y, b

    def __len__(self):
        return len(self._y)

    def __getitem__(self, i):
        self.loads += 1
        return self._x[i], int(self._y[i]), self._b[i]


@pytest.fixture(scope="module")
def user_data(toy_splits):
    return {name: _tensors(split) for name, split in toy_splits.items()}


@pytest.fixture(scope="module")
def user_model(user_data):
    torch.manual_seed(0)
    model = user_models.residual_cnn(num_classes=10, in_channels=3, width=8)
    fit(model, user_data["train"], config=TrainConfig(epochs=1, seed=0, batch_size=128), progress=False)
    return model.eval()


def test_tensor_dataset_is_the_fast_path_with_inferred_metadata(user_data):
    data = as_bias_data(user_data["test"])
    assert isinstance(data, BiasDataset)
    assert data.images is user_data["test"].tensors[0]  # no copy of the inputs
    assert (data.num_classes, data.num_bias_classes, data.bias_names) == (10, 10, ("bias",))
    assert data.y.dtype == torch.int64


def test_metadata_is_common_over_splits_and_can_be_passed():
    x = torch.randn(20, 4)
    a = TensorDataset(x, torch.tensor([0, 1] * 10), torch.tensor([0, 1] * 10))
    c = TensorDataset(x, torch.tensor([0, 2] * 10), torch.tensor([0, 3] * 10))
    da, dc = as_bias_datasets(a, c)
    assert da.num_classes == dc.num_classes == 3 and da.num_bias_classes == dc.num_bias_classes == 4
    assert as_bias_data(a, num_classes=5, bias_names=["colour"]).num_classes == 5
    assert as_bias_data(a, bias_names=["colour"]).bias_names == ("colour",)


def test_lazy_dataset_reads_label_attributes_without_loading_samples(user_data):
    x, y, b = user_data["test"].tensors
    src = CountingDataset(x, y, b)
    data = as_bias_data(src)
    assert isinstance(data, LazyBiasDataset)
    assert data.num_classes == 10 and data.num_bias_classes == 10 and src.loads == 0
    sub = data.subset(torch.arange(0, 50))
    assert len(sub) == 50 and src.loads == 0 and torch.equal(sub.y, y[:50].long())
    batch = next(iter(iterate_batches(sub, batch_size=16)))
    assert batch.x.shape == (16, *x.shape[1:]) and src.loads == 16


def test_lazy_dataset_without_label_attributes_is_read_once(user_data):
    x, y, b = user_data["unbiased_val"].tensors
    src = CountingDataset(x, y, b, with_label_attributes=False)
    data = as_bias_data(src)
    assert data.num_classes == 10
    loads = src.loads
    assert loads <= len(y) + 1  # one pass (+ the first item, checked for a clear error message)
    assert data.num_bias_classes == 10 and torch.equal(data.b, b) and src.loads == loads  # remembered


def test_items_without_bias_labels_and_several_attributes():
    x = torch.randn(30, 6)
    data = as_bias_data(TensorDataset(x, torch.arange(30) % 3))
    assert data.b is None and data.num_classes == 3
    multi = as_bias_data(
        TensorDataset(x, torch.arange(30) % 3, torch.stack([torch.arange(30) % 2, torch.arange(30) % 4], 1))
    )
    assert multi.bias_names == ("bias0", "bias1") and multi.num_bias_classes == 4
    assert torch.equal(multi.bias(1), torch.arange(30) % 4)


@pytest.mark.parametrize(
    "items, message",
    [
        (lambda i: torch.zeros(3), r"must be \(x, y, b\) or \(x, y\) tuples"),
        (lambda i: ([1, 2, 3], 0, 1), "x must be a tensor"),
        (lambda i: (torch.zeros(3), 0.5, 1), "integer class indices"),
    ],
)
def test_bad_items_are_clear_errors(items, message):
    class Bad(Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return items(i)

    with pytest.raises(DataError, match=message):
        _ = as_bias_data(Bad()).num_classes


def test_float_labels_are_refused_with_the_name_of_what_is_wrong():
    with pytest.raises(DataError, match="targets y must be integer"):
        as_bias_data(TensorDataset(torch.randn(4, 2), torch.tensor([0.0, 1, 0, 1]), torch.tensor([0, 1, 0, 1])))


def test_audit_of_a_user_model_on_tensor_datasets(user_model, user_data):
    report = audit_model(
        user_model,
        head="classifier",
        test=user_data["test"],
        unbiased_train=user_data["unbiased_train"],
        unbiased_val=user_data["unbiased_val"],
        probe_kwargs={"max_epochs": 5},
    )
    att = report.attributes[0]
    assert report.num_samples == len(user_data["test"])
    assert len(att.groups.group_accuracy) == 10 and 0 <= att.bias_extractability <= 1
    assert att.groups.aligned_accuracy is None  # plain tensors do not say which samples are aligned
    assert att.counterfactual_bias is None  # nor how to re-render them


def test_user_splits_infer_which_samples_are_aligned(user_data, toy_splits):
    splits = user_splits(
        train=user_data["train"],
        unbiased_train=user_data["unbiased_train"],
        unbiased_val=user_data["unbiased_val"],
        test=user_data["test"],
    )
    assert splits.spec["bias_pairing"] == list(range(10))  # the toy recipe pairs bias k with digit k
    assert torch.equal(splits.test.aligned, toy_splits.test.aligned)
    assert splits.unbiased_test is None and [n for n, _ in splits.items()] == [
        "train",
        "unbiased_train",
        "unbiased_val",
        "test",
    ]


def test_ffw_on_a_lazy_user_dataset(user_model, user_data):
    x, y, b = user_data["unbiased_train"].tensors
    xv, yv, bv = user_data["unbiased_val"].tensors
    result = find_fantastic_weights(
        user_model,
        head="classifier",
        train=CountingDataset(x, y, b),
        val=CountingDataset(xv, yv, bv, with_label_attributes=False),
        mode="unstructured",
        **FFW_FAST,
    )
    # the default linear eraser sits in front of the user's head: the bottleneck is the input of classifier.head
    assert result.head == "classifier.head" and result.eraser.head == "classifier" and len(result.history) >= 2
    assert set(result.masks) and all(m.dtype == torch.uint8 for m in result.masks.values())


def test_ffw_without_bias_labels_names_what_is_missing(user_model, user_data):
    x, y, _ = user_data["unbiased_train"].tensors
    with pytest.raises(DataError, match="FFW needs bias labels"):
        find_fantastic_weights(
            user_model, head="classifier", train=TensorDataset(x, y), val=TensorDataset(x, y), **FFW_FAST
        )


def test_discover_and_pseudo_labels_on_lazy_data(user_model, user_data):
    x, y, b = user_data["train"].tensors
    data = CountingDataset(x, y, b)
    found = discover_pseudo_bias(user_model, train=data, head="classifier", layer="bottleneck")
    relabelled = with_pseudo_bias(data, found["train"].pseudo_bias)
    assert isinstance(relabelled, LazyBiasDataset) and torch.equal(relabelled.b, found["train"].pseudo_bias)
    assert torch.equal(relabelled[3][2], found["train"].pseudo_bias[3])
    assert relabelled.info["pseudo_bias"] is True


def test_label_free_method_fits_on_x_y_items(user_data):
    x, y, _ = user_data["train"].tensors
    torch.manual_seed(0)
    model = user_models.residual_cnn(num_classes=10, in_channels=3, width=8)
    method, _ = build_method("calm", dataset="biased-toy", warmup_epochs=1, collect_epochs=1, ramp_epochs=1)
    result = fit(
        model,
        TensorDataset(x, y),
        method=method,
        config=TrainConfig(epochs=2, seed=0, batch_size=128),
        head="classifier",
        progress=False,
    )
    assert len(result.history) == 2 and all(torch.isfinite(p).all() for p in result.model.parameters())


def test_structured_ffw_on_a_plain_user_network_with_a_nested_head(user_data):
    model = user_models.sequential_cnn(num_classes=10, in_channels=3).eval()
    result = find_fantastic_weights(
        model,
        head="head.fc",
        train=user_data["unbiased_train"],
        val=user_data["unbiased_val"],
        mode="structured",
        **FFW_FAST,
    )
    x = user_data["test"].tensors[0][:8]
    assert result.model(x).shape == (8, 10)
    assert result.sparsity["parameters_after"] <= result.sparsity["parameters_before"]


def test_structured_ffw_on_the_user_residual_cnn(user_model, user_data):
    result = find_fantastic_weights(
        user_model,
        head="classifier",
        train=user_data["unbiased_train"],
        val=user_data["unbiased_val"],
        mode="structured",
        erase="none",
        refit_head=False,
        tune_epochs=0,
        **FFW_FAST,
    )
    x = user_data["test"].tensors[0][:8]
    result.gated.state.hard = True
    assert torch.allclose(result.model(x), result.gated.model(x), atol=1e-5)


def test_build_method_says_which_defaults_it_uses_on_an_unknown_family():
    from debiaskit.methods import DefaultsWarning

    with pytest.warns(DefaultsWarning, match="no defaults for dataset family 'my'.*generic '\\*' defaults"):
        method, config = build_method("calm", dataset="my-data")
    assert "warmup_epochs=" in method.defaults_note
    with pytest.warns(DefaultsWarning, match="family 'tensors'"):
        build_method("lff", dataset="tensors:/data/x.npz")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        method, _ = build_method("lff", dataset="colored-mnist")  # our own datasets: no note
    assert getattr(method, "defaults_note", None) is None


def test_discover_scans_the_blocks_of_a_model_with_functional_activations():
    from debiaskit.discover import candidate_layers

    model = user_models.residual_cnn(num_classes=10, in_channels=3, width=4)
    assert candidate_layers(model, head="classifier") == ["block1", "block2", "block3", "bottleneck"]
