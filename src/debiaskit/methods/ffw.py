"""FFW (Nahon et al., ECCV 2024) in the method registry: a post-hoc method, it never trains.

FFW learns gates on the weights (or units) of a *frozen* vanilla model with the bias labels of a
small unbiased set D^u, and exports the hard-masked network; no weight changes. The registry entry
lets the comparison harness run it on each cell's vanilla model (``apply``); training with it is
refused: train a vanilla model, then run ``debiaskit ffw RUN_DIR --mode unstructured|structured``.

``debiaskit ffw`` reads the named presets of ``debiaskit.ffw.FFW_PRESETS`` (``--preset default|fast|paper``):
``default`` is FFWConfig's defaults (gates, then weight tuning, eraser, head refit, and the choice between that
pipeline and the eraser + refit on the ungated model, the better on D^u_val kept), ``fast`` the same pipeline in
fewer epochs, ``paper`` the paper's FFW (privacy-head MI, tau halved at each plateau until soft and hard agree, the
gates alone). The harness here runs the pruned sub-network
alone, as the paper preset does (no weight tuning, eraser or head refit), with the probe-free bias term and the
bounded budget of FFWConfig's defaults.

Example::

    from debiaskit.methods import get_method, method_defaults
    info = get_method("ffw")
    config = {k: d.value for k, d in method_defaults("ffw", "biased-mnist").items()}
    pruned, state = info.apply(vanilla_model, splits=splits, head="fc", seed=0, **config)
"""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from ..errors import ConfigError
from ..ffw import FFW_PRESETS, find_fantastic_weights
from ._registry import Default, MethodInfo, register_method

# the paper preset's "no weight changed" (ffw/_presets.py): what the harness compares is the pruned sub-network
_PAPER_SUBNETWORK = {k: FFW_PRESETS["paper"][k] for k in ("erase", "refit_head", "tune_epochs")}


def apply_ffw(
    model: nn.Module, *, splits, head: str | None = None, seed: int = 0, **config
) -> tuple[nn.Module, dict[str, Any]]:
    """Post-hoc entry used by the comparison harness: FFW on a copy of ``model``, gates and privacy head
    trained on ``splits.unbiased_train``, selection on ``splits.unbiased_val`` (bias labels of D^u).

    Returns the exported hard-masked network and JSON-able diagnostics (selected D^u_val record,
    sparsity, stop reason).
    """
    # the harness audits the head it names and compares pruned sub-networks (the paper's FFW): no linear eraser in
    # front of that head (`debiaskit ffw` adds one by default and audits behind it), and no refit of that head
    if config.get("erase", "none") != "none":
        raise ConfigError(
            "the comparison harness runs FFW without the linear eraser (it audits the head it names); "
            "use `debiaskit ffw RUN_DIR` for FFW with the eraser"
        )
    if config.get("refit_head", False):
        raise ConfigError(
            "the comparison harness runs FFW without the head refit (it compares pruned sub-networks; "
            "'retrain last layer' is its own row); use `debiaskit ffw RUN_DIR` for FFW with it"
        )
    if config.get("tune_epochs", 0):
        raise ConfigError(
            "the comparison harness runs FFW as the pruned sub-network alone (the kept weights as "
            "they were); use `debiaskit ffw RUN_DIR --tune-epochs N` for FFW with weight tuning"
        )
    config = {**config, **_PAPER_SUBNETWORK}
    # no_harm=False: the harness compares the pruned sub-network FFW finds, a collapsed one included (a row of the
    # table, not a refusal); the do-no-harm verdict goes into the cell's diagnostics
    result = find_fantastic_weights(
        copy.deepcopy(model),
        head=head,
        train=splits.unbiased_train,
        val=splits.unbiased_val,
        seed=seed,
        progress=False,
        no_harm=False,
        **config,
    )
    info = {
        "selected": result.selected,
        "sparsity": result.sparsity,
        "stop_reason": result.stop_reason,
        "search_time_s": result.search_time_s,
        "no_harm": None if result.no_harm is None else result.no_harm.to_json(),
    }
    return result.model, info


def _refuse_training(**config) -> None:
    raise ConfigError(
        "ffw is a post-hoc method: it does not train a model, it prunes a trained one. Train a "
        "vanilla model first (`debiaskit train --method vanilla --out RUN_DIR ...`), then run "
        "`debiaskit ffw RUN_DIR --mode unstructured` (or `--mode structured`)"
    )


_BUDGET = "ours (CPU budget; paper: until plateau)"

_FFW_DEFAULTS = {
    "gamma": Default(10.0, "paper"),
    "tau_decay": Default(0.5, "paper (Alg. 1; the public code uses 0.1)"),
    "include_head": Default(False, "paper text (encoder only; the public code also gates fc)"),
    "head_pretrain_epochs": Default(10, _BUDGET),
}
_FFW_SELECTION = "FFW's own rule: hard-masked model, lowest CE + gamma MI on D^u_val (uses bias labels of D^u)"
# --full: the paper's budget for the privacy head's pre-training. No epochs-per-level cap here: FFWConfig's 10-epoch
# budget over its 10 tau levels (1 down to 1/512) already caps every level at 1 epoch (FFWConfig.level_cap)
_FFW_BUDGETS = {"full": {"head_pretrain_epochs": 30}}

register_method(
    MethodInfo(
        name="ffw",
        description="FFW: gates on the frozen vanilla weights so the bottleneck carries no bias "
        "(`debiaskit ffw --preset default|fast|paper`)",
        factory=_refuse_training,
        uses_bias_labels=True,
        uses_unbiased_data=True,
        retrains=False,
        post_hoc=True,
        apply=apply_ffw,
        reference="Nahon et al., ECCV 2024",
        selection="own",
        selection_text=_FFW_SELECTION,
        budgets=_FFW_BUDGETS,
        defaults={"*": {"mode": Default("unstructured", "paper (Table 2 main rows)"), **_FFW_DEFAULTS}},
    )
)
# FFW's other mode as its own row of the comparison tables (gates on whole units, exported physically smaller)
register_method(
    MethodInfo(
        name="ffw-structured",
        description="FFW, structured: gates on whole units (channels / neurons), smaller export "
        "(`debiaskit ffw --mode structured --preset default|fast|paper`)",
        factory=_refuse_training,
        uses_bias_labels=True,
        uses_unbiased_data=True,
        retrains=False,
        post_hoc=True,
        apply=apply_ffw,
        reference="Nahon et al., ECCV 2024",
        selection="own",
        selection_text=_FFW_SELECTION,
        budgets=_FFW_BUDGETS,
        defaults={"*": {"mode": Default("structured", "paper (eq. 9, Table 2 structured rows)"), **_FFW_DEFAULTS}},
    )
)
