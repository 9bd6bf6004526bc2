"""The registry entry is the one description of a method: flags, selection rule, budgets, extra epochs."""

from __future__ import annotations

import pytest

from debiaskit.errors import ConfigError
from debiaskit.methods import METHODS, SELECTION_RULES, MethodInfo, build_method, get_method
from debiaskit.train import TrainingMethod


def test_every_entry_has_a_known_selection_rule_in_words():
    for name, info in METHODS.items():
        assert info.selection in SELECTION_RULES and info.selection_rule, name


def test_selection_must_be_a_rule_key_and_own_rules_are_described():
    with pytest.raises(ConfigError, match="selection must be one of"):
        MethodInfo(name="x", description="", factory=TrainingMethod, selection="ffw")
    with pytest.raises(ConfigError, match="selection_text"):
        MethodInfo(name="x", description="", factory=TrainingMethod, selection="own")
    with pytest.raises(ConfigError, match="unknown protocol"):
        MethodInfo(name="x", description="", factory=TrainingMethod, budgets={"fast": {}})


def test_name_and_flags_are_declared_once_in_the_registry():
    for name, info in METHODS.items():
        if (
            isinstance(info.factory, type) and info.factory is not TrainingMethod
        ):  # the base class defines them from info
            method, _ = build_method(name, dataset="biased-toy")
            assert (method.name, method.uses_bias_labels) == (name, info.uses_bias_labels)
            assert not {"name", "uses_bias_labels"} & set(vars(type(method))), f"{name} re-declares its flags"


def test_budgets_and_extra_epochs_come_from_the_entry():
    assert get_method("dcwp").budget("full")["mask_iters"] > get_method("dcwp").budget("default")["mask_iters"]
    assert get_method("lff").budget("full") == {}
    assert get_method("vcba").epochs_before_model({"stage1_epochs": 3}) == 3
    assert get_method("jtt").epochs_before_model({}) == 0
    with pytest.raises(ConfigError, match="unknown protocol"):
        get_method("lff").budget("paper")
