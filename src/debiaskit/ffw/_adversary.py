"""What the gates are trained against: how the bias term of FFW's objective J = CE + gamma * D(z, b) is read.

The paper's term is the normalised MI between b and the soft output of a linear privacy head trained
alongside the gates (``adversary="head"``). Measured here (docs/design/ffw-defaults.md, "The bias term"), the
gates learn to *fool that head* - its own accuracy falls to chance while a fresh probe still reads 40-50 % -
so this module adds adversaries that keep up:

- ``"lda"``: no probe at all. D = sum_k p_k (mu_k - mu)^T S^-1 (mu_k - mu) / (K - 1): the squared Mahalanobis
  distance of the bias-class means at the bottleneck (Pillai's trace, the mean squared canonical correlation
  between z and onehot(b)) - what a linear probe trained to convergence exploits. Computed on each batch with
  an unbiased U-statistic (so the batch noise adds no drift), S a running estimate of the total covariance.
  Scale-free: shrinking the features does not lower it.
- ``"mmd"``: ``"lda"`` plus the same between-class variance of random Fourier features of the standardised
  bottleneck (a Gaussian-kernel MMD between the bias classes): also what a non-linear probe reads.
- ``"refit"``: the paper's MI, but the linear head is re-fitted to convergence (L-BFGS) on the epoch's
  bottleneck features at the end of every epoch, then keeps training alongside the gates.
- ``"mlp"``: the paper's MI read by a 2-layer MLP head trained alongside the gates.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..audit import normalized_mutual_information
from ..errors import DataError
from ..models import Outputs

ADVERSARIES = {
    "head": "MI of a linear privacy head trained alongside the gates (the paper)",
    "refit": "MI of a linear privacy head re-fitted to convergence after every epoch",
    "mlp": "MI of a 2-layer MLP privacy head trained alongside the gates",
    "lda": "closed-form linear readability of the bias (whitened distance of the bias-class means, within each "
    "target class by default; no probe to fool)",
    "mmd": "lda + Gaussian-kernel MMD between the bias classes (random Fourier features; no probe to fool)",
}


def _scale(var: Tensor, floor: float = 0.1) -> Tensor:
    """Per-feature standard deviations, at least ``floor`` x their mean: a feature that the gates have almost
    switched off is not blown up to full scale (its gradient would swamp the rest), a dead one stays 0."""
    std = (var + 1e-24).sqrt()
    return std.clamp(min=floor * float(std.detach().mean().clamp(min=1e-12)))


def whitener(cov: Tensor, *, ridge: float) -> tuple[Tensor, Tensor]:
    """(std, L): per-feature scales and the lower-triangular L with corr + ridge * I = L L^T, corr the
    correlation matrix of ``cov``. Whitening is L^-1 (z - mean) / std: per feature scale-free, ridge-damped
    in the directions of small correlated variance (a converged probe cannot trust those either)."""
    std = _scale(torch.diagonal(cov))
    corr = cov / std[:, None] / std[None, :]
    eye = torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)
    # row-major like a factor read back from a checkpoint: the triangular solves then round identically on resume
    return std, torch.linalg.cholesky(corr + ridge * eye).contiguous()


def class_mean_distance(
    z: Tensor,
    b: Tensor,
    num_bias: int,
    *,
    mean: Tensor,
    chol: Tensor | None,
    std: Tensor | None = None,
    given: Tensor | None = None,
) -> Tensor:
    """Unbiased estimate of sum_k p_k |L^-1 (mu_k - mean) / std|^2 / (K - 1) from one batch (differentiable in z).

    Per class, |sum_i a_i|^2 - sum_i |a_i|^2 = sum_{i != j} a_i . a_j, divided by n_k (n_k - 1): a U-statistic
    whose mean is |mu_k - mean|^2 in whitened units; classes with fewer than 2 samples in the batch are skipped.
    ``given`` (e.g. the target y): the same within each of its groups, weighted by the group's share - the bias
    read *once the target is known*. A bottleneck organised by digit can hold the colour in digit-specific
    directions whose averages over digits cancel: the marginal term misses it, a non-linear probe does not.
    On data where b and y are independent (D^u), z independent of b given y implies z independent of b.
    """
    a = (z - mean) if std is None else (z - mean) / std
    if chol is not None:
        a = torch.linalg.solve_triangular(chol, a.T, upper=False).T
    if given is None:
        return _between_class(a, b, num_bias) / (num_bias - 1)
    total = a.new_zeros(())
    for c in torch.unique(given):
        sel = given == c
        if int(sel.sum()) >= 2:
            total = total + (float(sel.sum()) / len(a)) * _between_class(a[sel], b[sel], num_bias)
    return total / (num_bias - 1)


def _pairs(a: Tensor) -> Tensor:
    """sum_{i != j} a_i . a_j / (n (n - 1)): unbiased estimate of |E a|^2."""
    n = len(a)
    return (a.sum(0).pow(2).sum() - a.pow(2).sum()) / (n * (n - 1))


def _between_class(a: Tensor, b: Tensor, num_bias: int) -> Tensor:
    """Unbiased estimate of sum_k p_k |E[a | b=k] - E a|^2 (the between-class variance of a).

    The centre ``mean`` used to build ``a`` may lag behind the batch (a running mean): subtracting the
    global term |E a|^2 removes that lag's contribution, sum_k p_k (mu_k - mu) = 0."""
    total = a.new_zeros(())
    n = len(a)
    for k in range(num_bias):
        ak = a[b == k]
        if len(ak) >= 2:
            total = total + (len(ak) / n) * _pairs(ak)
    return total - _pairs(a)


def cross_between(
    a: Tensor,
    b: Tensor,
    ref: Tensor,
    ref_b: Tensor,
    num_bias: int,
    *,
    given: Tensor | None = None,
    ref_given: Tensor | None = None,
    linear: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """Estimate of sum_k p_k |E[a | b=k] - E a|^2 / (K - 1) from the batch ``a`` against a reference sample
    ``ref`` of the same distribution (the last few batches, detached): the inner product of the batch's and the
    reference's class-mean deviations. Unbiased like the U-statistic, but the batch is paired with thousands of
    reference samples instead of its own few dozens per class: far less noise in the gates' gradient, which
    points along the reference's class-mean deviations (what a linear probe fitted on recent batches reads).
    ``given``: the same within each group of ``given`` (e.g. the target), weighted by the group's share.
    ``linear``: a linear map of the features (a whitening's linear part) applied to the class-mean deviations -
    the value of mapping every row first, at the cost of one row per (group, class) cell.

    All cells at once: a (group, class) cell present in both the batch and the reference contributes
    n_cell / n times the inner product of its two deviations from their group's mean."""
    if given is None:
        ga, gr = (torch.zeros(len(t), dtype=torch.long, device=a.device) for t in (a, ref))
    else:
        assert ref_given is not None, "given and ref_given come together"
        _, groups = torch.unique(torch.cat([given.to(a.device), ref_given.to(a.device)]), return_inverse=True)
        ga, gr = groups[: len(a)], groups[len(a) :]
    n_groups = int(torch.cat([ga, gr]).max()) + 1 if len(ga) + len(gr) else 1
    dev_a, count_a = _cell_deviations(a, ga, b.to(a.device), n_groups, num_bias)
    dev_r, count_r = _cell_deviations(ref, gr, ref_b.to(a.device), n_groups, num_bias)
    if linear is not None:
        dev_a, dev_r = linear(dev_a), linear(dev_r)
    weight = ((count_a > 0) & (count_r > 0)).to(a.dtype) * count_a.to(a.dtype) / max(len(a), 1)
    return (weight * (dev_a * dev_r).sum(1)).sum() / (num_bias - 1)


def _cell_deviations(x: Tensor, group: Tensor, b: Tensor, n_groups: int, num_bias: int) -> tuple[Tensor, Tensor]:
    """Each (group, class) cell's mean minus its group's mean (rows ordered group-major), and the cells' counts."""
    cell = group * num_bias + b.long()
    sums = x.new_zeros(n_groups * num_bias, x.shape[1]).index_add(0, cell, x)
    counts = torch.bincount(cell, minlength=n_groups * num_bias)
    means = sums / counts.clamp_min(1).to(x.dtype)[:, None]
    group_counts = counts.view(n_groups, num_bias).sum(1).clamp_min(1).to(x.dtype)
    group_means = sums.view(n_groups, num_bias, -1).sum(1) / group_counts[:, None]
    return means - group_means.repeat_interleave(num_bias, 0), counts


class Memory:
    """The last ``batches`` batches of bottleneck features with their labels (detached), for ``cross_between``."""

    def __init__(self, batches: int) -> None:
        self.batches = batches
        self.items: list[tuple[Tensor, Tensor, Tensor]] = []

    def add(self, z: Tensor, b: Tensor, y: Tensor) -> None:
        if self.batches > 0:
            self.items = (self.items + [(z.detach().double().cpu(), b.detach().cpu(), y.detach().cpu())])[
                -self.batches :
            ]

    def get(self) -> tuple[Tensor, Tensor, Tensor] | None:
        if not self.items:
            return None
        z, b, y = (torch.cat(parts) for parts in zip(*self.items))
        return z, b, y

    def tensors(self) -> dict[str, Tensor]:
        got = self.get()
        if got is None:
            return {}
        z, b, y = got
        return {"mem.z": z, "mem.b": b, "mem.y": y, "mem.sizes": torch.tensor([len(t[0]) for t in self.items])}

    def load_tensors(self, tensors: dict[str, Tensor]) -> None:
        self.items = []
        if "mem.sizes" in tensors:
            sizes = tensors["mem.sizes"].tolist()
            self.items = list(zip(*(torch.split(tensors[f"mem.{k}"], sizes) for k in ("z", "b", "y"))))


def _column(b: Tensor, attr: int) -> Tensor:
    return b if b.ndim == 1 else b[:, attr]


class Labelled(NamedTuple):
    """:class:`~debiaskit.models.Outputs` of bias-labelled data collected with the bottleneck: nothing is None."""

    logits: Tensor
    z: Tensor
    y: Tensor
    b: Tensor


def labelled(out: Outputs) -> Labelled:
    """``out`` with its bottleneck, targets and bias labels (FFW refuses data without bias labels on entry, so they
    are there)."""
    if out.z is None or out.y is None or out.b is None:
        raise DataError("FFW reads the bottleneck, the targets and the bias labels of its data; one is missing")
    return Labelled(out.logits, out.z, out.y, out.b)


def bias_columns(b: Tensor) -> list[Tensor]:
    """The bias labels of each attribute: ``b`` of shape (N,) or (N, A) -> A tensors of shape (N,)."""
    return [b] if b.ndim == 1 else [b[:, a] for a in range(b.shape[1])]


@torch.no_grad()
def lda_crossfit_accuracy(z: Tensor, b: Tensor, num_bias: int, *, ridge: float = 1e-2, folds: int = 2) -> float:
    """Accuracy of a closed-form LDA classifier of b, fitted on one fold of (z, b) and scored on the other."""
    n = len(z)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    hits = 0
    for f in range(folds):
        test = order[f::folds]
        train = torch.cat([order[g::folds] for g in range(folds) if g != f])
        zt, bt = z[train].double(), b[train]
        means = torch.stack([zt[bt == k].mean(0) if (bt == k).any() else zt.mean(0) for k in range(num_bias)])
        within = zt - means[bt]
        cov = within.T @ within / max(len(zt) - num_bias, 1)
        std, chol = whitener(cov, ridge=ridge)
        prior = torch.bincount(bt, minlength=num_bias).double().clamp(min=1) / len(bt)
        wz = torch.linalg.solve_triangular(chol, (z[test].double() / std).T, upper=False).T
        wm = torch.linalg.solve_triangular(chol, (means / std).T, upper=False).T
        score = wz @ wm.T - 0.5 * wm.pow(2).sum(1) + prior.log()
        hits += int((score.argmax(1) == b[test]).sum())
    return hits / n


class LinearDependence:
    """The ``"lda"`` adversary: running mean / total covariance of z (detached), one per search."""

    def __init__(
        self, d: int, *, momentum: float = 0.1, ridge: float = 1e-2, refresh: int = 1, memory: int = 0
    ) -> None:
        self.momentum, self.ridge, self.refresh = momentum, ridge, refresh
        self.memory = Memory(memory)
        self.mean = torch.zeros(d, dtype=torch.float64)
        self.cov = torch.eye(d, dtype=torch.float64)
        self._chol: tuple[Tensor, Tensor] | None = None
        self._seen = 0

    def fit(self, z: Tensor) -> None:
        z = z.detach().double()
        self.mean = z.mean(0)
        zc = z - self.mean
        self.cov = zc.T @ zc / max(len(z) - 1, 1)
        self._chol = None

    def observe(self, z: Tensor, b: Tensor | None = None, y: Tensor | None = None) -> None:
        """Move the running statistics towards the batch (after the gates' step); remember it (``memory``)."""
        if b is not None and y is not None:
            self.memory.add(z, b, y)
        z = z.detach().double()
        m = self.momentum
        bm = z.mean(0)
        zc = z - bm
        self.cov = (1 - m) * self.cov + m * (zc.T @ zc / max(len(z) - 1, 1))
        self.mean = (1 - m) * self.mean + m * bm
        self._seen += 1
        if self._seen % self.refresh == 0:  # the Cholesky factor is the costly part: refresh it every few steps
            self._chol = None

    def chol(self) -> tuple[Tensor, Tensor]:
        if self._chol is None:
            self._chol = whitener(self.cov, ridge=self.ridge)
        return self._chol

    def whiten(self, z: Tensor) -> Tensor:
        return self.whiten_linear(z - self.mean.to(z))

    def whiten_linear(self, d: Tensor) -> Tensor:
        """The whitening's linear part, L^-1 d / std (for differences of features, where the shift cancels)."""
        std, chol = self.chol()
        # the running statistics live on the CPU (observe); .to(d): d's dtype and device (a GPU search's features)
        return torch.linalg.solve_triangular(chol.to(d), (d / std.to(d)).T, upper=False).T

    def penalty(
        self,
        z: Tensor,
        b: Tensor,
        num_bias: int,
        given: Tensor | None = None,
        attr: int = 0,
        ref: tuple[Tensor, Tensor, Tensor] | None = None,
    ) -> Tensor:
        """The term on a batch: against the remembered batches when there are any (``cross_between``),
        else the batch's own U-statistic. ``ref``: (z, b, y) to use instead of the memory."""
        ref = ref if ref is not None else self.memory.get()
        if ref is None:
            std, chol = self.chol()
            return class_mean_distance(
                z, b, num_bias, mean=self.mean.to(z), chol=chol.to(z), std=std.to(z), given=given
            )
        rz, rb, ry = ref
        # deviations of class means: the whitening's shift cancels, only its linear part is applied (to the means)
        return cross_between(
            z,
            b,
            rz.to(z),
            _column(rb, attr),
            num_bias,
            given=given,
            ref_given=None if given is None else ry,
            linear=self.whiten_linear,
        )

    @torch.no_grad()
    def measure(self, z: Tensor, b: Tensor, num_bias: int, given: Tensor | None = None) -> float:
        """The term on a whole split, with that split's own statistics (reporting / selection)."""
        return lda_readability(z, b, num_bias, ridge=self.ridge, given=given)

    def tensors(self) -> dict[str, Tensor]:
        out = {
            "mean": self.mean.contiguous(),
            "cov": self.cov.contiguous(),
            "seen": torch.tensor([self._seen]),
            **self.memory.tensors(),
        }
        if self._chol is not None:  # the factor in use may predate cov (refresh): keep it, resuming is exact
            out.update({"chol.std": self._chol[0].contiguous(), "chol.L": self._chol[1].contiguous()})
        return out

    def load_tensors(self, tensors: dict[str, Tensor]) -> None:
        self.mean, self.cov = tensors["mean"].double(), tensors["cov"].double()
        self._seen = int(tensors["seen"][0]) if "seen" in tensors else 0
        self._chol = (tensors["chol.std"], tensors["chol.L"]) if "chol.L" in tensors else None
        self.memory.load_tensors(tensors)


class KernelDependence:
    """The ``"mmd"`` adversary: the ``"lda"`` term on z plus the same term on psi(z) = cos(u W + c), random
    Fourier features of a Gaussian kernel on the (batch-)standardised bottleneck u (bandwidths: multiples of
    the median distance of the vanilla features). The whitened distance of the bias-class means of psi is what
    a converged linear probe on psi - a kernel probe - reads; it is zero only when the bias classes share
    their distribution up to the kernel's resolution, which is what a non-linear probe needs (an MMD /
    HSIC-style dependence measure, whitened so that no direction of psi is left unwatched)."""

    def __init__(
        self,
        d: int,
        *,
        momentum: float = 0.1,
        ridge: float = 1.0,
        features: int = 256,
        bandwidths: tuple[float, ...] = (0.5, 1.0, 2.0),
        seed: int = 0,
        refresh: int = 4,
        memory: int = 0,
    ) -> None:
        self.momentum, self.bandwidths = momentum, bandwidths
        gen = torch.Generator().manual_seed(seed)
        per = max(1, features // len(bandwidths))
        self.per = per
        self.omega = torch.randn(d, per * len(bandwidths), generator=gen, dtype=torch.float64)
        self.phase = 2 * math.pi * torch.rand(per * len(bandwidths), generator=gen, dtype=torch.float64)
        self.width = torch.ones((), dtype=torch.float64)  # median distance of the standardised features
        self.linear = LinearDependence(d, momentum=momentum, ridge=ridge, memory=memory)
        self.psi = LinearDependence(per * len(bandwidths), momentum=momentum, ridge=ridge, refresh=refresh)

    def features(self, z: Tensor) -> Tensor:
        """psi(z) = cos(u W / (bandwidth * width) + c), u = z standardised with its own (batch) mean and std,
        so that psi is unchanged when the gates rescale a feature (nothing to fool by inflating or damping)."""
        u = (z - z.mean(0)) / _scale(z.var(0))
        scales = torch.tensor(self.bandwidths, dtype=z.dtype, device=z.device).repeat_interleave(
            self.per
        ) * self.width.to(z)  # the random features live on the CPU; z may be on a GPU
        return torch.cos(u @ (self.omega.to(z) / scales) + self.phase.to(z))

    @torch.no_grad()
    def fit(self, z: Tensor) -> None:
        z = z.detach().double()
        u = ((z - z.mean(0)) / _scale(z.var(0)))[:1000]
        dist = torch.cdist(u, u)
        self.width = dist[dist > 0].median().clamp(min=1e-6)
        self.linear.fit(z)
        self.psi.fit(self.features(z))

    @torch.no_grad()
    def observe(self, z: Tensor, b: Tensor | None = None, y: Tensor | None = None) -> None:
        self.linear.observe(z, b, y)  # the raw features are remembered once, by the linear part
        self.psi.observe(self.features(z.detach().double()))

    def penalty(self, z: Tensor, b: Tensor, num_bias: int, given: Tensor | None = None, attr: int = 0) -> Tensor:
        # linear part with running statistics: a bias direction that shrinks is rewarded (on its way to a pruned,
        # exactly-zero feature); kernel part scale-free: what is left must go by changing what the features mix
        ref = self.linear.memory.get()
        psi_ref = None if ref is None else (self.features(ref[0]), ref[1], ref[2])
        return self.linear.penalty(z, b, num_bias, given=given, attr=attr) + self.psi.penalty(
            self.features(z), b, num_bias, given=given, attr=attr, ref=psi_ref
        )

    @torch.no_grad()
    def measure(self, z: Tensor, b: Tensor, num_bias: int, given: Tensor | None = None) -> float:
        z = z.double()
        return lda_readability(z, b, num_bias, ridge=self.linear.ridge, given=given) + lda_readability(
            self.features(z), b, num_bias, ridge=self.psi.ridge, given=given
        )

    def tensors(self) -> dict[str, Tensor]:
        return {
            **{f"psi.{k}": v for k, v in self.psi.tensors().items()},
            **{f"linear.{k}": v for k, v in self.linear.tensors().items()},
            "width": self.width.reshape(1),
        }

    def load_tensors(self, tensors: dict[str, Tensor]) -> None:
        self.psi.load_tensors({k[4:]: v for k, v in tensors.items() if k.startswith("psi.")})
        self.linear.load_tensors({k[7:]: v for k, v in tensors.items() if k.startswith("linear.")})
        self.width = tensors["width"].double()[0]


@torch.no_grad()
def lda_readability(z: Tensor, b: Tensor, num_bias: int, *, ridge: float = 1e-2, given: Tensor | None = None) -> float:
    """The ``"lda"`` term on a whole split, whitened by the split's own covariance (reporting / selection)."""
    z = z.double()
    mean = z.mean(0)
    zc = z - mean
    std, chol = whitener(zc.T @ zc / max(len(z) - 1, 1), ridge=ridge)
    return float(class_mean_distance(z, b, num_bias, mean=mean, chol=chol, std=std, given=given))


def mlp_head(d: int, num_bias: int, hidden: int = 256) -> nn.Module:
    return nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, num_bias))


def refit_linear_head(head: nn.Linear, z: Tensor, b: Tensor, *, weight_decay: float, max_iter: int = 200) -> None:
    """Fit ``head`` to convergence on (z, b) (full-batch L-BFGS, warm start), in place."""
    opt = torch.optim.LBFGS(
        head.parameters(),
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=1e-6,
        tolerance_change=1e-9,
        history_size=20,
        line_search_fn="strong_wolfe",
    )
    z = z.detach()

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(head(z), b) + 0.5 * weight_decay * head.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)


def mi_term(head: nn.Module, z: Tensor, b: Tensor, num_bias: int) -> Tensor:
    return normalized_mutual_information(head(z).softmax(1), b, num_bias)


def probe_free_term(config, d: int, kind: str) -> LinearDependence | KernelDependence:
    """The probe-free bias term ``kind`` ('lda' or 'mmd') with the settings of an FFWConfig, on a bottleneck of
    width ``d`` (the search's, and the weight tuning's fresh one on the exported network)."""
    if kind == "mmd":
        return KernelDependence(
            d,
            momentum=config.lda_momentum,
            ridge=config.lda_ridge,
            seed=config.seed,
            features=config.mmd_features,
            bandwidths=tuple(config.mmd_bandwidths),
            memory=config.memory,
        )
    return LinearDependence(d, momentum=config.lda_momentum, ridge=config.lda_ridge, memory=config.memory)


def probe_free_penalty(
    term: LinearDependence | KernelDependence, z: Tensor, cols: list[Tensor], y: Tensor, cards, *, given_target: bool
) -> Tensor:
    """The term on a batch, summed over the bias attributes (``cols``; each with its own number of classes
    ``cards[a]``), within each target class when ``given_target``."""
    return cast(  # a sum of tensors, one per attribute
        Tensor,
        sum(
            term.penalty(z, c.to(z.device), cards[a], given=y if given_target else None, attr=a)
            for a, c in enumerate(cols)
        ),
    )
