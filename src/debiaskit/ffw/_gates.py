"""FFW gates (Nahon et al., ECCV 2024, eq. 8 and 9) and where they go in a network.

A gate multiplies a weight (unstructured) or an output unit (structured) by

    g(m) = 2 * sigmoid(m / tau)  for m < 0,   1  for m >= 0        (eq. 8)

with a gating parameter ``m`` initialised to 0, so that every gate starts at exactly 1 and the gated
model equals the vanilla model bit for bit. The backward pass uses the *unclamped* derivative
2 s (1 - s) / tau (s = sigmoid(m / tau)), as the authors' code does: a gate sitting at 1 still
receives gradient (a straight-through estimator of the step). When ``GateState.hard`` is set the gate
is the tau -> 0 limit, the binary mask ``m >= 0``.

Unstructured gates are ``torch.nn.utils.parametrize`` parametrisations of every conv/linear
``weight``; structured gates are forward hooks on the non-linearity that follows a conv/linear
layer (optionally through its BatchNorm), i.e. they gate the layer's units *after* the activation.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..errors import ConfigError, ModelError

GATED_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
ACTIVATION_TYPES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.GELU, nn.SiLU, nn.Mish, nn.Tanh,
                    nn.Sigmoid, nn.Hardswish, nn.Hardtanh, nn.Softplus)
# Layers that map a zero channel to a zero channel and keep the channel order: a pruned unit stays
# exactly zero through them, so removing it before the next conv/linear is exact.
ZERO_PRESERVING_TYPES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
                         nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
                         nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
                         nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Identity, nn.Flatten)


class _GateFunction(torch.autograd.Function):
    """clamp(2 sigmoid(m / tau), max=1) forward; unclamped 2 s (1 - s) / tau backward (eq. 8)."""

    @staticmethod
    def forward(ctx, m: Tensor, tau: float) -> Tensor:
        s = torch.sigmoid(m / tau)
        ctx.save_for_backward(s)
        ctx.tau = tau
        return torch.clamp(2.0 * s, max=1.0)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (s,) = ctx.saved_tensors
        return grad * (2.0 * s * (1.0 - s) / ctx.tau), None


def gate_value(m: Tensor, tau: float, *, hard: bool = False) -> Tensor:
    """The gate g(m) at temperature ``tau``; ``hard=True`` gives the tau -> 0 mask (m >= 0)."""
    if hard:
        return (m >= 0).to(m.dtype)
    return _GateFunction.apply(m, float(tau))


@dataclass
class GateState:
    """Temperature and hard/soft switch shared by every gate of one gated model."""

    tau: float = 1.0
    hard: bool = False


class WeightGate(nn.Module):
    """Parametrisation ``w -> w * g(m)`` with one gating parameter per weight (unstructured FFW)."""

    def __init__(self, shape: torch.Size, state: GateState) -> None:
        super().__init__()
        self.m = nn.Parameter(torch.zeros(shape))
        self.state = state  # plain attribute: shared, not a sub-module

    def forward(self, weight: Tensor) -> Tensor:
        return weight * gate_value(self.m, self.state.tau, hard=self.state.hard)


class UnitGate(nn.Module):
    """One gating parameter per output unit; applied by a forward hook on the activation (eq. 9)."""

    def __init__(self, units: int, state: GateState) -> None:
        super().__init__()
        self.m = nn.Parameter(torch.zeros(units))
        self.state = state

    def hook(self, module: nn.Module, args, output: Tensor) -> Tensor:
        g = gate_value(self.m, self.state.tau, hard=self.state.hard)
        return output * g.view(1, -1, *([1] * (output.ndim - 2)))


@dataclass
class Leaf:
    """One leaf module call seen while tracing a forward pass."""

    name: str
    module: nn.Module
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]


@dataclass
class Trace:
    """The leaf modules of the encoder in call order (everything before the head is called)."""

    leaves: list[Leaf]
    head_name: str
    head_in_shape: tuple[int, ...]
    calls: dict[str, int] = field(default_factory=dict)
    is_chain: bool = False     # replaying the leaves one after the other reproduces the bottleneck


def encoder_layers(model: nn.Module, head: str, *, include_head: bool = False) -> list[tuple[str, nn.Module]]:
    """Every conv/linear module of ``model`` outside the head (plus the head's with ``include_head``)."""
    out = []
    for name, module in model.named_modules():
        in_head = name == head or name.startswith(head + ".")
        if isinstance(module, GATED_TYPES) and (include_head or not in_head):
            out.append((name, module))
    if not any(not (n == head or n.startswith(head + ".")) for n, _ in out):
        raise ModelError("the model has no conv/linear layer outside its head: FFW gates conv/linear weights "
                         f"(nn.Conv1d/2d/3d, nn.Linear); found modules: {', '.join(n for n, _ in model.named_modules() if n)}")
    return out


@torch.no_grad()
def trace_encoder(model: nn.Module, example: Tensor, head: str) -> Trace:
    """Record the leaf modules called before the head, with their input/output shapes."""
    head_module = dict(model.named_modules())[head]
    leaves: list[Leaf] = []
    calls: dict[str, int] = {}
    seen_head: list[tuple[int, ...]] = []
    handles = []

    def leaf_hook(name):
        def hook(module, args, output):
            calls[name] = calls.get(name, 0) + 1
            if not seen_head and args and isinstance(args[0], Tensor) and isinstance(output, Tensor):
                leaves.append(Leaf(name, module, tuple(args[0].shape), tuple(output.shape)))
        return hook

    def head_hook(module, args):
        if not seen_head:
            seen_head.append(tuple(args[0].shape))

    head_names = {n for n, _ in head_module.named_modules(prefix=head)}
    for name, module in model.named_modules():
        if name and not list(module.children()) and name not in head_names:
            handles.append(module.register_forward_hook(leaf_hook(name)))
    handles.append(head_module.register_forward_pre_hook(head_hook))
    was = model.training
    model.eval()
    try:
        model(example)
        if not seen_head:
            raise ModelError(f"the head {head!r} was not called in the forward pass")
    finally:
        for h in handles:
            h.remove()
    trace = Trace(leaves=leaves, head_name=head, head_in_shape=seen_head[0], calls=dict(calls))
    try:
        trace.is_chain = _replays(model, trace, example)
    finally:
        model.train(was)
    return trace


def _replays(model: nn.Module, trace: Trace, example: Tensor) -> bool:
    """True when the encoder is a plain chain: calling its leaves in order gives the bottleneck."""
    allowed = GATED_TYPES + NORM_TYPES + ACTIVATION_TYPES + ZERO_PRESERVING_TYPES
    if any(trace.calls.get(leaf.name, 0) != 1 for leaf in trace.leaves):
        return False
    if any(not isinstance(leaf.module, allowed) for leaf in trace.leaves):
        return False
    if any(isinstance(leaf.module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and leaf.module.groups != 1 for leaf in trace.leaves):
        return False
    captured: list[Tensor] = []
    handle = dict(model.named_modules())[trace.head_name].register_forward_pre_hook(
        lambda m, args: captured.append(args[0]) if not captured else None)
    try:
        model(example)
    finally:
        handle.remove()
    h = example
    try:
        for leaf in trace.leaves:
            if isinstance(leaf.module, nn.Linear) and h.ndim > 2:
                h = h.flatten(1)  # the functional flatten (torch.flatten) of forward() is invisible to hooks
            h = leaf.module(h)
    except RuntimeError:  # shapes that do not chain (e.g. a residual block's shortcut): not a chain
        return False
    z = captured[0]
    return h.flatten(1).shape == z.flatten(1).shape and torch.equal(h.flatten(1), z.flatten(1))


class GatedModel:
    """A model with FFW gates installed; ``state`` switches temperature and soft/hard gates."""

    def __init__(self, model: nn.Module, *, mode: str, head: str, gates: dict[str, nn.Module],
                 state: GateState, handles: list, units: dict[str, str] | None = None,
                 ungated: dict[str, str] | None = None) -> None:
        self.model, self.mode, self.head, self.gates, self.state = model, mode, head, gates, state
        self._handles = handles
        self.units = units or {}   # structured: layer name -> activation name
        self.ungated = ungated or {}   # structured: conv/linear left ungated -> why (e.g. residual stream)

    def parameters(self) -> list[nn.Parameter]:
        return [g.m for g in self.gates.values()]

    def gate_tensors(self) -> dict[str, Tensor]:
        return {name: g.m.detach() for name, g in self.gates.items()}

    def load_gate_tensors(self, tensors: dict[str, Tensor]) -> None:
        for name, g in self.gates.items():
            if name not in tensors or tensors[name].shape != g.m.shape:
                raise ModelError(f"gate tensor {name!r} missing or of the wrong shape in the checkpoint")
            with torch.no_grad():
                g.m.copy_(tensors[name])

    def hard_masks(self) -> dict[str, Tensor]:
        """Binary masks of the tau -> 0 limit: 1 = kept (m >= 0), 0 = pruned."""
        return {name: (g.m.detach() >= 0).to(torch.uint8) for name, g in self.gates.items()}

    def remove(self) -> None:
        """Take the gates out again (the model gets its plain weights back)."""
        for h in self._handles:
            h.remove()
        if self.mode == "unstructured":
            modules = dict(self.model.named_modules())
            for name in self.gates:
                if parametrize.is_parametrized(modules[name], "weight"):
                    parametrize.remove_parametrizations(modules[name], "weight", leave_parametrized=False)
        self._handles = []


def freeze(model: nn.Module) -> None:
    """Freeze every weight, bias and BatchNorm statistic: FFW learns gates only (BN in eval mode)."""
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()


def install_gates(model: nn.Module, *, mode: str, head: str, example: Tensor, include_head: bool = False,
                  state: GateState | None = None) -> GatedModel:
    """Install FFW gates on ``model`` in place (freeze it first). Returns the :class:`GatedModel`.

    ``mode="unstructured"``: a :class:`WeightGate` parametrisation on the weight of every encoder
    conv/linear (and the head's with ``include_head``). ``mode="structured"``: a :class:`UnitGate` on
    the output of the activation that follows each conv/linear whose units can be removed exactly
    (see ``debiaskit.ffw._structure``): every layer of a chain-shaped encoder (SimpleConvNet, MLP), and
    in a ResNet built from debiaskit's ``BasicBlock`` the internal channels of each block (conv1 ->
    bn1 -> relu1 -> conv2). Channels tied to the residual stream (stem, conv2/bn2, downsample) stay
    ungated and are listed with the reason in ``GatedModel.ungated``. Other branching or residual-like
    modules raise a ModelError naming them (use unstructured mode for those models).

    Example::

        gm = install_gates(net, mode="structured", head="fc", example=x[:2])
        gm.units        # {'layer1.0.conv1': 'layer1.0.relu1', ...}
        gm.ungated      # {'stem.0': 'its activation feeds the residual block ...', ...}
    """
    state = state or GateState()
    layers = encoder_layers(model, head, include_head=include_head)
    if mode == "unstructured":
        gates: dict[str, nn.Module] = {}
        for name, module in layers:
            gate = WeightGate(module.weight.shape, state)
            parametrize.register_parametrization(module, "weight", gate, unsafe=True)
            module.parametrizations.weight.original.requires_grad_(False)
            gates[name] = gate
        return GatedModel(model, mode=mode, head=head, gates=gates, state=state, handles=[])
    if mode == "structured":
        if include_head:
            raise ConfigError("include_head applies to unstructured FFW only: structured gates sit on encoder "
                              "units after a non-linearity, and the head's outputs (the logits) have none")
        from ._structure import analyse_structure  # late import: _structure builds on this module
        structure = analyse_structure(model, example, head)
        if not structure.points:
            raise ModelError("no unit of this model can be gated exactly: structured gates sit after the "
                             "non-linearity of a conv/linear whose activation feeds only the next conv/linear "
                             f"(ungated: {'; '.join(f'{k}: {v}' for k, v in structure.ungated.items())}); "
                             "use mode='unstructured'")
        modules = dict(model.named_modules())
        gates, handles, units = {}, [], {}
        for layer, point in structure.points.items():
            gate = UnitGate(point.units, state)
            handles.append(modules[point.activation].register_forward_hook(gate.hook))
            gates[layer], units[layer] = gate, point.activation
        return GatedModel(model, mode=mode, head=head, gates=gates, state=state, handles=handles, units=units,
                          ungated=structure.ungated)
    raise ConfigError(f"mode must be 'unstructured' or 'structured', got {mode!r}")
