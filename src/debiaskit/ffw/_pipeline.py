"""find_fantastic_weights as one pipeline of named stages, each a function returning its :class:`StageRecord`:

    gates    the search (Algorithm 1, ``_search.py``), its selected hard masks baked into a copy of the network
    tune     the kept weights trained under J (``_tune.py``; ``tune_epochs``)
    erase    the eraser in front of the head (``_erase.py``; ``erase``)
    refit    the head refit on the (erased) bottleneck (``_refit.py``; ``refit_head``)
    choice   compare_ungated: the same after-gate stages on the input without gates, the better one kept
    no_harm  the do-no-harm verdict on the output (``_harm.py``; refused once the result exists)

``STAGES`` lists them in order; ``_Work`` is what they hand on to each other. A stage that is off records so
(``ran=False``). ``FFWResult.stages`` holds the records; the detailed record of each stage stays in its own field
(``tune``, ``eraser``, ``head_refit``, ``choice``, ``no_harm``).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .. import _dist
from .._io import tensors_sha256
from ..audit import audit_model
from ..data import as_bias_datasets, iterate_batches
from ..errors import ConfigError
from ..models import collect_outputs, head_shape, resolve_head
from ._config import FFWConfig
from ._export import apply_unstructured_masks, prune_structured, structured_sparsity, unstructured_sparsity
from ._gates import GatedModel, freeze
from ._harm import ChanceFloor, NoHarmVerdict, ValMeasure, enforce, group_accuracy, near_chance, verdict
from ._presets import DEFAULT_PRESET
from ._progress import print_epoch
from ._search import _Search
from ._stages import Bottleneck, EraserRecord, RefitRecord, _after_gates, collect_bottleneck, erase_step, refit_step
from ._tune import TuneRecord, tune_kept_weights


@dataclass
class FFWResult:
    """What :func:`find_fantastic_weights` found.

    ``model``: the exported plain network (unstructured: the original architecture with the zeros
    baked in; structured: the physically smaller network). ``masks``: hard masks of the selected
    state (1 = kept). ``gated``: the gated working copy, set to the selected hard masks (for checks).
    ``selected``: the D^u_val record of the selected hard model; ``history``: one record per epoch.
    ``stages``: what each stage of the pipeline did, in order (:class:`StageRecord`: gates, tune, erase, refit,
    choice, no_harm), with the D^u_val numbers after it and its wall time. ``wall_time_s``: the whole call;
    ``search_time_s``: the gate search's part of it.

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
    eraser: EraserRecord | None = None  # the linear eraser in front of the head (_erase.py), None without one
    head_refit: RefitRecord | None = None  # the head's refit on D^u_train (_refit.py), None when off
    tune: TuneRecord | None = None  # the kept weights trained under J (_tune.py), None when off
    no_harm: NoHarmVerdict | None = None  # the do-no-harm verdict on D^u_val, every measure vs the input (_harm.py)
    choice: ChoiceRecord | None = None  # compare_ungated: the two candidates' D^u_val numbers and the one kept
    stages: list[StageRecord] = field(default_factory=list)  # the pipeline's stages, in order
    search_time_s: float | None = None  # the gate search alone (wall_time_s: the whole call)

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
        """The JSON record of ffw.json's ``search`` (each stage record as its ``to_json()``)."""

        def js(record: Any) -> Any:
            return None if record is None else record.to_json()

        return {
            "mode": self.mode,
            "config": asdict(self.config),
            "selected": self.selected,
            "sparsity": self.sparsity,
            "stop_reason": self.stop_reason,
            "wall_time_s": self.wall_time_s,
            "epochs": len(self.history) - 1,
            "shapes": self.shapes,
            "eraser": js(self.eraser),
            "head_refit": js(self.head_refit),
            "tune": js(self.tune),
            "no_harm": js(self.no_harm),
            "choice": js(self.choice),
            "search_time_s": self.search_time_s,
            "stages": [stage.to_json() for stage in self.stages],
        }


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
    "fast", "paper") names the settings they are laid over - a keyword given here wins over the preset
    (``config`` ignores both). ``checkpoint_dir``: write a
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
    search_time_s = time_offset + time.perf_counter() - start

    def clock() -> float:  # the whole call's wall time so far (a resumed search's earlier time included)
        return time_offset + time.perf_counter() - start

    return _run_stages(search, model, inplace=inplace, no_harm=no_harm, search_time_s=search_time_s, clock=clock)


UNGATED_RULE = (
    "the gated pipeline and the same after-gate stages on the input network without gates: the one with the higher "
    "D^u_val group-mean accuracy is kept (a near-chance candidate never; a tie keeps the gated one)"
)


@dataclass
class StageRecord:
    """One stage of the pipeline (``FFWResult.stages``, in order): its name, whether it ran (False: off in the
    config, or nothing to do), what it did, the D^u_val group-mean accuracy and accuracy of the network after it
    (``_harm.group_accuracy``; None when it did not run) and its wall time (the gates': the search's included)."""

    name: str
    ran: bool
    did: str
    val_group_mean: float | None
    val_accuracy: float | None
    wall_time_s: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ChoiceRecord:
    """compare_ungated's choice (``UNGATED_RULE``): which candidate was kept ("gated" or "ungated") and both
    candidates' D^u_val measures. ``gated_pipeline``: when the ungated one is kept, the gated candidate's own stage
    records ("tune", "eraser", "head_refit": each its ``to_json()``, or None), kept for the record only."""

    kept: str
    gated: ValMeasure
    ungated: ValMeasure
    rule: str = UNGATED_RULE
    gated_pipeline: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Work:
    """What the stages hand on to each other: the network so far, what each stage did, and the D^u_val measures
    the do-no-harm verdict compares (``measures``: the input model first)."""

    search: _Search
    model: nn.Module  # the input network, never changed by a stage
    search_time_s: float
    measures: list[ValMeasure]
    exported: nn.Module | None = None
    head: str = ""
    masks: dict[str, Tensor] = field(default_factory=dict)
    sparsity: dict[str, Any] = field(default_factory=dict)
    shapes: dict[str, dict[str, int]] | None = None
    tune: TuneRecord | None = None
    bottleneck: Bottleneck | None = None
    eraser: EraserRecord | None = None
    head_refit: RefitRecord | None = None
    choice: ChoiceRecord | None = None
    verdict: NoHarmVerdict | None = None

    @property
    def net(self) -> nn.Module:
        assert self.exported is not None, "the gates stage exports the network first"
        return self.exported


def _measure(name: str, model: nn.Module, search: _Search) -> ValMeasure:
    """One D^u_val measure of the do-no-harm record: ``model``'s group-mean accuracy, its standard error, accuracy."""
    device = next(model.parameters()).device
    with torch.no_grad():
        out = collect_outputs(model, search.val, with_bottleneck=False, device=device)
    assert out.y is not None and out.b is not None, "FFW's D^u_val has targets and bias labels (checked on entry)"
    return group_accuracy(out.logits.argmax(1), out.y, out.b, stage=name)


def _record(name: str, did: str | None, start: float, measure: ValMeasure | None = None) -> StageRecord:
    """A stage's record (``did`` None: the stage did not run), timed from ``start``."""
    return StageRecord(
        name=name,
        ran=did is not None,
        did=did if did is not None else "off",
        val_group_mean=None if measure is None else measure.group_mean,
        val_accuracy=None if measure is None else measure.accuracy,
        wall_time_s=time.perf_counter() - start,
    )


def _gates_stage(work: _Work) -> StageRecord:
    """The hard masks of the selected gate state, baked into a copy of the input network (unstructured: zeros;
    structured: a smaller network), with the search's selection note. Its wall time includes the search's."""
    start, search = time.perf_counter(), work.search
    best = search.best
    assert best is not None, "the search records epoch 0 before any stage"
    if best["epoch"] > 0 and not best.get("keeps_task", False):
        best["selection_note"] = (
            "no gated candidate kept the vanilla model's D^u_val task accuracy "
            f"({100 * search.history[0]['val_hard']['task']:.1f} %): selected by the score alone"
        )
    _export_selected(work)
    given = ", the model as given)" if best["epoch"] == 0 else ", hard mask)"
    work.measures.append(_measure(f"gates (epoch {best['epoch']}" + given, work.net, search))
    did = f"epoch {best['epoch']} selected ({search.progress['stop_reason']})"
    record = _record("gates", did, start, work.measures[-1])
    record.wall_time_s += work.search_time_s
    return record


def _export_selected(work: _Work) -> None:
    """The selected hard masks on a copy of the input network (also with inplace=True: the user's model takes the
    result only once do-no-harm accepted it), with their sparsity record (and the shapes of a structured export)."""
    search, cfg, model = work.search, work.search.cfg, work.model
    assert search.best_gates is not None
    search.gated.load_gate_tensors(search.best_gates)
    search.state.hard = True
    work.masks = search.gated.hard_masks()
    if cfg.mode == "unstructured":
        exported = apply_unstructured_masks(model, {f"{k}.weight": v for k, v in work.masks.items()}, copy_model=True)
        work.sparsity = unstructured_sparsity(work.masks)
        work.sparsity["counts_head"] = cfg.include_head
        if search.gated.ungated:  # e.g. an attention's in_proj_weight, a positional embedding, with why
            work.sparsity["ungated"] = dict(search.gated.ungated)
    else:
        example = next(iter(iterate_batches(search.train, batch_size=2))).x
        exported, work.shapes = prune_structured(model, work.masks, head=search.head, example=example)
        work.sparsity = structured_sparsity(work.masks, model, exported)
        work.sparsity["ungated"] = dict(search.gated.ungated)  # e.g. residual-stream channels of a ResNet, with why
    work.exported, work.head = exported.eval(), search.head


def _tune_stage(work: _Work) -> StageRecord:
    """The kept weights trained under J (``tune_epochs``; ``_tune.py``)."""
    start = time.perf_counter()
    work.tune = tune = tune_kept_weights(work.net, work.search, callback=work.search.callback)
    if tune is None:
        return _record("tune", None, start)
    kept = (
        f"epoch {tune.chosen_epoch} of {tune.epochs}"
        if tune.chosen_epoch
        else f"none of {tune.epochs} epochs beat the gates' state"
    )
    work.measures.append(_measure(f"weight tuning ({kept})", work.net, work.search))
    return _record("tune", f"kept {kept}", start, work.measures[-1])


def _erase_stage(work: _Work) -> StageRecord:
    """The eraser in front of the head (``erase``; ``_erase.py``), on one pass over D^u_train and D^u_val that the
    refit reuses. Its D^u_val numbers come from the logits behind the eraser (no second pass)."""
    start = time.perf_counter()
    work.bottleneck = bn = collect_bottleneck(work.net, work.search)
    work.eraser = eraser = erase_step(work.net, work.search, bn)
    if eraser is None or bn is None:
        return _record("erase", None, start)
    work.head = bn.head
    effect = group_accuracy(bn.val_logits.argmax(1), bn.val.y, bn.val.b, stage="eraser")
    return _record("erase", f"{eraser.kind} eraser of rank {eraser.rank} in front of {eraser.head}", start, effect)


def _refit_stage(work: _Work) -> StageRecord:
    """The head's refit on the (erased) bottleneck (``refit_head``; ``_refit.py``); then the D^u_val measure of the
    network after the eraser and the refit (one measure for both, as the do-no-harm record lists them)."""
    start = time.perf_counter()
    work.head_refit = refit = refit_step(work.net, work.search, work.bottleneck)
    work.bottleneck = None  # the collected outputs are not needed any more
    if work.eraser is not None or refit is not None:
        work.measures.append(_measure(_steps_name(work.eraser, refit), work.net, work.search))
    if refit is None:
        return _record("refit", None, start)
    did = "the head kept as it was" if refit.kept_lam is None else f"{refit.kind} refit, penalty {refit.kept_lam:g}"
    return _record("refit", did, start, work.measures[-1])


def _choice_stage(work: _Work) -> StageRecord:
    """compare_ungated: the same after-gate stages on the input network without gates; the better candidate on
    D^u_val group mean is kept (``UNGATED_RULE``)."""
    start, search = time.perf_counter(), work.search
    if not _ungated_differs(search, work.tune):
        return _record("choice", None, start)
    plain, plain_head, plain_eraser, plain_refit, plain_measure = _ungated_candidate(work.model, search)
    work.measures.append(plain_measure)
    work.choice = choice = _choose(work.measures[-2], plain_measure, search.floor)
    if choice.kept == "ungated":  # the gated candidate's own stage records stay on record beside the choice
        choice.gated_pipeline = {
            name: None if rec is None else rec.to_json()
            for name, rec in (("tune", work.tune), ("eraser", work.eraser), ("head_refit", work.head_refit))
        }
        work.exported, work.head, work.eraser, work.head_refit = plain, plain_head, plain_eraser, plain_refit
        work.tune, work.shapes = None, None
        work.masks = {k: torch.ones_like(v) for k, v in work.masks.items()}  # every weight kept
        work.sparsity = _kept_everything(work.sparsity, work.masks, search.cfg.mode, work.model, plain)
    kept = choice.ungated if choice.kept == "ungated" else choice.gated
    return _record("choice", f"kept the {choice.kept} candidate", start, kept)


def _no_harm_stage(work: _Work) -> StageRecord:
    """The do-no-harm verdict (``_harm.py``) on the output: the last measure, or the gated one when compare_ungated
    kept it. Only the verdict: refusing (``no_harm``) happens once the result exists."""
    start, choice = time.perf_counter(), work.choice
    gated_kept = choice is None or choice.kept == "gated"
    final = choice.gated if choice is not None and gated_kept else work.measures[-1]
    # the output is the input unchanged when no stage after the gates changed it and - for the gated candidate - the
    # gates and the tuning kept the input as it was (the ungated candidate starts from the input itself)
    unchanged = _after_gates_kept(work.eraser, work.head_refit) and not (
        gated_kept and _gated_changed(work.search, work.tune)
    )
    work.verdict = judged = verdict(work.measures, work.search.floor, unchanged=unchanged, final=final)
    did = "accepted" if judged.accepted else f"refused ({judged.reason})"
    return _record("no_harm", did, start, final)


STAGES = (_gates_stage, _tune_stage, _erase_stage, _refit_stage, _choice_stage, _no_harm_stage)


def _run_stages(
    search: _Search,
    model: nn.Module,
    *,
    inplace: bool,
    no_harm: bool,
    search_time_s: float,
    clock: Callable[[], float],
) -> FFWResult:
    """The stages after the search, in order (``STAGES``), each recording what it did; then the result, refused
    when do-no-harm says so (``no_harm``)."""
    # the input model's D^u_val numbers, measured on the model itself (also after a resume)
    work = _Work(
        search=search, model=model, search_time_s=search_time_s, measures=[_measure("input model", model, search)]
    )
    stages = [stage(work) for stage in STAGES]
    assert work.verdict is not None and search.best is not None
    result = FFWResult(
        model=work.net,
        masks=work.masks,
        config=search.cfg,
        head=work.head,
        history=search.history,
        selected=search.best,
        sparsity=work.sparsity,
        stop_reason=search.progress["stop_reason"],
        wall_time_s=clock(),
        gated=search.gated,
        privacy_heads=search.heads,
        shapes=work.shapes,
        eraser=work.eraser,
        head_refit=work.head_refit,
        tune=work.tune,
        no_harm=work.verdict,
        choice=work.choice,
        stages=stages,
        search_time_s=search_time_s,
    )
    if no_harm:
        enforce(work.verdict, result)  # raises NoImprovementError: nothing returned, the user's model untouched
    if inplace:  # unstructured, no tuning, no eraser: the same architecture, the masks (and a refit head) baked in
        model.load_state_dict(work.net.state_dict())
        result.model = model.eval()
    return result


def _gated_changed(search: _Search, tune: TuneRecord | None) -> bool:
    """The gated pipeline changed the input before the after-gate stages: a gated epoch was selected, or a tuned
    epoch was kept."""
    assert search.best is not None
    return search.best["epoch"] > 0 or (tune is not None and tune.chosen_epoch > 0)


def _after_gates_kept(eraser: EraserRecord | None, head_refit: RefitRecord | None) -> bool:
    """The after-gate stages changed nothing: no eraser, and the head refit (if on) kept the head as it was."""
    return eraser is None and (head_refit is None or head_refit.kept_lam is None)


def _steps_name(eraser: EraserRecord | None, head_refit: RefitRecord | None) -> str:
    return " + ".join(n for n, on in (("eraser", eraser), ("head refit", head_refit)) if on is not None)


def _ungated_differs(search: _Search, tune: TuneRecord | None) -> bool:
    """compare_ungated applies: the after-gate stages are on, and the gated pipeline changed the network before
    them (otherwise its candidate is the ungated one already)."""
    cfg = search.cfg
    if not cfg.compare_ungated or (cfg.erase == "none" and not cfg.refit_head):
        return False
    return _gated_changed(search, tune)


def _ungated_candidate(
    model: nn.Module, search: _Search
) -> tuple[nn.Module, str, EraserRecord | None, RefitRecord | None, ValMeasure]:
    """The after-gate stages (eraser, head refit) on a copy of the input network, no gate and no tuning: the other
    candidate of compare_ungated. Returns the network, its head, the eraser / refit records and its D^u_val measure."""
    plain = copy.deepcopy(model).to(search.device).eval()
    freeze(plain)
    head, eraser, head_refit = _after_gates(plain, search)
    steps = _steps_name(eraser, head_refit) or "no change"
    return plain, head, eraser, head_refit, _measure(f"no gates: {steps} on the input model", plain, search)


def _choose(gated: ValMeasure, ungated: ValMeasure, floor: ChanceFloor) -> ChoiceRecord:
    """compare_ungated's rule (``UNGATED_RULE``) on the two candidates' D^u_val measures."""
    gated_ok, ungated_ok = not near_chance(gated.accuracy, floor), not near_chance(ungated.accuracy, floor)
    better = ungated.group_mean > gated.group_mean
    kept = "ungated" if ungated_ok and (better or not gated_ok) else "gated"
    return ChoiceRecord(kept=kept, gated=gated, ungated=ungated)


def _kept_everything(sparsity: dict[str, Any], masks: dict[str, Tensor], mode: str, model, exported) -> dict[str, Any]:
    """The sparsity record of the ungated candidate (every mask 1), with the gated record's notes kept."""
    fresh = unstructured_sparsity(masks) if mode == "unstructured" else structured_sparsity(masks, model, exported)
    return {**sparsity, **fresh}
