"""Named biased datasets = recipe x image source, and their splits (D^b, D^u train/val/test, test)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._validate import SEED, require
from ..errors import ConfigError, DataError
from ._cifar import CIFAR10
from ._dataset import BiasDataset, Splits  # noqa: F401 - Splits: also imported from here by the dataset modules
from ._recipes import RECIPES, Recipe, get_recipe
from ._sources import SOURCES, ImageSource, get_source
from ._user_files import (
    describe_user_dataset,
    is_user_dataset,
    make_user_splits,
    user_param_names,
    user_splits_from_spec,
    user_text_params,
)

SOURCES.setdefault(CIFAR10.name, CIFAR10)  # colour source: only recipes with color_input combine with it

SPLIT_DOCS = {
    "train": "D^b: biased training set, official training digits not held out, bias at rho",
    "unbiased_train": "D^u_train: 60% of the held-out training digits, uniform bias (rho = 1/N_B)",
    "unbiased_val": "D^u_val: 20% of the held-out training digits, uniform bias; all selection happens here",
    "unbiased_test": "D^u_test: 20% of the held-out training digits, uniform bias",
    "test": "unbiased test: official test digits, uniform bias; reported, never used for selection",
}


@dataclass(frozen=True)
class StandaloneDataset:
    """A named dataset that is not recipe x source (CelebA: real attributes in the user's own folder).

    ``make_splits`` takes the keywords of :func:`make_splits` (params, seed, unbiased_size, train_size,
    test_size, unbiased_fractions); ``from_spec`` rebuilds a recorded ``Splits.spec``; ``describe``
    takes ``params``; ``prepare`` takes ``from_folder`` and ``force``. ``text_params`` names the params
    that are strings, not numbers (the CLI's ``--param KEY=VALUE`` keeps them as text); ``param_names`` every
    param it takes (the CLI refuses other names before parsing any value; None: the dataset checks alone).
    """

    name: str
    make_splits: Callable[..., Splits]
    from_spec: Callable[[dict], Splits]
    describe: Callable[..., dict]
    prepare: Callable[..., Path]
    text_params: tuple[str, ...] = ()
    param_names: tuple[str, ...] | None = None


DATASETS: dict[str, StandaloneDataset] = {}


def register_dataset(dataset: StandaloneDataset) -> StandaloneDataset:
    DATASETS[dataset.name] = dataset
    return dataset


def text_params(name: str) -> tuple[str, ...]:
    """Params of dataset ``name`` whose values are text (``root``, ``target`` ... of celeba); () otherwise."""
    if is_user_dataset(name):
        return user_text_params(name)
    return DATASETS[name].text_params if name in DATASETS else ()


def param_names(name: str) -> tuple[str, tuple[str, ...]] | None:
    """(owner, names of the params) of dataset ``name``, for checking names before values are parsed
    (``("dataset adult", ("bias", "holdout"))``); None for a registered dataset that declares none.
    An unknown dataset name is refused here, also before anything is read."""
    if is_user_dataset(name):
        return user_param_names(name)
    if name in DATASETS:
        names = DATASETS[name].param_names
        return None if names is None else (f"dataset {name}", tuple(names))
    recipe, _ = parse_name(name)
    return f"recipe {recipe.name}", tuple(recipe.params)


def compatible(recipe: Recipe, source: ImageSource) -> bool:
    """Grayscale recipes (binarised digit + colour) need a one-channel source."""
    return getattr(source, "channels", 1) == 1 or recipe.color_input


def dataset_names() -> list[str]:
    names = [f"{r}-{s}" for r in RECIPES for s in SOURCES if compatible(RECIPES[r], SOURCES[s])]
    return sorted(names + list(DATASETS))


def parse_name(name: str) -> tuple[Recipe, ImageSource]:
    if name in DATASETS or is_user_dataset(name):
        raise ConfigError(f"dataset {name!r} is not a recipe x image source; use make_splits / describe with it")
    for recipe in sorted(RECIPES, key=len, reverse=True):
        source = name[len(recipe) + 1 :]
        if name.startswith(recipe + "-") and source in SOURCES and compatible(RECIPES[recipe], SOURCES[source]):
            return get_recipe(recipe), get_source(source)
    raise ConfigError(f"unknown dataset {name!r}; available: {', '.join(dataset_names())}")


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), stream])


DEFAULT_UNBIASED_SIZE = 10000


def make_splits(
    name: str,
    *,
    params: dict | None = None,
    seed: int = 0,
    unbiased_size: int | None = None,
    train_size: int | None = None,
    test_size: int | None = None,
    unbiased_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
) -> Splits:
    """Build the splits of dataset ``name`` deterministically from ``seed``.

    ``unbiased_size`` (held-out training samples for D^u): default 10000, or 30% of the training samples of a
    smaller source (600 for the toy digits).

    Example::

        splits = make_splits("biased-mnist", params={"rho": 0.99}, seed=0)
        splits.train.summary()   # {'size': 50000, 'realised_rho': 0.99...}
        splits = make_splits("tensors:my-data.safetensors", seed=0)   # your own file (see data._user_files)
    """
    require("seed", seed, SEED)
    if unbiased_size is None and (is_user_dataset(name) or name in DATASETS):
        unbiased_size = DEFAULT_UNBIASED_SIZE
    if is_user_dataset(name):
        return make_user_splits(
            name, params=params, seed=seed, unbiased_size=unbiased_size, train_size=train_size, test_size=test_size
        )
    if name in DATASETS:
        return DATASETS[name].make_splits(
            params=params,
            seed=seed,
            unbiased_size=unbiased_size,
            train_size=train_size,
            test_size=test_size,
            unbiased_fractions=unbiased_fractions,
        )
    recipe, source = parse_name(name)
    num_bias = source.num_classes
    resolved = recipe.resolve(params, num_bias)
    arrays = source.load()
    n_train = len(arrays.train_labels)
    if unbiased_size is None:
        unbiased_size = min(DEFAULT_UNBIASED_SIZE, int(0.3 * n_train))
    if not 0 < unbiased_size < n_train:
        raise ConfigError(f"unbiased_size must lie in (0, {n_train}) for {source.name}, got {unbiased_size}")
    if len(unbiased_fractions) != 3 or abs(sum(unbiased_fractions) - 1) > 1e-6 or min(unbiased_fractions) <= 0:
        raise ConfigError(f"unbiased_fractions must be three positive shares summing to 1, got {unbiased_fractions}")

    order = _rng(seed, 0).permutation(n_train)
    held, rest = order[:unbiased_size], order[unbiased_size:]
    if train_size is not None:
        if not 0 < train_size <= len(rest):
            raise ConfigError(f"train_size must lie in (0, {len(rest)}], got {train_size}")
        rest = rest[:train_size]
    cut1 = int(round(unbiased_fractions[0] * len(held)))
    cut2 = cut1 + int(round(unbiased_fractions[1] * len(held)))
    test_index = np.arange(len(arrays.test_labels))
    if test_size is not None:
        if not 0 < test_size <= len(test_index):
            raise ConfigError(f"test_size must lie in (0, {len(test_index)}], got {test_size}")
        test_index = _rng(seed, 1).permutation(test_index)[:test_size]

    uniform = recipe.uniform_params(num_bias, resolved)
    parts = {
        "train": (arrays.train_images, arrays.train_labels, np.sort(rest), resolved, 10),
        "unbiased_train": (arrays.train_images, arrays.train_labels, np.sort(held[:cut1]), uniform, 11),
        "unbiased_val": (arrays.train_images, arrays.train_labels, np.sort(held[cut1:cut2]), uniform, 12),
        "unbiased_test": (arrays.train_images, arrays.train_labels, np.sort(held[cut2:]), uniform, 13),
        "test": (arrays.test_images, arrays.test_labels, np.sort(test_index), uniform, 14),
    }
    built = {}
    for split, (images, labels, index, split_params, stream) in parts.items():
        built[split] = _build(
            recipe, source, images[index], labels[index], split_params, seed, stream, name=f"{name}/{split}"
        )
    spec = {
        "dataset": name,
        "params": resolved,
        "seed": seed,
        "unbiased_size": unbiased_size,
        "train_size": train_size,
        "test_size": test_size,
        "unbiased_fractions": list(unbiased_fractions),
    }
    return Splits(**built, spec=spec)


def splits_from_spec(spec: dict[str, Any]) -> Splits:
    """Rebuild splits from the ``spec`` a run recorded."""
    if spec.get("dataset") == "python":
        raise DataError(
            "this run's data was given as Python objects, which a run folder cannot rebuild: pass the "
            "splits again (splits=...), or save them with debiaskit.data.save_tensor_file and train on "
            "tensors:PATH"
        )
    if is_user_dataset(spec["dataset"]):
        return user_splits_from_spec(spec)
    if spec["dataset"] in DATASETS:
        return DATASETS[spec["dataset"]].from_spec(spec)
    kwargs: dict[str, Any] = {k: spec[k] for k in ("seed", "unbiased_size", "train_size", "test_size") if k in spec}
    if "unbiased_fractions" in spec:
        kwargs["unbiased_fractions"] = tuple(spec["unbiased_fractions"])
    return make_splits(spec["dataset"], params=spec.get("params"), **kwargs)


def _build(
    recipe: Recipe,
    source: ImageSource,
    images: np.ndarray,
    labels: np.ndarray,
    params: dict,
    seed: int,
    stream: int,
    *,
    name: str,
) -> BiasDataset:
    y = labels.astype(np.int64)
    num_bias = source.num_classes
    if len(y) == 0:
        raise DataError(f"{name}: the split is empty; use larger sizes")
    if len(np.unique(y)) < 2:
        raise DataError(f"{name}: the split holds a single class ({int(y[0])}); use larger sizes")
    b = recipe.assign(y, params, num_bias, _rng(seed, stream))
    digits = torch.from_numpy(np.ascontiguousarray(images))
    bt = torch.from_numpy(b)
    yt = torch.from_numpy(y)
    rendered = recipe.render(digits, bt, seed=seed * 1000 + stream, params=params)
    aligned = bt == (yt[:, None] if bt.ndim == 2 else yt) % num_bias

    def render(index, new_b):  # counterfactual renderer: same digits, other bias labels
        return recipe.render(digits[index], torch.as_tensor(new_b), seed=seed * 1000 + stream + 500, params=params)

    return BiasDataset(
        images=rendered,
        y=yt,
        b=bt,
        num_classes=source.num_classes,
        num_bias_classes=num_bias,
        name=name,
        bias_names=recipe.bias_names,
        mean=recipe.mean,
        std=recipe.std,
        aligned=aligned,
        render=render,
        info={"recipe": recipe.name, "source": source.name, "params": params},
    )


def describe(name: str, *, params: dict | None = None) -> dict[str, Any]:
    """What a dataset is: recipe, source, parameters, splits, and where its files are.

    ``params`` only matter for datasets in the user's own folder (celeba: ``root``; folder:DIR).
    """
    if is_user_dataset(name):
        return describe_user_dataset(name, params=params)
    if name in DATASETS:
        return DATASETS[name].describe(params=params)
    recipe, source = parse_name(name)
    return {
        "name": name,
        "description": recipe.description.replace("MNIST", source.name)
        if source.name != "mnist"
        else recipe.description,
        "source": source.description,
        "files": str(source.cache_dir()) if source.synthetic is None else "generated in memory",
        "prepared": source.is_prepared(),
        "bias_attributes": list(recipe.bias_names),
        "num_classes": source.num_classes,
        "num_bias_classes": source.num_classes,
        "params": {k: {"default": p.default, "help": p.help} for k, p in recipe.params.items()},
        "normalisation": f"(x/255 - {recipe.mean}) / {recipe.std}",
        "splits": SPLIT_DOCS,
    }
