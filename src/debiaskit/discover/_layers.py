"""Intermediate-layer features for the attractor rule (post-hoc discovery without training history).

Why: a model trained to convergence memorises its few bias-conflicting training samples, so at the
bottleneck they sit in their own class's cell (measured: Biased MNIST rho 0.99, 10 epochs, 0 of 506
flagged). Memorisation happens in the deep layers; an easy shortcut (colour, texture) is already
linearly present in the early ones, where the conflicting samples still fall into the cell of the
class whose bias they carry. So the same rule applied to pooled early-layer activations recovers
them from the final weights alone.

Features of a layer: its output, averaged over spatial dims for (N, C, H, W), over tokens for
(N, T, C), flattened otherwise; taken in eval mode with forward hooks.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..data import iterate_batches
from ..errors import ConfigError
from ..models import pool_features, resolve_head

ACTIVATIONS = (
    nn.ReLU,
    nn.ReLU6,
    nn.GELU,
    nn.SiLU,
    nn.ELU,
    nn.LeakyReLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.Softplus,
    nn.Mish,
    nn.Hardswish,
    nn.PReLU,
    nn.SELU,
    nn.CELU,
)
BOTTLENECK = "bottleneck"


CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def candidate_layers(model: nn.Module, *, head: str | None = None) -> list[str]:
    """Module names tried by ``layer="auto"``, in registration order, excluding the head; the bottleneck
    (``"bottleneck"``) last. Candidates are the activation modules and the *blocks* - modules with
    sub-modules that are not plain containers (Sequential / ModuleList / ModuleDict), e.g. a residual
    block - whose output is what the block's forward computed, functional activations (``torch.relu``,
    ``F.gelu``) and additions included. A model with neither: all its leaf modules.

    Example::

        candidate_layers(build_model("simple-conv-small", num_classes=10, input_shape=(3, 28, 28)))
        # ['extracter.2', 'extracter.5', 'extracter.8', 'extracter.11', 'bottleneck']
        candidate_layers(resnet_with_functional_relu, head="classifier")
        # ['block1', 'block2', 'block3', 'bottleneck']
    """
    head_name, _ = resolve_head(model, head)
    inside_head = lambda n: n == head_name or n.startswith(head_name + ".")  # noqa: E731
    out = []
    for n, m in model.named_modules():
        if not n or inside_head(n):
            continue
        if isinstance(m, ACTIVATIONS) or (list(m.children()) and not isinstance(m, CONTAINERS)):
            out.append(n)
    if not out:
        out = [n for n, m in model.named_modules() if n and not list(m.children()) and not inside_head(n)]
    return out + [BOTTLENECK]


@torch.no_grad()
def collect_layer_features(
    model: nn.Module,
    dataset,
    *,
    layers: list[str],
    head: str | None = None,
    batch_size: int = 512,
    device: str | torch.device = "cpu",
    indices: Tensor | None = None,
    strict: bool = True,
) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    """Pooled features of ``layers`` (module names or ``"bottleneck"``) for every sample, plus logits and y.

    One eval-mode pass (over ``indices`` only, when given). Reads images and targets only. A module that
    runs more than once per forward pass (shared) is an error with ``strict``, else left out of the result.

    Example::

        feats, logits, y = collect_layer_features(model, data, layers=["extracter.2", "bottleneck"], head="fc")
    """
    modules = dict(model.named_modules())
    unknown = [n for n in layers if n != BOTTLENECK and n not in modules]
    if unknown:
        raise ConfigError(
            f"no module named {unknown} in the model; candidates: {', '.join(candidate_layers(model, head=head))}"
        )
    _, head_module = resolve_head(model, head)
    store: dict[str, list[Tensor]] = {n: [] for n in layers}
    hooks: list[Any] = []
    for name in layers:
        if name == BOTTLENECK:
            # the head's input flattened, exactly what collect_outputs / the audit call the bottleneck
            hooks.append(
                head_module.register_forward_pre_hook(
                    lambda m, args: store[BOTTLENECK].append(args[0].detach().float().flatten(1).cpu())
                )
            )
        else:
            hooks.append(
                modules[name].register_forward_hook(
                    lambda m, args, out, name=name: (
                        store[name].append(pool_features(out).cpu()) if isinstance(out, Tensor) else None
                    )
                )
            )
    was = model.training
    model.eval()
    logits, ys = [], []
    try:
        for batch in iterate_batches(dataset, batch_size=batch_size, device=device, indices=indices):
            logits.append(model(batch.x).float().cpu())
            ys.append(batch.y.cpu())
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    feats = {}
    for n, parts in store.items():
        if len(parts) != len(logits):  # a module that runs several times per forward pass (shared) is ambiguous
            if strict:
                raise ConfigError(
                    f"module {n!r} runs {len(parts) / max(len(logits), 1):g} times per forward pass "
                    "(shared); name a module that runs once per forward pass"
                )
            continue
        feats[n] = torch.cat(parts)
    return feats, torch.cat(logits), torch.cat(ys)
