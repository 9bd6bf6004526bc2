"""Biased benchmark data: image sources, bias recipes and splits.

Example::

    from debiaskit import data
    splits = data.make_splits("biased-mnist", params={"rho": 0.99}, seed=0)
    x, y, b = splits.test[0]

Your own data: any map-style dataset of ``(x, y, b)`` items (see :class:`BiasData`)::

    splits = data.user_splits(train=TensorDataset(x, y, b), unbiased_train=..., unbiased_val=..., test=...)

A named dataset is a bias recipe of ``RECIPES`` over an image source of ``SOURCES`` (``biased-mnist``: recipe
``biased``, source ``mnist``), or one of ``DATASETS``, those that registered themselves (``register_dataset``)::

    sorted(data.RECIPES), sorted(data.SOURCES)   # ["biased", "colored", ...], ["cifar10", "fashion-mnist", ...]
    sorted(data.DATASETS)                        # ["adult", "celeba"]
"""

from . import _adult, _celeba, _cifar, _compas, _corrupted  # noqa: F401 - they register their datasets and image sources
from ._dataset import Batch, BiasDataset, bias_strength, cramers_v, group_counts, is_attribute_bias, iterate_batches
from ._folders import DATA_CACHE
from ._recipes import RECIPES, register_recipe
from ._registry import (
    DATASETS,
    Splits,
    dataset_names,
    describe,
    make_splits,
    param_names,
    parse_name,
    register_dataset,
    splits_from_spec,
    text_params,
)
from ._sources import SOURCES, get_source
from ._user import BiasData, LazyBiasDataset, as_bias_data, as_bias_datasets, bias_pairing, relabel_bias, user_splits
from ._user_files import is_user_dataset, save_tensor_file

# The public data API; file formats, image sources and recipes are internals (their private modules).
__all__ = [
    "make_splits",
    "splits_from_spec",
    "user_splits",
    "Splits",
    "BiasDataset",
    "BiasData",
    "LazyBiasDataset",
    "Batch",
    "iterate_batches",
    "as_bias_data",
    "as_bias_datasets",
    "relabel_bias",
    "group_counts",
    "bias_pairing",
    "save_tensor_file",
    "register_dataset",
    "register_recipe",
    "DATASETS",
    "RECIPES",
    "SOURCES",
    "get_source",
    "bias_strength",
    "cramers_v",
]
# Names imported here but not in __all__ are internal: for debiaskit's other packages and its CLI (importable,
# undocumented, may change). tests/test_public_api.py holds the reviewed lists of both.
