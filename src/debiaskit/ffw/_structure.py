"""Which units of a network structured FFW may gate, found from the traced graph of its forward.

A structured gate multiplies one *unit* (a conv channel, a linear neuron) by g in [0, 1] (eq. 9). The
hard mask can be exported as a physically smaller network only where removing the unit is exact: a
pruned unit must reach every layer that reads it as an exact zero, so that deleting it - from the
layer(s) that produce it, from every per-channel module on the way (BatchNorm, depthwise conv) and
from the inputs of every conv/linear that reads it - changes no output.

How the units are found (no list of known block classes):

1. ``torch.fx`` traces ``forward()`` into a graph of module calls, functions (``torch.relu``,
   ``F.adaptive_avg_pool2d``, ``+``, ``*``, ``torch.flatten``) and methods (``x.relu()``, ``x.view()``);
   torch.nn leaf modules stay single nodes. A sub-module whose forward cannot be traced (Python
   control flow on tensor values) becomes one opaque node: what it reads or writes is not gated, the
   rest still is. Shapes come from one eval-mode pass of the example (``ShapeProp``).
2. Every tensor gets a *channel space*: a conv/linear output starts a new space; per-channel ops
   (BatchNorm, activations, pooling, dropout, depthwise conv, flatten) keep it; ``a + b`` / ``a * b``
   join the spaces of ``a`` and ``b`` (a residual addition couples the channels of everything added into
   one stream - the channels of a ResNet stage share one gate). Anything else (cat, grouped conv,
   LayerNorm, indexing, an opaque module, the model input, the model output) *blocks* the space.
3. A space is gated when, with one gate per channel applied right after each producer's last
   non-zero-preserving op (BatchNorm, a constant shift, sigmoid), every conv/linear that reads the
   space provably sees exact zeros for a pruned channel (zeros propagate through ReLU-like
   activations, pooling, dropout, ``+`` of two zeros, ``*`` by anything). The gate is a forward hook
   on a module called once: the activation module where there is one; otherwise the BatchNorm (or the
   conv itself) just before a zero-preserving functional or shared activation - for ReLU-like
   activations the same function, since relu(g x) = g relu(x) for g >= 0.

Everything that cannot be gated is listed in ``Structure.ungated`` with the reason.

Covered (tests/test_ffw_structure.py): chains (SimpleConvNet, MLPs, BatchNorm1d, GELU, dropout before a
head named anything), torchvision-style BasicBlock / Bottleneck ResNets (one ``self.relu`` called
twice, ``out += identity``, 1x1 downsample), blocks with functional ``torch.relu`` / ``F.relu``,
depthwise convolutions (MobileNet inverted residuals). Grouped (non-depthwise) convolutions are not
gated: removing one input or output channel would unbalance their groups.

Why torch.fx and not Torch-Pruning's dependency graph (both tried on the test models, torch-pruning
1.6.1): Torch-Pruning groups the channels that must be removed *together to keep shapes valid*, for
prune-then-fine-tune, where the pruned network is allowed to change. FFW needs removals that do not
change the hard-masked model, and that needs each op's arguments: Torch-Pruning's graph is built from
autograd nodes, where ``relu(conv(x)) + 1.0`` is an ``AddBackward0`` like a residual addition, so it
offers the channel for pruning although removing it drops the +1 (not exact); it also sees nothing on
a frozen model (all ``requires_grad=False``: an empty graph) and would prune single channels out of
grouped convolutions. fx gives the op and its arguments (constants, dims, in-place methods), shared
module calls, and shapes, which is what the zero-propagation proof needs; the slicing itself is a few
lines (``_export.py``). So debiaskit depends on fx (part of torch) only.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor, nn
from torch.fx.passes.shape_prop import ShapeProp

from ..errors import ModelError

CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
LAYER_TYPES = CONV_TYPES + (nn.Linear,)
NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
# Elementwise modules with f(0) = 0: a zero channel stays zero through them.
ZERO_ACTIVATIONS = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Tanh,
    nn.Hardtanh,
    nn.Hardswish,
    nn.Softsign,
    nn.Tanhshrink,
    nn.Hardshrink,
    nn.Softshrink,
)
# Elementwise modules with f(0) != 0 (a pruned unit would leak a constant).
SHIFT_ACTIVATIONS = (nn.Sigmoid, nn.Softplus, nn.Hardsigmoid, nn.LogSigmoid)
ACTIVATION_TYPES = ZERO_ACTIVATIONS + SHIFT_ACTIVATIONS
# Per-channel modules that map a zero channel to a zero channel and keep the channel order.
ZERO_PRESERVING_TYPES = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
    nn.LPPool1d,
    nn.LPPool2d,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.Identity,
    nn.Upsample,
    nn.UpsamplingNearest2d,
    nn.UpsamplingBilinear2d,
)

_ZERO_FUNCS = {
    torch.relu,
    torch.relu_,
    F.relu,
    F.relu_,
    F.relu6,
    F.leaky_relu,
    F.leaky_relu_,
    F.elu,
    F.elu_,
    F.selu,
    F.selu_,
    torch.selu,
    F.celu,
    F.gelu,
    F.silu,
    F.mish,
    F.hardtanh,
    F.hardtanh_,
    F.hardswish,
    torch.tanh,
    F.tanh,
    F.softsign,
    F.tanhshrink,
    F.hardshrink,
    F.softshrink,
    torch.neg,
    operator.neg,
    F.max_pool1d,
    F.max_pool2d,
    F.max_pool3d,
    F.avg_pool1d,
    F.avg_pool2d,
    F.avg_pool3d,
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
    F.adaptive_avg_pool3d,
    F.adaptive_max_pool1d,
    F.adaptive_max_pool2d,
    F.adaptive_max_pool3d,
    F.lp_pool1d,
    F.lp_pool2d,
    F.interpolate,
    F.dropout,
    F.dropout1d,
    F.dropout2d,
    F.dropout3d,
    F.alpha_dropout,
    torch.clone,
}
_SHIFT_FUNCS = {torch.sigmoid, F.sigmoid, F.softplus, F.hardsigmoid, F.logsigmoid, torch.exp, torch.cos}
_ZERO_METHODS = {
    "relu",
    "relu_",
    "tanh",
    "tanh_",
    "neg",
    "neg_",
    "contiguous",
    "clone",
    "float",
    "double",
    "half",
    "to",
    "type_as",
    "detach",
    "clamp_min",
    "clamp_min_",
}
_SHIFT_METHODS = {"sigmoid", "sigmoid_", "exp", "exp_"}
_META_METHODS = {"size", "dim", "numel", "type", "get_device", "ndimension", "nelement"}
_REDUCE = {torch.mean: "mean", torch.sum: "sum", torch.amax: "amax", torch.amin: "amin"}
_REDUCE_METHODS = {"mean", "sum", "amax", "amin"}
_FLATTEN = {torch.flatten, torch.reshape}
_FLATTEN_METHODS = {"flatten", "view", "reshape"}
_ADD = {operator.add, operator.iadd, operator.sub, operator.isub, torch.add, torch.sub}
_ADD_METHODS = {"add", "add_", "sub", "sub_"}
_MUL = {operator.mul, operator.imul, torch.mul}
_MUL_METHODS = {"mul", "mul_"}
_DIV = {operator.truediv, operator.itruediv, torch.div}
_DIV_METHODS = {"div", "div_"}


@dataclass
class GatePoint:
    """One group of structured gates and what its export slices.

    ``units`` channels, one gate each, written by the conv/linear ``producers`` (several when a residual
    addition couples them; ``layer`` is the first, the name of the gate and its mask). The gate is a
    forward hook on each module of ``sites`` (its output is multiplied by g). A pruned unit is removed
    from the producers' outputs, from ``channel_modules`` (BatchNorm / depthwise conv on the way; one
    entry per channel) and from the inputs of ``consumers`` (conv/linear; ``fans[c]`` > 1 for a linear
    layer after a flatten, which reads each channel in ``fan`` consecutive columns).
    """

    layer: str
    producers: tuple[str, ...]
    sites: tuple[str, ...]
    units: int
    channel_modules: tuple[str, ...]
    consumers: tuple[str, ...]
    fans: dict[str, int] = field(default_factory=dict)

    @property
    def norms(self) -> tuple[str, ...]:
        return self.channel_modules

    @property
    def consumer(self) -> str:
        return self.consumers[0]


@dataclass
class Structure:
    """Result of :func:`analyse_structure`: gate points in graph order, ungated conv/linear (with why)."""

    points: dict[str, GatePoint]
    ungated: dict[str, str]
    input_layers: tuple[str, ...] = ()  # conv/linear outside the head that read the model's input

    @property
    def kind(self) -> str:
        """ "chain" when no unit is shared between layers (no residual coupling), else "residual"."""
        return "residual" if any(len(p.producers) > 1 for p in self.points.values()) else "chain"


# ---------------------------------------------------------------- tracing


class _Tracer(fx.Tracer):
    """fx tracer that keeps torch.nn modules as leaves and turns a sub-module whose forward cannot be
    traced into one opaque node (recorded in ``opaque`` with the error) instead of failing.

    A torch.nn module that holds conv/linear layers (``nn.TransformerEncoderLayer``, ``nn.MultiheadAttention``)
    is not a leaf: fx's default would keep it as one call, and its layers would look unused. It is traced
    into; where that fails (the transformer layers branch on tensor values) it is opaque, with the reason."""

    def __init__(self) -> None:
        super().__init__()
        self.opaque: dict[str, str] = {}

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if module_qualified_name in self.opaque:
            return True
        if not isinstance(m, LAYER_TYPES) and any(isinstance(c, LAYER_TYPES) for c in m.modules()):
            return False
        return super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m, forward, args, kwargs):
        name = self.path_of_module(m)
        if self.is_leaf_module(m, name):
            return super().call_module(m, forward, args, kwargs)
        last = list(self.graph.nodes)[-1] if len(self.graph.nodes) else None
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception as err:  # noqa: BLE001 - any tracing failure: keep the module as one opaque node
            nodes = list(self.graph.nodes)
            start = nodes.index(last) + 1 if last is not None else 0
            for node in reversed(nodes[start:]):
                self.graph.erase_node(node)
            self.opaque[name] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:200]
            return self.create_proxy("call_module", name, args, kwargs)


def trace_graph(model: nn.Module, example: Tensor) -> tuple[fx.GraphModule, dict[str, str]]:
    """Trace ``model`` with torch.fx and annotate every node with its shape on ``example`` (eval mode)."""
    tracer = _Tracer()
    try:
        graph = tracer.trace(model)
    except Exception as err:  # noqa: BLE001 - the top-level forward itself cannot be traced
        raise ModelError(
            f"structured FFW reads the model's forward() with torch.fx, which failed on "
            f"{type(model).__name__}.forward: {type(err).__name__}: {err}. Make forward() traceable "
            "(no Python control flow on tensor values), or use mode='unstructured'"
        ) from err
    gm = fx.GraphModule(model, graph)
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(example)
    except Exception as err:  # noqa: BLE001 - report which input broke the traced forward
        raise ModelError(
            f"the traced forward of {type(model).__name__} failed on an example batch of shape "
            f"{tuple(example.shape)}: {type(err).__name__}: {err}"
        ) from err
    finally:
        model.train(was)
    return gm, tracer.opaque


# ---------------------------------------------------------------- channel spaces


@dataclass
class _Space:
    units: int
    producers: list[fx.Node] = field(default_factory=list)
    channel_modules: list[str] = field(default_factory=list)
    consumers: list[tuple[fx.Node, str, int]] = field(default_factory=list)  # node, module, fan
    blocked: list[str] = field(default_factory=list)
    members: list[fx.Node] = field(default_factory=list)


class _Spaces:
    """Union-find over channel spaces; ``of[node]`` = (space id, fan)."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.data: list[_Space] = []
        self.of: dict[fx.Node, tuple[int, int]] = {}

    def new(self, units: int) -> int:
        self.parent.append(len(self.parent))
        self.data.append(_Space(units))
        return len(self.parent) - 1

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def get(self, node: fx.Node) -> tuple[_Space, int] | None:
        if node not in self.of:
            return None
        sid, fan = self.of[node]
        return self.data[self.find(sid)], fan

    def space(self, node: fx.Node) -> _Space:
        """The space of a node that has one (``get`` without the fan)."""
        got = self.get(node)
        if got is None:
            raise TypeError(f"{node} carries no channel space")
        return got[0]

    def assign(self, node: fx.Node, sid: int, fan: int = 1) -> None:
        self.of[node] = (self.find(sid), fan)
        self.data[self.find(sid)].members.append(node)

    def union(self, a: int, b: int) -> int:
        a, b = self.find(a), self.find(b)
        if a == b:
            return a
        sa, sb = self.data[a], self.data[b]
        if sa.units != sb.units:
            sa.blocked.append(f"tensors with {sa.units} and {sb.units} channels are combined")
        for attr in ("producers", "channel_modules", "consumers", "blocked", "members"):
            getattr(sa, attr).extend(getattr(sb, attr))
        self.parent[b] = a
        return a


def _shape(node: Any) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _dims(node: Any) -> tuple[int, ...]:
    """The recorded shape of a node the analysis reads a shape from (shape propagation gave every tensor node one;
    the TypeError of ``len(None)`` otherwise, as before this helper)."""
    shape = _shape(node)
    if shape is None:
        raise TypeError(f"torch.fx recorded no shape for {node}")
    return shape


def _name(node: fx.Node) -> str:
    """The module name a ``call_module`` node calls (fx types ``target`` as a name or a function)."""
    if not isinstance(node.target, str):
        raise TypeError(f"{node} calls {node.target!r}, not a module by name")
    return node.target


def _tensor_args(node: fx.Node) -> list[fx.Node]:
    args = list(node.args) + list(node.kwargs.values())
    flat: list[Any] = []
    for a in args:
        flat.extend(a if isinstance(a, (list, tuple)) else [a])
    return [a for a in flat if isinstance(a, fx.Node) and _shape(a) is not None]


def _kind(node: fx.Node, modules: dict[str, nn.Module], opaque: dict[str, str]) -> str:
    """How a node treats the channels of its tensor inputs (see the module docstring)."""
    if node.op == "call_module":
        m = modules[_name(node)]
        if node.target in opaque:
            return "block"
        if isinstance(m, CONV_TYPES):
            if m.groups == 1:
                return "layer"
            return "depthwise" if m.groups == m.in_channels == m.out_channels else "grouped"
        if isinstance(m, nn.Linear):
            return "layer"
        if isinstance(m, NORM_TYPES):
            return "norm"
        if isinstance(m, ZERO_ACTIVATIONS + ZERO_PRESERVING_TYPES):
            return "zero"
        if isinstance(m, nn.PReLU) and m.num_parameters == 1:
            return "zero"
        if isinstance(m, SHIFT_ACTIVATIONS):
            return "shift"
        if isinstance(m, nn.Flatten):
            return "flatten"
        return "block"
    target = node.target
    if node.op == "call_function":
        if target is getattr or target is len:
            return "meta"
        if target in _ZERO_FUNCS:
            return "zero"
        if target in _SHIFT_FUNCS:
            return "shift"
        if target in _REDUCE:
            return "reduce"
        if target in _FLATTEN:
            return "flatten"
        if target in _ADD:
            return "add"
        if target in _MUL:
            return "mul"
        if target in _DIV:
            return "div"
        if target is operator.getitem and not _tensor_args(node):
            return "meta"
        return "block"
    if node.op == "call_method":
        if target in _META_METHODS:
            return "meta"
        if target in _ZERO_METHODS:
            return "zero"
        if target in _SHIFT_METHODS:
            return "shift"
        if target in _REDUCE_METHODS:
            return "reduce"
        if target in _FLATTEN_METHODS:
            return "flatten"
        if target in _ADD_METHODS:
            return "add"
        if target in _MUL_METHODS:
            return "mul"
        if target in _DIV_METHODS:
            return "div"
        return "block"
    return "block"


def _describe(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        return f"{node.target} ({type(modules[_name(node)]).__name__})"
    name = getattr(node.target, "__name__", str(node.target))
    return f"{name}() in forward()" if node.op == "call_function" else f".{name}() in forward()"


def _reduce_dims(node: fx.Node) -> Any:
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    return dims


def _is_flatten(in_shape: tuple[int, ...], out_shape: tuple[int, ...], fan: int) -> int | None:
    """The new fan when ``in -> out`` keeps dim 0 and either keeps dim 1 (returns fan) or flattens
    every dim from 1 on into dim 1 (returns fan * prod(in[2:])); None otherwise."""
    if len(out_shape) < 2 or len(in_shape) < 2 or out_shape[0] != in_shape[0]:
        return None
    if fan == 1 and out_shape[1] == in_shape[1]:
        return fan
    if len(out_shape) == 2 and out_shape[1] == math.prod(in_shape[1:]):
        return fan * math.prod(in_shape[2:])
    return None


def _build_spaces(
    gm: fx.GraphModule,
    modules: dict[str, nn.Module],
    opaque: dict[str, str],
    head: str,
    kinds: dict[fx.Node, str],
    calls: dict[str, int],
) -> _Spaces:
    """Assign every tensor of the graph to a channel space (see the module docstring, step 2)."""
    spaces = _Spaces()

    def in_head(name: str) -> bool:
        return name == head or name.startswith(head + ".")

    def block_inputs(node: fx.Node, why: str) -> None:
        for a in _tensor_args(node):
            got = spaces.get(a)
            if got is not None:
                got[0].blocked.append(why)

    def fresh_blocked(node: fx.Node, why: str) -> None:
        shape = _shape(node)
        if shape is not None:
            sid = spaces.new(shape[1] if len(shape) > 1 else 1)
            spaces.data[sid].blocked.append(why)
            spaces.assign(node, sid)

    for node in gm.graph.nodes:
        shape = _shape(node)
        if node.op == "placeholder":
            fresh_blocked(node, "it is (or is added to) the model's input")
            continue
        if node.op == "get_attr":
            fresh_blocked(node, f"it is combined with the tensor {node.target!r} used directly in forward()")
            continue
        if node.op == "output":
            for a in _tensor_args(node):
                got = spaces.get(a)
                if got is not None and not any(in_head(_name(p)) for p in got[0].producers):
                    got[0].blocked.append("it is part of the model's output")
            continue
        kind = _kind(node, modules, opaque)
        kinds[node] = kind
        desc = _describe(node, modules)
        if kind == "meta":  # x.size(), x.shape, x.dim(): no data flows
            continue
        args = _tensor_args(node)
        if shape is None:  # a tuple or a number computed from tensors
            block_inputs(node, f"it is read by {desc}, which returns no single tensor")
            continue
        first = spaces.get(args[0]) if args else None
        if node.op == "call_module" and node.target in opaque:
            block_inputs(
                node, f"it is read by {node.target}, whose forward torch.fx cannot trace ({opaque[node.target]})"
            )
            fresh_blocked(node, f"it is written by {node.target}, whose forward torch.fx cannot trace")
            continue
        if kind in ("layer", "grouped"):
            m = modules[node.target]
            shared = calls[node.target] > 1
            if first is not None:
                sp, fan = first
                if kind == "grouped":
                    sp.blocked.append(
                        f"it is read by the grouped convolution {desc} (groups={m.groups}): "
                        "removing one input channel would unbalance its groups"
                    )
                elif shared:
                    sp.blocked.append(f"it is read by {desc}, which is called {calls[node.target]} times")
                elif isinstance(m, nn.Linear) and len(_dims(args[0])) != 2:
                    sp.blocked.append(
                        f"it is read by {desc} on a {len(_dims(args[0]))}-d input (units on the "
                        "last dimension; structured FFW gates dimension 1)"
                    )
                elif isinstance(m, CONV_TYPES) and fan != 1:
                    sp.blocked.append(f"it is read by {desc} after a reshape")
                else:
                    sp.consumers.append((node, node.target, fan))
            sid = spaces.new(shape[1])
            spaces.assign(node, sid)
            if in_head(node.target):
                spaces.data[sid].blocked.append(f"it is written by {desc} inside the head {head!r}")
            elif kind == "grouped":
                spaces.data[sid].blocked.append(
                    f"it is written by the grouped convolution {desc} (groups={m.groups}): "
                    "removing one output channel would unbalance its groups"
                )
            elif shared:
                spaces.data[sid].blocked.append(
                    f"it is written by {desc}, which is called {calls[node.target]} "
                    "times in one forward pass (shared weights)"
                )
            elif isinstance(m, nn.Linear) and len(shape) != 2:
                spaces.data[sid].blocked.append(
                    f"{desc} writes a {len(shape)}-d output (units on the last "
                    "dimension; structured FFW gates dimension 1)"
                )
            spaces.data[sid].producers.append(node)
            continue
        if first is None:
            fresh_blocked(node, f"it is written by {desc}")
            continue
        sp, fan = first
        sid = spaces.of[args[0]][0]
        if kind in ("zero", "shift", "norm", "depthwise"):
            if len(args) > 1:  # e.g. a functional op with a second tensor (weight) argument
                block_inputs(node, f"it is read by {desc} with a second tensor argument")
                fresh_blocked(node, f"it is written by {desc}")
                continue
            if kind in ("norm", "depthwise"):
                m = modules[node.target]
                size = m.num_features if kind == "norm" else m.in_channels
                if fan != 1 or size != sp.units or calls[node.target] > 1:
                    sp.blocked.append(
                        f"it is read by {desc}, which cannot be sliced with it "
                        f"({'called twice' if calls[node.target] > 1 else 'shape'})"
                    )
                elif node.target not in sp.channel_modules:
                    sp.channel_modules.append(node.target)
            if shape[1:2] != _dims(args[0])[1:2] or shape[0] != _dims(args[0])[0]:
                sp.blocked.append(f"{desc} changes its channel layout")
            spaces.assign(node, sid, fan)
        elif kind == "reduce":
            dims = _reduce_dims(node)
            dims = (dims,) if isinstance(dims, int) else dims
            nd = len(_dims(args[0]))
            if dims is None or not isinstance(dims, (tuple, list)) or any((d % nd) in (0, 1) for d in dims) or fan != 1:
                sp.blocked.append(f"it is reduced over its channels or batch by {desc}")
                fresh_blocked(node, f"it is written by {desc}")
            else:
                spaces.assign(node, sid, fan)
        elif kind == "flatten":
            new_fan = _is_flatten(_dims(args[0]), shape, fan)
            if new_fan is None:
                sp.blocked.append(f"it is reshaped by {desc} into {tuple(shape)}")
                fresh_blocked(node, f"it is written by {desc}")
            else:
                spaces.assign(node, sid, new_fan)
        elif kind in ("add", "mul", "div"):
            joined = sid
            ok = True
            for a in args:
                got = spaces.get(a)
                a_shape = _shape(a)
                if got is None:
                    continue
                if a_shape == shape or (
                    a_shape is not None and len(a_shape) == len(shape) and a_shape[1:2] == shape[1:2] and got[1] == fan
                ):
                    if got[1] != fan:
                        ok = False
                    joined = spaces.union(joined, spaces.of[a][0])
                elif a_shape is not None and len(a_shape) >= 2 and a_shape[1] == 1 and len(a_shape) == len(shape):
                    continue  # broadcast over channels (e.g. a spatial attention map): not channel-indexed
                else:
                    ok = False
            if not ok:
                sp = spaces.data[spaces.find(joined)]
                sp.blocked.append(f"{desc} combines tensors whose channels do not line up")
            spaces.assign(node, joined, fan)
        else:  # block
            block_inputs(node, f"it is read by {desc}, which mixes or re-indexes channels")
            fresh_blocked(node, f"it is written by {desc}")
    return spaces


# ---------------------------------------------------------------- gate sites and the exactness proof


def _data_users(node: fx.Node, kinds: dict[fx.Node, str]) -> list[fx.Node]:
    return [u for u in node.users if kinds.get(u) != "meta"]


def _zero_preserving(node: fx.Node, kinds: dict[fx.Node, str], modules: dict[str, nn.Module]) -> bool:
    kind = kinds.get(node)
    if kind == "depthwise":
        return modules[_name(node)].bias is None
    return kind in ("zero", "flatten", "reduce")


def _site(
    producer: fx.Node,
    space: _Space,
    spaces: _Spaces,
    kinds: dict[fx.Node, str],
    modules: dict[str, nn.Module],
    calls: dict[str, int],
    head: str,
) -> tuple[fx.Node | None, str]:
    """The node whose output the gate multiplies for one producer (or None and why)."""
    chain = [producer]
    while True:
        users = _data_users(chain[-1], kinds)
        if len(users) != 1:
            break
        u = users[0]
        got = spaces.get(u)
        if (
            kinds.get(u) not in ("zero", "shift", "norm", "depthwise")
            or got is None
            or got[0] is not space
            or got[1] != 1
        ):
            break
        chain.append(u)
    last_shift = max(i for i, n in enumerate(chain) if i == 0 or not _zero_preserving(n, kinds, modules))

    def hookable(n: fx.Node) -> bool:
        return (
            n.op == "call_module"
            and calls.get(_name(n), 0) == 1
            and not (n.target == head or _name(n).startswith(head + "."))
        )

    valid = [n for n in chain[last_shift:] if hookable(n)]
    for n in valid:
        if isinstance(modules[_name(n)], ACTIVATION_TYPES):
            return n, ""
    if valid:
        return valid[0], ""
    return None, (
        f"no module called once follows {_describe(chain[last_shift], modules)} to carry the gate "
        "(a functional op that does not map 0 to 0 comes after it)"
    )


def _prove_zero(
    space: _Space,
    sites: set[fx.Node],
    kinds: dict[fx.Node, str],
    modules: dict[str, nn.Module],
    position: dict[fx.Node, int],
) -> str:
    """Propagate 'a pruned channel is exactly 0' from the gate sites in graph order; return why a
    consumer would read a non-zero value, or '' when every consumer reads exact zeros."""
    members = set(space.members)
    zero: dict[fx.Node, bool] = {}
    for node in sorted(members, key=position.__getitem__):
        ins = [a for a in _tensor_args(node) if a in members]
        kind = kinds.get(node)
        if node in sites:
            zero[node] = True
        elif _zero_preserving(node, kinds, modules):
            zero[node] = bool(ins) and zero[ins[0]]
        elif kind == "add":
            zero[node] = bool(ins) and all(zero[a] for a in ins) and not _extra_terms(node, members)
        elif kind == "mul":
            zero[node] = any(zero[a] for a in ins)
        elif kind == "div":
            num = node.args[0] if node.args else None
            zero[node] = isinstance(num, fx.Node) and num in members and zero[num]
        else:  # a producer, BatchNorm, sigmoid-like, depthwise conv with a bias
            zero[node] = False
    for node, name, _ in space.consumers:
        src = next(a for a in _tensor_args(node) if a in members)
        if not zero[src]:
            return (
                f"a pruned unit would reach {name} as a non-zero value (through "
                f"{_culprit(src, zero, members, kinds, modules)}, which does not map 0 to 0)"
            )
    return ""


def _extra_terms(node: fx.Node, members: set[fx.Node]) -> bool:
    """True when an addition has a term outside the channel space (a non-zero constant, another tensor)."""
    consts = [
        a
        for a in list(node.args) + list(node.kwargs.values())
        if isinstance(a, (int, float)) and not isinstance(a, bool) and a != 0
    ]
    return bool(consts) or any(a not in members for a in _tensor_args(node))


def _culprit(
    node: fx.Node,
    zero: dict[fx.Node, bool],
    members: set[fx.Node],
    kinds: dict[fx.Node, str],
    modules: dict[str, nn.Module],
) -> str:
    """Walk back from a non-zero value to the op that makes a pruned channel non-zero."""
    while True:
        kind = kinds.get(node)
        ins = [a for a in _tensor_args(node) if a in members and not zero[a]]
        passes = _zero_preserving(node, kinds, modules) or (kind in ("add", "mul") and not _extra_terms(node, members))
        if not passes or not ins:
            return _describe(node, modules)
        node = ins[0]


def _uncalled(name: str, opaque: dict[str, str], called: set[str], modules: dict[str, nn.Module]) -> str:
    """Why a conv/linear has no call of its own in the graph: it sits inside a module the graph holds as one
    call (whose forward fx cannot trace, or a leaf), or it is really never called."""
    owner = next((o for o in opaque if name.startswith(o + ".")), None)
    if owner is not None:
        return (
            f"not gated: inside {owner} ({type(modules[owner]).__name__}), whose forward torch.fx cannot trace "
            f"({opaque[owner]}): one opaque call, so what it reads and writes is not gated"
        )
    owner = next((o for o in called if name.startswith(o + ".")), None)
    if owner is not None:
        return f"not gated: inside {owner} ({type(modules[owner]).__name__}), which torch.fx keeps as one opaque call"
    return "not gated: not called in the forward pass"


def analyse_structure(model: nn.Module, example: Tensor, head: str) -> Structure:
    """Find the structured gate points of ``model`` (see the module docstring). The trace runs in eval
    mode (BatchNorm statistics untouched, no dropout); the model's mode is restored.

    Example::

        s = analyse_structure(build_model("resnet18", num_classes=10, input_shape=(3, 16, 16)), x[:2], "fc")
        sorted(s.points)[:2]        # ['layer1.0.conv1', 'layer1.1.conv1']
        s.points["stem.0"].producers  # the stem and every block's conv2 adding into stage 1's stream
    """
    modules = dict(model.named_modules())
    if head not in modules:
        raise ModelError(f"the model has no module named {head!r} (the head)")
    gm, opaque = trace_graph(model, example)
    position = {node: i for i, node in enumerate(gm.graph.nodes)}
    order = {n.target: position[n] for n in reversed(gm.graph.nodes) if n.op == "call_module"}
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    kinds: dict[fx.Node, str] = {}
    spaces = _build_spaces(gm, modules, opaque, head, kinds, calls)
    points: dict[str, GatePoint] = {}
    ungated: dict[str, str] = {}
    done: set[int] = set()
    for node in gm.graph.nodes:
        if node not in spaces.of or kinds.get(node) not in ("layer", "grouped"):
            continue
        got = spaces.get(node)
        assert got is not None  # node is in spaces.of
        space, _ = got
        key = id(space)
        if key in done:
            continue
        done.add(key)
        producers = [_name(p) for p in sorted(space.producers, key=position.__getitem__)]
        if any(p == head or p.startswith(head + ".") for p in producers):
            continue
        why = space.blocked[0] if space.blocked else ""
        sites: list[fx.Node] = []
        if not why and not space.consumers:
            why = "no conv/linear reads its output"
        if not why:
            for p in space.producers:
                site, reason = _site(p, space, spaces, kinds, modules, calls, head)
                if site is None:
                    why = reason
                    break
                sites.append(site)
        if not why:
            why = _prove_zero(space, set(sites), kinds, modules, position)
        if why:
            for producer in producers:
                ungated.setdefault(producer, f"not gated: {why}")
            continue
        fans = {name: fan for node, name, fan in sorted(space.consumers, key=lambda c: position[c[0]])}
        sites.sort(key=position.__getitem__)
        points[producers[0]] = GatePoint(
            layer=producers[0],
            producers=tuple(producers),
            sites=tuple(dict.fromkeys(_name(s) for s in sites)),
            units=space.units,
            channel_modules=tuple(sorted(set(space.channel_modules), key=order.__getitem__)),
            consumers=tuple(dict.fromkeys(fans)),
            fans=fans,
        )
    called = set(calls)
    for name, m in modules.items():
        if isinstance(m, LAYER_TYPES) and not (name == head or name.startswith(head + ".")):
            if name in called or any(name in points[p].producers for p in points):
                continue
            ungated[name] = _uncalled(name, opaque, called, modules)
    inputs = [n for n in gm.graph.nodes if n.op == "placeholder" and n in spaces.of]
    readers = [name for n in inputs for _, name, _ in spaces.space(n).consumers]
    input_layers = tuple(
        dict.fromkeys(r for r in sorted(readers, key=order.__getitem__) if not (r == head or r.startswith(head + ".")))
    )
    return Structure(points=points, ungated=ungated, input_layers=input_layers)
