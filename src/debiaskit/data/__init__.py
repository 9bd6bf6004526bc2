"""Biased benchmark data: image sources, bias recipes and splits.

Example::

    from debiaskit import data
    splits = data.make_splits("biased-mnist", params={"rho": 0.99}, seed=0)
    x, y, b = splits.test[0]

Your own data: any map-style dataset of ``(x, y, b)`` items (see :class:`BiasData`)::

    splits = data.user_splits(train=TensorDataset(x, y, b), unbiased_train=..., unbiased_val=..., test=...)
"""
from ._adult import ADULT, load_adult_tables, make_adult_splits, parse_adult, prepare_adult
from ._celeba import CELEBA, load_celeba, load_celeba_splits, make_celeba_splits, read_celeba_index
from ._cifar import CIFAR10, CifarSource, parse_cifar_binary, read_cifar10, write_cifar_binary
from ._corrupted import CORRUPTION_NAMES, draw_corrupted
from ._dataset import Batch, BiasDataset, check_labels, group_counts, iterate_batches
from ._user_files import (SPLIT_CODES, USER_FORMATS, draw_splits, is_user_dataset, load_image, read_tensor_file,
                          save_tensor_file)
from ._user import (BiasData, LazyBiasDataset, aligned_flags, as_bias_data, as_bias_datasets, bias_pairing,
                    relabel_bias, require_bias_labels, user_splits)
from ._idx import load_idx, parse_idx, write_idx
from ._recipes import RECIPES, Param, Recipe, assign_by_rho, get_recipe, register_recipe
from ._registry import (DATASETS, SPLIT_DOCS, SPLIT_NAMES, Splits, StandaloneDataset, dataset_names, describe,
                        make_splits, parse_name, register_dataset, splits_from_spec, text_params)
from ._sources import SOURCES, ImageArrays, ImageSource, data_root, get_source, toy_digits

__all__ = [
    "ADULT", "load_adult_tables", "make_adult_splits", "parse_adult", "prepare_adult",
    "CELEBA", "DATASETS", "StandaloneDataset", "make_celeba_splits", "read_celeba_index", "register_dataset",
    "text_params",
    "CIFAR10", "CORRUPTION_NAMES", "CifarSource", "draw_corrupted", "load_celeba", "load_celeba_splits",
    "parse_cifar_binary", "read_cifar10", "write_cifar_binary",
    "Batch", "BiasDataset", "ImageArrays", "ImageSource", "Param", "RECIPES", "Recipe", "SOURCES",
    "SPLIT_DOCS", "SPLIT_NAMES", "Splits", "assign_by_rho", "check_labels", "data_root", "dataset_names",
    "describe", "get_recipe", "get_source", "iterate_batches", "load_idx", "make_splits", "parse_idx",
    "parse_name", "register_recipe", "splits_from_spec", "toy_digits", "write_idx",
    "BiasData", "LazyBiasDataset", "aligned_flags", "as_bias_data", "as_bias_datasets", "bias_pairing", "group_counts",
    "relabel_bias", "require_bias_labels", "user_splits",
    "SPLIT_CODES", "USER_FORMATS", "draw_splits", "is_user_dataset", "load_image", "read_tensor_file", "save_tensor_file",
]
