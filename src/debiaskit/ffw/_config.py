"""FFW's settings (:class:`FFWConfig`, its rules, the selection rules ``SELECTIONS``) and the data it accepts."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .._validate import COUNT, NON_NEGATIVE, OPEN_UNIT_INTERVAL, POSITIVE, POSITIVE_INT, SEED, UNIT_INTERVAL, require
from ..errors import ConfigError, DataError
from ._adversary import (
    ADVERSARIES,
    bias_columns,
)
from ._erase import ERASERS
from ._presets import DEFAULT_PRESET, preset_settings

# every rule first drops the near-chance candidates (a collapsed network: D^u_val accuracy below max(chance,
# majority-class rate) + a margin, ffw/_harm.py): a constant bottleneck makes any bias term 0, so J would prefer it
NEAR_CHANCE_EXCLUDED = (
    "; a candidate whose D^u_val accuracy is near chance (below max(chance, majority-class rate) "
    "+ max(2 points, 2 standard errors)) is never selected"
)
SELECTIONS = {
    "objective": "hard-masked model with the lowest J = CE + gamma * D on D^u_val (D: the search's own adversary) "
    "among those whose D^u_val task accuracy is not below the vanilla model's (among all, the vanilla "
    "model included, when none is)" + NEAR_CHANCE_EXCLUDED,
    "readability": "hard-masked model with the lowest CE + gamma * R on D^u_val (R: closed-form linear readability "
    "of the bias, whatever the adversary)" + NEAR_CHANCE_EXCLUDED,
    "accuracy": "hard-masked model with the highest task accuracy on D^u_val" + NEAR_CHANCE_EXCLUDED,
}


_CONFIG_RULES = {
    "gamma": NON_NEGATIVE,
    "tau_init": POSITIVE,
    "tau_decay": OPEN_UNIT_INTERVAL,
    "max_levels": POSITIVE_INT,
    "min_epochs_per_level": POSITIVE_INT,
    "max_epochs_per_level": POSITIVE_INT,
    "patience": COUNT,
    "plateau_threshold": NON_NEGATIVE,
    "agree_tol": NON_NEGATIVE,
    "batch_size": POSITIVE_INT,
    "gate_lr": POSITIVE,
    "head_lr": POSITIVE,
    "head_momentum": UNIT_INTERVAL,
    "head_weight_decay": NON_NEGATIVE,
    "head_pretrain_epochs": COUNT,
    "head_pretrain_patience": COUNT,
    "tune_epochs": COUNT,
    "tune_gamma": NON_NEGATIVE,
    "tune_lr": POSITIVE,
    "tune_batch_size": POSITIVE_INT,
    "tune_shift": COUNT,
    "seed": SEED,
}


@dataclass
class FFWConfig:
    """Hyper-parameters of :func:`find_fantastic_weights` (paper defaults unless said otherwise; named sets of them:
    ``FFWConfig.from_preset("paper")``, ``FFW_PRESETS`` in ffw/_presets.py).

    gamma: weight of the bias term D (paper: 10). adversary: what D reads (``ADVERSARIES``). Default "lda": the
    closed-form linear readability of b at the bottleneck, within each target class (``condition_on_target``)
    and against the last ``memory`` batches - no probe the gates could fool; chosen on D^u_val over the paper's
    "head" (MI of a linear privacy head trained alongside the gates, which the gates learn to fool) and the other
    adversaries (docs/design/ffw-defaults.md). tau_decay: tau *= tau_decay at each
    plateau (paper 0.5; the public code uses 0.1). patience / plateau_threshold: a level ends when the
    D^u_val objective has not improved by a relative ``plateau_threshold`` for ``patience`` epochs (or after
    the level's epoch cap). max_epochs: the search's epoch budget (None: unbounded); it is spread over the
    levels needed to bring tau from tau_init to tau_final, so a level never takes more than
    max_epochs / planned_levels() epochs and the budget always reaches a near-hard temperature (default: 10
    epochs, 1 per level from tau 1 to 1/512, then ``tune_epochs`` 8 epochs of weight tuning: chosen on D^u_val over
    20 epochs of gates alone at the same cost, docs/design/ffw-defaults.md). refine_patience > 0: after agreement,
    keep the last tau while the hard-masked D^u_val selection score improves (the paper stops at agreement).
    agree_tol: stop when soft and hard model differ by at most this in D^u_val task accuracy and in
    privacy-head accuracy. Privacy head: SGD lr 0.1, momentum 0.9, wd 1e-4 (public code). Gates:
    ``gate_optimizer`` / ``gate_lr`` (our choice). selection: see ``SELECTIONS``.
    learn_temperature / scale_free_dependence (default: on for structured, off for unstructured): a unit gate can
    rescale a whole channel, so J has two shortcuts that remove no bias - an overconfident model's CE falls when
    every logit shrinks, and the bias term falls when the features it reads shrink; the hard mask turns such a
    shrink into removal (a user residual CNN went to chance in one epoch, docs/design/ffw-structured.md). The first
    divides the logits by a temperature fitted on the vanilla D^u_train logits and learnt with the gates (no argmax
    sees it; only the CE of J does, in training); the second gives D no gradient along a bottleneck feature's own
    scale (its value is unchanged: a probe undoes any rescaling).
    tune_epochs > 0: after the gates, the kept weights (every parameter of the exported network; pruned weights
    held at exactly 0, BatchNorm statistics frozen) are trained that many epochs on D^u_train under
    J = CE + tune_gamma * D (D: the probe-free linear readability of the bias within each target class, as the
    search's default), Adam ``tune_lr`` with a ``tune_schedule`` ('cosine' to 0, or 'constant') on batches of
    ``tune_batch_size`` (default 128: twice the search's steps per epoch at the same cost; the bias term's reference
    sample keeps the search's memory x batch_size rows), image inputs (N, C, H, W) shifted by up to ``tune_shift``
    pixels at random (default 1, edges replicated; 0: none; other inputs never); the epoch kept is
    the best by ``selection`` on D^u_val, the gates' state (epoch 0) included (``_tune.py``). The eraser and the
    head refit then run on the tuned network. Not the paper's (it keeps the vanilla weights).
    compare_ungated (default on; off in the ``paper`` preset): the gated pipeline is one candidate; the same
    after-gate stages (the eraser, the head refit) run on the input network without gates are the other, and the
    one with the higher D^u_val group-mean accuracy is returned (a near-chance candidate never; a tie keeps the
    gated one). Chosen on the development suite (``debiaskit bench dev``): no single gated setting served every
    cell - the unstructured gates collapsed a Colored MNIST MLP and lost to a head refit on a torchvision-style
    ResNet -, and the per-call choice lifts the suite's worst cell (docs/design/ffw-defaults.md). The result says
    which candidate was kept (``FFWResult.choice``).
    """

    mode: str = "unstructured"
    gamma: float = 10.0
    include_head: bool = False
    input_weights: bool = False  # structured: also gate every weight of the layers reading the input (_gates.py)
    learn_temperature: bool | None = None  # None: on for structured (see FFWConfig's docstring)
    scale_free_dependence: bool | None = None  # None: on for structured (see FFWConfig's docstring)
    tau_init: float = 1.0
    tau_decay: float = 0.5
    max_levels: int = 20
    min_epochs_per_level: int = 1
    max_epochs_per_level: int = 10
    patience: int = 1
    plateau_threshold: float = 1e-3
    agree_tol: float = 0.01
    batch_size: int = 256
    gate_optimizer: str = "sgd"
    gate_lr: float = 0.1
    head_lr: float = 0.1
    head_momentum: float = 0.9
    head_weight_decay: float = 1e-4
    head_pretrain_epochs: int = 30
    head_pretrain_patience: int = 3
    selection: str = "objective"
    adversary: str = "lda"
    lda_momentum: float = 0.1
    lda_ridge: float = 1.0
    condition_on_target: bool | None = None
    refine_patience: int = 0
    memory: int = 8
    mmd_features: int = 256
    mmd_bandwidths: tuple[float, ...] = (0.5, 1.0, 2.0)
    max_epochs: int | None = 10
    tau_final: float = 2.0**-9
    erase: str = "conditional"
    refit_head: bool = True
    tune_epochs: int = 8
    tune_gamma: float = 3.0
    tune_lr: float = 2e-3
    tune_schedule: str = "cosine"
    tune_batch_size: int = 128
    tune_shift: int = 1
    compare_ungated: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in ("unstructured", "structured"):
            raise ConfigError(f"mode must be 'unstructured' or 'structured', got {self.mode!r}")
        for name, rule in _CONFIG_RULES.items():  # the shared rules (debiaskit._validate): NaN, < 0, ... refused
            require(name, getattr(self, name), rule)
        if self.min_epochs_per_level > self.max_epochs_per_level:
            raise ConfigError("min_epochs_per_level must not exceed max_epochs_per_level")
        if self.gate_optimizer not in ("adam", "sgd"):
            raise ConfigError(f"gate_optimizer must be 'adam' or 'sgd', got {self.gate_optimizer!r}")
        if self.input_weights and self.mode != "structured":
            raise ConfigError("input_weights applies to mode='structured' only (unstructured gates every weight)")
        if self.selection not in SELECTIONS:
            raise ConfigError(f"selection must be one of {', '.join(SELECTIONS)}, got {self.selection!r}")
        if self.adversary not in ADVERSARIES:
            raise ConfigError(f"adversary must be one of {', '.join(ADVERSARIES)}, got {self.adversary!r}")
        if self.tune_schedule not in ("constant", "cosine"):
            raise ConfigError(f"tune_schedule must be 'constant' or 'cosine', got {self.tune_schedule!r}")
        if self.erase not in ERASERS:
            raise ConfigError(f"erase must be one of {', '.join(ERASERS)}, got {self.erase!r}")
        if self.max_epochs is not None and self.max_epochs < 1:
            raise ConfigError(f"max_epochs (the search's epoch budget) must be >= 1, got {self.max_epochs}")
        if not 0 < self.tau_final <= self.tau_init:
            raise ConfigError(f"tau_final must lie in (0, tau_init], got {self.tau_final}")
        probe_free = self.adversary in ("lda", "mmd")
        if self.learn_temperature is None:
            self.learn_temperature = self.mode == "structured"
        if self.scale_free_dependence is None:
            self.scale_free_dependence = self.mode == "structured"
        if self.condition_on_target is None:  # default: on for the probe-free terms (where it applies)
            self.condition_on_target = probe_free
        if self.condition_on_target and not probe_free:
            raise ConfigError("condition_on_target applies to the probe-free adversaries 'lda' and 'mmd'")
        if self.memory < 0:
            raise ConfigError(
                f"memory (batches remembered by the probe-free bias term) must be >= 0, got {self.memory}"
            )
        if self.refine_patience < 0:
            raise ConfigError(f"refine_patience must be >= 0, got {self.refine_patience}")
        if not 0 < self.lda_momentum <= 1 or self.lda_ridge <= 0:
            raise ConfigError("lda_momentum must lie in (0, 1] and lda_ridge be > 0")

    @classmethod
    def from_preset(cls, name: str = DEFAULT_PRESET, **overrides) -> FFWConfig:
        """The config of a named preset (``FFW_PRESETS``: "default", "fast", "paper") with ``overrides`` laid over
        it: a field given here wins over the preset's. ``FFWConfig.from_preset("paper", gamma=5)``."""
        return cls(**{**preset_settings(name), **overrides})

    def planned_levels(self) -> int:
        """tau levels from tau_init down to tau_final (the temperature where soft and hard gates agree)."""
        return int(math.ceil(math.log(self.tau_final / self.tau_init) / math.log(self.tau_decay) - 1e-9)) + 1

    def level_cap(self) -> int:
        """Epochs per tau level at most: the budget spread over the planned levels (at least 1)."""
        if self.max_epochs is None:
            return self.max_epochs_per_level
        return max(1, min(self.max_epochs_per_level, self.max_epochs // self.planned_levels()))


def _check_data(train, val) -> tuple[int, ...]:
    """Refuse data FFW cannot debias; each bias attribute's own number of classes (a binary attribute beside one
    with 5 values: (2, 5)): its privacy head, MI and dependence terms, readability and eraser use its own count."""
    for name, data in (("train (D^u_train)", train), ("val (D^u_val)", val)):
        b = getattr(data, "b", None)
        if b is None:
            raise DataError(
                f"FFW needs bias labels on its {name} data (the MI term, the privacy head and the "
                "selection all read them); pass a split with bias labels, or pseudo-bias labels "
                "from `debiaskit discover`"
            )
        for a, col in enumerate(bias_columns(b)):
            if len(torch.unique(col)) < 2:
                raise DataError(
                    f"the bias labels of {name} (attribute {a}) hold a single class: there is "
                    "no bias to remove (MI is undefined with one bias class)"
                )
    n_attr = len(bias_columns(train.b))
    cards = getattr(train, "bias_cardinalities", None)
    if not cards:  # data that states one count: the same for every attribute
        n_bias = getattr(train, "num_bias_classes", None)
        cards = None if n_bias is None else (int(n_bias),) * n_attr
    if cards is None or len(cards) != n_attr or min(cards) < 2:
        raise DataError(
            "FFW needs at least two bias classes per bias attribute (bias_cardinalities / "
            f"num_bias_classes of the data), got {cards} for {n_attr} attribute(s)"
        )
    return tuple(int(k) for k in cards)
