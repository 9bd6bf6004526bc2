"""Bias recipes and splits: exact rho, palettes, corruptions, determinism, disjoint splits, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from debiaskit.data import SOURCES, BiasDataset, dataset_names, make_splits, splits_from_spec
from debiaskit.data._corrupted import CORRUPTION_NAMES, draw_corrupted  # internals: tested through their modules
from debiaskit.data._recipes import (
    BIASED_MNIST_PALETTE,
    COLORED_MNIST_MEANS,
    MULTICOLOR_RIGHT_PALETTE,
    assign_by_rho,
    get_recipe,
)
from debiaskit.data._sources import ImageArrays, ImageSource
from debiaskit.errors import ConfigError, DataError

# --- bias assignment ------------------------------------------------------------------------------


@pytest.mark.parametrize("rho", [0.9, 0.95, 0.99, 0.997])
def test_realised_rho_per_class_is_int_n_rho(rho):
    sizes = [1000, 731, 58, 999, 10, 123, 5000, 77, 640, 301]
    y = np.concatenate([np.full(n, k) for k, n in enumerate(sizes)])
    b = assign_by_rho(y, rho=rho, num_bias=10, rng=np.random.default_rng(0))
    for k, n in enumerate(sizes):
        assert int((b[y == k] == k).sum()) == int(n * rho), (k, n)


def test_conflicting_samples_spread_evenly_over_other_values():
    y = np.repeat(np.arange(10), 1000)
    b = assign_by_rho(y, rho=0.91, num_bias=10, rng=np.random.default_rng(1))
    for k in range(10):
        counts = np.bincount(b[y == k], minlength=10)
        assert counts[k] == 910
        assert all(counts[(k + j) % 10] == 10 for j in range(1, 10))  # 90 conflicting / 9 values
    # uneven remainder: chunks of ceil(rest / 9) over (k+1 .. k+9) mod 10, in that order
    y = np.full(1000, 3)
    b = assign_by_rho(y, rho=0.95, num_bias=10, rng=np.random.default_rng(2))
    rest, chunk = 50, math.ceil(50 / 9)
    expected = [min(chunk, max(0, rest - j * chunk)) for j in range(9)]
    assert [int((b == (3 + 1 + j) % 10).sum()) for j in range(9)] == expected


def test_uniform_rho_gives_uniform_bias():
    y = np.repeat(np.arange(10), 900)
    b = assign_by_rho(y, rho=0.1, num_bias=10, rng=np.random.default_rng(0))
    joint = np.zeros((10, 10), dtype=int)
    np.add.at(joint, (y, b), 1)
    assert (joint == 90).all()


# --- renderers ------------------------------------------------------------------------------------


def _digits(n, size=28):
    """A centred white square on black: known foreground and background pixels."""
    d = torch.zeros(n, size, size, dtype=torch.uint8)
    d[:, 10:18, 10:18] = 200
    return d


def test_biased_palette_is_in_the_background():
    recipe = get_recipe("biased")
    img = recipe.render(_digits(10), torch.arange(10), seed=0)
    assert img.shape == (10, 3, 28, 28) and img.dtype == torch.uint8
    for k in range(10):
        assert img[k, :, 0, 0].tolist() == list(BIASED_MNIST_PALETTE[k])
        assert (img[k, :, :10] == torch.tensor(BIASED_MNIST_PALETTE[k])[:, None, None]).all()
        assert (img[k, :, 10:18, 10:18] == 255).all()  # binarised digit in white
    # Bahng et al.'s palette has 225 (not 255) in entries 3 and 4
    assert img[3, :, 0, 0].tolist() == [225, 225, 0] and img[4, :, 0, 0].tolist() == [225, 0, 225]


def test_colored_foreground_means_within_noise():
    recipe = get_recipe("colored")
    n = 200
    b = torch.arange(10).repeat_interleave(n)
    digits = torch.full((10 * n, 4, 4), 255, dtype=torch.uint8)
    img = recipe.render(digits, b, seed=0).float() / 255
    colour = img[:, :, 0, 0]
    assert (img == colour[:, :, None, None]).all()  # one colour per image
    for k in range(10):
        mean = colour[b == k].mean(0)
        assert (mean - torch.tensor(COLORED_MNIST_MEANS[k])).abs().max() < 0.004, k
    # per-image noise is tiny (sigma 0.005 at severity 4) but present
    dev = colour - torch.tensor(COLORED_MNIST_MEANS)[b]
    assert dev.abs().max() < 5 * 0.005 + 1 / 255 and dev.std() > 0.002
    assert (recipe.render(torch.zeros(3, 4, 4, dtype=torch.uint8), torch.arange(3), seed=0) == 0).all()


def test_multicolor_left_and_right_halves():
    recipe = get_recipe("multicolor")
    b = torch.tensor([[0, 9], [3, 4], [7, 1]])
    img = recipe.render(_digits(3), b, seed=0)
    for i, (bl, br) in enumerate(b.tolist()):
        assert (img[i, :, :, :10] == torch.tensor(BIASED_MNIST_PALETTE[bl])[:, None, None]).all()
        assert (img[i, :, :, 18:] == torch.tensor(MULTICOLOR_RIGHT_PALETTE[br])[:, None, None]).all()
        assert img[i, :, 0, 13].tolist() == list(BIASED_MNIST_PALETTE[bl])
        assert img[i, :, 0, 14].tolist() == list(MULTICOLOR_RIGHT_PALETTE[br])


def _textured(n=8, size=28, seed=0):
    g = torch.Generator().manual_seed(seed)
    d = (torch.rand(n, size, size, generator=g) * 120).to(torch.uint8)
    d[:, 6:22, 8:20] = 230
    return d


def test_corruption_families_are_distinct_and_visible():
    assert len(CORRUPTION_NAMES) == 10 and len(set(CORRUPTION_NAMES)) == 10
    digits = _textured()
    clean = digits[:, None].expand(-1, 3, -1, -1).float()
    outs = [draw_corrupted(digits, torch.full((8,), k), torch.Generator().manual_seed(0)).float() for k in range(10)]
    for k, out in enumerate(outs):
        assert out.shape == (8, 3, 28, 28)
        assert (out - clean).abs().mean() > 8, CORRUPTION_NAMES[k]  # visibly changed (of 255)
    for i in range(10):
        for j in range(i + 1, 10):
            assert (outs[i] - outs[j]).abs().mean() > 4, (CORRUPTION_NAMES[i], CORRUPTION_NAMES[j])


def test_corruption_accepts_colour_layouts():
    g = torch.Generator().manual_seed(3)
    chw = (torch.rand(6, 3, 32, 32, generator=g) * 255).to(torch.uint8)
    hwc = chw.permute(0, 2, 3, 1).contiguous()
    b = torch.arange(6)
    a = draw_corrupted(chw, b, torch.Generator().manual_seed(0))
    c = draw_corrupted(hwc, b, torch.Generator().manual_seed(0))
    assert a.shape == (6, 3, 32, 32) and torch.equal(a, c)
    # brightness (family 6) keeps colour: 0.6 x + 0.4 per channel
    bright = draw_corrupted(chw[:1], torch.tensor([6]), torch.Generator()).float()
    assert (bright - ((chw[:1].float() / 255 * 0.6 + 0.4) * 255).round()).abs().max() <= 1
    with pytest.raises(DataError, match="images must be"):
        draw_corrupted(torch.zeros(2, 5, 8, 8, dtype=torch.uint8), torch.zeros(2), torch.Generator())


def test_corruption_chunking_does_not_change_deterministic_families():
    digits = _textured(n=10)
    b = torch.tensor([3, 4, 5, 6, 7] * 2)  # blur, motion blur, contrast, brightness, pixelate: no noise
    a = draw_corrupted(digits, b, torch.Generator().manual_seed(0), chunk=3)
    c = draw_corrupted(digits, b, torch.Generator().manual_seed(9), chunk=100)
    assert torch.equal(a, c)


def test_texture_contrast_weighs_stripes_against_the_item_in_every_split():
    recipe = get_recipe("texture")
    digits, b = _textured(n=6), torch.arange(6)
    half = recipe.render(digits, b, seed=0)  # default 0.5: (item + 255 * stripes) / 2
    stripes = ((2 * half.float()[:, 0] - digits.float()) / 255).round()
    assert set(stripes.unique().tolist()) == {0.0, 1.0}
    assert (half.float()[:, 0] - (digits.float() + 255 * stripes) / 2).abs().max() <= 0.5
    strong = recipe.render(digits, b, seed=0, params={"contrast": 0.9})
    assert (strong.float()[:, 0] - (0.1 * digits.float() + 229.5 * stripes)).abs().max() <= 0.5
    # the unbiased splits get uniform bias but keep the image's contrast
    splits = make_splits("texture-toy", params={"rho": 0.99, "contrast": 0.9}, seed=0, unbiased_size=300, test_size=100)
    assert splits.spec["params"] == {"rho": 0.99, "contrast": 0.9}
    for split in (splits.train, splits.unbiased_val, splits.test):
        assert split.info["params"]["contrast"] == 0.9
        assert split.images.float().std() > 100  # mostly stripes (0 / 229.5 + 10 % of the item)
    assert splits.test.info["params"]["rho"] == pytest.approx(0.1)
    with pytest.raises(ConfigError, match=r"contrast is .*, expected a number in \[0, 1\].*weight of the stripes"):
        make_splits("texture-toy", params={"contrast": 1.5}, seed=0, unbiased_size=300)


# --- splits ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["corrupted-toy", "biased-toy", "multicolor-toy"])
def test_same_seed_same_tensors_other_seed_differs(name):
    a = make_splits(name, seed=3, unbiased_size=300, test_size=100)
    b = make_splits(name, seed=3, unbiased_size=300, test_size=100)
    c = make_splits(name, seed=4, unbiased_size=300, test_size=100)
    for split in ("train", "unbiased_val", "test"):
        assert torch.equal(getattr(a, split).images, getattr(b, split).images)
        assert torch.equal(getattr(a, split).b, getattr(b, split).b)
    assert not torch.equal(a.train.images, c.train.images) and not torch.equal(a.train.b, c.train.b)
    assert not torch.equal(a.unbiased_val.images, c.unbiased_val.images)
    rebuilt = splits_from_spec(a.spec)
    assert torch.equal(rebuilt.test.images, a.test.images) and torch.equal(rebuilt.train.y, a.train.y)


def test_corrupted_counterfactual_rerender():
    s = make_splits("corrupted-toy", params={"rho": 0.95}, seed=0, unbiased_size=300, test_size=200)
    test = s.test
    idx = torch.arange(40)
    new_b = (test.b[idx] + 1) % 10
    assert torch.equal(test.counterfactual(idx, new_b), test.counterfactual(idx, new_b))  # reproducible
    # with the sample's own family, noise-free families re-render to the very same image
    det = torch.nonzero(torch.isin(test.b, torch.tensor([3, 4, 5, 6, 7]))).flatten()
    assert len(det) > 10
    assert torch.equal(test.counterfactual(det, test.b[det]), test.x[det])


def test_corrupted_realised_rho_per_class():
    s = make_splits("corrupted-toy", params={"rho": 0.95}, seed=0, unbiased_size=600)
    for k in range(10):
        mask = s.train.y == k
        assert int(s.train.aligned[mask].sum()) == int(int(mask.sum()) * 0.95)
    assert s.train.num_bias_classes == 10 and s.train.mean == 0.5 and s.train.std == 0.5


def test_biased_split_realised_rho_and_unbiased_parts(toy_splits):
    train = toy_splits.train
    for k in range(10):
        mask = train.y == k
        assert int(train.aligned[mask].sum()) == int(int(mask.sum()) * 0.95)
    for split in ("unbiased_train", "unbiased_val", "unbiased_test", "test"):
        ds = getattr(toy_splits, split)
        # rho = 1/N_B with each class rounded down: exactly sum_k int(n_k / 10) aligned samples,
        # i.e. ~1/N_B, a bit below it for small splits (120 samples: 12 per class -> 1 aligned)
        n_k = torch.bincount(ds.y, minlength=10)
        assert int(ds.aligned.sum()) == sum(int(n * 0.1) for n in n_k.tolist()), split
        assert 0.04 <= ds.summary()["realised_rho"] <= 0.1 + 1e-6, split
        hist = torch.bincount(ds.b, minlength=10).float() / len(ds)
        assert hist.max() - hist.min() < 0.06, split
    assert [len(getattr(toy_splits, s)) for s in ("unbiased_train", "unbiased_val", "unbiased_test")] == [360, 120, 120]


def _coded_source(n_train=400, n_test=100):
    """Each image writes its own index in binary into row 0 (bit j -> pixel (0, j) on), and test images
    also light pixel (0, 20). The biased recipe keeps the foreground mask exactly (pixels > 0 become
    white, no palette colour is white), so the index of every rendered sample can be read back."""

    def make(**_):
        def draw(n, flag):
            img = np.zeros((n, 28, 28), dtype=np.uint8)
            img[:, 10:18, 10:18] = 200
            for i in range(n):
                for j in range(16):
                    if (i >> j) & 1:
                        img[i, 0, j] = 255
                img[i, 0, 20] = 255 if flag else 0
            return img, (np.arange(n) % 10).astype(np.uint8)

        tr, te = draw(n_train, False), draw(n_test, True)
        return ImageArrays(tr[0], tr[1], te[0], te[1], origin="coded")

    return ImageSource(
        name="coded", description="index-coded", num_classes=10, class_names=tuple(map(str, range(10))), synthetic=make
    )


def _decode(ds: BiasDataset) -> tuple[np.ndarray, np.ndarray]:
    white = (ds.images == 255).all(1)
    bits = white[:, 0, :16].long()
    index = (bits * (2 ** torch.arange(16))).sum(1)
    return index.numpy(), white[:, 0, 20].numpy()


def test_splits_are_disjoint_and_cover_the_training_digits(monkeypatch):
    monkeypatch.setitem(SOURCES, "coded", _coded_source())
    s = make_splits("biased-coded", params={"rho": 0.9}, seed=5, unbiased_size=100)
    found = {}
    for name, ds in s.items():
        index, is_test = _decode(ds)
        assert (ds.y.numpy() == index % 10).all()  # the label travelled with its image
        assert is_test.all() == (name == "test") and is_test.any() == (name == "test")
        found[name] = set(index.tolist())
        assert len(found[name]) == len(ds)  # no duplicates inside a split
    train_parts = ["train", "unbiased_train", "unbiased_val", "unbiased_test"]
    for i, a in enumerate(train_parts):
        for b in train_parts[i + 1 :]:
            assert not found[a] & found[b], (a, b)
    assert set().union(*(found[p] for p in train_parts)) == set(range(400))
    assert [len(found[p]) for p in train_parts] == [300, 60, 20, 20] and found["test"] == set(range(100))
    # train_size keeps a prefix of the same held-out complement: still disjoint from D^u
    small = make_splits("biased-coded", params={"rho": 0.9}, seed=5, unbiased_size=100, train_size=50)
    assert set(_decode(small.train)[0].tolist()) <= found["train"] and len(small.train) == 50


@pytest.mark.parametrize(
    "params, match",
    [
        ({"rho": 1.5}, r"rho is .*, expected a number in \[0, 1\]"),
        ({"rho": -0.1}, r"rho is .*, expected a number in \[0, 1\]"),
        ({"rho": float("nan")}, r"rho is .*, expected a number in \[0, 1\]"),
        ({"rhoo": 0.9}, r"no parameter\(s\) \['rhoo'\]; it takes: rho"),
    ],
)
def test_bad_params(params, match):
    with pytest.raises(ConfigError, match=match):
        make_splits("corrupted-toy", params=params, seed=0, unbiased_size=600)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"train_size": 0}, r"train_size must lie in \(0, 1400\]"),
        ({"train_size": 5000}, r"train_size must lie in \(0, 1400\]"),
        ({"unbiased_size": 0}, r"unbiased_size must lie in \(0, 2000\)"),
        ({"unbiased_size": 2000}, r"unbiased_size must lie in \(0, 2000\)"),
        ({"test_size": 0}, r"test_size must lie in \(0, 500\]"),
        ({"unbiased_fractions": (0.5, 0.5, 0.0)}, "three positive shares"),
    ],
)
def test_bad_sizes(kwargs, match):
    kwargs = {"unbiased_size": 600, **kwargs}
    with pytest.raises(ConfigError, match=match):
        make_splits("biased-toy", seed=0, **kwargs)


def test_empty_dataset_is_a_data_error():
    with pytest.raises(DataError, match="empty"):
        BiasDataset(
            images=torch.zeros(0, 3, 4, 4, dtype=torch.uint8),
            y=torch.zeros(0, dtype=torch.long),
            b=torch.zeros(0, dtype=torch.long),
            num_classes=2,
            num_bias_classes=2,
        )


def test_unknown_dataset_lists_names():
    with pytest.raises(ConfigError, match="unknown dataset 'biased-svhn'.*corrupted-mnist"):
        make_splits("biased-svhn")
    assert {"corrupted-mnist", "corrupted-fashion-mnist", "corrupted-toy"} <= set(dataset_names())


def test_bias_dataset_takes_float_inputs_of_any_shape():
    """Tabular rows and feature vectors are inputs too: float data is normalised as (x - mean) / std."""
    from debiaskit.data import iterate_batches

    x = torch.randn(12, 7)
    d = BiasDataset(
        images=x, y=torch.arange(12) % 3, b=torch.arange(12) % 2, num_classes=3, num_bias_classes=2, mean=0.5, std=2.0
    )
    batch = next(iter(iterate_batches(d, batch_size=5)))
    assert batch.x.shape == (5, 7) and d.input_shape == (7,)
    assert torch.allclose(batch.x, (x[:5] - 0.5) / 2.0)
    with pytest.raises(DataError, match="uint8 or floating-point"):
        BiasDataset(
            images=torch.arange(12).view(12, 1), y=torch.arange(12) % 3, b=None, num_classes=3, num_bias_classes=2
        )
