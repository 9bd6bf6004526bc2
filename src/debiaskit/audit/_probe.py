"""The privacy head: how much bias a linear head of the classifier's shape can read at the bottleneck."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError, DataError
from ._metrics import normalized_mutual_information


@dataclass
class ProbeResult:
    """What a privacy-head probe found: how well a linear head reads the bias from the features, and the head."""

    bias_extractability: float  # accuracy of the privacy head on the evaluation features
    mutual_information: float  # normalised empirical MI between b and its soft predictions
    val_accuracy: float  # best D^u_val accuracy (the early-stopping criterion)
    epochs: int
    head: nn.Linear


def train_privacy_head(
    z_train: Tensor,
    b_train: Tensor,
    z_val: Tensor,
    b_val: Tensor,
    *,
    num_bias: int,
    seed: int = 0,
    max_epochs: int = 100,
    patience: int = 10,
    lr: float = 1e-3,
    batch_size: int = 256,
) -> tuple[nn.Linear, float, int]:
    """Fit Linear(d, N_B) on detached features with early stopping on validation accuracy."""
    for name, b in (("train", b_train), ("val", b_val)):
        if len(torch.unique(b)) < 2:
            raise DataError(f"the privacy head needs at least two bias classes in its {name} data")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    head = nn.Linear(z_train.shape[1], num_bias)
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    # the initial state stands in until an epoch beats it (always the first one: accuracies are >= 0)
    best, best_state, best_epoch, bad = -1.0, copy.deepcopy(head.state_dict()), 0, 0
    for epoch in range(max_epochs):
        order = torch.randperm(len(z_train), generator=gen)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            opt.zero_grad()
            F.cross_entropy(head(z_train[idx]), b_train[idx]).backward()
            opt.step()
        with torch.no_grad():
            val = float((head(z_val).argmax(1) == b_val).float().mean())
        if val > best:
            best, best_state, best_epoch, bad = val, copy.deepcopy(head.state_dict()), epoch + 1, 0
        else:
            bad += 1
            if bad >= patience:
                break
    head.load_state_dict(best_state)
    return head, best, best_epoch


def probe_bias(
    z_train: Tensor,
    b_train: Tensor,
    z_val: Tensor,
    b_val: Tensor,
    z_eval: Tensor,
    b_eval: Tensor,
    *,
    num_bias: int,
    seed: int = 0,
    **kwargs,
) -> ProbeResult:
    """Train a privacy head on (train, val) features and report it on the evaluation features."""
    head, val_acc, epochs = train_privacy_head(z_train, b_train, z_val, b_val, num_bias=num_bias, seed=seed, **kwargs)
    with torch.no_grad():
        logits = head(z_eval)
        acc = float((logits.argmax(1) == b_eval).float().mean())
        mi = float(normalized_mutual_information(logits.softmax(1), b_eval, num_bias))
    return ProbeResult(bias_extractability=acc, mutual_information=mi, val_accuracy=val_acc, epochs=epochs, head=head)


# ---------------------------------------------------------------- stronger probes
# How much bias a probe reads depends on how hard it is trained (docs/design/ffw-defaults.md, "Probes in the report"):
# a linear head trained a few SGD epochs on raw features reads chance where a converged one reads 50 %. A
# claim "the bias can no longer be read" is only made when every probe below stays near chance.
PROBES = {
    "sgd5": "Linear head, SGD lr 0.1 / momentum 0.9 / wd 1e-4, 5 epochs on raw features (the public FFW code's probe)",
    "audit": "Linear head, Adam 1e-3 on raw features, early-stopped on D^u_val accuracy (debiaskit's audit probe)",
    "mlp": "2-layer MLP (256 hidden, ReLU) on standardised features, Adam 1e-3, early-stopped on D^u_val accuracy",
    "linear": "multinomial logistic regression on standardised features, L-BFGS to convergence, L2 chosen on D^u_val",
}


def _standardise(z_train: Tensor, *others: Tensor) -> list[Tensor]:
    """Scale-free features: a probe on them cannot be slowed down by features that were shrunk."""
    mean, std = z_train.mean(0), z_train.std(0).clamp(min=1e-6)
    return [(z - mean) / std for z in (z_train, *others)]


def logits_accuracy(logits: Tensor, labels: Tensor) -> float:
    """Top-1 accuracy of ``logits`` against ``labels`` (the probes', FFW's eraser and head refit's)."""
    return float((logits.argmax(1) == labels).float().mean())


def sgd_probe(
    z_train: Tensor, b_train: Tensor, *, num_bias: int, seed: int = 0, epochs: int = 5, batch_size: int = 256
) -> nn.Linear:
    """The public FFW code's probe: Linear, SGD 0.1 / 0.9 / 1e-4, a fixed number of epochs, raw features."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    head = nn.Linear(z_train.shape[1], num_bias)
    opt = torch.optim.SGD(head.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    for _ in range(epochs):
        order = torch.randperm(len(z_train), generator=gen)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            opt.zero_grad()
            F.cross_entropy(head(z_train[idx]), b_train[idx]).backward()
            opt.step()
    return head


def mlp_probe(
    z_train: Tensor,
    b_train: Tensor,
    z_val: Tensor,
    b_val: Tensor,
    *,
    num_bias: int,
    seed: int = 0,
    hidden: int = 256,
    max_epochs: int = 200,
    patience: int = 20,
    lr: float = 1e-3,
    batch_size: int = 256,
) -> tuple[nn.Module, float]:
    """A 2-layer MLP probe (features already standardised), early-stopped on validation accuracy."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    mlp = nn.Sequential(nn.Linear(z_train.shape[1], hidden), nn.ReLU(), nn.Linear(hidden, num_bias))
    opt = torch.optim.Adam(mlp.parameters(), lr=lr, weight_decay=1e-5)
    best, best_state, bad = -1.0, copy.deepcopy(mlp.state_dict()), 0
    for _ in range(max_epochs):
        order = torch.randperm(len(z_train), generator=gen)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            opt.zero_grad()
            F.cross_entropy(mlp(z_train[idx]), b_train[idx]).backward()
            opt.step()
        with torch.no_grad():
            val = logits_accuracy(mlp(z_val), b_val)
        if val > best:
            best, best_state, bad = val, copy.deepcopy(mlp.state_dict()), 0
        else:
            bad += 1
            if bad >= patience:
                break
    mlp.load_state_dict(best_state)
    return mlp, best


def converged_linear_probe(
    z_train: Tensor,
    b_train: Tensor,
    z_val: Tensor,
    b_val: Tensor,
    *,
    num_bias: int,
    l2_grid: tuple[float, ...] = (1e-4, 1e-3, 1e-2),
    max_iter: int = 500,
) -> tuple[nn.Linear, float]:
    """Multinomial logistic regression trained to convergence (full-batch L-BFGS, features already
    standardised), one fit per L2 strength; the strength with the best validation accuracy is kept."""
    if not l2_grid:
        raise ConfigError("converged_linear_probe needs at least one L2 strength in l2_grid")
    scored = []
    for l2 in l2_grid:
        head = _lbfgs_linear(z_train, b_train, num_bias=num_bias, l2=l2, max_iter=max_iter)
        with torch.no_grad():
            scored.append((logits_accuracy(head(z_val), b_val), head))
    best, best_head = max(scored, key=lambda s: s[0])  # the first of equals: ties keep the smaller L2 strength
    return best_head, best


def _lbfgs_linear(z: Tensor, b: Tensor, *, num_bias: int, l2: float, max_iter: int) -> nn.Linear:
    """One full-batch L-BFGS fit of a zero-initialised Linear(d, num_bias) with an L2 penalty on its weight."""
    torch.manual_seed(0)
    head = nn.Linear(z.shape[1], num_bias)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    opt = torch.optim.LBFGS(
        head.parameters(),
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=1e-6,
        tolerance_change=1e-9,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(head(z), b) + l2 * head.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return head


def probe_suite(
    z_train: Tensor,
    b_train: Tensor,
    z_val: Tensor,
    b_val: Tensor,
    z_eval: Tensor,
    b_eval: Tensor,
    *,
    num_bias: int,
    seed: int = 0,
    probes: tuple[str, ...] = tuple(PROBES),
) -> dict[str, float]:
    """Bias extractability on the evaluation features under each probe of :data:`PROBES` (accuracy).

    Every probe learns on (train) and, where it selects anything, selects on (val); (eval) is only scored.
    """
    unknown = set(probes) - set(PROBES)
    if unknown:
        raise ValueError(f"unknown probe(s) {sorted(unknown)}; available: {', '.join(PROBES)}")
    for name, b in (("train", b_train), ("val", b_val)):
        if len(torch.unique(b)) < 2:
            raise DataError(f"the bias probes need at least two bias classes in their {name} data")
    z_train, z_val, z_eval = z_train.float(), z_val.float(), z_eval.float()
    out: dict[str, float] = {}
    with torch.enable_grad():
        if "sgd5" in probes:
            head = sgd_probe(z_train, b_train, num_bias=num_bias, seed=seed)
            out["sgd5"] = logits_accuracy(head(z_eval).detach(), b_eval)
        if "audit" in probes:
            head, _, _ = train_privacy_head(z_train, b_train, z_val, b_val, num_bias=num_bias, seed=seed)
            out["audit"] = logits_accuracy(head(z_eval).detach(), b_eval)
        s_train, s_val, s_eval = _standardise(z_train, z_val, z_eval)
        if "mlp" in probes:
            mlp, _ = mlp_probe(s_train, b_train, s_val, b_val, num_bias=num_bias, seed=seed)
            out["mlp"] = logits_accuracy(mlp(s_eval).detach(), b_eval)
        if "linear" in probes:
            head, _ = converged_linear_probe(s_train, b_train, s_val, b_val, num_bias=num_bias)
            out["linear"] = logits_accuracy(head(s_eval).detach(), b_eval)
    return out


def readable(accuracy: float, num_bias: int, *, margin: float = 0.10) -> bool:
    """The bias counts as readable when a probe beats chance (1 / N_B) by more than ``margin``."""
    return accuracy > 1.0 / num_bias + margin
