"""Method state lives in a state_dict (DomainBed style): sub-modules, buffers, optimisers, diagnostics.

Every registered training method, after two epochs on toy data, round-trips through the checkpoint
encoding (flat tensors + JSON, no pickle) into a freshly set-up instance with nothing lost.
"""

from __future__ import annotations

import math

import pytest
import torch

from debiaskit.data import make_splits
from debiaskit.methods import METHODS, build_method
from debiaskit.models import build_model
from debiaskit.train import TrainConfig, TrainContext, fit, flatten_state, unflatten_state

FAST = {
    "jtt": {"id_epochs": 1, "lambda_up": 3},
    "dcwp": {"erm_epochs": 1, "mask_iters": 3},
    "fmd": {"pool_size": 200, "n_bias_pairs": 100, "n_val": 100, "top_k": 50},
    "vcba": {"stage1_epochs": 1},
    "calm": {"warmup_epochs": 1},
}
# methods whose registry factory is a TrainingMethod class (ffw is post-hoc only: its factory refuses to train)
TRAINABLE = sorted(n for n, info in METHODS.items() if isinstance(info.factory, type))


@pytest.fixture(scope="module")
def splits():
    return make_splits("biased-toy", seed=0, unbiased_size=300, train_size=384, test_size=64)


def _context(model, splits, config):
    return TrainContext(
        model=model,
        train_data=splits.train,
        config=config,
        device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(config.seed),
        num_classes=splits.num_classes,
        head="fc",
    )


def _encoded(state):
    tensors, skeleton = flatten_state(dict(state))
    return tensors, skeleton


@pytest.mark.parametrize("name", TRAINABLE)
def test_state_dict_round_trips_into_a_fresh_method(name, splits):
    config = TrainConfig(epochs=2, batch_size=128, seed=0)
    torch.manual_seed(0)
    model = build_model("mlp", num_classes=10, input_shape=splits.train.input_shape)
    method, _ = build_method(name, dataset="biased-toy", **FAST.get(name, {}))
    fit(model, splits.train, method=method, config=config, head="fc", progress=False)
    tensors, skeleton = _encoded(method.state_dict())
    assert any(".optimizers." in k for k in tensors)  # optimiser moments are state too

    fresh, _ = build_method(name, dataset="biased-toy", **FAST.get(name, {}))
    fresh.setup(_context(build_model("mlp", num_classes=10, input_shape=splits.train.input_shape), splits, config))
    fresh.load_state_dict(unflatten_state(tensors, skeleton))
    again, again_skeleton = _encoded(fresh.state_dict())
    assert again_skeleton == skeleton and again.keys() == tensors.keys()
    assert all(torch.equal(again[k], tensors[k]) for k in tensors)


def test_encoding_keeps_integer_keys_tuples_and_non_finite_floats():
    state = {
        "opt": {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"betas": (0.9, 0.999)}]},
        "best": -math.inf,
        "none": None,
    }
    back = unflatten_state(*flatten_state(state))
    assert back["opt"]["state"][0]["step"] == 3.0 and back["opt"]["param_groups"][0]["betas"] == (0.9, 0.999)
    assert back["best"] == -math.inf and back["none"] is None


def test_a_non_state_attribute_is_a_clear_error():
    from debiaskit.errors import ConfigError

    method, _ = build_method("vanilla", dataset="biased-toy")
    method.helper = object()
    with pytest.raises(ConfigError, match="private attributes"):
        flatten_state(dict(method.state_dict()))
