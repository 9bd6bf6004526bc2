"""FFW on a run folder made by ``debiaskit train``: search, before/after audit, export, all written atomically.

An FFW folder holds ``ffw.json`` (settings, history, selection, before/after numbers, sparsity,
timings), ``report.md``, ``model.safetensors`` (the exported plain network) and
``masks.safetensors`` (1 = kept). While the search runs, a resumable checkpoint lives in the hidden
sibling ``.NAME.partial/`` (safetensors + JSON); it is removed once the folder is complete.
"""

from __future__ import annotations

import base64
import datetime as _dt
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import _dist
from .._io import PARTIAL_FILES, folder_identity, json_safe, log, real_dir, remove_owned, tensors_sha256, write_text
from .._validate import SEED, require
from ..audit import (
    PROBES,
    WHERE_MARGIN,
    AttributeAudit,
    AuditReport,
    ClassProbe,
    GroupMetrics,
    PerClassProbe,
    PointProbe,
    audit_into,
    audit_model,
    bottleneck_of,
    most_read,
    per_class_sentences,
    point_key,
    point_label,
    probe_suite,
    readable,
    readable_upstream,
)
from ..data import BiasDataset, iterate_batches, splits_from_spec
from ..discover import load_pseudo_bias, with_pseudo_bias
from ..errors import ConfigError, DataError, NoImprovementError, RunExistsError
from ..models import Outputs, collect_outputs
from ..runs import FFWRecord, check_signing_key, load_run, package_versions, read_record, save_weights, write_record
from ._adversary import ADVERSARIES
from ._checkpoint import CHECKPOINT_FILE
from ._config import SELECTIONS, FFWConfig
from ._export import count_parameters, inference_time, save_masks
from ._folders import FFW_FOLDER
from ._pipeline import FFWResult, find_fantastic_weights
from ._presets import DEFAULT_PRESET
from ._save import load_pruned_model

FFW_FILE = "ffw.json"


def default_out(
    run_dir: Path,
    mode: str,
    gamma: float,
    include_head: bool = False,
    bias_labels: str = "true",
    *,
    input_weights: bool = False,
    preset: str = DEFAULT_PRESET,
) -> Path:
    """RUN_DIR/ffw-MODE-gGAMMA plus one tag per option that changes what is gated or read (two different
    searches never share a default folder: the second would stop at "exists, pass --force")."""
    g = f"{gamma:g}"
    suffix = (
        ("-head" if include_head else "")
        + ("-input-weights" if input_weights else "")
        + ("-discovered" if bias_labels == "discovered" else "")
        + ("" if preset == DEFAULT_PRESET else f"-{preset}")
    )
    return Path(run_dir) / f"ffw-{mode}-g{g}{suffix}"


def partial_dir(out: Path) -> Path:
    out = Path(out)
    return out.parent / f".{out.name}.partial"


def _discovered_splits(run_dir: Path, splits) -> tuple[BiasDataset, BiasDataset]:
    """D^u_train and D^u_val with the pseudo-bias that ``debiaskit discover RUN_DIR`` wrote as bias labels."""
    return tuple(
        with_pseudo_bias(getattr(splits, split), load_pseudo_bias(run_dir, split), name=split)
        for split in ("unbiased_train", "unbiased_val")
    )


@dataclass
class FFWRun:
    result: FFWResult
    before: Any  # AuditReport of the vanilla model
    after: Any  # AuditReport of the exported model
    out: Path
    info: dict[str, Any]


# seconds of forward passes per network timed (3 to 20 passes after a warm-up): a median of several passes is what
# the report needs, and the default half second per network was a noticeable share of the command
SPEED_BUDGET_S = 0.15


def _speed(result: FFWResult, original: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Median forward time of the hard-masked original-size network vs the exported one."""
    result.gated.state.hard = True
    masked = inference_time(result.gated.model, x, budget_s=SPEED_BUDGET_S)
    exported = inference_time(result.model, x, budget_s=SPEED_BUDGET_S)
    dense = inference_time(original, x, budget_s=SPEED_BUDGET_S)
    return {
        "batch": len(x),
        "original_s": dense,
        "masked_s": masked,
        "exported_s": exported,
        "speedup_vs_original": dense / exported,
        "threads": torch.get_num_threads(),
    }


# Diagnosis thresholds (D^u_val, hard-masked model vs the vanilla model = the search's epoch 0).
NO_GAIN = 0.02  # task accuracy gain below 2 points: FFW found no better sub-network
BIAS_DROP = 0.10  # bias readability fell by at least 10 points: the bias was removed all the same
READABLE_MARGIN = 0.10  # a probe reads the bias when it beats chance (1 / N_B) by more than this


@torch.no_grad()
def probe_readings(
    model: nn.Module,
    splits,
    *,
    head: str,
    seed: int = 0,
    device: str = "cpu",
    probes: tuple[str, ...] = ("sgd5", "mlp", "linear"),
    outputs: dict[str, Outputs] | None = None,
) -> dict[str, float]:
    """Bias extractability of ``model``'s bottleneck on the unbiased test under the stronger probes of
    ``debiaskit.audit.PROBES`` (learnt on D^u_train, selected on D^u_val; first bias attribute).

    ``outputs``: the model's outputs already collected per split (an audit's, keyed "unbiased_train",
    "unbiased_val", "test"): read instead of running the model again; a split missing there is collected."""
    outputs = outputs or {}
    outs = [
        outputs[k] if k in outputs else collect_outputs(model, getattr(splits, k), head=head, device=device)
        for k in ("unbiased_train", "unbiased_val", "test")
    ]
    z, col = [], []
    for o in outs:  # collected with the bottleneck and the bias labels (the splits are bias datasets)
        assert o.z is not None and o.b is not None
        z.append(o.z)
        col.append(o.b if o.b.ndim == 1 else o.b[:, 0])
    return probe_suite(
        z[0],
        col[0],
        z[1],
        col[1],
        z[2],
        col[2],
        num_bias=first_attribute_classes(splits),
        seed=seed,
        probes=probes,
    )


def first_attribute_classes(splits) -> int:
    """The number of classes of the first bias attribute (the one the stronger probes read): its own count, not
    the largest over the attributes (a binary first attribute beside one with 5 values has chance 1/2, not 1/5)."""
    test = splits.test
    of = getattr(test, "num_bias_classes_of", None)
    return int(of(0)) if of is not None else int(test.num_bias_classes)


# -- the input model's readings: audited and probed once, at the end of its training, reused by every FFW run ---------

STRONG_PROBES = ("sgd5", "mlp", "linear")  # read beside the audit's own probe (PROBES["audit"])
# bump when the audit or a probe changes what it computes: readings recorded before are then recomputed, not reused
READINGS_VERSION = 2  # 2: the audit reads the bias at every block and within each class (audit/_where.py)
_AUDITED = ("test", "unbiased_train", "unbiased_val")


def readings_key(
    model: nn.Module, splits, *, head: str, seed: int, device: str, counterfactual: bool
) -> dict[str, Any] | None:
    """Everything a model's audit and probe readings depend on, as recorded beside them: the weights, the head, the
    audited splits' contents (inputs, targets, bias labels, normalisation) and recipe, the seed, the counterfactual
    audit, the device, the processes and the versions. None for data that cannot be fingerprinted (never reused)."""
    if torch.device(device).type not in ("cpu", "cuda"):  # the random state is recorded for these only
        return None
    tensors: dict[str, torch.Tensor] = {}
    norm = {}
    for name in _AUDITED:
        data = getattr(splits, name, None)
        for field in ("images", "y", "b"):
            value = getattr(data, field, None)
            if not isinstance(value, torch.Tensor):
                return None
            tensors[f"{name}.{field}"] = value
        norm[name] = [getattr(data, "mean", None), getattr(data, "std", None)]
    return json_safe(
        {
            "version": READINGS_VERSION,
            "weights": tensors_sha256(model.state_dict()),
            "head": head,
            "data": tensors_sha256(tensors),
            "normalisation": norm,
            "spec": getattr(splits, "spec", None),
            "seed": seed,
            "counterfactual": counterfactual,
            "device": str(device),
            "world_size": _dist.rank_and_world()[1],
            "versions": {k: v for k, v in package_versions().items() if k in ("debiaskit", "torch")},
        }
    )


def _rng_state(device: str) -> dict[str, torch.Tensor]:
    """The global random state (CPU, and the device's own on a GPU)."""
    state = {"cpu": torch.get_rng_state()}
    if torch.device(device).type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, torch.Tensor], device: str) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _encode_rng(state: dict[str, torch.Tensor]) -> dict[str, str]:
    return {k: base64.b64encode(v.numpy().tobytes()).decode() for k, v in state.items()}


def _decode_rng(state: dict[str, str]) -> dict[str, torch.Tensor]:
    return {
        k: torch.frombuffer(bytearray(base64.b64decode(v, validate=True)), dtype=torch.uint8) for k, v in state.items()
    }


def _audit_and_probe(
    model: nn.Module, splits, *, head: str, seed: int, device: str, counterfactual: bool, probes: tuple[str, ...]
) -> tuple[AuditReport, dict[str, float], dict[str, torch.Tensor]]:
    """The audit of ``model`` and its stronger probes, on one collection of its outputs per split, and the global
    random state the audit leaves behind (its privacy head seeds it), which the probes, run after it, do not change:
    the search that follows starts from that state whether these readings are computed or reused, so a setting that
    draws from the global state draws the same numbers (the default settings seed their own generators)."""
    report = audit_model(
        model,
        test=splits.test,
        unbiased_train=splits.unbiased_train,
        unbiased_val=splits.unbiased_val,
        head=head,
        seed=seed,
        counterfactual=counterfactual,
        device=device,
    )
    rng = _rng_state(device)
    if not probes:
        return report, {}, rng
    # the audit's own outputs (an attribute the audit keeps for this): the probes read the same bottleneck
    read = probe_readings(model, splits, head=head, seed=seed, device=device, probes=probes, outputs=report._outputs)
    _set_rng_state(rng, device)
    return report, read, rng


def vanilla_readings(
    model: nn.Module,
    splits,
    *,
    head: str,
    seed: int = 0,
    device: str = "cpu",
    counterfactual: bool = True,
    probes: tuple[str, ...] = STRONG_PROBES,
) -> dict[str, Any] | None:
    """A trained model's audit and stronger-probe readings as ``debiaskit ffw`` reads its input model (its defaults:
    seed 0, the counterfactual audit, every stronger probe), with their :func:`readings_key`: what ``debiaskit train``
    records in run.json (``train_run(readings=...)``) so that FFW reuses them instead of recomputing them. None for
    data that cannot be fingerprinted."""
    key = readings_key(model, splits, head=head, seed=seed, device=device, counterfactual=counterfactual)
    if key is None:
        return None
    report, read, rng = _audit_and_probe(
        model, splits, head=head, seed=seed, device=device, counterfactual=counterfactual, probes=probes
    )
    return json_safe(
        {
            "key": key,
            "audit": report.as_dict(),
            "probes": read,
            "rng_after_audit": _encode_rng(rng),
        }
    )


def _report_from_dict(d: dict[str, Any]) -> AuditReport:
    """An AuditReport from its recorded ``as_dict()`` (JSON: NaN was written as null, a tuple as a list)."""
    attributes = []
    for a in d["attributes"]:
        g = dict(a["groups"])
        g["group_accuracy"] = [[math.nan if v is None else v for v in row] for row in g["group_accuracy"]]
        g["worst_group"] = tuple(g["worst_group"])
        where: dict[str, Any] = {}
        if a.get("points") is not None:
            where["points"] = [PointProbe(**pt) for pt in a["points"]]
        if a.get("per_class") is not None:
            pc = dict(a["per_class"])
            where["per_class"] = PerClassProbe(**{**pc, "classes": [ClassProbe(**c) for c in pc.get("classes", [])]})
        attributes.append(AttributeAudit(**{**a, "groups": GroupMetrics(**g), **where}))
    return AuditReport(**{**d, "attributes": attributes})


def _recorded_readings(run, splits, *, seed: int, device: str, counterfactual: bool, probes: tuple[str, ...]):
    """(audit report, probe readings) of the input model as its run recorded them, or None when they may not be
    reused: none recorded, a run.json not signed with this user's key (or changed since: a folder's numbers are
    data, trusted only when signed; docs/reliability.md), or recorded for other weights, data or settings."""
    recorded = run.record.readings
    if recorded is None:
        return None
    if not run.signed:
        log.warning(
            "%s records its model's audit, but its run.json is not signed with your key or was changed after it was "
            "signed: the audit and probes are computed again, not read from it",
            run.folder,
        )
        return None
    key = readings_key(run.model, splits, head=run.head, seed=seed, device=device, counterfactual=counterfactual)
    got = recorded.get("probes") or {}
    if key is None or recorded.get("key") != key or any(not isinstance(got.get(p), float) for p in probes):
        log.info("%s recorded its model's readings for other weights, data or settings: computed again", run.folder)
        return None
    try:
        report, rng = _report_from_dict(recorded["audit"]), _decode_rng(recorded["rng_after_audit"])
    except (KeyError, TypeError, ValueError, AttributeError):  # signed, but of another layout: compute
        return None
    return report, {p: got[p] for p in probes}, rng


def _input_readings(run, splits, *, seed: int, device: str, counterfactual: bool, probes: tuple[str, ...]):
    """The input model's audit and probe readings (reused: True when read from its run); computed when its run
    recorded none that may be reused."""
    recorded = _recorded_readings(run, splits, seed=seed, device=device, counterfactual=counterfactual, probes=probes)
    if recorded is not None:
        report, read, rng = recorded
        _set_rng_state(rng, device)  # as if the audit had just run (see _audit_and_probe)
        return report, read, True
    report, read, _ = _audit_and_probe(
        run.model, splits, head=run.head, seed=seed, device=device, counterfactual=counterfactual, probes=probes
    )
    return report, read, False


WHERE = "at the bottleneck (the head's input), on the unbiased test split, first bias attribute"


def probe_verdict(
    after: dict[str, float],
    *,
    num_bias: int,
    before: dict[str, float] | None = None,
    task: tuple[float, float] | None = None,
    counterfactual: tuple[float | None, float | None] | None = None,
    where: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The report's sentence about the bias, derived from its own table (every probe's reading before and after,
    the unbiased test's task accuracy and counterfactual bias before and after: all on the unbiased test split).
    ``where``: the after-audit's where table (``AuditReport.headline()["where"]``): a per-class probe that reads the
    bias at the bottleneck withholds "can no longer be read" there too, and earlier blocks that read it are named.

    "The bias can no longer be read" only when every probe reads within READABLE_MARGIN of chance AND the task
    accuracy is at least the input model's (``task`` = (before, after); a network that reads less of the task
    hides the bias too) AND the counterfactual bias did not rise (``counterfactual`` = (before, after), when
    measured). "Harder to read" only when every probe that still reads the bias reads less than before; a probe
    that reads more is said so. Without ``before`` / ``task`` the comparisons cannot be made and are not claimed."""
    chance = 1.0 / num_bias
    still = {k: v for k, v in after.items() if readable(v, num_bias, margin=READABLE_MARGIN)}
    before = before or {}
    more = {k: (before[k], v) for k, v in after.items() if before.get(k) is not None and v > before[k]}
    task_kept = task is not None and task[1] >= task[0]
    t0, t1 = task if task is not None else (math.nan, math.nan)
    cf_before, cf_after = counterfactual or (None, None)
    cf_rose = cf_before is not None and cf_after is not None and cf_after > cf_before
    per_class = (where or {}).get("per_class")
    within = bool(per_class and per_class["readable"])
    upstream = readable_upstream((where or {}).get("points") or [])
    sentences = []
    if not still and task_kept and not cf_rose and not within:
        sentences.append(
            f"The bias can no longer be read {WHERE}: every probe stays within "
            f"{100 * READABLE_MARGIN:.0f} points of chance ({100 * chance:.0f} %), with the task "
            f"accuracy kept ({100 * t0:.1f} -> {100 * t1:.1f} %)"
            + (
                ""
                if cf_after is None
                else f" and the counterfactual bias not raised ({cf_before:.4f} -> {cf_after:.4f})"
            )
            + "."
        )
    elif not still:
        why = []
        if task is None:
            why.append("the task accuracy was not compared")
        elif not task_kept:
            why.append(
                f"the task accuracy fell ({100 * t0:.1f} -> {100 * t1:.1f} %), and a network that "
                "reads less of the task hides the bias too"
            )
        if cf_rose:
            why.append(
                f"the counterfactual bias rose ({cf_before:.4f} -> {cf_after:.4f}): the predictions depend "
                "more on the bias than before"
            )
        if within and per_class is not None:
            why.append(
                f"a probe fitted within target class {per_class['worst_class']} reads it there "
                f"({100 * per_class['worst_accuracy']:.1f} %, chance {100 * per_class['worst_chance']:.1f} %; mean "
                f"over classes {100 * per_class['mean_accuracy']:.1f} %): the bias is still at the bottleneck, "
                "read class by class"
            )
        sentences.append(
            f"Every probe reads within {100 * READABLE_MARGIN:.0f} points of chance "
            f"({100 * chance:.0f} %) {WHERE}, but " + "; ".join(why) + ": this does not show that the bias was removed."
        )
    else:
        names = ", ".join(f"{k} {100 * v:.1f} %" for k, v in still.items())
        less = all(before.get(k) is not None and v < before[k] for k, v in still.items())
        sentences.append(
            f"Stronger probes still read the bias {WHERE} ({names}; chance {100 * chance:.0f} %)"
            + (": FFW made it harder to read, it did not erase it." if less else ".")
        )
        if cf_rose:
            sentences.append(f"The counterfactual bias rose ({cf_before:.4f} -> {cf_after:.4f}, unbiased test).")
    if upstream:
        sentences.append(
            "Earlier blocks still read it (readable upstream, same split): "
            + ", ".join(f"{point_label(p)} {100 * p['accuracy']:.1f} %" for p in upstream)
            + " (see 'Where is the bias read?')."
        )
    if more:
        sentences.append(
            "After FFW these probes read the bias more than before, "
            + WHERE
            + ": "
            + ", ".join(f"{k} {100 * a:.1f} -> {100 * b:.1f} %" for k, (a, b) in more.items())
            + "."
        )
    return {
        "bias_unreadable": not still and task_kept and not cf_rose and not within,
        "readable_within_class": within,
        "readable_upstream": [p["point"] for p in upstream],
        "readable_by": sorted(still),
        "reads_more": sorted(more),
        "task_kept": task_kept,
        "counterfactual_rose": cf_rose,
        "chance": chance,
        "margin": READABLE_MARGIN,
        "where": WHERE,
        "text": " ".join(sentences),
    }


def diagnose(
    history: list[dict[str, Any]],
    selected: dict[str, Any],
    before: dict,
    after: dict,
    *,
    mode: str = "unstructured",
    final_val_task: float | None = None,
    head_refit: bool = True,
    tuned_val_task: float | None = None,
) -> list[str]:
    """Plain-language findings about the search (empty when nothing needs saying).

    "No debiased sub-network": on D^u_val the selected hard-masked model is not above the vanilla model
    (epoch 0) in task accuracy while the bias readability fell - the frozen model learnt (almost) nothing but
    the bias, and pruning can only select among the features it has. Only retraining helps then. In structured
    mode that conclusion does not follow (whole units may be too coarse to separate the bias from the task: on the
    user model of docs/design/ffw-structured.md unstructured FFW found a sub-network structured FFW did not), so the note
    points to unstructured FFW first. ``final_val_task``: the exported model's D^u_val task accuracy after the
    steps that follow the gates (eraser, head refit), when there were any: the model the user gets is judged;
    ``head_refit=False``: the head was not refit, which the note then suggests first (a refit head may read a task
    the vanilla head ignored: docs/design/ffw-defaults.md). ``tuned_val_task``: D^u_val task accuracy after the
    weight tuning (``tune_epochs``; None: no tuning), which then takes the credit the gates did not earn."""
    notes = []
    v_task, g_task = history[0]["val_hard"]["task"], selected["val_hard"]["task"]
    s_task = g_task if final_val_task is None else final_val_task
    if g_task < v_task + NO_GAIN <= s_task and tuned_val_task is not None and tuned_val_task >= v_task + NO_GAIN:
        return [
            f"Only the weight tuning helped: on D^u_val the gates alone reach {100 * g_task:.1f} % task accuracy, "
            f"no more than the vanilla model ({100 * v_task:.1f} %); training the kept weights on D^u_train "
            f"lifted it to {100 * tuned_val_task:.1f} % and the exported model reaches {100 * s_task:.1f} %. FFW "
            "found no debiased sub-network of the frozen model: what you get is a briefly fine-tuned model. "
            "Retraining (`debiaskit train --method calm`, no bias labels needed, or `--method groupdro`) may "
            "recover more."
        ]
    if g_task < v_task + NO_GAIN <= s_task:  # the gates found nothing better; the steps after them did
        return [
            f"Only the head refit helped: on D^u_val the gates alone reach {100 * g_task:.1f} % task accuracy, "
            f"no more than the vanilla model ({100 * v_task:.1f} %); the exported model reaches "
            f"{100 * s_task:.1f} % because its head was refit on D^u_train - the frozen features hold some of "
            "the task that the vanilla head ignored. FFW found no debiased sub-network; retraining "
            "(`debiaskit train --method calm`, no bias labels needed, or `--method groupdro`) may recover more."
        ]
    # both halves of the rule on D^u_val: the bias read there by a cross-fitted linear (LDA) read-out of the vanilla
    # and the selected model (the audit's test-set reading only when a record predates that field)
    b0, b1 = history[0]["val_hard"].get("lda_bias"), selected["val_hard"].get("lda_bias")
    if b0 is None or b1 is None:
        b0, b1 = before.get("bias_extractability"), after.get("bias_extractability")
    if s_task < v_task + NO_GAIN:
        if mode == "structured":
            notes.append(
                f"No debiased sub-network at unit granularity: on D^u_val the FFW model's task accuracy "
                f"({100 * s_task:.1f} %) is not above the vanilla model's ({100 * v_task:.1f} %). Removing whole "
                "units may be too coarse for this model: try `debiaskit ffw RUN --mode unstructured` (gates on "
                "single weights). If that does not help either, retrain: `debiaskit train --method calm` (no bias "
                "labels needed) or `debiaskit train --method groupdro` (with bias labels)."
            )
        elif b0 is not None and b1 is not None and b1 <= b0 - BIAS_DROP:
            notes.append(
                f"No debiased sub-network: on D^u_val the FFW model's task accuracy ({100 * s_task:.1f} %) is not "
                f"above the vanilla model's ({100 * v_task:.1f} %), while the bias read on D^u_val fell "
                f"({100 * b0:.1f} -> {100 * b1:.1f} %). The frozen model learnt (almost) nothing but the bias, and "
                "FFW can only keep or remove what it learnt. Retrain instead: `debiaskit train --method calm` "
                "(no bias labels needed) or `debiaskit train --method groupdro` (with bias labels) - or, if the "
                "vanilla model was trained briefly, train it longer and run FFW again (a model that learnt some of "
                "the task too may hold a sub-network: docs/design/ffw-diagnosis.md)."
            )
        else:
            notes.append(
                f"FFW found no better sub-network: on D^u_val the FFW model's task accuracy ({100 * s_task:.1f} %) "
                f"is not above the vanilla model's ({100 * v_task:.1f} %) and the bias was not removed. Retraining "
                "methods (`debiaskit train --method calm` or `--method groupdro`) may help."
            )
    if notes and not head_refit:
        notes[0] += (
            " The head was not refit (`--no-refit-head`): run FFW again with the head refit first - a head "
            "refit on D^u_train can read a task the vanilla head ignored."
        )
    return notes


def final_val_task(result: FFWResult) -> float | None:
    """D^u_val task accuracy of the exported model after the weight tuning, the eraser and the head refit (None:
    the gates alone)."""
    for step in (result.head_refit, result.eraser):
        if step is not None:
            return step.val_task_after
    return result.tune.val_after["task"] if result.tune else None


def ffw_run(
    run_dir: Path,
    *,
    mode: str = "unstructured",
    gamma: float = 10.0,
    include_head: bool = False,
    out: Path | None = None,
    resume: bool = False,
    force: bool = False,
    bias_labels: str = "true",
    seed: int = 0,
    device: str = "cpu",
    callback: Callable[[dict], None] | None = None,
    audit_counterfactual: bool = True,
    strong_probes: bool = True,
    command: str | None = None,
    splits=None,
    model=None,
    trust_code: bool = False,
    no_harm: bool = True,
    preset: str = DEFAULT_PRESET,
    **overrides,
) -> FFWRun:
    """Run FFW on the vanilla model of ``run_dir`` and write an FFW folder (see module docstring).

    Under torchrun the ranks share the search (see :mod:`debiaskit.ffw._search`) and the audits; rank 0
    alone keeps the interrupted-search folder and writes the FFW folder.

    Example::

        run = ffw_run(Path("runs/vanilla"), mode="structured")
        run.after.headline()["bias_extractability"], run.result.sparsity["overall"]

    ``splits`` / ``model``: for a run trained on data or a model given as Python objects, which its folder
    cannot rebuild (see :func:`debiaskit.runs.load_run`); ``trust_code``: import the user model of a run whose
    ``run.json`` is not signed with your key (see :func:`debiaskit.runs.load_run`). ``resume`` continues only the
    search of this very run: its weights file (SHA-256), model and data are recorded in the checkpoint.

    Do no harm (``ffw/_harm.py``): when the final output is worse than the run's model on D^u_val, near chance, or
    the model unchanged, :class:`~debiaskit.errors.NoImprovementError` is raised and no folder is written (the
    interrupted-search folder is removed: the search finished). ``no_harm=False`` (the benchmark harness) writes
    the folder all the same, with the verdict in ``ffw.json`` (``search.no_harm``) and in the report.

    ``preset`` (``FFW_PRESETS``: "default", "fast", "paper"): the settings ``overrides`` are laid over; a keyword
    given here wins over the preset. The preset is recorded in ``ffw.json`` (``preset``) and the report.

    The input model's audit and stronger-probe readings are not computed again when its run recorded them
    (``debiaskit train`` does: :func:`vanilla_readings`) in a run.json signed with your key, for the same weights,
    data, seed, counterfactual audit and device; otherwise they are computed (``ffw.json``: ``before_readings``).
    """
    if bias_labels not in ("true", "discovered"):
        raise ConfigError(f"--bias-labels must be 'true' or 'discovered', got {bias_labels!r}")
    # fail fast (an unknown preset included)
    config = FFWConfig.from_preset(preset, mode=mode, gamma=gamma, include_head=include_head, seed=seed, **overrides)
    start = time.perf_counter()
    device = str(_dist.check_device(device))  # this rank's GPU under torchrun, before any collective
    check_signing_key()  # ffw.json is signed at the end: a bad key is said now, not after the search
    out = (
        Path(out)
        if out is not None
        else default_out(
            run_dir, mode, gamma, include_head, bias_labels, input_weights=config.input_weights, preset=preset
        )
    )
    run = load_run(run_dir, splits=splits, model=model, trust_code=trust_code)
    # before any compute; under torchrun rank 0 writes and decides about the interrupted search, for every rank
    with _dist.rank0_folder(
        out, kind=FFW_FOLDER, force=force, inputs=(Path(run_dir),), pinned=(run.identity,)
    ) as staging:
        main = staging is not None  # staging: this rank's folder to write, None on the other ranks
        resume = _dist.broadcast_object(
            _prepare_partial(partial_dir(out), resume=resume, force=force) if main else None
        )
        result, before, after, speed, probes = _search_and_audit(
            run,
            run_dir,
            config,
            bias_labels=bias_labels,
            seed=seed,
            device=device,
            partial=partial_dir(out),
            resume=resume,
            callback=callback,
            audit_counterfactual=audit_counterfactual,
            strong_probes=strong_probes,
            no_harm=no_harm,
        )
        info = _ffw_info(
            run,
            run_dir,
            config,
            result,
            before,
            after,
            speed,
            probes,
            command=command,
            mode=mode,
            bias_labels=bias_labels,
            wall=time.perf_counter() - start,
        )
        info["preset"] = preset
        if staging is not None:
            info["weights_sha256"] = save_weights(result.model, staging / "model.safetensors")
            info["masks_sha256"] = save_masks(result.masks, staging / "masks.safetensors")
            write_record(staging / FFW_FILE, FFWRecord.from_dict(info, file=staging / FFW_FILE))
            write_text(staging / "report.md", report_markdown(info))
    if _dist.is_main_process():
        _remove_partial(partial_dir(out))
    return FFWRun(result=result, before=before, after=after, out=out, info=info)


def has_checkpoint(partial: Path) -> bool:
    """True when ``partial`` holds a checkpoint to resume from (an empty folder does not)."""
    return (Path(partial) / CHECKPOINT_FILE).is_file()


_PARTIAL = "an interrupted FFW search's checkpoint"


def _remove_partial(partial: Path) -> list[str]:
    """Remove the search's checkpoint folder - only the files the search writes, never through a link; returns
    what is left (files FFW did not write, which stay, and so does the folder)."""
    left = remove_owned(partial, PARTIAL_FILES, what=_PARTIAL)
    if left:
        log.warning("%s holds files FFW did not write (%s); it is left as it is", partial, ", ".join(left[:5]))
    return left


def _prepare_partial(partial: Path, *, resume: bool, force: bool) -> bool:
    """Decide what to do with an interrupted search's folder; returns whether to resume. A symbolic link in its
    place is refused (never followed), and files FFW did not write there are never deleted."""
    exists = real_dir(partial, what=_PARTIAL)
    if exists and not has_checkpoint(partial):
        # interrupted (or a disk error) before the first checkpoint: nothing to resume, nothing to lose
        if _remove_partial(partial):
            raise RunExistsError(f"{partial} holds files FFW did not write; move them away first")
        exists = False
        if resume:
            log.warning("nothing to resume in %s (interrupted before the first checkpoint); starting afresh", partial)
            return False
    if resume and not exists:
        raise ConfigError(f"nothing to resume: {partial} does not exist (start without --resume)")
    if exists and not resume:
        if not force:
            raise RunExistsError(
                f"an interrupted FFW search is kept in {partial}; pass --resume to continue it "
                "or --force to start afresh"
            )
        if _remove_partial(partial):
            raise RunExistsError(f"{partial} holds files FFW did not write; move them away first")
    return resume


def _with_diagnosis(exc: NoImprovementError, before: dict[str, Any], *, mode: str) -> NoImprovementError:
    """The refusal with the search's own diagnosis added (why FFW could not help, what to try first): read from
    the D^u_val records of the refused result, as for a written folder."""
    result = exc.result
    notes = diagnose(
        result.history,
        result.selected,
        before,
        {},
        mode=mode,
        final_val_task=final_val_task(result),
        head_refit=result.head_refit is not None,
        tuned_val_task=result.tune.val_after["task"] if result.tune else None,
    )
    record = {**exc.record, "diagnosis": notes}
    text = str(exc) + "".join(f"\nDiagnosis: {n}" for n in notes)
    return NoImprovementError(text, record=record, result=result)


def _search_and_audit(
    run,
    run_dir: Path,
    config: FFWConfig,
    *,
    bias_labels: str,
    seed: int,
    device: str,
    partial: Path,
    resume: bool,
    callback,
    audit_counterfactual: bool,
    strong_probes: bool,
    no_harm: bool = True,
):
    splits = run.splits()
    train, val = splits.unbiased_train, splits.unbiased_val
    if bias_labels == "discovered":
        train, val = _discovered_splits(run_dir, splits)
    audit_kw = dict(
        test=splits.test,
        unbiased_train=splits.unbiased_train,
        unbiased_val=splits.unbiased_val,
        seed=seed,
        counterfactual=audit_counterfactual,
        device=device,
    )
    wanted = STRONG_PROBES if strong_probes else ()
    before, before_read, reused = _input_readings(
        run, splits, seed=seed, device=device, counterfactual=audit_counterfactual, probes=wanted
    )
    try:
        result = find_fantastic_weights(
            run.model,
            head=run.head,
            train=train,
            val=val,
            config=config,
            device=device,
            checkpoint_dir=partial,
            resume=resume,
            callback=callback,
            progress=False,
            no_harm=no_harm,
            checkpoint_meta=_input_identity(run, splits, bias_labels, train, val),
        )
    except NoImprovementError as exc:
        # the search finished and was refused (do no harm): nothing to resume, and a rerun must not be told that an
        # interrupted search is waiting
        if _dist.is_main_process():
            remove_owned(partial, PARTIAL_FILES, what=_PARTIAL)
        raise _with_diagnosis(exc, before.headline(), mode=config.mode) from None
    except BaseException:
        if _dist.is_main_process() and not has_checkpoint(partial):
            remove_owned(partial, PARTIAL_FILES, what=_PARTIAL)  # e.g. a full disk at the first checkpoint
        raise
    after = result.audit(**audit_kw)
    before_h, after_h = before.headline(), after.headline()
    probes = None
    if strong_probes:  # the audit's probe is one reading; the claim must also hold for stronger ones
        # the after-audit's outputs (an attribute the audit keeps for this): the exported model runs once per split
        after_read = probe_readings(
            result.model, splits, head=result.head, seed=seed, device=device, outputs=after._outputs
        )
        probes = {
            "before": {"audit": before_h["bias_extractability"], **before_read},
            "after": {"audit": after_h["bias_extractability"], **after_read},
            "descriptions": PROBES,
        }
        probes["verdict"] = probe_verdict(
            probes["after"],
            num_bias=first_attribute_classes(splits),
            before=probes["before"],
            task=(before_h["task_accuracy"], after_h["task_accuracy"]),
            counterfactual=(before_h.get("counterfactual_bias"), after_h.get("counterfactual_bias")),
            where=after_h.get("where"),
        )
    x = next(iter(iterate_batches(splits.test, batch_size=256))).x
    before.meta["readings"] = "reused from run.json (recorded by debiaskit train, signed)" if reused else "computed"
    return result, before, after, _speed(result, run.model, x), probes


def _input_identity(run, splits, bias_labels: str, train, val) -> dict[str, Any]:
    """What an interrupted search is tied to: the run's weights file, model record and data (a resumed search on
    another run, or on this path retrained in place, is refused; see ``find_fantastic_weights``)."""
    labels = {n: d.b for n, d in (("train", train), ("val", val)) if getattr(d, "b", None) is not None}
    return {
        "run_weights_sha256": run.weights_sha256,
        "model": {k: v for k, v in run.record.model.to_dict().items()},
        "data": json_safe(splits.spec),
        "bias_labels": bias_labels,
        "bias_labels_sha256": tensors_sha256(labels) if labels else None,
    }


def _ffw_info(
    run,
    run_dir: Path,
    config: FFWConfig,
    result: FFWResult,
    before,
    after,
    speed,
    probes,
    *,
    command,
    mode: str,
    bias_labels: str,
    wall: float,
) -> dict[str, Any]:
    before_h, after_h = before.headline(), after.headline()
    return {
        "kind": "ffw",
        "status": "finished",
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "command": command,
        "run": str(Path(run_dir)),
        "mode": mode,
        "bias_labels": bias_labels,
        "model": {
            **run.meta["model"],
            "shapes": result.shapes,
            "head": result.head,
            "eraser": result.eraser and result.eraser.to_json(),
        },
        "data": run.meta["data"],
        "vanilla_train_time_s": run.meta.get("wall_time_s"),
        "search": result.summary(),
        "history": result.history,
        "before": before_h,
        "before_readings": before.meta.get("readings"),  # the input model's audit and probes: reused or computed
        "after": after_h,
        "probes": probes,
        "diagnosis": diagnose(
            result.history,
            result.selected,
            before_h,
            after_h,
            mode=mode,
            final_val_task=final_val_task(result),
            head_refit=result.head_refit is not None,
            tuned_val_task=result.tune.val_after["task"] if result.tune else None,
        ),
        "parameters": {
            "before": count_parameters(run.model),
            "after": count_parameters(result.model),
            "nonzero_after": sum(int((p != 0).sum()) for p in result.model.parameters()),
        },
        "inference": speed,
        "search_time_s": result.search_time_s,
        "wall_time_s": wall,
        "selection": SELECTIONS[config.selection],
        "adversary": ADVERSARIES[config.adversary],
        # the input model a constant answer beats (unbiased test split): flagged first in the report
        "input_below_majority": before.below_majority(),
        "bias_labels_note": (
            "MI term, privacy head and selection used discovered pseudo-bias labels; the before/after "
            "audit uses the true bias labels (reporting only)"
            if bias_labels == "discovered"
            else "true bias labels of D^u_train / D^u_val"
        ),
        "versions": package_versions(),
        "weights": "model.safetensors",
        "masks": "masks.safetensors",
        **_dist.description(),  # processes that ran the search (torchrun): world_size, backend
    }


def load_ffw_model(folder: Path, **kwargs) -> nn.Module:
    """Rebuild the exported network of an FFW folder (plain torch modules; no gate classes); the same
    as :func:`debiaskit.ffw.load_pruned_model` (zoo and user models alike)."""
    return load_pruned_model(folder, **kwargs)


def audit_ffw_folder(
    folder: Path,
    *,
    out: Path | None = None,
    seed: int = 0,
    device: str = "cpu",
    counterfactual: bool = True,
    force: bool = False,
    splits=None,
    model=None,
    trust_code: bool = False,
) -> tuple[AuditReport, Path]:
    """Audit the exported network of an FFW folder as ``debiaskit audit`` audits a run, into ``out`` (default
    ``FOLDER/audit``; the same output rules: a new folder or, with ``force``, an earlier audit report folder).

    The data is rebuilt from the folder's own record (the run's data, which ``debiaskit ffw`` copies into
    ``ffw.json``); ``splits`` / ``model``: for a folder saved from Python (:func:`debiaskit.ffw.save_result`, no data
    record) or a model given as a Python object; ``trust_code``: import a user model named by an unsigned
    ``ffw.json`` (see :func:`load_pruned_model`)."""
    require("seed", seed, SEED)
    device = str(_dist.check_device(device))
    folder = Path(folder)
    if not (folder / FFW_FILE).is_file():
        raise DataError(f"{folder} is not a finished FFW folder (no {FFW_FILE})")
    identity = folder_identity(folder, FFW_FILE)  # re-checked at commit: a folder moved or replaced gets nothing
    record = read_record(folder / FFW_FILE, FFWRecord, default_kind="ffw")  # validated before anything is loaded
    if splits is None and record.data is None:
        raise DataError(
            f"{folder} records no data (saved from Python with save_result): audit its model in Python, "
            "`debiaskit.ffw.audit_ffw_folder(FOLDER, splits=...)` or `result.audit(...)`"
        )
    data = record.data  # None only with splits given (refused above otherwise)
    net = load_pruned_model(folder, model=model, trust_code=trust_code)
    target = Path(out) if out is not None else folder / "audit"
    return audit_into(
        net,
        head=record.model.head,
        splits=lambda: splits if splits is not None or data is None else splits_from_spec(data.spec()),
        target=target,
        force=force,
        inputs=(folder,),
        pinned=(identity,),
        seed=seed,
        device=device,
        counterfactual=counterfactual,
        meta=lambda _: {
            "ffw": str(folder),
            "run": record.run,
            "mode": record.mode,
            "model": record.model.name,
            "head": record.model.head,
            "seed": seed,
        },
        title=f"Bias audit of {folder.name} (FFW, {record.mode})",
    )


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def before_after_rows(info: dict[str, Any]) -> list[tuple[str, str, str]]:
    b, a = info["before"], info["after"]
    sp = info["search"]["sparsity"]
    rows = [
        (label, _pct(b.get(k)), _pct(a.get(k)))
        for label, k in (
            ("unbiased task accuracy", "task_accuracy"),
            ("aligned accuracy", "aligned_accuracy"),
            ("conflicting accuracy", "conflicting_accuracy"),
            ("worst-group accuracy", "worst_group_accuracy"),
            ("bias extractability (fresh privacy head)", "bias_extractability"),
        )
    ]
    unit = "units" if info["mode"] == "structured" else "gated weights"
    rows.append((f"sparsity ({unit} removed)", "0.00", _pct(sp["overall"])))
    par = info["parameters"]
    rows.append(
        ("parameters (non-zero)", str(par["before"]), f"{par['after']} ({par.get('nonzero_after', par['after'])})")
    )
    sp_in = info["inference"]
    rows.append(
        (
            f"inference ms / batch of {sp_in['batch']}",
            f"{1000 * sp_in['original_s']:.2f}",
            f"{1000 * sp_in['exported_s']:.2f}",
        )
    )
    rows.append(
        (
            "wall time (s)",
            f"{info.get('vanilla_train_time_s') or 0:.0f} (training)",
            f"{info['wall_time_s']:.0f} (FFW total)",
        )
    )
    return rows


def probe_lines(info: dict[str, Any]) -> list[str]:
    """Markdown: bias extractability under every probe, before and after, and whether the claim holds."""
    pr = info.get("probes")
    if not pr:
        return [
            "Stronger probes: not run (strong_probes=False); the audit's probe alone does not show that the "
            "bias can no longer be read."
        ]
    lines = [
        "## Can the bias still be read? (unbiased test, first bias attribute)",
        "",
        "| probe | before (vanilla) | after (FFW) |",
        "|---|---|---|",
    ]
    for k, desc in pr["descriptions"].items():
        if k in pr["after"]:
            lines.append(f"| {k}: {desc} | {_pct(pr['before'].get(k))} | {_pct(pr['after'][k])} |")
    return lines + ["", pr["verdict"]["text"]]


def where_lines(info: dict[str, Any]) -> list[str]:
    """Markdown: where the bias is read before and after FFW (one linear probe per block / stage and at the
    bottleneck, and within each target class; the audits' ``where``), then the sentences derived from that table."""
    before, after = info["before"].get("where"), info["after"].get("where")
    if not after:
        return []
    b_points = {point_key(p): p for p in (before or {}).get("points") or []}
    a_by = {point_key(p): p for p in after.get("points") or []}
    order = [k for k in b_points if k not in a_by] + list(a_by)  # a point only FFW's export lacks, first
    lines = [
        "## Where is the bias read? (unbiased test, first bias attribute)",
        "",
        f"Probe: {after['probe']}; the same probe before and after, at every point. A point reads the bias when it "
        f"beats chance (the most frequent bias value's share) by more than {100 * WHERE_MARGIN:.0f} points.",
        "",
        "| point | dims (before / after) | before (vanilla) | after (FFW) | chance |",
        "|---|---|---|---|---|",
    ]
    for key in order:
        b, a = b_points.get(key), a_by.get(key)
        dims = f"{b['dims'] if b else '-'} / {a['dims'] if a else '-'}"
        chance = (a or b or {})["chance"]
        lines.append(
            f"| {point_label(a or b or {})} | {dims} | {_pct(b and b['accuracy'])} | {_pct(a and a['accuracy'])} "
            f"| {_pct(chance)} |"
        )
    bc, ac = (before or {}).get("per_class"), after.get("per_class")
    if ac:
        lines.append(
            f"| within each class, mean (bottleneck) | - | {_pct(bc and bc['mean_accuracy'])} "
            f"| {_pct(ac['mean_accuracy'])} | {_pct(ac['mean_chance'])} |"
        )
        lines.append(
            f"| within class {ac['worst_class']}, read most after FFW (bottleneck) | - "
            f"| {_pct(_class_accuracy(bc, ac['worst_class']))} | {_pct(ac['worst_accuracy'])} "
            f"| {_pct(ac['worst_chance'])} |"
        )
    return lines + ["", where_verdict(before, after, eraser=bool(info["search"].get("eraser")))]


def _class_accuracy(per_class: dict[str, Any] | None, target: int) -> float | None:
    """The per-class probe's accuracy in class ``target`` (None: not measured there)."""
    for c in (per_class or {}).get("classes") or []:
        if c["target"] == target:
            return c["accuracy"]
    return None


def where_verdict(before: dict[str, Any] | None, after: dict[str, Any], *, eraser: bool = False) -> str:
    """The sentences of :func:`where_lines`, each derived from its table (after FFW, compared with before where the
    same point was read) and naming the point it was read at."""
    points, b_points = after.get("points") or [], {point_key(p): p for p in (before or {}).get("points") or []}
    sentences = []
    top = most_read(points)
    if top is not None:
        was = b_points.get(point_key(top))
        then = f"; before FFW {100 * was['accuracy']:.1f} %" if was else ""
        if top["readable"]:
            sentences.append(
                f"After FFW the bias is read most at {point_label(top)}: {100 * top['accuracy']:.1f} % "
                f"(chance {100 * top['chance']:.1f} %{then})."
            )
        else:
            sentences.append(
                f"After FFW this probe reads the bias within {100 * WHERE_MARGIN:.0f} points of chance at every point "
                f"(highest: {point_label(top)}, {100 * top['accuracy']:.1f} %, chance "
                f"{100 * top['chance']:.1f} %{then}); a stronger probe may read more."
            )
    up = readable_upstream(points)
    if up:
        neck = bottleneck_of(points) or {}
        sentences.append(
            f"Readable upstream: after FFW the bottleneck reads {100 * neck['accuracy']:.1f} % (near chance, "
            f"{100 * neck['chance']:.1f} %), but "
            + ", ".join(f"{point_label(p)} reads {100 * p['accuracy']:.1f} %" for p in up)
            + ": the bias is still in the network before the head"
            + (" (the eraser acts on the bottleneck only)" if eraser else "")
            + ", where a new head or fine-tuning can read it again."
        )
    more = [
        (p, b_points[point_key(p)])
        for p in points
        if point_key(p) in b_points and p["accuracy"] > b_points[point_key(p)]["accuracy"]
    ]
    if more:
        sentences.append(
            "Read more after FFW than before: "
            + ", ".join(f"{point_label(a)} {100 * b['accuracy']:.1f} -> {100 * a['accuracy']:.1f} %" for a, b in more)
            + "."
        )
    pc: dict[str, Any] | None = after.get("per_class")
    bc: dict[str, Any] | None = (before or {}).get("per_class")
    if pc:
        sentences += per_class_sentences(pc, points, when=" after FFW", before=bc)
    return " ".join(sentences)


def eraser_lines(eraser: dict[str, Any] | None) -> list[str]:
    """What the eraser (FFWConfig.erase) did, in words, with its effect on D^u_val."""
    if not eraser:
        return ["No eraser (`--erase none`): the exported network is the pruned sub-network alone."]
    conditional = eraser.get("kind") == "conditional"
    name = "Conditional eraser (`--erase conditional`)" if conditional else "Linear eraser (LEACE, `--erase linear`)"
    lines = [
        f"{name}: a closed-form module in front of the head `{eraser['head']}` "
        f"(the bottleneck is now the input of `{eraser['head']}.head`) removes a rank-{eraser['rank']} subspace "
        f"({100 * eraser['variance_removed']:.2f} % of the bottleneck's variance) so that every bias class has the "
        "same mean on D^u_train"
        + (
            f", and the {eraser['within_target_rank']} strongest of the {eraser['within_target_available']} "
            "directions along which the bias classes' means differ within a target class are gone too (chosen on "
            "D^u_val: "
            + eraser["selection"]
            + "; D^u_val task accuracy per number of directions: "
            + ", ".join(f"{c['within_target_rank']}: {100 * c['val_task']:.2f} %" for c in eraser["candidates"])
            + ")"
            if conditional
            else ""
        )
        + f". D^u_val task accuracy {100 * eraser['val_task_before']:.2f} % without it, "
        f"{100 * eraser['val_task_after']:.2f} % with it (before any head refit); closed-form linear readability "
        f"of the bias on D^u_val {eraser['val_readability_before']:.4f} -> {eraser['val_readability_after']:.4f}. "
        "`--erase none` exports the pruned sub-network alone."
    ]
    return lines


def tune_lines(tune: dict[str, Any] | None) -> list[str]:
    """What training the kept weights under J (FFWConfig.tune_epochs) did, with its D^u_val effect."""
    if not tune:
        return ["No weight tuning (`--tune-epochs 0`): the kept weights are the vanilla model's."]
    per = ", ".join(f"{h['epoch']}: {100 * h['val']['task']:.2f} %" for h in tune["history"])
    chosen = (
        f"epoch {tune['chosen_epoch']} chosen"
        if tune["chosen_epoch"]
        else "no tuned epoch beat the gates' state on D^u_val: the weights are unchanged"
    )
    return [
        f"Weight tuning (`--tune-epochs {tune['epochs']}`): the kept weights trained on D^u_train under "
        f"J = CE + {tune['gamma']:g} x the bias term (Adam {tune['lr']:g}"
        + (f", batches of {tune['batch_size']}" if tune.get("batch_size") else "")  # absent from older records
        + (f", images shifted by up to {tune['shift']} pixel(s)" if tune.get("shift") else "")
        + f"; BatchNorm statistics frozen; the "
        f"{tune['held_zero']} pruned weights held at 0); {chosen} ({tune['selection']}). D^u_val task accuracy "
        f"{100 * tune['val_before']['task']:.2f} % before, {100 * tune['val_after']['task']:.2f} % after; bias "
        f"term {tune['val_before']['dependence']:.4f} -> {tune['val_after']['dependence']:.4f} (D^u_val task "
        f"accuracy per epoch: {per})."
        + (f" Stopped early: {tune['stopped']}." if tune.get("stopped") else "")
        + " `--tune-epochs 0` keeps the kept weights as they were."
    ]


def head_refit_lines(refit: dict[str, Any] | None) -> list[str]:
    """What the head's refit on D^u_train (FFWConfig.refit_head) did, with its D^u_val effect."""
    if not refit:
        return ["No head refit (`--no-refit-head`): the head is the vanilla model's."]
    how = (
        "logistic regression on standardised features"
        if refit["kind"] == "linear-dfr"
        else "all its parameters, pulled back towards where they were"
    )
    tried = ", ".join(f"{g['lam']:g}: {100 * g['val_task']:.2f} %" for g in refit["grid"])
    kept = (
        f"kept lambda {refit['kept_lam']:g}"
        if refit["kept_lam"] is not None
        else "no lambda beat the head as it was on D^u_val: the head is unchanged"
    )
    return [
        f"Head refit (`--refit-head`): the head `{refit['head']}` refit on the D^u_train bottleneck "
        f"({refit['train_samples']} samples, every (target, bias) group weighted equally; {how}); D^u_val task "
        f"accuracy {100 * refit['val_task_before']:.2f} % before, {100 * refit['val_task_after']:.2f} % after "
        f"({kept}; D^u_val task accuracy per lambda: {tried}). The bottleneck is not changed, so the bias "
        "readings above are those of the gates (and eraser) alone. `--no-refit-head` keeps the vanilla head."
    ]


def no_harm_lines(record: dict[str, Any] | None, *, selected_epoch: int) -> list[str]:
    """The do-no-harm verdict (``ffw/_harm.py``) in words: every stage's D^u_val group-mean accuracy vs the input's,
    and whether the output was accepted (a refused one reaches a folder only under the benchmark harness)."""
    if not record:
        return []
    given = record["stages"][0]
    tried = "; ".join(f"{st['stage']} {100 * st['group_mean']:.2f} %" for st in record["stages"][1:])
    head = (
        "Do no harm: accepted"
        if record["accepted"]
        else f"Do no harm: REFUSED ({record['reason']}; written only because the caller asked for it, no_harm=False)"
    )
    lines = [
        f"{head}. D^u_val group-mean accuracy (mean over {given['groups']} (y, b) groups): your model "
        f"{100 * given['group_mean']:.2f} %, required at least {100 * record['required_group_mean']:.2f} % (one "
        f"standard error below it); {tried}. Near-chance floor (D^u_val accuracy): "
        f"{100 * record['floor']['floor']:.2f} %."
    ]
    if selected_epoch == 0:
        lines[0] += (
            " The gates found no sub-network better than your model (epoch 0, the model as given, was "
            "selected): what you get is your model changed only by the steps after the gates."
        )
    return lines


def choice_line(choice: dict[str, Any] | None) -> str:
    """compare_ungated in words: both candidates' D^u_val group-mean accuracy and which one the output is."""
    if not choice:
        return ""
    gated, ungated = choice["gated"], choice["ungated"]
    kept = (
        "the model without gates was kept: every weight of your model is in the output (no sparsity), "
        "changed only by the eraser / head refit"
        if choice["kept"] == "ungated"
        else "the gated sub-network was kept"
    )
    return (
        f"Candidates (D^u_val group-mean accuracy): the gated pipeline ({gated['stage']}) "
        f"{100 * gated['group_mean']:.2f} %, the same after-gate stages on your model without gates "
        f"{100 * ungated['group_mean']:.2f} %; {kept}. Rule: {choice['rule']}."
    )


def report_markdown(info: dict[str, Any]) -> str:
    s = info["search"]
    sel = s["selected"]
    lines = [
        f"# FFW ({info['mode']}, gamma {s['config']['gamma']:g}) on {info['run']}",
        "",
        f"Command: `{info.get('command')}`",
        "",
        f"Selection: {info['selection']}; selected epoch {sel['epoch']} (tau {sel['tau']:.3g}); "
        f"stop: {s['stop_reason']}. Bias term: {info.get('adversary', ADVERSARIES['head'])}. "
        f"Bias labels: {info['bias_labels_note']}. Preset: {info.get('preset', DEFAULT_PRESET)}.",
        "",
    ]
    if info.get("input_below_majority"):  # the numbers below describe a model that does not work
        lines += [f"**{info['input_below_majority']}**", ""]
    lines += [*no_harm_lines(s.get("no_harm"), selected_epoch=sel["epoch"]), ""]
    if s.get("choice"):
        lines += [choice_line(s["choice"]), ""]
    if info.get("diagnosis"):  # first thing a reader sees: FFW could not help, and what to do instead
        lines += ["## Diagnosis", ""] + [f"- {d}" for d in info["diagnosis"]] + [""]
    lines += [
        "Task / group accuracies on the unbiased test set (sample-weighted; worst group = min over non-empty "
        "(target, bias) groups). Bias extractability: privacy head trained afresh on D^u_train bottleneck "
        "features, early-stopped on D^u_val, scored on the unbiased test.",
        "",
        "| | before (vanilla) | after (FFW) |",
        "|---|---|---|",
    ]
    lines += [f"| {r[0]} | {r[1]} | {r[2]} |" for r in before_after_rows(info)]
    lines += ["", *probe_lines(info)]
    where = where_lines(info)
    if where:
        lines += ["", *where]
    lines += ["", *tune_lines(s.get("tune"))]
    lines += ["", *eraser_lines(s.get("eraser"))]
    lines += ["", *head_refit_lines(s.get("head_refit"))]
    lines += ["", "Sparsity per layer (% removed):", "", "| layer | removed |", "|---|---|"]
    lines += [f"| {k} | {100 * v:.2f} |" for k, v in s["sparsity"]["per_layer"].items()]
    inputs = s["sparsity"].get("input_weights")
    if inputs:  # structured --input-weights: weight masks of the layers reading the input
        lines += [
            "",
            "Weights of the layers that read the input set to 0 (--input-weights): "
            + ", ".join(f"{k} {100 * v:.2f} %" for k, v in inputs["per_layer"].items()),
        ]
    ungated = s["sparsity"].get("ungated") or {}
    if ungated and info["mode"] == "unstructured":  # e.g. an attention's in_proj_weight: kept whole
        lines += [
            "",
            f"Not gated ({len(ungated)} parameters, kept as they are; biases and normalisation "
            "parameters are never gated):",
            "",
        ]
        lines += [f"- {k}: {why}" for k, why in ungated.items()]
    elif ungated:  # structured FFW on a residual network: the residual stream keeps its width
        lines += ["", f"Not gated ({len(ungated)} conv/linear layers; pruning their units is not free):", ""]
        lines += [f"- {k}: {why}" for k, why in ungated.items()]
    return "\n".join(lines) + "\n"
