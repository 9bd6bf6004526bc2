"""The privacy head: how much bias a linear head of the classifier's shape can read at the bottleneck."""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import DataError
from ._metrics import normalized_mutual_information


@dataclass
class ProbeResult:
    bias_extractability: float   # accuracy of the privacy head on the evaluation features
    mutual_information: float    # normalised empirical MI between b and its soft predictions
    val_accuracy: float          # best D^u_val accuracy (the early-stopping criterion)
    epochs: int
    head: nn.Linear


def train_privacy_head(z_train: Tensor, b_train: Tensor, z_val: Tensor, b_val: Tensor, *, num_bias: int,
                       seed: int = 0, max_epochs: int = 100, patience: int = 10, lr: float = 1e-3,
                       batch_size: int = 256) -> tuple[nn.Linear, float, int]:
    """Fit Linear(d, N_B) on detached features with early stopping on validation accuracy."""
    for name, b in (("train", b_train), ("val", b_val)):
        if len(torch.unique(b)) < 2:
            raise DataError(f"the privacy head needs at least two bias classes in its {name} data")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    head = nn.Linear(z_train.shape[1], num_bias)
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    best, best_state, best_epoch, bad = -1.0, None, 0, 0
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


def probe_bias(z_train: Tensor, b_train: Tensor, z_val: Tensor, b_val: Tensor, z_eval: Tensor, b_eval: Tensor,
               *, num_bias: int, seed: int = 0, **kwargs) -> ProbeResult:
    """Train a privacy head on (train, val) features and report it on the evaluation features."""
    head, val_acc, epochs = train_privacy_head(z_train, b_train, z_val, b_val, num_bias=num_bias, seed=seed, **kwargs)
    with torch.no_grad():
        logits = head(z_eval)
        acc = float((logits.argmax(1) == b_eval).float().mean())
        mi = float(normalized_mutual_information(logits.softmax(1), b_eval, num_bias))
    return ProbeResult(bias_extractability=acc, mutual_information=mi, val_accuracy=val_acc, epochs=epochs, head=head)
