"""FFW gates (Nahon et al., ECCV 2024, eq. 8 and 9) and where they go in a network.

A gate multiplies a weight (unstructured) or an output unit (structured) by

    g(m) = 2 * sigmoid(m / tau)  for m < 0,   1  for m >= 0        (eq. 8)

with a gating parameter ``m`` initialised to 0, so that every gate starts at exactly 1 and the gated
model equals the vanilla model bit for bit. The backward pass uses the *unclamped* derivative
2 s (1 - s) / tau (s = sigmoid(m / tau)), as the authors' code does: a gate sitting at 1 still
receives gradient (a straight-through estimator of the step). When ``GateState.hard`` is set the gate
is the tau -> 0 limit, the binary mask ``m >= 0``.

Unstructured gates are ``torch.nn.utils.parametrize`` parametrisations of every conv/linear
``weight``. Structured gates are forward hooks that multiply the output of a module by one gate per
channel, on the units ``debiaskit.ffw._structure`` proves removable exactly: after the activation
module where the network has one, else on the BatchNorm / conv output just before a functional or
shared ReLU-like activation (the same function for g >= 0); channels coupled by a residual addition
share one gate, applied at every layer that adds into them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..errors import ConfigError, ModelError
from ._structure import ACTIVATION_TYPES, LAYER_TYPES, NORM_TYPES, ZERO_PRESERVING_TYPES, analyse_structure  # noqa: F401

# Unit gates go where debiaskit.ffw._structure proves their removal exact; these names are re-exported.
GATED_TYPES = LAYER_TYPES


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


def encoder_layers(model: nn.Module, head: str, *, include_head: bool = False) -> list[tuple[str, nn.Module]]:
    """Every conv/linear module of ``model`` outside the head (plus the head's with ``include_head``)."""
    out: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        in_head = name == head or name.startswith(head + ".")
        if isinstance(module, GATED_TYPES) and (include_head or not in_head):
            out.append((name, module))
    if not any(not (n == head or n.startswith(head + ".")) for n, _ in out):
        raise ModelError(
            "the model has no conv/linear layer outside its head: FFW gates conv/linear weights "
            f"(nn.Conv1d/2d/3d, nn.Linear); found modules: {', '.join(n for n, _ in model.named_modules() if n)}"
        )
    return out


class GatedModel(nn.Module):
    """A model with FFW gates installed, as an ``nn.Module``: calling it runs the gated model, ``.to()`` /
    ``.eval()`` / ``state_dict()`` work as on any module; ``state`` switches temperature and soft/hard gates.

    ``model`` is the network the gates sit in (its weights frozen); ``gates`` maps a gate's name to its
    module (registered under ``gate_modules``, dots spelt ``__``); ``gate_parameters()`` are what FFW trains.
    ``parameters()`` is nn.Module's: every parameter, the frozen weights included.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        mode: str,
        head: str,
        gates: Mapping[str, WeightGate | UnitGate],
        state: GateState,
        handles: list,
        units: dict[str, tuple[str, ...]] | None = None,
        ungated: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        # registered so that .to(device) / state_dict() reach the gates; a ModuleDict key cannot hold a dot
        self.gate_modules = nn.ModuleDict({name.replace(".", "__"): gate for name, gate in gates.items()})
        self.mode, self.head, self.gates, self.state = mode, head, dict(gates), state
        self._handles = handles
        self.units = units or {}  # structured: gate name -> the modules whose output it multiplies
        self.ungated = ungated or {}  # conv/linear (structured) or parameters (unstructured) left ungated -> why
        self.train(model.training)

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def gate_parameters(self) -> list[nn.Parameter]:
        """The gating parameters ``m`` (what FFW trains; the model's own weights stay frozen)."""
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
        modules = dict(self.model.named_modules())
        for name, gate in self.gates.items():
            layer = name[: -len(".weight")] if name.endswith(".weight") and self.mode == "structured" else name
            if isinstance(gate, WeightGate) and parametrize.is_parametrized(modules[layer], "weight"):
                parametrize.remove_parametrizations(modules[layer], "weight", leave_parametrized=False)
        self._handles = []


# Parameters FFW never gates, by design (the paper gates conv/linear weights): biases and normalisation scales.
_NEVER_GATED = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
)


def ungated_parameters(model: nn.Module, head: str, *, gated: list[str]) -> dict[str, str]:
    """Unstructured FFW: every weight-like parameter outside the head that carries no gate, with why (an
    attention's ``in_proj_weight``, a positional embedding, an nn.Embedding). Biases and normalisation
    parameters are never gated and not listed."""
    out: dict[str, str] = {}
    done = set(gated)
    for mname, module in model.named_modules():
        inside = [mname] + [mname[:i] for i, c in enumerate(mname) if c == "."]  # it and its parents
        if done.intersection(inside) or head in inside or isinstance(module, _NEVER_GATED):
            continue  # a gated layer (its gate's own modules too), the head, a normalisation
        for pname, _ in module.named_parameters(recurse=False):
            if pname == "bias" or pname.endswith("_bias"):
                continue
            full = f"{mname}.{pname}" if mname else pname
            out[full] = (
                f"not gated: a parameter of {type(module).__name__}, not the weight of a conv/linear module "
                "(unstructured FFW gates the weights of nn.Conv1d/2d/3d and nn.Linear modules)"
            )
    return out


def _weight_gate(module: nn.Module, state: GateState) -> WeightGate:
    """Parametrise ``module.weight`` as ``weight * g(m)`` (one gate per weight); the weight stays frozen."""
    gate = WeightGate(module.get_parameter("weight").shape, state)
    parametrize.register_parametrization(module, "weight", gate)
    module.get_parameter("parametrizations.weight.original").requires_grad_(False)
    return gate


def freeze(model: nn.Module) -> None:
    """Freeze every weight, bias and BatchNorm statistic: FFW learns gates only (BN in eval mode)."""
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()


def install_gates(
    model: nn.Module,
    *,
    mode: str,
    head: str,
    example: Tensor,
    include_head: bool = False,
    input_weights: bool = False,
    state: GateState | None = None,
) -> GatedModel:
    """Install FFW gates on ``model`` in place (freeze it first). Returns the :class:`GatedModel`.

    ``mode="unstructured"``: a :class:`WeightGate` parametrisation on the weight of every encoder
    conv/linear (and the head's with ``include_head``). ``mode="structured"``: a :class:`UnitGate`
    on every group of units that ``debiaskit.ffw._structure.analyse_structure`` finds removable
    exactly in the traced graph of ``model`` (any network of standard layers: chains, MLPs,
    torchvision-style ResNets with shared or functional ReLUs, depthwise convolutions); the rest is
    listed with the reason in ``GatedModel.ungated`` (e.g. the channels a grouped conv reads).
    ``input_weights=True`` (structured only) also puts a :class:`WeightGate` on every weight of the
    conv/linear layers that read the model's input (gate name ``"<layer>.weight"``): an input-level bias
    such as colour is mixed into every unit there, and removing whole units cannot undo that.

    Example::

        gm = install_gates(net, mode="structured", head="fc", example=x[:2])
        gm.units        # {'layer1.0.conv1': ('layer1.0.bn1',), 'conv1': ('bn1', 'layer1.0.bn2', ...), ...}
        gm.ungated      # {'layer1.0.conv1': 'not gated: it is read by the grouped convolution ...'}
    """
    state = state or GateState()
    layers = encoder_layers(model, head, include_head=include_head)
    if input_weights and mode != "structured":
        raise ConfigError("input_weights applies to structured FFW only (unstructured FFW gates every weight already)")
    if mode == "unstructured":
        gates: dict[str, WeightGate | UnitGate] = {name: _weight_gate(module, state) for name, module in layers}
        return GatedModel(
            model,
            mode=mode,
            head=head,
            gates=gates,
            state=state,
            handles=[],
            ungated=ungated_parameters(model, head, gated=[n for n, _ in layers]),
        )
    if mode == "structured":
        if include_head:
            raise ConfigError(
                "include_head applies to unstructured FFW only: structured gates sit on encoder "
                "units after a non-linearity, and the head's outputs (the logits) have none"
            )
        structure = analyse_structure(model, example, head)
        if not structure.points:
            raise ModelError(
                "no unit of this model can be removed exactly, so structured FFW has nothing to gate "
                f"({'; '.join(f'{k}: {v}' for k, v in structure.ungated.items()) or 'no conv/linear layer'}); "
                "use mode='unstructured'"
            )
        modules = dict(model.named_modules())
        gates, handles, units = {}, [], {}
        for layer, point in structure.points.items():
            gate = UnitGate(point.units, state)
            for site in point.sites:
                handles.append(modules[site].register_forward_hook(gate.hook))
            gates[layer], units[layer] = gate, point.sites
        if input_weights:
            if not structure.input_layers:
                raise ModelError(
                    "input_weights=True, but no conv/linear layer outside the head reads the model's input"
                )
            for layer in structure.input_layers:
                gates[f"{layer}.weight"] = _weight_gate(modules[layer], state)
        return GatedModel(
            model,
            mode=mode,
            head=head,
            gates=gates,
            state=state,
            handles=handles,
            units=units,
            ungated=structure.ungated,
        )
    raise ConfigError(f"mode must be 'unstructured' or 'structured', got {mode!r}")
