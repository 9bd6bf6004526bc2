"""FMD - Fast Model Debias with machine unlearning (Chen et al., NeurIPS 2023), written from the formulas.

On a trained model f (parameters theta of the layers we update):

* Counterfactual bias  B(theta) = mean_m |p_y(x_m) - p_y(x_m^cf)| over pairs that differ only in the
  bias attribute (the recipe re-renders the same digit with a random bias value; no bias labels read).
* Influence of removing a training sample z_k on B:  dB_k = (1/n) grad B^T H^-1 grad L(z_k),
  H = Hessian of the mean training loss (+ damping).
* Unlearning (counterfactual-set variant): replace the K most harmful samples (most negative dB_k)
  by their counterfactuals in one Newton step,
      theta_new = theta + (s/n) H^-1 sum_k (grad L(z_k) - grad L(z_k^cf)),
  s = 1 being the first-order estimate of the replacement. The Newton step is a first-order estimate on a
  fitted, near-singular Hessian, so s = 1 rarely is the operating point: s is chosen on a log grid
  (``SCALES``: 0 and 1e-3 .. 1e3, four steps a decade) by :func:`choose_step` on a held-out part of D^b
  that neither the influence nor grad B saw - the step with the LOWEST held-out counterfactual bias among
  those whose held-out accuracy and class-mean accuracy stay within ``tolerance`` of the input model
  (ties: the larger step), jointly with the Hessian damping (``DAMPINGS``: one Newton direction each).
  A bisection towards the tolerance's boundary was tried on Adult: it landed on the cliff past the best
  step and cost more test accuracy than held-out D^b promised. Label-free: held-out D^b needs only y and
  the renderer, no bias labels, so the "group-mean" guard is the mean over classes. No qualifying step lowers the bias -> s = 0 (the input
  model), ``info["improved"]`` False (``debiaskit unlearn`` then refuses to write a model, exit 3).
  The whole trade-off (held-out CF bias and accuracy per step) is in ``info["trace"]``.
* Paper (Chen et al., NeurIPS 2023, arXiv 2310.12560): Colored MNIST, CelebA, Adult Income and LLMs, the
  counterfactual-set variant updating only the last layer(s). Its public code (``richhh520/model-debias``)
  has removal scripts for linear models, Colored MNIST and CelebA, none for Adult (its README loads Adult
  through AI Fairness 360). debiaskit's Adult counterfactual flips the protected attribute's one-hot pair
  (``debiaskit.data``, ``_adult.py``); the operating point measured with ``debiaskit unlearn`` (its
  defaults, 3 seeds: test counterfactual bias -36 to -47 % at no loss of test accuracy) is in BENCHMARKS.md.
* Exact Hessian for the last layer (closed form, checked against torch.func.hessian in the tests);
  beyond the last layer, Hessian-vector products with torch.func and conjugate gradients.

Example::

    from debiaskit.methods.fmd import fmd_unlearn
    result = fmd_unlearn(model, train=splits.train, head="fc", seed=0)
    result.model, result.info["selected_scale"]
"""

from __future__ import annotations

import copy
import datetime as _dt
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp, vmap

from .._io import atomic_folder
from .._validate import NON_NEGATIVE, POSITIVE_INT, SEED, check_device, require
from ..data import BiasDataset
from ..errors import ConfigError, DataError, NoImprovementError
from ..models import collect_outputs, not_linear_head, resolve_head
from ..runs import MethodRecord, check_signing_key, load_run, save_run
from ..train import TrainContext, TrainingMethod
from ._folders import UNLEARN_FOLDER
from ._registry import Default, MethodInfo, register_method

# 0 (the input model) and a log grid 1e-3 .. 1e3, four steps a decade: the first grid stopped at 3 and left
# FMD a near no-op on Adult, whose useful steps lie near 10 (BENCHMARKS.md)
SCALES = (0.0,) + tuple(float(f"{10 ** (k / 4):.4g}") for k in range(-12, 13))
ACCURACY_TOLERANCE = 0.01  # held-out accuracy (and class-mean accuracy) may fall at most 1 point
# Hessian damping, chosen with the step on held-out D^b: a fitted head's H is near-singular and the damping that
# keeps the Newton direction from being a plain gradient step depends on the model (Adult: 1e-4 or 1e-3)
DAMPINGS = (1e-2, 1e-3, 1e-4)


# -- last layer, exact ------------------------------------------------------------------------------
def _aug(z: Tensor) -> Tensor:
    return torch.cat([z, torch.ones(len(z), 1, dtype=z.dtype, device=z.device)], 1)


def head_logits(theta: Tensor, z: Tensor) -> Tensor:
    """Logits of a linear head with parameters theta = [W | b] (C x (d+1)) on features z."""
    return _aug(z) @ theta.T


def head_per_sample_grads(z: Tensor, y: Tensor, theta: Tensor) -> Tensor:
    """Per-sample gradients of CE wrt theta = [W | b], flattened: (p - e_y) outer [z, 1] -> (N, C (d+1))."""
    p = head_logits(theta, z).softmax(1)
    r = p - F.one_hot(y, theta.shape[0]).to(p.dtype)
    return (r[:, :, None] * _aug(z)[:, None, :]).flatten(1)


def head_hessian(z: Tensor, y: Tensor, theta: Tensor, *, damping: float = 0.0) -> Tensor:
    """Exact Hessian of mean CE wrt flat theta = [W | b]: (1/N) sum_n (diag p_n - p_n p_n^T) (x) z~_n z~_n^T,
    plus ``damping`` * I (a ridge term: the objective's own L2 or a numerical safeguard)."""
    za = _aug(z)
    p = head_logits(theta, z).softmax(1)
    n, c = p.shape
    k = za.shape[1]
    diag = torch.einsum("nc,ni,nj->cij", p, za, za) / n  # C x k x k
    u = (p[:, :, None] * za[:, None, :]).reshape(n, c * k)
    h = -(u.T @ u) / n
    h = h.view(c, k, c, k)
    idx = torch.arange(c)
    h[idx, :, idx, :] += diag
    h = h.reshape(c * k, c * k)
    return h + damping * torch.eye(c * k, dtype=h.dtype, device=h.device)


def influence_on_measure(grad_measure: Tensor, hessian: Tensor, per_sample_grads: Tensor, *, n: int) -> Tensor:
    """Predicted change of a measure B when each training sample is removed:
    dB_k = (1/n) grad B^T H^-1 grad L(z_k) (Koh & Liang; FMD's I(z) up to sign and 1/n)."""
    v = torch.linalg.solve(hessian, grad_measure)
    return per_sample_grads @ v / n


def counterfactual_gap(probs: Tensor, probs_cf: Tensor, y: Tensor) -> Tensor:
    """B = mean |p_y(x) - p_y(x_cf)| (differentiable)."""
    return (probs.gather(1, y[:, None]) - probs_cf.gather(1, y[:, None])).abs().mean()


# -- beyond the last layer: HVPs with torch.func -------------------------------------------------------
def conjugate_gradient(hvp: Callable[[Tensor], Tensor], b: Tensor, *, iters: int = 100, tol: float = 1e-10) -> Tensor:
    """Solve H x = b for symmetric positive definite H given only x -> H x."""
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rs = r @ r
    for _ in range(iters):
        hp = hvp(p)
        alpha = rs / (p @ hp)
        x = x + alpha * p
        r = r - alpha * hp
        rs_new = r @ r
        if rs_new < tol * (b @ b):
            break
        p = r + (rs_new / rs) * p
        rs = rs_new
    return x


class _FuncProblem:
    """Parameters of the named modules as one flat vector; gradients/HVPs via torch.func."""

    def __init__(self, model: nn.Module, layers: tuple[str, ...], damping: float, cg_iters: int) -> None:
        self.model = model
        names = [
            n for n, _ in model.named_parameters() if any(n == layer or n.startswith(layer + ".") for layer in layers)
        ]
        if not names:
            raise ConfigError(f"fmd: no parameters under layers {layers}")
        self.names = names
        params = dict(model.named_parameters())
        self.shapes = [params[n].shape for n in names]
        self.theta = torch.cat([params[n].detach().flatten() for n in names])
        self.damping, self.cg_iters = damping, cg_iters

    def unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        out, i = {}, 0
        for n, s in zip(self.names, self.shapes):
            k = int(torch.tensor(s).prod()) if len(s) else 1
            out[n] = flat[i : i + k].view(s)
            i += k
        return out

    def logits(self, flat: Tensor, x: Tensor) -> Tensor:
        return functional_call(self.model, self.unflatten(flat), (x,))

    def per_sample_grads(self, x: Tensor, y: Tensor) -> Tensor:
        def one(flat, xi, yi):
            return F.cross_entropy(self.logits(flat, xi[None]), yi[None])

        return vmap(grad(one), in_dims=(None, 0, 0))(self.theta, x, y)

    def solver(self, x: Tensor, y: Tensor, damping: float | None = None) -> Callable[[Tensor], Tensor]:
        loss = lambda flat: F.cross_entropy(self.logits(flat, x), y)  # noqa: E731
        damping = self.damping if damping is None else damping

        def hvp(v: Tensor) -> Tensor:
            return jvp(grad(loss), (self.theta,), (v,))[1] + damping * v

        return lambda b: conjugate_gradient(hvp, b, iters=self.cg_iters)


# -- the method ------------------------------------------------------------------------------------
@dataclass
class UnlearnResult:
    model: nn.Module
    info: dict[str, Any] = field(default_factory=dict)


def counterfactual_inputs(dataset, index: Tensor, *, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """(x, x_cf, y) for samples ``index``: x_cf re-renders the same content with every bias attribute
    changed to another value (:meth:`~debiaskit.data.BiasDataset.draw_counterfactual_bias`, the draw the
    audit's counterfactual bias uses too). The renderer knows each sample's bias; FMD sees only the pairs
    and y, never a bias label."""
    if not isinstance(dataset, BiasDataset) or dataset.render is None:
        raise ConfigError(
            "fmd needs counterfactual pairs (samples re-rendered with another bias value), but "
            f"{getattr(dataset, 'name', type(dataset).__name__)} has no counterfactual renderer; "
            "use a debiaskit recipe dataset (biased/colored/multicolor ...), Adult, or for your own data a "
            "tensors file with a `cf` array (the counterfactual input of each row, same shape as x) or "
            "`bias_columns` (tabular), small enough to be held in memory; or another method"
        )
    try:
        x_cf = dataset.counterfactual(index, dataset.draw_counterfactual_bias(index, generator=generator))
    except DataError as exc:
        raise ConfigError(f"fmd needs counterfactual pairs: {exc}") from exc
    return dataset.to_float(dataset.images[index]), x_cf, dataset.y[index]


def _features(model: nn.Module, x: Tensor, head: str | None, device) -> tuple[Tensor, Tensor]:
    out = collect_outputs(model, x, head=head, device=device)
    return out.z, out.logits


def fmd_unlearn(
    model: nn.Module,
    *,
    train,
    head: str | None = None,
    seed: int = 0,
    pool_size: int = 5000,
    n_bias_pairs: int = 1000,
    n_val: int = 2000,
    top_k: int = 500,
    damping: float | tuple[float, ...] | list[float] = DAMPINGS,
    layers: tuple[str, ...] | None = None,
    hessian: str = "exact",
    cg_iters: int = 100,
    scales: tuple[float, ...] = SCALES,
    tolerance: float = ACCURACY_TOLERANCE,
    device: str | torch.device = "cpu",
) -> UnlearnResult:
    """Debias a trained ``model`` post hoc with FMD's counterfactual unlearning step (see module doc).

    ``train`` is D^b (only its images, targets and counterfactual renderer are used). ``damping``: one value
    or several (chosen with the step on held-out D^b). ``layers``
    defaults to the head; ``hessian="exact"`` (head only, closed form) or ``"cg"`` (HVPs via torch.func).
    Returns a new model (the input is not modified) and diagnostics: bias and accuracy before/after on the
    held-out part of D^b, the influence statistics, the selected step scale and the whole trade-off
    (``info["trace"]``); ``tolerance``: see :func:`choose_step`.
    """
    head_name, head_module = resolve_head(model, head)
    layers = tuple(layers or (head_name,))
    if hessian == "exact" and layers != (head_name,):
        raise ConfigError("fmd: the exact Hessian is for the last layer only; use hessian='cg' for more layers")
    if hessian not in ("exact", "cg"):
        raise ConfigError(f"fmd: hessian must be 'exact' or 'cg', got {hessian!r}")
    if hessian == "exact" and not isinstance(head_module, nn.Linear):
        raise ConfigError(f"fmd's exact last-layer Hessian: {not_linear_head(head_name, head_module)}")
    gen = torch.Generator().manual_seed(seed)
    n_train = len(train)
    need = pool_size + n_bias_pairs + n_val
    order = torch.randperm(n_train, generator=gen)
    if n_train < need:  # small data: shrink the three disjoint sets proportionally
        f = n_train / need
        pool_size, n_bias_pairs = max(int(pool_size * f), 2), max(int(n_bias_pairs * f), 2)
        n_val = max(n_train - pool_size - n_bias_pairs, 1)
    pool_idx, bias_idx = order[:pool_size], order[pool_size : pool_size + n_bias_pairs]
    val_idx = order[pool_size + n_bias_pairs : pool_size + n_bias_pairs + n_val]
    top_k = min(top_k, pool_size)
    model = copy.deepcopy(model).to(device).eval()
    xp, xp_cf, yp = counterfactual_inputs(train, pool_idx, generator=gen)
    xb, xb_cf, yb = counterfactual_inputs(train, bias_idx, generator=gen)
    xv, xv_cf, yv = counterfactual_inputs(train, val_idx, generator=gen)

    if hessian == "exact":
        zp, _ = _features(model, xp, head_name, device)
        zp_cf, _ = _features(model, xp_cf, head_name, device)
        zb, _ = _features(model, xb, head_name, device)
        zb_cf, _ = _features(model, xb_cf, head_name, device)
        theta0 = torch.cat([head_module.weight.detach(), head_module.bias.detach()[:, None]], 1).cpu().double()
        zp, zp_cf, zb, zb_cf = zp.double(), zp_cf.double(), zb.double(), zb_cf.double()
        h = head_hessian(zp, yp, theta0)
        eye = torch.eye(len(h), dtype=h.dtype)
        solver = lambda d: lambda v: torch.linalg.solve(h + d * eye, v)  # noqa: E731
        g_pool = head_per_sample_grads(zp, yp, theta0)
        g_pool_cf = head_per_sample_grads(zp_cf, yp, theta0)
        th = theta0.clone().requires_grad_(True)
        bias = counterfactual_gap(head_logits(th, zb).softmax(1), head_logits(th, zb_cf).softmax(1), yb)
        g_bias = torch.autograd.grad(bias, th)[0].flatten()
        flat0 = theta0.flatten()
    else:
        prob = _FuncProblem(model, layers, 0.0, cg_iters)
        xs = xp[: min(len(xp), 1024)].to(device)
        solver = lambda d: prob.solver(xs, yp[: len(xs)].to(device), damping=d)  # noqa: E731
        g_pool = torch.cat(
            [
                prob.per_sample_grads(xp[i : i + 256].to(device), yp[i : i + 256].to(device))
                for i in range(0, len(xp), 256)
            ]
        )
        g_pool_cf = torch.cat(
            [
                prob.per_sample_grads(xp_cf[i : i + 256].to(device), yp[i : i + 256].to(device))
                for i in range(0, len(xp), 256)
            ]
        )
        th = prob.theta.clone().requires_grad_(True)
        bias = counterfactual_gap(
            prob.logits(th, xb.to(device)).softmax(1), prob.logits(th, xb_cf.to(device)).softmax(1), yb.to(device)
        )
        g_bias = torch.autograd.grad(bias, th)[0]
        flat0 = prob.theta

    def newton(d: float) -> dict[str, Any]:
        solve = solver(d)
        influence = g_pool @ solve(g_bias) / n_train  # dB when removing each pool sample
        harmful = torch.argsort(influence)[:top_k]  # most negative: removing them lowers the bias most
        harmful = harmful[influence[harmful] < 0]
        direction = (
            solve((g_pool[harmful] - g_pool_cf[harmful]).sum(0)) / n_train if len(harmful) else torch.zeros_like(flat0)
        )
        return {
            "direction": direction,
            "harmful_samples": int(len(harmful)),
            "influence_min": float(influence.detach().min()),
            "influence_max": float(influence.detach().max()),
        }

    def write(flat: Tensor) -> nn.Module:
        out = copy.deepcopy(model)
        with torch.no_grad():
            if hessian == "exact":
                t = flat.view_as(theta0).to(head_module.weight.dtype)
                mod = dict(out.named_modules())[head_name]
                mod.weight.copy_(t[:, :-1])
                mod.bias.copy_(t[:, -1])
            else:
                params = dict(out.named_parameters())
                for n, val in prob.unflatten(flat.to(params[prob.names[0]].dtype)).items():
                    params[n].copy_(val)
        return out.eval()

    if hessian == "exact":  # only the head moves: held-out features once, then each step is a matrix product
        zv, zv_cf = (_features(model, xs, head_name, device)[0].double() for xs in (xv, xv_cf))
        held_out_logits = lambda flat: (head_logits(flat.view_as(theta0), zv), head_logits(flat.view_as(theta0), zv_cf))  # noqa: E731
    else:

        def held_out_logits(flat: Tensor) -> tuple[Tensor, Tensor]:
            return tuple(
                torch.cat([prob.logits(flat, part.to(device)).cpu() for part in xs.split(1024)]) for xs in (xv, xv_cf)
            )

    @torch.no_grad()
    def score(flat: Tensor) -> dict[str, float]:
        logits, logits_cf = held_out_logits(flat)
        pred = logits.argmax(1).cpu()
        return {
            "heldout_accuracy": float((pred == yv).float().mean()),
            "heldout_class_mean_accuracy": class_mean_accuracy(pred, yv),
            "heldout_cf_bias": float(counterfactual_gap(logits.softmax(1).cpu(), logits_cf.softmax(1).cpu(), yv)),
        }

    dampings = [float(d) for d in ((damping,) if isinstance(damping, (int, float)) else damping)]
    steps = {d: newton(d) for d in dampings}

    def moved(d: float, s: float) -> Tensor:
        return flat0 + s * steps[d]["direction"].to(flat0.dtype)

    trace = [{"scale": 0.0, "damping": None, **score(moved(dampings[0], 0.0))}]  # the input model, once
    trace += [{"scale": s, "damping": d, **score(moved(d, s))} for d in dampings for s in sorted(set(scales) - {0.0})]
    chosen = choose_step(trace, tolerance=tolerance)
    before = trace[0]
    used = steps[chosen["damping"] if chosen["damping"] is not None else dampings[0]]
    info = {
        "bias_before": before["heldout_cf_bias"],
        "bias_after": chosen["heldout_cf_bias"],
        "accuracy_before": before["heldout_accuracy"],
        "accuracy_after": chosen["heldout_accuracy"],
        "selected_scale": chosen["scale"],
        "selected_damping": chosen["damping"],
        "improved": chosen["scale"] != 0.0,
        "tolerance": tolerance,
        "selection": SELECTION_TEXT,
        "gradient_pairs_bias_before": float(bias.detach()),
        **{k: v for k, v in used.items() if k != "direction"},
        "pool_size": int(len(pool_idx)),
        "n_bias_pairs": int(len(bias_idx)),
        "n_val": int(len(val_idx)),
        "damping": dampings,
        "layers": list(layers),
        "hessian": hessian,
        "trace": trace,
    }
    return UnlearnResult(model=write(moved(chosen["damping"] or dampings[0], chosen["scale"])), info=info)


SELECTION_TEXT = (
    "step scale (and Hessian damping) with the lowest counterfactual bias on held-out pairs of D^b among those whose held-out "
    "D^b accuracy and class-mean accuracy stay within the tolerance of the input model (label-free; "
    "ties: the larger step; none lower the bias: the input model)"
)


def class_mean_accuracy(pred: Tensor, y: Tensor) -> float:
    """Mean over the classes present of their accuracy (the label-free stand-in for group-mean accuracy:
    a step that buys accuracy on the majority class with the minority one is caught)."""
    return float(torch.stack([(pred[y == c] == c).float().mean() for c in y.unique()]).mean())


def choose_step(trace: list[dict[str, Any]], *, tolerance: float = ACCURACY_TOLERANCE) -> dict[str, Any]:
    """The trace entry FMD keeps: among steps whose ``heldout_accuracy`` and ``heldout_class_mean_accuracy``
    are at most ``tolerance`` below the input model's (scale 0) and whose ``heldout_cf_bias`` is below it,
    the lowest bias (the largest reduction; ties: the larger step). None qualifies: the input model's entry.
    Marks every entry with ``qualifies`` (the plot and the report show which steps were allowed)."""
    base = next(t for t in trace if t["scale"] == 0.0)
    for t in trace:
        t["qualifies"] = bool(
            t["scale"] != 0.0
            and t["heldout_accuracy"] >= base["heldout_accuracy"] - tolerance - 1e-12
            and t["heldout_class_mean_accuracy"] >= base["heldout_class_mean_accuracy"] - tolerance - 1e-12
            and t["heldout_cf_bias"] < base["heldout_cf_bias"] - 1e-12
        )
    allowed = [t for t in trace if t["qualifies"]]
    if not allowed:
        return base
    return min(allowed, key=lambda t: (t["heldout_cf_bias"], -t["scale"]))


def unlearn_run(
    run_dir: Path,
    *,
    out: Path | None = None,
    force: bool = False,
    seed: int = 0,
    top_k: int = 500,
    pool_size: int = 5000,
    damping: float | None = None,
    tolerance: float = ACCURACY_TOLERANCE,
    device: str = "cpu",
    splits=None,
    model=None,
    trust_code: bool = False,
) -> tuple[Path, UnlearnResult]:
    """``debiaskit unlearn``: FMD's step on a finished run, written as a NEW run folder (default ``RUN_DIR-fmd``;
    the input run is never modified). Its ``run.json`` keeps the parent's model, data and training record; beside
    it ``unlearn.md`` and ``unlearn_tradeoff.png`` show the step choice (held-out CF bias and accuracy per step).
    Do no harm: when no step lowers the held-out counterfactual bias within ``tolerance`` of the input model's
    held-out accuracy, :class:`~debiaskit.errors.NoImprovementError` is raised and nothing is written.
    ``splits`` / ``model``: for a run trained on data or a model given as Python objects, which its folder
    cannot rebuild (see :func:`debiaskit.runs.load_run`); ``trust_code``: import the user model of a run whose
    ``run.json`` is not signed with your key (see :func:`debiaskit.runs.load_run`).
    """
    for name, value, rule in (
        ("seed", seed, SEED),
        ("top_k", top_k, POSITIVE_INT),
        ("pool_size", pool_size, POSITIVE_INT),
        ("damping", damping or 0.0, NON_NEGATIVE),
        ("tolerance", tolerance, NON_NEGATIVE),
    ):
        require(name, value, rule)
    damping = DAMPINGS if damping is None else damping  # None: chosen with the step
    check_device(device)
    check_signing_key()  # the new run.json is signed at the end
    run_dir = Path(run_dir)
    target = Path(out) if out is not None else run_dir.with_name(run_dir.name + "-fmd")
    run = load_run(run_dir, splits=splits, model=model, trust_code=trust_code)
    with atomic_folder(target, kind=UNLEARN_FOLDER, force=force, inputs=(run_dir,), pinned=(run.identity,)) as staging:
        res = fmd_unlearn(
            run.model,
            train=run.splits().train,
            head=run.head,
            seed=seed,
            top_k=top_k,
            pool_size=pool_size,
            damping=damping,
            tolerance=tolerance,
            device=device,
        )
        if not res.info["improved"]:
            raise NoImprovementError(_nothing_better(res.info, run_dir))
        parent = run.record
        record = replace(
            parent,
            kind="unlearn",
            parent_run=str(run_dir),
            versions={},
            device=str(device),
            created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            weights="model.safetensors",
            dynamics=None,
            method=MethodRecord(
                name="fmd",
                uses_bias_labels=False,
                post_hoc=True,
                state=res.info,
                config={
                    "seed": seed,
                    "top_k": top_k,
                    "pool_size": pool_size,
                    "damping": list(DAMPINGS) if isinstance(damping, tuple) else damping,
                    "tolerance": tolerance,
                },
                parent_method=parent.method.to_dict() if parent.method else {},
            ),
        )
        save_run(staging, model=res.model, record=record)
        (staging / "unlearn.md").write_text("\n".join(step_report(res.info)) + "\n")
        plot_tradeoff(res.info, staging / "unlearn_tradeoff.png")
    return target, res


def _nothing_better(info: dict[str, Any], run_dir: Path) -> str:
    """What was tried, what the best step would have cost, and what the user can do."""
    scales = sorted({t["scale"] for t in info["trace"] if t["scale"] > 0})
    lower = [t for t in info["trace"] if t["heldout_cf_bias"] < info["bias_before"] - 1e-12]
    if lower:
        best = min(lower, key=lambda t: t["heldout_cf_bias"])
        seen = (
            f"the largest reduction, {info['bias_before']:.4f} -> {best['heldout_cf_bias']:.4f} at step {best['scale']:g}, "
            f"costs {100 * (info['accuracy_before'] - best['heldout_accuracy']):.2f} points of held-out accuracy"
        )
    else:
        seen = f"no step lowered it below {info['bias_before']:.4f} (the model may not use the attribute)"
    return (
        f"FMD found nothing better than {run_dir}: it tried {len(scales)} step scales ({min(scales):g} .. "
        f"{max(scales):g}) x Hessian dampings {', '.join(f'{d:g}' for d in info['damping'])} on {info['harmful_samples']} harmful samples, scored on {info['n_val']} held-out "
        f"training samples; {seen}, over the allowed {100 * info['tolerance']:g} points. No model was written. "
        "You can allow a larger accuracy drop (--max-accuracy-drop), replace more samples (--top-k, "
        "--pool-size), or keep the input model"
    )


def step_report(info: dict[str, Any]) -> list[str]:
    """Markdown lines of the step choice: the trade-off FMD saw on held-out D^b, per step scale."""
    lines = [
        "# FMD unlearning step",
        "",
        f"Selection: {info['selection']}; tolerance: {100 * info['tolerance']:g} point(s) of accuracy.",
        f"Selected step scale {info['selected_scale']:g} (damping {info['selected_damping']}): held-out counterfactual bias {info['bias_before']:.4f} -> "
        f"{info['bias_after']:.4f}, held-out accuracy {100 * info['accuracy_before']:.2f} -> "
        f"{100 * info['accuracy_after']:.2f} % ({info['n_val']} held-out training samples; the test set is not used).",
        "",
        "| step scale | damping | held-out CF bias | held-out accuracy (%) | class-mean accuracy (%) | allowed |",
        "|---|---|---|---|---|---|",
    ]
    for t in info["trace"]:
        damping = "-" if t["damping"] is None else f"{t['damping']:g}"
        lines.append(
            f"| {t['scale']:g} | {damping} | {t['heldout_cf_bias']:.4f} | {100 * t['heldout_accuracy']:.2f} | "
            f"{100 * t['heldout_class_mean_accuracy']:.2f} | {'yes' if t['qualifies'] else '-'} |"
        )
    return lines


def plot_tradeoff(info: dict[str, Any], path: Path) -> None:
    """PNG: held-out counterfactual bias and accuracy against the step scale (log axis; the input model at the
    left edge), the allowed accuracy band shaded and the selected step marked."""
    import matplotlib  # late, as the audit's plots: only the writers need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    trace = info["trace"]
    base = trace[0]
    left = min(t["scale"] for t in trace if t["scale"] > 0) / 3  # where the input model (s = 0) is drawn
    fig, ax = plt.subplots(figsize=(7.2, 4.0))
    ax2 = ax.twinx()
    for i, d in enumerate(info["damping"]):
        line = [base] + [t for t in trace if t["damping"] == d]
        x = [max(t["scale"], left) for t in line]
        ax.plot(
            x,
            [t["heldout_cf_bias"] for t in line],
            "o-",
            ms=3,
            color=plt.cm.Reds(0.9 - 0.25 * i),
            label=f"CF bias, damping {d:g}",
        )
        ax2.plot(
            x,
            [100 * t["heldout_accuracy"] for t in line],
            "s--",
            ms=3,
            color=plt.cm.Blues(0.9 - 0.25 * i),
            label=f"accuracy, damping {d:g}",
        )
    ax.set_xscale("log")
    ax.set_xlabel("step scale s (leftmost point: the input model, s = 0)")
    ax.set_ylabel("held-out counterfactual bias", color="tab:red")
    ax2.axhspan(
        100 * (info["accuracy_before"] - info["tolerance"]), 100 * info["accuracy_before"], color="tab:blue", alpha=0.1
    )
    ax2.set_ylabel("held-out accuracy (%)", color="tab:blue")
    ax.axvline(max(info["selected_scale"], left), color="k", ls="--", lw=1)
    ax.plot([max(info["selected_scale"], left)], [info["bias_after"]], "*", color="k", ms=12)
    # the interesting range only (steps past the cliff would flatten it); every value is in unlearn.md
    ax.set_ylim(0, 2 * max(info["bias_before"], 1e-6))
    ax2.set_ylim(100 * info["accuracy_before"] - 10, 100 * info["accuracy_before"] + 3)
    ax.legend(loc="lower left", fontsize=7)
    ax.set_title(f"FMD step choice on held-out D^b (selected: s = {info['selected_scale']:g}, *)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def apply_fmd(model: nn.Module, *, splits, head: str | None = None, seed: int = 0, **config) -> tuple[nn.Module, dict]:
    """Post-hoc entry used by the comparison harness and ``debiaskit unlearn`` (D^b only)."""
    res = fmd_unlearn(model, train=splits.train, head=head, seed=seed, **config)
    return res.model, res.info


class FMD(TrainingMethod):
    """``debiaskit train --method fmd``: ERM for the configured epochs, then the FMD unlearning step.

    Under torchrun the ERM epochs are the sharded main loop; the unlearning step (seeded, deterministic, on
    the plain module) runs the same computation on every rank, so every rank ends with the same weights."""

    def __init__(self, **config) -> None:
        super().__init__()
        self.config = config
        self.unlearning: dict[str, Any] = {}  # the step's diagnostics, once it is done

    def setup(self, ctx: TrainContext) -> None:
        data = ctx.train_data
        if not isinstance(data, BiasDataset) or data.render is None:
            raise ConfigError(
                "fmd needs counterfactual pairs, but the training data has no counterfactual renderer; "
                "use a debiaskit recipe dataset, Adult, or a tensors file with a `cf` array (the "
                "counterfactual input of each row) or `bias_columns`; or another method"
            )
        super().setup(ctx)

    def final_model(self, ctx: TrainContext) -> nn.Module:
        model = ctx.unwrapped
        if ctx.epoch < ctx.config.epochs - 1:
            return model
        if not self.unlearning:
            res = fmd_unlearn(
                model, train=ctx.train_data, head=ctx.head, seed=ctx.config.seed, device=ctx.device, **self.config
            )
            self.unlearning = res.info
            with torch.no_grad():  # write the unlearned weights back into the trained model object
                model.load_state_dict(res.model.state_dict())
        return model

    def state(self) -> dict[str, Any]:
        return {
            **self.config,
            "unlearning": {k: v for k, v in self.unlearning.items() if k != "trace"},
            "trace": self.unlearning.get("trace"),
        }


def unlearning_report(settings: list[tuple[str, list[dict[str, Any]]]], *, pm: Callable[..., str]) -> list[str]:
    """Markdown lines for the comparison harness: FMD's unlearning step per setting (from each cell's state);
    ``pm`` formats a list of fractions as the tables' "mean +- std" in %."""
    if not any(states for _, states in settings):
        return []
    lines = [
        "",
        "FMD unlearning step (counterfactual bias on held-out pairs of D^b, x 100; " + SELECTION_TEXT + "):",
        "",
        "| setting | selected step scale per seed | CF bias before | CF bias after | n |",
        "|---|---|---|---|---|",
    ]
    for label, states in settings:
        if states:
            scales = ", ".join(f"{st.get('selected_scale', float('nan')):g}" for st in states)
            lines.append(
                f"| {label} | {scales} | {pm(st.get('bias_before') for st in states)} | "
                f"{pm(st.get('bias_after') for st in states)} | {len(states)} |"
            )
    return lines


_OURS = "ours (not tuned)"
register_method(
    MethodInfo(
        name="fmd",
        description="FMD: counterfactual bias, influence, Newton unlearning step on the last layer",
        factory=FMD,
        post_hoc=True,
        retrains=False,
        uses_counterfactuals=True,
        apply=apply_fmd,
        selection="own",
        selection_text=SELECTION_TEXT,
        report=unlearning_report,
        reference="Chen et al., NeurIPS 2023",
        defaults={
            "*": {
                "pool_size": Default(5000, _OURS),
                "n_bias_pairs": Default(1000, _OURS),
                "n_val": Default(
                    2000, _OURS + " (held-out D^b of the step choice: 1 point of accuracy must be measurable)"
                ),
                "top_k": Default(500, _OURS + " (paper: a small counterfactual set)"),
                "damping": Default(
                    list(DAMPINGS), "ours: chosen with the step on held-out D^b (H is near-singular on a fitted model)"
                ),
                "hessian": Default("exact", "paper's public code (explicit last-layer Hessian)"),
                "tolerance": Default(ACCURACY_TOLERANCE, _OURS + " (do no harm: held-out accuracy within 1 point)"),
            }
        },
    )
)
