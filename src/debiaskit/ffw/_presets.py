"""Named FFW settings: one definition that ``FFWConfig.from_preset``, ``find_fantastic_weights(preset=...)``,
``ffw_run(preset=...)`` and ``debiaskit ffw --preset`` all read.

A preset is a set of :class:`~debiaskit.ffw.FFWConfig` fields laid over FFWConfig's defaults; whatever the caller
passes explicitly (a keyword argument, a CLI option typed on the command line) wins over the preset.

- ``default``: FFWConfig's defaults unchanged (gates against the probe-free linear readability, then weight tuning,
  the conditional eraser and the head refit, and the same after-gate stages on the ungated network as a second
  candidate, the better on D^u_val kept; docs/design/ffw-defaults.md).
- ``fast``: the default pipeline at less cost (the gates start at tau 1/4, 8 epochs; 3 tuning epochs at Adam 5e-3):
  the whole ``debiaskit ffw`` command within 0.3x the vanilla model's training on Biased MNIST, for a lower D^u_val
  group mean on the development suite than ``default`` (docs/design/ffw-defaults.md, "A cheaper call").
- ``paper``: the paper's algorithm (Nahon et al., ECCV 2024, Alg. 1) as debiaskit implements it: the bias term is
  the MI of a linear privacy head trained alongside the gates (``adversary="head"``); tau starts at 1 and halves
  at each plateau (patience 2) until the tau-model and the hard-masked model agree, with no epoch budget (up to 20
  levels of at most 10 epochs: the FFW benchmark's ``--full`` protocol); the gates alone on the frozen model - no
  weight tuning, no eraser, no head refit, no learnt logit temperature or scale-free bias term (our additions for
  structured mode) - so every exported weight is an input weight or 0.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from ..errors import ConfigError

DEFAULT_PRESET = "default"

_PAPER = {
    "adversary": "head",  # MI of the co-trained linear privacy head (the paper's eq. 7)
    "gamma": 10.0,
    "tau_init": 1.0,
    "tau_decay": 0.5,  # Alg. 1 (the public code uses 0.1)
    "max_epochs": None,  # until agreement: the paper has no epoch budget
    "max_levels": 20,
    "max_epochs_per_level": 10,
    "patience": 2,
    "refine_patience": 0,  # stop at agreement
    "selection": "objective",
    "include_head": False,  # the paper text gates the encoder only
    "learn_temperature": False,
    "scale_free_dependence": False,
    "tune_epochs": 0,  # no weight changed
    "erase": "none",
    "refit_head": False,
    "compare_ungated": False,  # the gated sub-network is the answer, not one candidate of two
}

# the default pipeline at less cost: the whole `debiaskit ffw` command within 0.3x the vanilla model's training on
# Biased MNIST, the best such setting on the development suite (docs/design/ffw-defaults.md, "A cheaper call")
_FAST = {
    "tau_init": 0.25,  # the gates start at tau 1/4: two temperature levels (epochs) fewer to agreement
    "max_epochs": 8,  # one epoch per level from 1/4 to 1/512, as the default's 10 from 1
    "tune_epochs": 3,  # 3 tuning epochs instead of 8 ...
    "tune_lr": 5e-3,  # ... at a higher rate (cosine to 0 over the shorter run)
}

FFW_PRESETS: MappingProxyType[str, MappingProxyType[str, Any]] = MappingProxyType(
    {DEFAULT_PRESET: MappingProxyType({}), "paper": MappingProxyType(_PAPER), "fast": MappingProxyType(_FAST)}
)

# FFWConfig fields the entry points also take as explicit keywords with a default value (find_fantastic_weights'
# mode, gamma, include_head, tau_decay; ffw_run's seed): that default is always passed, so a preset may only set
# them to FFWConfig's own default (checked in tests/test_ffw_presets.py)
SIGNATURE_FIELDS = ("mode", "gamma", "include_head", "tau_decay", "seed")


def preset_settings(name: str) -> dict[str, Any]:
    """The FFWConfig fields of preset ``name`` (a copy); an unknown name is a ConfigError listing the presets."""
    if name not in FFW_PRESETS:
        raise ConfigError(f"unknown FFW preset {name!r}; the presets are: {', '.join(FFW_PRESETS)}")
    return dict(FFW_PRESETS[name])
