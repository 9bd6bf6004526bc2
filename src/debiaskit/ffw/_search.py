"""Algorithm 1 of FFW: learn gates on a frozen model so that the bias cannot be read at the bottleneck.

One step on a batch of D^u_train (x, y, b):

    logits, z = f_gated(x)                       # weights, biases, BatchNorm frozen (eval mode)
    J = CE(logits, y) + gamma * D(z, b)          # D: the paper's MI(P(z), b), or a probe-free term (_adversary.py)
    gates  <- step on dJ/dm only                 # J's gradient on P is never computed (discarded)
    P      <- step on CE(P(z.detach()), b)       # the privacy head never reaches the encoder

Schedule: tau = 1; repeat { train until the objective on D^u_val plateaus; tau *= tau_decay } until
the tau-model and the hard-masked model (tau -> 0) agree on D^u_val, within an epoch budget spread over the
levels (so a model whose objective keeps creeping down cannot hold the search at one level). After every epoch the
*hard-masked* model is scored on D^u_val and the best one is kept: the soft model can be far better
than its hard mask (the gates are not yet binary), so only hard models are ever reported or selected.

Under torchrun each rank takes its DistributedSampler share of every epoch's D^u_train order (batch_size
is the global batch), the MI term is computed on the all-gathered head outputs of the global batch, and
the gate and privacy-head gradients are all-reduced (averaged) before each step, so the gates stay
identical on every rank; D^u_val (and the head pre-training features) are split across ranks and
gathered, so the hard-mask selection and the stop rule are computed identically on every rank. Rank 0
alone writes checkpoints and calls the callback.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import _dist
from .._io import json_safe, load_checkpoint, save_checkpoint, tensors_sha256
from .._validate import COUNT, NON_NEGATIVE, OPEN_UNIT_INTERVAL, POSITIVE, POSITIVE_INT, SEED, UNIT_INTERVAL, require
from ..audit import audit_model, chance_floor, logits_accuracy, normalized_mutual_information
from ..data import as_bias_datasets, iterate_batches
from ..errors import ConfigError, DataError, ModelError
from ..models import batch_memory_format, collect_outputs, forward_with_bottleneck, head_shape, laid_out, resolve_head
from ._adversary import (
    ADVERSARIES,
    bias_columns,
    lda_crossfit_accuracy,
    lda_readability,
    mi_term,
    mlp_head,
    probe_free_penalty,
    probe_free_term,
    refit_linear_head,
)
from ._erase import ERASERS, LinearEraser, attach_eraser, conditional_erasers, fit_linear_eraser
from ._export import apply_unstructured_masks, prune_structured, structured_sparsity, unstructured_sparsity
from ._gates import GatedModel, GateState, freeze, install_gates
from ._harm import enforce, group_accuracy, near_chance, verdict
from ._presets import DEFAULT_PRESET, preset_settings
from ._progress import print_epoch
from ._refit import REFIT_GRID, refit_head
from ._tune import tune_kept_weights

CHECKPOINT_FILE = "checkpoint.safetensors"  # tensors + JSON state in one file (debiaskit._io.save_checkpoint)
CHECKPOINT_KIND = "ffw-search"
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
        """The config of a named preset (``FFW_PRESETS``: "default", "paper") with ``overrides`` laid over it:
        a field given here wins over the preset's. ``FFWConfig.from_preset("paper", gamma=5)``."""
        return cls(**{**preset_settings(name), **overrides})

    def planned_levels(self) -> int:
        """tau levels from tau_init down to tau_final (the temperature where soft and hard gates agree)."""
        return int(math.ceil(math.log(self.tau_final / self.tau_init) / math.log(self.tau_decay) - 1e-9)) + 1

    def level_cap(self) -> int:
        """Epochs per tau level at most: the budget spread over the planned levels (at least 1)."""
        if self.max_epochs is None:
            return self.max_epochs_per_level
        return max(1, min(self.max_epochs_per_level, self.max_epochs // self.planned_levels()))


@dataclass
class FFWResult:
    """What :func:`find_fantastic_weights` found.

    ``model``: the exported plain network (unstructured: the original architecture with the zeros
    baked in; structured: the physically smaller network). ``masks``: hard masks of the selected
    state (1 = kept). ``gated``: the gated working copy, set to the selected hard masks (for checks).
    ``selected``: the D^u_val record of the selected hard model; ``history``: one record per epoch.

    Example::

        result = find_fantastic_weights(model, head="fc", train=splits.unbiased_train, val=splits.unbiased_val)
        result.model, result.sparsity["overall"], result.selected["val_hard"]["task"]
    """

    model: nn.Module
    masks: dict[str, Tensor]
    config: FFWConfig
    head: str
    history: list[dict[str, Any]]
    selected: dict[str, Any]
    sparsity: dict[str, Any]
    stop_reason: str
    wall_time_s: float
    gated: GatedModel
    privacy_heads: list[nn.Linear]
    shapes: dict[str, dict[str, int]] | None = None
    eraser: dict[str, Any] | None = None  # the linear eraser in front of the head (_erase.py), None without one
    head_refit: dict[str, Any] | None = None  # the head's refit on D^u_train (_refit.py), None when off
    tune: dict[str, Any] | None = None  # the kept weights trained under J (_tune.py), None when off
    no_harm: dict[str, Any] | None = None  # the do-no-harm verdict on D^u_val, every stage vs the input (_harm.py)
    choice: dict[str, Any] | None = None  # compare_ungated: the two candidates' D^u_val numbers and the one kept

    @property
    def mode(self) -> str:
        return self.config.mode

    def audit(self, *, test, unbiased_train, unbiased_val, seed: int = 0, **kwargs):
        """Audit the exported model (fresh privacy head on its bottleneck): an ``AuditReport``."""
        return audit_model(
            self.model,
            test=test,
            unbiased_train=unbiased_train,
            unbiased_val=unbiased_val,
            head=self.head,
            seed=seed,
            **kwargs,
        )

    def summary(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "config": asdict(self.config),
            "selected": self.selected,
            "sparsity": self.sparsity,
            "stop_reason": self.stop_reason,
            "wall_time_s": self.wall_time_s,
            "epochs": len(self.history) - 1,
            "shapes": self.shapes,
            "eraser": self.eraser,
            "head_refit": self.head_refit,
            "tune": self.tune,
            "no_harm": self.no_harm,
            "choice": self.choice,
        }


# FFW's information term (eq. 7): the audit's normalised empirical MI, computed in log space so that its
# gradient stays finite (a NaN at tau 1 on colored-mnist came from the literal formula). One implementation
# for FFW, IRENE, VCBA and the audit.
mutual_information = normalized_mutual_information


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


def _per_attribute(num_bias: int | Sequence[int], n_attr: int) -> tuple[int, ...]:
    """One number of bias classes per attribute (an int: the same for all)."""
    cards = tuple(int(k) for k in num_bias) if isinstance(num_bias, (tuple, list)) else (int(num_bias),) * n_attr
    if len(cards) != n_attr:
        raise ValueError(f"one number of bias classes per attribute: {n_attr} attributes, got {len(cards)}")
    return cards


def fit_log_temperature(logits: Tensor, y: Tensor) -> Tensor:
    """log T minimising CE(logits / T, y) (a 1-D convex problem; a grid over T in [0.1, 100], then its best
    neighbourhood): the calibration the gates would otherwise learn by shrinking every unit."""

    def ce(log_t: Tensor) -> Tensor:
        return torch.stack([F.cross_entropy(logits / t.exp(), y) for t in log_t])

    grid = torch.linspace(math.log(0.1), math.log(100.0), 61, device=logits.device)
    best = grid[int(ce(grid).argmin())]
    fine = best + torch.linspace(-0.12, 0.12, 25, device=logits.device)
    return fine[int(ce(fine).argmin())]


def ffw_step(
    model: nn.Module,
    head: str,
    gate_params: list[nn.Parameter],
    privacy_heads: list[nn.Module],
    x: Tensor,
    y: Tensor,
    b: Tensor,
    *,
    gamma: float,
    num_bias: int | Sequence[int],
    dependence: Callable[[Tensor, list[Tensor], Tensor], Tensor] | None = None,
    order: Tensor | None = None,
    log_temperature: Tensor | None = None,
    scale_free: bool = False,
) -> dict[str, Any]:
    """Gradients of one FFW step, written into ``.grad`` (the caller steps the optimisers).

    Gates get dJ/dm with J = CE(f(x), y) + gamma * D(z, b); D defaults to the paper's sum_a MI(P_a(z), b_a)
    over the privacy heads (``num_bias``: one number of classes for every attribute, or one per attribute: each
    MI is normalised by its own attribute's log K), ``dependence(z, bias_columns, y)`` replaces it.
    ``torch.autograd.grad`` with the gates as the only inputs: J's gradient on the heads is never computed
    (discarded). Each head P_a gets the gradient of CE(P_a(z.detach()), b_a) (head i reads attribute i % A):
    nothing flows back into the encoder or the gates. Frozen weights receive no gradient at all. The detached bottleneck comes back as ``"z"``.

    Under torchrun D is computed on the all-gathered global batch (``order``: where each gathered row goes, so
    that the rows are in the 1-rank batch's order; see :func:`debiaskit._dist.global_batch_order`).
    """
    logits, z = forward_with_bottleneck(model, x, head)
    if log_temperature is not None:  # CE of the calibrated logits (a learnt scale that no argmax sees)
        logits = logits / log_temperature.exp()
    ce = F.cross_entropy(logits, y)
    cols = bias_columns(b)
    cards = _per_attribute(num_bias, len(cols))
    zd = z.detach()
    if scale_free:  # same value; no gradient along a feature's own scale (a probe undoes any rescaling)
        scale = z.std(0, keepdim=True).clamp_min(1e-6)
        z = z / scale * scale.detach()
    # D is a statistic of the whole batch: under torchrun, of the all-gathered global batch (gradient back to each
    # rank's own samples; identity on one process)
    if dependence is None:
        mi = sum(
            mutual_information(_dist.all_gather_with_grad(h(z).softmax(1)), _dist.all_gather(col), k)
            for h, col, k in zip(privacy_heads, cols, cards)
        )
    else:
        z_all, cols_all, y_all = _dist.all_gather_with_grad(z), [_dist.all_gather(c) for c in cols], _dist.all_gather(y)
        if order is not None:
            z_all, cols_all = z_all[order.to(z_all.device)], [c[order.to(c.device)] for c in cols_all]
            y_all = y_all[order.to(y_all.device)]
        mi = dependence(z_all, cols_all, y_all)
    loss = ce + gamma * mi
    grads = torch.autograd.grad(loss, gate_params)
    for p, g in zip(gate_params, grads):
        p.grad = g
    head_loss = 0.0
    for i, h in enumerate(privacy_heads):  # head i reads attribute i % A (several heads per attribute allowed)
        col = cols[i % len(cols)]
        for p in h.parameters():
            p.grad = None
        hl = F.cross_entropy(h(zd), col)
        hl.backward()
        head_loss += float(hl.detach())
    return {
        "loss": float(loss.detach()),
        "ce": float(ce.detach()),
        "mi": float(mi.detach()),
        "head_loss": head_loss,
        "z": zd,
    }


_INPUT_PARTS = {
    "weights": "the frozen model's weights",
    "run_weights_sha256": "the run's weights file",
    "model": "the model's record",
    "data": "the data",
    "bias_labels": "the kind of bias labels",
    "bias_labels_sha256": "the bias labels",
}


class _Search:
    """The state of one FFW search (kept in an object so that it can be checkpointed and resumed)."""

    input_identity: dict[str, Any] | None = None  # what the search runs on (see find_fantastic_weights)

    def __init__(self, model: nn.Module, *, head: str, train, val, config: FFWConfig, device, callback) -> None:
        self.cfg, self.train, self.val, self.device, self.callback = config, train, val, torch.device(device), callback
        self.bias_cardinalities = _check_data(train, val)  # each attribute its own number of classes
        self.n_attr = len(self.bias_cardinalities)
        self.head = head
        self.work = copy.deepcopy(model).to(self.device)
        freeze(self.work)
        example = next(iter(iterate_batches(train, batch_size=2, device=self.device))).x
        # channels-last image batches where the model takes them unchanged (CPU; models/_layout.py), decided
        # before the gates go in: a 2-3x faster convolution for the search's steps and D^u_val passes
        self.memory_format = batch_memory_format(self.work, example, device=self.device)
        self.state = GateState(tau=config.tau_init)
        self.gated = install_gates(
            self.work,
            mode=config.mode,
            head=head,
            example=example,
            include_head=config.include_head,
            input_weights=config.input_weights,
            state=self.state,
        )
        d, num_classes = head_shape(self.work, head)
        # below this D^u_val accuracy a candidate is collapsed (ffw/_harm.py): never selected, never handed back
        self.floor = chance_floor(val.y, max(num_classes, 2))
        torch.manual_seed(config.seed)
        self.heads = [nn.Linear(d, k).to(self.device) for k in self.bias_cardinalities]
        self.head_opts = [
            torch.optim.SGD(
                h.parameters(), lr=config.head_lr, momentum=config.head_momentum, weight_decay=config.head_weight_decay
            )
            for h in self.heads
        ]
        # adversaries beyond the paper's head (_adversary.py); the linear heads are always trained and reported
        self.mlps = (
            [mlp_head(d, k).to(self.device) for k in self.bias_cardinalities] if config.adversary == "mlp" else []
        )
        self.mlp_opts = [torch.optim.Adam(h.parameters(), lr=1e-3) for h in self.mlps]
        # probe-free adversaries: running statistics of z, no parameters
        self.lda = probe_free_term(config, d, config.adversary) if config.adversary in ("lda", "mmd") else None
        self._epoch_z: list[Tensor] = []
        self._vanilla_val: tuple[Tensor, Tensor, Tensor, Tensor] | None = None  # pretrain_heads -> initial_record
        opt = (
            torch.optim.Adam
            if config.gate_optimizer == "adam"
            else (lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9))
        )
        # the logit temperature learnt with the gates (FFWConfig.learn_temperature); stepped by the gate optimiser
        self.log_temperature = (
            torch.zeros((), device=self.device, requires_grad=True) if config.learn_temperature else None
        )
        self.gate_opt = opt(self._trained(), lr=config.gate_lr)
        self.progress = {
            "level": 0,
            "tau": config.tau_init,
            "epoch_in_level": 0,
            "epoch": 0,
            "plateau_best": None,
            "bad_epochs": 0,
            "done": False,
            "stop_reason": None,
        }
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        self.best_gates: dict[str, Tensor] | None = None
        self.step = 0

    def _trained(self) -> list[Tensor]:
        """What the gate optimiser steps: the gates, and the logit temperature when it is learnt."""
        return self.gated.gate_parameters() + ([self.log_temperature] if self.log_temperature is not None else [])

    # ---- privacy head pre-training on the vanilla model (gates all at 1) ----
    @torch.no_grad()
    def _features(self, data, *, hard: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(logits, z, y, b) of ``data``; under torchrun split across ranks and gathered (the same everywhere)."""

        def rows(index: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
            logits, zs, ys, bs = [], [], [], []
            for batch in iterate_batches(data, batch_size=512, device=self.device, indices=index):
                out, z = forward_with_bottleneck(self.work, laid_out(batch.x, self.memory_format), self.head)
                logits.append(out)
                zs.append(z)
                ys.append(batch.y)
                bs.append(batch.b)
            return torch.cat(logits), torch.cat(zs), torch.cat(ys), torch.cat(bs)

        self.state.hard = hard
        try:
            return _dist.map_shards(len(data), rows)
        finally:
            self.state.hard = False

    def pretrain_heads(self) -> None:
        """Train each privacy head on detached vanilla features until its D^u_val loss plateaus."""
        logits_tr, z_tr, y_tr, b_tr = self._features(self.train, hard=False)
        if self.log_temperature is not None:
            with torch.no_grad():
                self.log_temperature.copy_(fit_log_temperature(logits_tr, y_tr))
        self._vanilla_val = self._features(self.val, hard=False)  # also epoch 0's record (initial_record)
        _, z_va, _, b_va = self._vanilla_val
        gen = torch.Generator().manual_seed(self.cfg.seed)
        pairs = list(zip(self.heads, self.head_opts)) + list(zip(self.mlps, self.mlp_opts))
        for i, (head, opt) in enumerate(pairs):
            bt, bv = bias_columns(b_tr)[i % self.n_attr], bias_columns(b_va)[i % self.n_attr]
            best, bad = math.inf, 0
            for _ in range(self.cfg.head_pretrain_epochs):
                order = torch.randperm(len(z_tr), generator=gen)
                for start in range(0, len(order), self.cfg.batch_size):
                    idx = order[start : start + self.cfg.batch_size]
                    opt.zero_grad(set_to_none=True)
                    F.cross_entropy(head(z_tr[idx]), bt[idx]).backward()
                    opt.step()
                with torch.no_grad():
                    loss = float(F.cross_entropy(head(z_va), bv))
                if loss < best * (1 - self.cfg.plateau_threshold):
                    best, bad = loss, 0
                else:
                    bad += 1
                    if bad >= self.cfg.head_pretrain_patience:
                        break
        if self.lda is not None:
            self.lda.fit(z_tr.cpu())

    def _dependence(self) -> Callable[[Tensor, list[Tensor], Tensor], Tensor] | None:
        """The bias term D(z, b) of J for the configured adversary (None: the paper's linear-head MI)."""
        kind, cards, cond = self.cfg.adversary, self.bias_cardinalities, self.cfg.condition_on_target
        if kind == "mlp":
            return lambda z, cols, y: sum(mi_term(h, z, c, k) for h, c, k in zip(self.mlps, cols, cards))
        if kind in ("lda", "mmd"):
            return lambda z, cols, y: probe_free_penalty(self.lda, z, cols, y, cards, given_target=cond)
        return None

    def _end_epoch_adversary(self) -> None:
        """``refit``: re-fit the linear heads to convergence on this epoch's bottleneck features."""
        if self.cfg.adversary == "refit" and self._epoch_z:
            z = torch.cat([zb for zb, _ in self._epoch_z])
            b = torch.cat([bb for _, bb in self._epoch_z])
            for h, col in zip(self.heads, bias_columns(b)):
                refit_linear_head(h, z, col, weight_decay=self.cfg.head_weight_decay)
        self._epoch_z = []

    # ---- one epoch of gates + privacy head on D^u_train ----
    def train_epoch(self) -> dict[str, float]:
        cfg = self.cfg
        self.state.tau, self.state.hard = self.progress["tau"], False
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + self.progress["epoch"])
        sums = {"loss": 0.0, "ce": 0.0, "mi": 0.0, "head_loss": 0.0}
        steps = 0
        params = self._trained()
        dependence = self._dependence()
        rank, world = _dist.rank_and_world()
        perm = torch.randperm(len(self.train), generator=gen)
        place = torch.empty_like(perm)
        place[perm] = torch.arange(len(perm))  # each sample's position in this epoch's order
        for batch in iterate_batches(
            self.train,
            batch_size=_dist.per_rank_batch(cfg.batch_size, world),
            indices=_dist.shard(perm, rank=rank, world=world),
            device=self.device,
        ):
            # under torchrun: the global batch in the 1-rank order, for the order-sensitive adversaries
            order = _dist.global_batch_order(place[batch.index]) if world > 1 else None
            x = laid_out(batch.x, self.memory_format)
            out = ffw_step(
                self.work,
                self.head,
                params,
                self.heads + self.mlps,
                x,
                batch.y,
                batch.b,
                gamma=cfg.gamma,
                num_bias=self.bias_cardinalities,
                dependence=dependence,
                order=order,
                log_temperature=self.log_temperature,
                scale_free=cfg.scale_free_dependence,
            )
            # identical gates and heads on every rank (a no-op on one process)
            _dist.average_gradients(list(params) + list(self.heads) + list(self.mlps))
            z, b, y = out.pop("z"), batch.b, batch.y
            if world > 1:  # the global batch's features and labels on every rank, in the 1-rank order
                z, b, y = (_dist.all_gather(t)[order.to(t.device)] for t in (z, b, y))
            if self.lda is not None:
                self.lda.observe(z.cpu(), b.cpu(), y.cpu())
            if cfg.adversary == "refit":
                self._epoch_z.append((z, b))
            if not all(bool(torch.isfinite(p.grad).all()) for p in params):  # never step into NaN gates
                raise ModelError(
                    f"FFW got a non-finite gate gradient at tau {self.progress['tau']}, step {self.step + 1} "
                    f"(loss {out['loss']}); try a lower gate_lr"
                )
            for opt in self.head_opts + self.mlp_opts:
                opt.step()
            self.gate_opt.step()
            for k in sums:
                sums[k] += out[k]
            loss = out["loss"]
            steps += 1
            self.step += 1
            if not math.isfinite(loss):
                raise ModelError(
                    f"FFW diverged (loss {loss}) at tau {self.state.tau}, step {self.step}; try a lower gate_lr"
                )
            if self.callback is not None and _dist.is_main_process():
                self.callback({"kind": "step", "step": self.step, "epoch": self.progress["epoch"] + 1, "loss": loss})
        self._end_epoch_adversary()
        means = torch.tensor([sums[k] / max(steps, 1) for k in sums], dtype=torch.float64)
        means = _dist.all_reduce_sum(means) / _dist.rank_and_world()[1]  # averaged over ranks
        return {f"train_{k}": float(v) for k, v in zip(sums, means)}

    def evaluate(self, *, hard: bool) -> dict[str, float]:
        """On D^u_val: task accuracy and CE; the search's own linear head (accuracy ``bias``, ``mi``); the
        adversary's term ``dependence``; the closed-form linear readability ``readability`` and the accuracy
        of a cross-fitted LDA classifier ``lda_bias`` (adversary-free); all summed / averaged over attributes."""
        self.state.tau = self.progress["tau"]
        return self._summarise(*self._features(self.val, hard=hard))

    @torch.no_grad()
    def _summarise(self, logits: Tensor, z: Tensor, y: Tensor, b: Tensor) -> dict[str, float]:
        """:meth:`evaluate`'s numbers from D^u_val outputs already computed."""
        ce = float(F.cross_entropy(logits, y))
        cols = bias_columns(b)
        accs, mis, reads, ldas, deps = [], [], [], [], []
        for i, (col, k) in enumerate(zip(cols, self.bias_cardinalities)):  # each attribute its own K
            p = self.heads[i](z)
            accs.append(float((p.argmax(1) == col).float().mean()))
            mis.append(float(mutual_information(p.softmax(1), col, k)))
            zc, cc = z.cpu(), col.cpu()
            reads.append(lda_readability(zc, cc, k, ridge=self.cfg.lda_ridge))
            ldas.append(lda_crossfit_accuracy(zc, cc, k, ridge=self.cfg.lda_ridge))
            if self.cfg.adversary == "mlp":
                deps.append(float(mi_term(self.mlps[i], z, col, k)))
            elif self.lda is not None:
                deps.append(self.lda.measure(zc, cc, k, given=y.cpu() if self.cfg.condition_on_target else None))
        dependence = sum(deps) if deps else sum(mis)
        return {
            "task": float((logits.argmax(1) == y).float().mean()),
            "ce": ce,
            "bias": sum(accs) / len(accs),
            "mi": sum(mis),
            "dependence": dependence,
            "readability": sum(reads),
            "lda_bias": sum(ldas) / len(ldas),
            "objective": ce + self.cfg.gamma * dependence,
        }

    def gate_stats(self) -> dict[str, float]:
        masks = self.gated.hard_masks()
        total = sum(m.numel() for m in masks.values())
        pruned = sum(int((m == 0).sum()) for m in masks.values())
        tau = self.progress["tau"]
        # gates that the hard mask prunes but the tau-model still mostly passes (the soft/hard gap)
        undecided = sum(
            int(((g.m < 0) & (2 * torch.sigmoid(g.m / tau) > 0.5)).sum()) for g in self.gated.gates.values()
        )
        return {"sparsity": pruned / total, "undecided": undecided / total}

    def selection_score(self, val: dict[str, float]) -> float:
        """The selection rule (``SELECTIONS``) on D^u_val numbers (task, ce, objective; readability for
        'readability'): higher is better. The search's states and the weight tuning's epochs are both judged by it."""
        sel = self.cfg.selection
        if sel == "objective":
            return -val["objective"]
        if sel == "readability":
            return -(val["ce"] + self.cfg.gamma * val["readability"])
        return val["task"]

    def usable(self, val: dict[str, float]) -> bool:
        """Whether a candidate's D^u_val numbers clear the near-chance floor (``ffw/_harm.py``): a collapsed network
        (J's favourite: a constant bottleneck makes D 0) is excluded before any score is compared."""
        return not near_chance(val["task"], self.floor)

    def _score(self, record: dict[str, Any]) -> float:
        return self.selection_score(record["val_hard"])

    def _keeps_task(self, record: dict[str, Any]) -> bool:
        """A gated candidate whose D^u_val task accuracy is not below the vanilla model's (epoch 0)."""
        return record["epoch"] > 0 and record["val_hard"]["task"] >= self.history[0]["val_hard"]["task"]

    def consider(self, record: dict[str, Any]) -> None:
        """Keep the best hard-masked state on D^u_val: near-chance candidates never (while any other exists); then
        by the selection score among the gated candidates that keep the vanilla model's task accuracy; by the score
        alone while there is none. J alone prefers a dead network (CE log K, D 0) to any model that still reads the
        bias - which an overconfident vanilla model's CE makes easy to reach (docs/design/ffw-structured.md)."""
        score = self._score(record)
        record["selection_score"] = score
        record["keeps_task"] = self._keeps_task(record)
        record["near_chance"] = not self.usable(record["val_hard"])
        key = (not record["near_chance"], record["keeps_task"], score)
        if self.best is None or key > (
            not self.best.get("near_chance", False),
            self.best.get("keeps_task", False),
            self.best["selection_score"],
        ):
            self.best = record
            self.best_gates = {k: v.clone() for k, v in self.gated.gate_tensors().items()}

    def initial_record(self) -> None:
        """Epoch 0: the vanilla model (every gate at 1) is a candidate too: FFW may not beat it."""
        # every gate is exactly 1 before the first step (m = 0: soft 2 sigmoid(0) = 1, hard m >= 0), so the tau-model
        # and the hard-masked model are both the vanilla model, whose D^u_val outputs pretrain_heads already has
        vanilla = self._summarise(*self._vanilla_val)
        self._vanilla_val = None
        rec = {
            "epoch": 0,
            "level": 0,
            "tau": self.progress["tau"],
            "val_soft": vanilla,
            "val_hard": dict(vanilla),
            **self.gate_stats(),
            "time_s": 0.0,
        }
        self.history.append(rec)
        self.consider(rec)

    def end_level(self, soft: dict, hard: dict) -> None:
        p, cfg = self.progress, self.cfg
        agree = abs(soft["task"] - hard["task"]) <= cfg.agree_tol and abs(soft["bias"] - hard["bias"]) <= cfg.agree_tol
        budget_spent = cfg.max_epochs is not None and p["epoch"] >= cfg.max_epochs
        if agree and cfg.refine_patience > 0 and not budget_spent:
            # the paper stops here; refining keeps this tau while the hard model still improves on D^u_val
            p["refining"], p["refine_from"], p["refine_bad"] = True, p["epoch"], 0
            p["refine_best"] = self.best["selection_score"]
        elif agree:
            p["done"], p["stop_reason"] = (
                True,
                f"tau-model and hard-masked model agree on D^u_val at tau={p['tau']:.3g}",
            )
        elif cfg.max_epochs is not None and p["epoch"] >= cfg.max_epochs:
            p["done"], p["stop_reason"] = (
                True,
                (f"epoch budget max_epochs={cfg.max_epochs} spent (tau={p['tau']:.3g}) before agreement"),
            )
        elif p["level"] + 1 >= cfg.max_levels:
            p["done"], p["stop_reason"] = (
                True,
                f"max_levels={cfg.max_levels} reached (tau={p['tau']:.3g}) before agreement",
            )
        else:
            p["level"] += 1
            p["tau"] *= cfg.tau_decay
            p["epoch_in_level"], p["plateau_best"], p["bad_epochs"] = 0, None, 0

    def run_epoch(self, start_time: float, time_offset: float) -> dict[str, Any]:
        p, cfg = self.progress, self.cfg
        stats = self.train_epoch()
        p["epoch"] += 1
        p["epoch_in_level"] += 1
        hard = self.evaluate(hard=True)
        # the tau-model on D^u_val only where it decides something: the plateau test, the level's end (agreement)
        soft = self.evaluate(hard=False) if self._soft_decides() else None
        rec = {
            "epoch": p["epoch"],
            "level": p["level"],
            "tau": p["tau"],
            **stats,
            "val_soft": soft,
            "val_hard": hard,
            **self.gate_stats(),
            "time_s": time_offset + time.perf_counter() - start_time,
        }
        self.history.append(rec)
        self.consider(rec)
        if p.get("refining"):
            self._refine_step()
            return rec
        plateau = False
        if self._plateau_decides():
            best = p["plateau_best"]
            if best is None or soft["objective"] < best - cfg.plateau_threshold * abs(best):
                p["plateau_best"], p["bad_epochs"] = soft["objective"], 0
            else:
                p["bad_epochs"] += 1
            plateau = p["bad_epochs"] >= cfg.patience and p["epoch_in_level"] >= cfg.min_epochs_per_level
        if plateau or self._level_must_end():
            rec["level_end"] = True
            self.end_level(soft, hard)
        return rec

    def _level_must_end(self) -> bool:
        """The level ends after this epoch whatever the tau-model does: its epoch cap, or the budget, is reached."""
        p, cfg = self.progress, self.cfg
        return (cfg.max_epochs is not None and p["epoch"] >= cfg.max_epochs) or p["epoch_in_level"] >= cfg.level_cap()

    def _plateau_decides(self) -> bool:
        """Whether a plateau can end a level before its cap: the first epoch that can see one (the level's first
        epoch sets the reference, ``patience`` epochs without improvement follow) comes before the cap. With the
        default budget (2 epochs per level, patience 1) it cannot: the cap ends every level first."""
        cfg = self.cfg
        return max(cfg.patience + 1, cfg.min_epochs_per_level) < cfg.level_cap()

    def _soft_decides(self) -> bool:
        """Whether this epoch needs the tau-model's D^u_val numbers (not while refining: only the hard model
        counts there)."""
        return not self.progress.get("refining") and (self._plateau_decides() or self._level_must_end())

    def _refine_step(self) -> None:
        """After agreement: stop once the best hard-masked selection score has not improved for
        ``refine_patience`` epochs (or the budget is spent)."""
        p, cfg = self.progress, self.cfg
        if self.best["selection_score"] > p["refine_best"]:
            p["refine_best"], p["refine_bad"] = self.best["selection_score"], 0
        else:
            p["refine_bad"] += 1
        budget_spent = cfg.max_epochs is not None and p["epoch"] >= cfg.max_epochs
        if p["refine_bad"] >= cfg.refine_patience or budget_spent:
            why = (
                "the epoch budget was spent"
                if p["refine_bad"] < cfg.refine_patience
                else (f"the D^u_val selection score stopped improving for {cfg.refine_patience} epoch(s)")
            )
            p["done"], p["stop_reason"] = (
                True,
                (
                    f"tau-model and hard-masked model agree on D^u_val at tau={p['tau']:.3g} (epoch {p['refine_from']}); "
                    f"refined at that tau until {why}"
                ),
            )

    # ---- checkpoint: one safetensors file, JSON state in its header (no pickle) ----
    def _optimizers(self) -> list[tuple[str, torch.optim.Optimizer]]:
        return (
            [("gateopt", self.gate_opt)]
            + [(f"headopt{i}", o) for i, o in enumerate(self.head_opts)]
            + [(f"mlpopt{i}", o) for i, o in enumerate(self.mlp_opts)]
        )

    def save_checkpoint(self, folder: Path, *, wall_time_s: float) -> None:
        tensors = {f"gate.{k}": v for k, v in self.gated.gate_tensors().items()}
        tensors.update({f"best.{k}": v for k, v in (self.best_gates or {}).items()})
        meta: dict[str, Any] = {"optimizers": {}}
        for i, h in enumerate(self.heads):
            tensors.update({f"head{i}.{k}": v.detach() for k, v in h.state_dict().items()})
        for i, h in enumerate(self.mlps):
            tensors.update({f"mlp{i}.{k}": v.detach() for k, v in h.state_dict().items()})
        if self.lda is not None:
            tensors.update({f"lda.{k}": v for k, v in self.lda.tensors().items()})
        if self.log_temperature is not None:
            tensors["log_temperature"] = self.log_temperature.detach().reshape(1)
        for tag, opt in self._optimizers():
            sd = opt.state_dict()
            scalars = {}
            for idx, st in sd["state"].items():
                for k, v in st.items():
                    if torch.is_tensor(v):
                        tensors[f"{tag}.{idx}.{k}"] = v.detach()
                    else:
                        scalars[f"{idx}.{k}"] = v
            meta["optimizers"][tag] = {"param_groups": sd["param_groups"], "scalars": scalars}
        meta.update(
            {
                "input": self.input_identity,
                "config": asdict(self.cfg),
                "progress": self.progress,
                "history": self.history,
                "best": self.best,
                "step": self.step,
                "wall_time_s": wall_time_s,
            }
        )
        save_checkpoint(Path(folder) / CHECKPOINT_FILE, tensors, meta, kind=CHECKPOINT_KIND)

    def _check_input(self, folder: Path, saved: dict[str, Any] | None) -> None:
        """A checkpoint resumes only the search of the same frozen model on the same data: gates learnt on
        another run (or on this path before it was retrained) would be continued as if they were this one's."""
        ours = json.loads(json.dumps(json_safe(self.input_identity)))
        if ours is None:
            return
        if not isinstance(saved, dict):
            raise ConfigError(
                f"the checkpoint in {folder} does not record which model and data it searched (written "
                "by an earlier debiaskit), so it cannot be resumed safely; start afresh with --force"
            )
        differ = sorted(k for k in set(saved) | set(ours) if saved.get(k) != ours.get(k))
        if differ:
            what = ", ".join(dict.fromkeys(_INPUT_PARTS.get(k, k) for k in differ))
            raise ConfigError(
                f"the interrupted search in {folder} was started on another input ({what} differ): the "
                "run was retrained or replaced since, or this output belongs to another run's search. "
                "Resuming would continue that search on this model; start afresh with --force (discards "
                "it) or choose another --out"
            )

    def load_checkpoint(self, folder: Path) -> float:
        path = Path(folder) / CHECKPOINT_FILE
        if not path.is_file():
            raise ConfigError(f"nothing to resume in {folder}: no {CHECKPOINT_FILE}")
        tensors, meta = load_checkpoint(path, kind=CHECKPOINT_KIND)
        self._check_input(folder, meta.get("input"))
        saved = meta["config"]
        ours = json.loads(json.dumps(asdict(self.cfg)))
        diff = sorted(k for k in ours if saved.get(k) != ours[k])
        if diff:
            raise ConfigError(
                f"the checkpoint in {folder} was made with other settings ({', '.join(f'{k}={saved.get(k)!r}' for k in diff)}); "
                "resume with the same settings, or start afresh with --force"
            )
        self.gated.load_gate_tensors({k[5:]: v for k, v in tensors.items() if k.startswith("gate.")})
        best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
        self.best_gates = best or None
        for prefix, modules in (("head", self.heads), ("mlp", self.mlps)):
            for i, h in enumerate(modules):
                tag = f"{prefix}{i}."
                h.load_state_dict({k[len(tag) :]: v for k, v in tensors.items() if k.startswith(tag)})
        if self.lda is not None:
            self.lda.load_tensors({k[4:]: v for k, v in tensors.items() if k.startswith("lda.")})
        if self.log_temperature is not None:
            with torch.no_grad():
                self.log_temperature.copy_(tensors["log_temperature"].reshape(()))
        for tag, opt in self._optimizers():
            info = meta["optimizers"][tag]
            state: dict[int, dict[str, Any]] = {}
            for k, v in tensors.items():
                if k.startswith(tag + "."):
                    _, idx, name = k.split(".", 2)
                    state.setdefault(int(idx), {})[name] = v
            for k, v in info["scalars"].items():
                idx, name = k.split(".", 1)
                state.setdefault(int(idx), {})[name] = v
            opt.load_state_dict({"state": state, "param_groups": info["param_groups"]})
        self.progress, self.history, self.best, self.step = (
            meta["progress"],
            meta["history"],
            meta["best"],
            meta["step"],
        )
        return float(meta.get("wall_time_s", 0.0))


def find_fantastic_weights(
    model: nn.Module,
    *,
    train,
    val,
    head: str | None = None,
    mode: str = "unstructured",
    gamma: float = 10.0,
    include_head: bool = False,
    tau_decay: float = 0.5,
    config: FFWConfig | None = None,
    device: str | torch.device = "cpu",
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    inplace: bool = False,
    callback: Callable[[dict[str, Any]], None] | None = None,
    progress: bool = True,
    checkpoint_meta: dict[str, Any] | None = None,
    no_harm: bool = True,
    preset: str = DEFAULT_PRESET,
    **overrides,
) -> FFWResult:
    """Find a sub-network of a frozen ``model`` whose bottleneck carries no bias (FFW, Algorithm 1).

    ``train`` / ``val``: D^u_train / D^u_val, datasets of (x, y, b) with bias labels (``b`` may be
    (N, A) for several bias attributes: one privacy head and one MI term per attribute, each with that attribute's
    own number of classes, the data's ``bias_cardinalities``). ``head``: name
    of the classifier module (default ``model.head_name``); the bottleneck is its input. Keyword
    ``overrides`` set any :class:`FFWConfig` field (or pass ``config``); ``preset`` (``FFW_PRESETS``: "default",
    "paper") names the settings they are laid over - a keyword given here wins over the preset (``config`` ignores
    both). ``checkpoint_dir``: write a
    resumable checkpoint there after every epoch (also kept when interrupted with Ctrl-C);
    ``resume=True`` continues from it - only a search of the same model (its weights' digest) and of the same
    ``checkpoint_meta`` (JSON identifying the input: ``debiaskit ffw`` records the run's weights file, model and
    data). ``model`` itself is left untouched unless ``inplace=True``
    (unstructured only: the hard masks are then baked into its weights). ``callback(event)`` is called
    after every step (``kind="step"``) and epoch (``kind="epoch"``); without one, ``progress`` prints a
    line per epoch (D^u_val numbers of the hard-masked model - and of the tau-model where the schedule reads
    them: each level's end, or every epoch when a plateau can end a level -, sparsity, time).

    Do no harm (``ffw/_harm.py``): the final output (after the gates, the weight tuning, the eraser and the head
    refit) is compared with ``model`` on D^u_val. When its group-mean accuracy (mean over the (y, b) groups) falls
    below the input's by more than one standard error of the input's (SE = sqrt(sum_g q_g (1 - q_g) / n_g) / G,
    q_g = (right_g + 1) / (n_g + 2): each group's accuracy smoothed by one right and one wrong answer),
    when its accuracy is near chance (below max(1 / C, majority-class rate) + max(2 points, 2 standard errors of
    that rate)), or when it is ``model`` unchanged, :class:`~debiaskit.errors.NoImprovementError` is raised: no model
    is returned, so a worse one cannot be used by mistake; the error carries every stage's D^u_val numbers
    (``.record``) and the refused result (``.result``, for inspection). ``no_harm=False`` returns the output all the
    same (the benchmark harnesses measure FFW as published); the verdict is in ``result.no_harm`` either way.

    Example::

        from debiaskit.ffw import find_fantastic_weights
        result = find_fantastic_weights(model, head="fc", train=splits.unbiased_train,
                                        val=splits.unbiased_val, mode="structured", gamma=10)
        result.sparsity["overall"], result.selected["val_hard"]["task"]
        report = result.audit(test=splits.test, unbiased_train=splits.unbiased_train,
                              unbiased_val=splits.unbiased_val)
    """
    start = time.perf_counter()
    if callback is None and progress:
        callback = print_epoch
    if config is None:
        config = FFWConfig.from_preset(
            preset, mode=mode, gamma=gamma, include_head=include_head, tau_decay=tau_decay, **overrides
        )
    elif overrides:
        raise ConfigError("pass either config= or keyword overrides, not both")
    if inplace and config.mode == "structured":
        raise ConfigError("inplace=True is for unstructured FFW; a structured result is a new, smaller network")
    if inplace and config.tune_epochs:
        raise ConfigError(
            "inplace=True bakes the masks into your model's weights; tuning the kept weights "
            "(tune_epochs) would change the rest of them too: pass tune_epochs=0 with inplace=True"
        )
    if inplace and config.erase != "none":
        raise ConfigError(
            "inplace=True bakes the masks into your model's weights, but the linear eraser would also "
            "change its architecture (a module in front of the head): pass erase='none' with inplace=True"
        )
    device = _dist.check_device(device)
    _dist.per_rank_batch(config.batch_size, _dist.rank_and_world()[1])  # the global batch must divide by the ranks
    if config.tune_epochs:  # refused before the search, not after it
        _dist.per_rank_batch(config.tune_batch_size, _dist.rank_and_world()[1])
    head_name, _ = resolve_head(model, head)
    head_shape(model, head_name)  # the privacy head copies a Linear head's shape
    train, val = as_bias_datasets(train, val)  # any (x, y, b) datasets (the data contract), common metadata
    identity = {"weights": tensors_sha256(model.state_dict()), **(checkpoint_meta or {})}  # before any change
    search = _Search(model, head=head_name, train=train, val=val, config=config, device=device, callback=callback)
    search.input_identity = identity
    time_offset = 0.0
    if resume:
        if checkpoint_dir is None:
            raise ConfigError("resume=True needs the checkpoint_dir of the interrupted search")
        time_offset = search.load_checkpoint(checkpoint_dir)
    else:
        search.pretrain_heads()
        search.initial_record()
    try:
        while not search.progress["done"]:
            rec = search.run_epoch(start, time_offset)
            if checkpoint_dir is not None and _dist.is_main_process():
                search.save_checkpoint(checkpoint_dir, wall_time_s=time_offset + time.perf_counter() - start)
            if callback is not None and _dist.is_main_process():
                callback({"kind": "epoch", **rec})
    except KeyboardInterrupt:
        # the last completed epoch (and the best hard state so far) is already in checkpoint_dir
        raise
    return _finish(
        search, model, inplace=inplace, no_harm=no_harm, wall_time_s=time_offset + time.perf_counter() - start
    )


def _stage(name: str, model: nn.Module, search: _Search, **extra) -> dict[str, Any]:
    """One stage of the do-no-harm record: ``model``'s D^u_val group-mean accuracy, its standard error, accuracy."""
    device = next(model.parameters()).device
    with torch.no_grad():
        out = collect_outputs(model, search.val, with_bottleneck=False, device=device)
    return {"stage": name, **group_accuracy(out.logits.argmax(1), out.y, out.b), **extra}


def _unchanged(search: _Search, tune, eraser, head_refit) -> bool:
    """The exported model is the input model: the gates kept every weight (epoch 0 selected) and no later step
    changed anything (no tuned epoch chosen, no eraser, the head refit kept the head)."""
    return (
        search.best["epoch"] == 0
        and (tune is None or tune["chosen_epoch"] == 0)
        and eraser is None
        and (head_refit is None or head_refit["kept_lam"] is None)
    )


def _finish(search: _Search, model: nn.Module, *, inplace: bool, no_harm: bool, wall_time_s: float) -> FFWResult:
    cfg = search.cfg
    # the input model's D^u_val numbers, measured on the model itself (also after a resume)
    stages = [_stage("input model", model, search)]
    if search.best["epoch"] > 0 and not search.best.get("keeps_task", False):
        search.best["selection_note"] = (
            "no gated candidate kept the vanilla model's D^u_val task accuracy "
            f"({100 * search.history[0]['val_hard']['task']:.1f} %): selected by the score alone"
        )
    search.gated.load_gate_tensors(search.best_gates)
    search.state.hard = True
    masks = search.gated.hard_masks()
    shapes = None
    if cfg.mode == "unstructured":
        # on a copy, also with inplace=True: the user's model takes the result only once do-no-harm accepted it
        exported = apply_unstructured_masks(model, {f"{k}.weight": v for k, v in masks.items()}, copy_model=True)
        sparsity = unstructured_sparsity(masks)
        sparsity["counts_head"] = cfg.include_head
        if search.gated.ungated:  # e.g. an attention's in_proj_weight, a positional embedding, with why
            sparsity["ungated"] = dict(search.gated.ungated)
    else:
        example = next(iter(iterate_batches(search.train, batch_size=2))).x
        exported, shapes = prune_structured(model, masks, head=search.head, example=example)
        sparsity = structured_sparsity(masks, model, exported)
        sparsity["ungated"] = dict(search.gated.ungated)  # e.g. residual-stream channels of a ResNet, with why
    exported.eval()
    stages.append(
        _stage(
            f"gates (epoch {search.best['epoch']}"
            + (", the model as given)" if search.best["epoch"] == 0 else ", hard mask)"),
            exported,
            search,
        )
    )
    tune = tune_kept_weights(exported, search, callback=search.callback)
    if tune is not None:
        kept = (
            f"epoch {tune['chosen_epoch']} of {tune['epochs']}"
            if tune["chosen_epoch"]
            else f"none of {tune['epochs']} epochs beat the gates' state"
        )
        stages.append(_stage(f"weight tuning ({kept})", exported, search))
    head, eraser, head_refit = _after_gates(exported, search)
    if eraser is not None or head_refit is not None:
        stages.append(_stage(_steps_name(eraser, head_refit), exported, search))
    choice = None
    if _ungated_differs(search, tune):
        plain, plain_head, plain_eraser, plain_refit, plain_stage = _ungated_candidate(model, search)
        stages.append(plain_stage)
        choice = _choose(stages[-2], plain_stage, search.floor)
        if choice["kept"] == "ungated":  # the gated candidate's own stages stay on record beside the choice
            choice["gated_pipeline"] = {"tune": tune, "eraser": eraser, "head_refit": head_refit}
            exported, head, eraser, head_refit, tune, shapes = plain, plain_head, plain_eraser, plain_refit, None, None
            masks = {k: torch.ones_like(v) for k, v in masks.items()}  # every weight kept
            sparsity = _kept_everything(sparsity, masks, cfg.mode, model, exported)
    final = stages[-1] if choice is None or choice["kept"] == "ungated" else stages[-2]
    unchanged = (
        _unchanged(search, tune, eraser, head_refit)
        if choice is None or choice["kept"] == "gated"
        else (eraser is None and (head_refit is None or head_refit["kept_lam"] is None))
    )
    judged = verdict(stages, search.floor, unchanged=unchanged, final=final)
    result = FFWResult(
        model=exported,
        masks=masks,
        config=cfg,
        head=head,
        history=search.history,
        selected=search.best,
        sparsity=sparsity,
        stop_reason=search.progress["stop_reason"],
        wall_time_s=wall_time_s,
        gated=search.gated,
        privacy_heads=search.heads,
        shapes=shapes,
        eraser=eraser,
        head_refit=head_refit,
        tune=tune,
        no_harm=judged,
        choice=choice,
    )
    if no_harm:
        enforce(judged, result)  # raises NoImprovementError: nothing returned, the user's model untouched
    if inplace:  # unstructured, no tuning, no eraser: the same architecture, the masks (and a refit head) baked in
        model.load_state_dict(exported.state_dict())
        result.model = model.eval()
    return result


def _steps_name(eraser, head_refit) -> str:
    return " + ".join(n for n, on in (("eraser", eraser), ("head refit", head_refit)) if on is not None)


def _ungated_differs(search: _Search, tune) -> bool:
    """compare_ungated applies: the after-gate stages are on, and the gated pipeline changed the network before
    them (otherwise its candidate is the ungated one already)."""
    cfg = search.cfg
    if not cfg.compare_ungated or (cfg.erase == "none" and not cfg.refit_head):
        return False
    return search.best["epoch"] > 0 or (tune is not None and tune["chosen_epoch"] > 0)


def _ungated_candidate(model: nn.Module, search: _Search):
    """The after-gate stages (eraser, head refit) on a copy of the input network, no gate and no tuning: the other
    candidate of compare_ungated. Returns the network, its head, the eraser / refit records and its D^u_val stage."""
    plain = copy.deepcopy(model).to(search.device).eval()
    freeze(plain)
    head, eraser, head_refit = _after_gates(plain, search)
    steps = _steps_name(eraser, head_refit) or "no change"
    return plain, head, eraser, head_refit, _stage(f"no gates: {steps} on the input model", plain, search)


UNGATED_RULE = (
    "the gated pipeline and the same after-gate stages on the input network without gates: the one with the higher "
    "D^u_val group-mean accuracy is kept (a near-chance candidate never; a tie keeps the gated one)"
)


def _choose(gated: dict[str, Any], ungated: dict[str, Any], floor: dict[str, float]) -> dict[str, Any]:
    """compare_ungated's rule (``UNGATED_RULE``) on the two candidates' D^u_val stage records."""
    gated_ok, ungated_ok = not near_chance(gated["accuracy"], floor), not near_chance(ungated["accuracy"], floor)
    better = ungated["group_mean"] > gated["group_mean"]
    kept = "ungated" if ungated_ok and (better or not gated_ok) else "gated"
    return {"kept": kept, "gated": gated, "ungated": ungated, "rule": UNGATED_RULE}


def _kept_everything(sparsity: dict[str, Any], masks: dict[str, Tensor], mode: str, model, exported) -> dict[str, Any]:
    """The sparsity record of the ungated candidate (every mask 1), with the gated record's notes kept."""
    fresh = unstructured_sparsity(masks) if mode == "unstructured" else structured_sparsity(masks, model, exported)
    return {**sparsity, **fresh}


def _after_gates(exported: nn.Module, search: _Search) -> tuple[str, dict[str, Any] | None, dict[str, Any] | None]:
    """The closed-form steps on the exported model (in place), from one pass over D^u_train and D^u_val: the
    eraser in front of the head (``erase``), then the head's refit on the (erased) bottleneck (``refit_head``).
    Returns the head's name and what each step did (None when off); neither is in the search's wall time."""
    cfg = search.cfg
    if cfg.erase == "none" and not cfg.refit_head:
        return search.head, None, None
    start = time.perf_counter()
    device = next(exported.parameters()).device
    train = collect_outputs(exported, search.train, head=search.head, device=device)
    val = collect_outputs(exported, search.val, head=search.head, device=device)
    head, eraser, head_refit, fits = search.head, None, None, None
    train_z, val_z = train.z, val.z
    if cfg.erase != "none":
        head, eraser, train_z, val_z, fits = _erase(exported, search, train, val)
        eraser["time_s"] = time.perf_counter() - start
    if cfg.refit_head:  # a gated head keeps its pruned zeros; the eraser's scoring fits are reused, not redone
        head_refit = {
            "head": head,
            **refit_head(
                exported.get_submodule(head),
                train_z=train_z,
                train_y=train.y,
                train_b=train.b,
                val_z=val_z,
                val_y=val.y,
                keep_zeros=cfg.include_head,
                fits=fits,
            ),
        }
    return head, eraser, head_refit


# within-target directions tried by erase="conditional" (clipped to how many there are), fewest first
CONDITIONAL_RANKS = (0, 5, 10, 20, 40, 80, 10_000)


def _choose_conditional(
    head: nn.Module, search: _Search, train, val
) -> tuple[LinearEraser, dict[str, Any], dict[float, dict[str, Tensor]], tuple[Tensor, Tensor]]:
    """erase="conditional": the candidate erasers (the linear one plus k within-target directions) scored by
    D^u_val task accuracy - through the head refit on each erased D^u_train when ``refit_head`` (the lambda the
    full refit picks for k = 0, one fit per candidate), else through the head as it is - and the one that erases
    most among those within one standard error of the best (the one-standard-error rule: no tolerance to tune).
    Also returns the head fits made for the chosen candidate (lam -> parameters) and the erased D^u_train / D^u_val
    bottlenecks they were made on (on the CPU, recomputed bit for bit rather than kept for every candidate): the
    final refit reuses both, so the fits match their inputs exactly."""
    cards = search.bias_cardinalities
    candidates = conditional_erasers(train.z, train.y, train.b, cards, ranks=CONDITIONAL_RANKS)
    scored, grid, fits = [], REFIT_GRID, []
    for i, (eraser, info) in enumerate(candidates):
        with torch.no_grad():
            zt, zv = eraser(train.z), eraser(val.z)
        work = copy.deepcopy(head).cpu()
        fits.append({})
        if search.cfg.refit_head:
            fit = refit_head(
                work,
                train_z=zt,
                train_y=train.y,
                train_b=train.b,
                val_z=zv,
                val_y=val.y,
                keep_zeros=search.cfg.include_head,
                grid=grid,
                fits=fits[-1],
            )
            if i == 0:  # k = 0 first: its lambda scores the others (none kept: the original head does)
                grid = () if fit["kept_lam"] is None else (fit["kept_lam"],)
        with torch.no_grad():
            scored.append(
                {"within_target_rank": info["within_target_rank"], "val_task": logits_accuracy(work(zv), val.y)}
            )
    best = max(c["val_task"] for c in scored)
    stderr = math.sqrt(best * (1 - best) / len(val.y))
    pick = max(i for i, c in enumerate(scored) if c["val_task"] >= best - stderr)
    eraser, info = candidates[pick]
    with torch.no_grad():
        erased = eraser(train.z), eraser(val.z)
    return (
        eraser,
        {
            **info,
            "candidates": scored,
            "val_task_stderr": stderr,
            "selection": "most within-target directions whose D^u_val task accuracy is within one standard "
            "error of the best candidate's",
        },
        fits[pick],
        erased,
    )


def _erase(
    exported: nn.Module, search: _Search, train, val_before
) -> tuple[str, dict[str, Any], Tensor, Tensor, dict[float, dict[str, Tensor]]]:
    """Fit the eraser on the exported model's D^u_train bottleneck (the search's bias labels) and put it in
    front of the head (in place); returns the new head name, what the eraser did with its effect on D^u_val,
    the erased D^u_train and D^u_val bottlenecks, and the head fits already made behind it (for the refit)."""
    device = next(exported.parameters()).device
    cards = search.bias_cardinalities  # each attribute's one-hot and readability with its own K
    fits: dict[float, dict[str, Tensor]] = {}
    if search.cfg.erase == "conditional":
        eraser, fit, fits, (train_after, z_after) = _choose_conditional(
            exported.get_submodule(search.head), search, train, val_before
        )
    else:
        eraser, fit = fit_linear_eraser(train.z, train.b, cards)
        with torch.no_grad():  # on the CPU, where the collected features are
            train_after, z_after = eraser(train.z), eraser(val_before.z)
    head = attach_eraser(exported, search.head, eraser.to(device))
    with torch.no_grad():  # D^u_val behind the eraser from the features already collected: no second forward pass
        logits_after = exported.get_submodule(head)(z_after.to(device)).cpu()  # HEAD.head, behind the eraser

    def readability(z: Tensor, b: Tensor) -> float:  # the search's closed-form reading, whole split, ridge 1e-2
        return sum(lda_readability(z, c, k) for c, k in zip(bias_columns(b), cards))

    return (
        head,
        {
            "kind": search.cfg.erase,
            "head": search.head,
            "dim": int(train.z.shape[1]),
            **fit,
            "val_task_before": logits_accuracy(val_before.logits, val_before.y),
            "val_task_after": logits_accuracy(logits_after, val_before.y),
            "val_readability_before": readability(val_before.z, val_before.b),
            "val_readability_after": readability(z_after, val_before.b),
        },
        train_after,
        z_after,
        fits,
    )
