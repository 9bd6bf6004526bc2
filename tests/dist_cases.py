"""Shared by tests/test_dist.py (1 process) and tests/dist_worker.py (under torchrun): the same tiny training
of every registered method, so that a W-rank run can be compared with the 1-rank run.

Sizes are chosen so that DistributedSampler needs no padding at W = 2 (every epoch's order has an even
length: 400 samples, CALM's 380 after its 5 % hold-out, JTT's upsampling by an odd factor 3), which makes
the W-rank run the same computation as the 1-rank run up to the order of floating-point sums.
"""

from __future__ import annotations

import torch

from debiaskit.data import make_splits
from debiaskit.methods import METHODS, build_method
from debiaskit.models import build_model
from debiaskit.train import TrainConfig, TrainingMethod, fit

GLOBAL_BATCH = 64
EPOCHS = 2
# per-method settings that keep each run to about a second (the defaults are sized for real data)
OVERRIDES = {
    "jtt": {"id_epochs": 1, "lambda_up": 3},
    "dcwp": {"erm_epochs": 1, "mask_iters": 10},
    "calm": {"warmup_epochs": 1},
    "vcba": {"stage1_epochs": 1},
    "fmd": {"pool_size": 200, "n_bias_pairs": 100, "n_val": 100, "top_k": 50},
}


def trainable_methods() -> list[str]:
    """Every registered method that trains (post-hoc-only entries such as ffw refuse to)."""
    return sorted(
        name
        for name, info in METHODS.items()
        if isinstance(info.factory, type) and issubclass(info.factory, TrainingMethod)
    )


def toy_splits():
    return make_splits("biased-toy", params={"rho": 0.95}, seed=0, unbiased_size=600, train_size=400)


def train_method(name: str, splits, *, amp: str = "off") -> dict[str, torch.Tensor]:
    """Train ``name`` for EPOCHS epochs; returns the final model's and the method's tensors (CPU, by name)."""
    method, _ = build_method(name, dataset="biased-toy", **OVERRIDES.get(name, {}))
    torch.manual_seed(0)
    model = build_model("mlp", num_classes=splits.num_classes, input_shape=splits.train.input_shape)
    result = fit(
        model,
        splits.train,
        method=method,
        num_classes=splits.num_classes,
        head="fc",
        progress=False,
        config=TrainConfig(epochs=EPOCHS, batch_size=GLOBAL_BATCH, seed=0, amp=amp),
    )
    out = {f"model.{k}": v.detach().cpu().clone() for k, v in result.model.state_dict().items()}
    for k, v in method.state_dict().items():
        if torch.is_tensor(v) and not k.endswith("_extra_state"):
            out[f"method.{k}"] = v.detach().cpu().clone()
    out["history.loss"] = torch.tensor([r.get("loss", float("nan")) for r in result.history], dtype=torch.float64)
    return out


def reference_model(splits) -> torch.nn.Module:
    """The trained model that the audit and FFW cases work on (vanilla, one process, EPOCHS epochs)."""
    torch.manual_seed(0)
    model = build_model("mlp", num_classes=splits.num_classes, input_shape=splits.train.input_shape)
    return fit(
        model,
        splits.train,
        num_classes=splits.num_classes,
        head="fc",
        progress=False,
        config=TrainConfig(epochs=EPOCHS, batch_size=GLOBAL_BATCH, seed=0),
    ).model


def audit_case(model, splits) -> dict[str, float]:
    """The audit's headline numbers (privacy head fitted on gathered bottleneck features)."""
    from debiaskit.audit import audit_model

    report = audit_model(
        model,
        test=splits.test,
        unbiased_train=splits.unbiased_train,
        unbiased_val=splits.unbiased_val,
        head="fc",
        seed=0,
        counterfactual=False,
    )
    headline = report.headline()
    where = headline.pop("where")  # flat numbers: one per point read, and the per-class mean
    out = {k: v for k, v in headline.items() if v is not None}
    out.update({f"where {p['point']}": p["accuracy"] for p in where["points"]})
    out["where per-class mean"] = where["per_class"]["mean_accuracy"]
    return out


def ffw_case(model, splits) -> dict[str, torch.Tensor]:
    """A short FFW search (360 D^u_train samples, global batch 64): gates, hard masks, D^u_val history."""
    from debiaskit.ffw import find_fantastic_weights

    result = find_fantastic_weights(
        model,
        head="fc",
        train=splits.unbiased_train,
        val=splits.unbiased_val,
        mode="unstructured",
        max_levels=2,
        max_epochs_per_level=2,
        head_pretrain_epochs=2,
        batch_size=GLOBAL_BATCH,
        seed=0,
        progress=False,
        tune_epochs=2,
        no_harm=False,  # ranks' parity, not the guard (test_ffw_no_harm.py)
        # the tuned network itself: a refit Linear head on 360 separable toy samples has
        # weights in the hundreds, which amplify float-order differences of its inputs
        erase="none",
        refit_head=False,
    )
    out = {f"mask.{k}": v.detach().cpu().clone() for k, v in result.masks.items()}
    # the kept weights tuned under J (each rank its share of the batches, D on the gathered global batch)
    out.update({f"model.{k}": v.detach().cpu().clone() for k, v in result.model.state_dict().items()})
    out["tune.val"] = torch.tensor(
        [[h["val"][k] for k in ("task", "ce", "dependence")] for h in result.tune.history], dtype=torch.float64
    )
    out.update({f"gate.{k}": v.detach().cpu().clone() for k, v in result.gated.gate_tensors().items()})
    out["history.val_hard"] = torch.tensor(
        [[r["val_hard"][k] for k in ("task", "ce", "bias", "mi")] for r in result.history], dtype=torch.float64
    )
    out["selected_epoch"] = torch.tensor(result.selected["epoch"])
    return out


def train_interrupted_then_resumed(name: str, splits, checkpoint) -> dict[str, torch.Tensor]:
    """``train_method``, interrupted at the first step of epoch 2 (after epoch 1's checkpoint), then resumed
    from the checkpoint with a fresh model and method (as ``train --resume`` does); the same tensors."""
    from debiaskit import _dist

    method, _ = build_method(name, dataset="biased-toy", **OVERRIDES.get(name, {}))
    step = method.training_step

    def interrupted(batch, ctx):
        if ctx.epoch == 1:
            raise KeyboardInterrupt("simulated interruption")
        return step(batch, ctx)

    method.training_step = interrupted
    config = TrainConfig(epochs=EPOCHS, batch_size=GLOBAL_BATCH, seed=0)
    torch.manual_seed(0)
    model = build_model("mlp", num_classes=splits.num_classes, input_shape=splits.train.input_shape)
    try:
        fit(
            model,
            splits.train,
            method=method,
            num_classes=splits.num_classes,
            head="fc",
            progress=False,
            config=config,
            checkpoint=checkpoint,
        )
    except KeyboardInterrupt:
        pass
    _dist.barrier()  # rank 0 has written the checkpoint (a real resume is a new launch)
    method, _ = build_method(name, dataset="biased-toy", **OVERRIDES.get(name, {}))
    torch.manual_seed(123)  # the checkpoint, not the seed, must decide the weights
    model = build_model("mlp", num_classes=splits.num_classes, input_shape=splits.train.input_shape)
    result = fit(
        model,
        splits.train,
        method=method,
        num_classes=splits.num_classes,
        head="fc",
        progress=False,
        config=config,
        checkpoint=checkpoint,
        resume=True,
    )
    return {f"model.{k}": v.detach().cpu().clone() for k, v in result.model.state_dict().items()}
