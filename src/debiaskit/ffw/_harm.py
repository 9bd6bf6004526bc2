"""Do no harm: FFW never hands back a model worse than the one it was given, nor one that reads nothing.

Two rules, both on D^u_val (the split FFW selects on; the test set chooses nothing):

* **Near chance** (a collapsed network): a model whose D^u_val accuracy (sample-weighted) is below

      floor = base + max(CHANCE_MARGIN, 2 * sqrt(base * (1 - base) / n)),   base = max(1 / C, majority-class rate)

  (C classes, n D^u_val samples; the second term: two standard errors of a constant predictor's accuracy) reads
  nothing that a constant answer would not. A constant bottleneck makes any bias term 0, so J = CE + gamma D can
  prefer such a network to every useful one: the selection (gate states, tuning epochs) excludes near-chance
  candidates before it compares scores, and the final output must clear the floor.

* **Not worse than the input**: the final output (after the gates, the weight tuning, the eraser and the head
  refit) must reach the input model's D^u_val *group-mean* accuracy (the unweighted mean over the (y, b) groups
  present, b the whole bias-label row) less one standard error of the input's:

      SE = sqrt(sum_g q_g * (1 - q_g) / n_g) / G,   q_g = (c_g + 1) / (n_g + 2)

  (c_g of the n_g samples of group g right, G groups: the standard error of a mean of G independent binomial
  proportions, each proportion smoothed by one right and one wrong answer so that a group the input gets all right
  or all wrong - every group of one sample - still counts its uncertainty instead of adding 0). A worse output is
  refused, and so is the input handed back unchanged (nothing to give).

A refused search raises :class:`~debiaskit.errors.NoImprovementError` carrying the per-stage record (the CLI writes
no model and exits with :data:`~debiaskit.errors.NO_IMPROVEMENT_EXIT`); ``no_harm=False`` (the benchmark harnesses,
which measure FFW as published, collapses included) records the verdict and returns the output all the same.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from ..audit import below_majority_text, chance_floor
from ..errors import NoImprovementError

REMEDIES = (
    "retrain instead: `debiaskit train --method groupdro` (with bias labels) or `--method calm` (no bias "
    "labels needed); try `debiaskit ffw RUN --mode structured` (or `--mode unstructured` if you ran "
    "structured); or give FFW more bias-labelled unbiased data (a larger D^u: `debiaskit train ... --unbiased-size N`, "
    "then FFW on that run)"
)


@dataclass(frozen=True)
class ValMeasure:
    """One D^u_val measure of the do-no-harm record (:func:`group_accuracy`): the network measured (``stage``), its
    group-mean accuracy, that mean's standard error (module docstring), the number of (y, b) groups present, the
    smallest one's size and the sample-weighted accuracy. ``to_json()``: one entry of ffw.json's
    ``search.no_harm.stages``."""

    stage: str
    group_mean: float
    group_mean_se: float
    groups: int
    smallest_group: int
    accuracy: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ChanceFloor:
    """The near-chance floor on D^u_val (module docstring; :func:`debiaskit.audit.chance_floor`'s numbers): 1 / C,
    the majority-class rate, their max (``base``), the margin above it and ``floor = base + margin``.
    ``to_json()``: ffw.json's ``search.no_harm.floor``."""

    chance: float
    majority_rate: float
    base: float
    margin: float
    floor: float

    @classmethod
    def of(cls, y: Tensor, num_classes: int) -> ChanceFloor:
        """The floor a model must clear on labels ``y`` of ``num_classes`` classes."""
        return cls(**chance_floor(y, num_classes))

    def to_json(self) -> dict[str, float]:
        return asdict(self)


def group_accuracy(pred: Tensor, y: Tensor, b: Tensor, *, stage: str) -> ValMeasure:
    """D^u_val group-mean accuracy of predictions ``pred`` (of the network named ``stage``): the mean over the
    (y, b) groups present of each group's accuracy (``b`` (N,) or (N, A): a group is a target and a whole bias row),
    its standard error (module docstring) and the sample-weighted accuracy."""
    keys = torch.cat([y.view(-1, 1).long().cpu(), b.view(len(y), -1).long().cpu()], dim=1)
    _, group, counts = torch.unique(keys, dim=0, return_inverse=True, return_counts=True)
    right = torch.zeros(len(counts), dtype=torch.float64).index_add_(0, group, (pred.cpu() == y.cpu()).double())
    n = counts.double()
    p, q = right / n, (right + 1) / (n + 2)  # q: smoothed, so that an all-right / all-wrong group is not certain
    se = float(torch.sqrt((q * (1 - q) / n).sum()) / len(counts))
    return ValMeasure(
        stage=stage,
        group_mean=float(p.mean()),
        group_mean_se=se,
        groups=int(len(counts)),
        smallest_group=int(counts.min()),
        accuracy=float((pred.cpu() == y.cpu()).double().mean()),
    )


def near_chance(accuracy: float, floor: ChanceFloor) -> bool:
    """Whether a D^u_val accuracy is below the floor: a collapsed (constant-like) network."""
    return accuracy < floor.floor


RULE = (
    "accepted when the final output's D^u_val group-mean accuracy is at least the input's less one "
    "standard error of the input's (SE = sqrt(sum_g q_g (1 - q_g) / n_g) / G, q_g = (right_g + 1) / "
    "(n_g + 2)), and its D^u_val "
    "accuracy clears max(chance, majority-class rate) + max(2 points, 2 standard errors of that rate); "
    "the input handed back unchanged is refused too"
)


@dataclass
class NoHarmVerdict:
    """The do-no-harm verdict: ``accepted``, why not (``reason``: "unchanged", "near_chance", "worse"; None when
    accepted), every D^u_val measure compared (``stages``, the input first), the one judged (``final``: the
    output), the tolerance, the group mean required, the near-chance floor and whether the input itself is below
    the majority-class rate. ``to_json()``: the record of ffw.json's
    ``search.no_harm`` (and of :class:`NoImprovementError`'s ``record``)."""

    accepted: bool
    reason: str | None
    stages: list[ValMeasure]
    final: ValMeasure
    tolerance: float
    required_group_mean: float
    floor: ChanceFloor
    input_below_majority: bool
    rule: str = RULE

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def verdict(
    stages: list[ValMeasure], floor: ChanceFloor, *, unchanged: bool, final: ValMeasure | None = None
) -> NoHarmVerdict:
    """Accept or refuse ``final`` (default: the last of ``stages``; the first is the input): see the module
    docstring."""
    given = stages[0]
    final = stages[-1] if final is None else final
    tolerance = given.group_mean_se
    worse = final.group_mean < given.group_mean - tolerance
    collapsed = near_chance(final.accuracy, floor)
    reason = None
    if unchanged:
        reason = "unchanged"
    elif collapsed:
        reason = "near_chance"
    elif worse:
        reason = "worse"
    return NoHarmVerdict(
        accepted=reason is None,
        reason=reason,
        stages=stages,
        final=final,
        tolerance=tolerance,
        required_group_mean=given.group_mean - tolerance,
        floor=floor,
        input_below_majority=given.accuracy < floor.majority_rate,
    )


def _pct(v: float) -> str:
    return f"{100 * v:.1f} %"


def refusal_message(judged: NoHarmVerdict) -> str:
    """What was tried, why nothing qualified and what to do: the text of :class:`NoImprovementError`."""
    stages, floor, final = judged.stages, judged.floor, judged.final
    given = stages[0]
    if judged.reason == "unchanged":
        head = "FFW found no sub-network better than your model; nothing was changed, so no model is written."
    elif judged.reason == "near_chance":
        head = (
            f"FFW's output is near chance: its D^u_val accuracy {_pct(final.accuracy)} does not clear "
            f"{_pct(floor.floor)} (max(chance {_pct(floor.chance)}, majority-class rate "
            f"{_pct(floor.majority_rate)}) + {_pct(floor.margin)}); a collapsed network hides any bias. "
            "No model is written."
        )
    else:
        head = (
            f"FFW's output is worse than your model: D^u_val group-mean accuracy {_pct(final.group_mean)} "
            f"vs the input's {_pct(given.group_mean)} (tolerance one standard error, "
            f"{_pct(judged.tolerance)}). No model is written."
        )
    tried = "; ".join(f"{s.stage} {_pct(s.group_mean)}" for s in stages[1:])
    lines = [
        head,
        f"Tried (D^u_val group-mean accuracy; your model {_pct(given.group_mean)} over {given.groups} "
        f"(y, b) groups, accuracy {_pct(given.accuracy)}): {tried}.",
    ]
    if judged.input_below_majority:
        lines.append(below_majority_text(given.accuracy, floor.majority_rate, split="D^u_val"))
    lines.append("What you can do: " + REMEDIES + ".")
    return "\n".join(lines)


def enforce(judged: NoHarmVerdict, result: Any) -> None:
    """Raise :class:`NoImprovementError` when the verdict refuses the output (its ``record``: the verdict's JSON)."""
    if not judged.accepted:
        raise NoImprovementError(refusal_message(judged), record=judged.to_json(), result=result)
