"""Where structured FFW gates may go: plain chains and residual networks.

A structured gate multiplies the *activation output* of one unit (a conv channel, a linear neuron) by
g in [0, 1] (eq. 9). The hard mask can be exported as a physically smaller network only if that
activation feeds nothing but the input channels/columns of one conv/linear (through zero-preserving,
channel-wise layers such as pooling, flatten, dropout): then a pruned unit only ever multiplies
zeros there, and deleting it - from its layer, its BatchNorm and the consumer's inputs - is exact.

The encoder (everything called before the head) must be a sequence of *steps* that, replayed one
after the other, gives the bottleneck; a step is either a plain leaf module (conv/linear, BatchNorm,
activation, pooling/flatten/dropout) or a known residual block (``debiaskit.models`` ``BasicBlock``).

Gated units:

* plain layers: conv/linear -> [BatchNorm] -> activation -> [pooling/flatten/dropout] -> the next plain
  conv/linear or the head (the whole of SimpleConvNet and the MLP);
* inside each residual block: the internal channels conv1 -> bn1 -> relu1 -> conv2. Pruning unit j
  removes output channel j of conv1, entry j of bn1 and input channel j of conv2.

Not gated (the residual stream, where pruning is not free): a block's conv2 / bn2 and its
downsample, whose outputs are added to the shortcut, and any plain layer (e.g. the ResNet stem) whose
activation feeds a residual block, since the block's input is also its identity shortcut. Removing
one of those channels would change every later block; they are listed in ``Structure.ungated`` with
the reason. Residual-like modules that debiaskit does not know (any other branching forward) are
refused with an error that names them: use unstructured FFW for such models.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..errors import ModelError
from ._gates import ACTIVATION_TYPES, GATED_TYPES, NORM_TYPES, ZERO_PRESERVING_TYPES, Trace, trace_encoder

_CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_PLAIN_TYPES = GATED_TYPES + NORM_TYPES + ACTIVATION_TYPES + ZERO_PRESERVING_TYPES


@dataclass(frozen=True)
class BlockSpec:
    """A residual block whose forward debiaskit knows: its internal (non-residual) gate points as
    (layer, norms, activation, consumer), names relative to the block."""

    internal: tuple[tuple[str, tuple[str, ...], str, str], ...]


def _known_blocks() -> dict[type, BlockSpec]:
    from ..models._zoo import BasicBlock
    # BasicBlock.forward: relu2(bn2(conv2(relu1(bn1(conv1(x))))) + shortcut(x)): only conv1's channels
    # are internal; conv2/bn2 and the shortcut write into the residual stream.
    return {BasicBlock: BlockSpec(internal=(("conv1", ("bn1",), "relu1", "conv2"),))}


def block_spec(module: nn.Module) -> BlockSpec | None:
    """The :class:`BlockSpec` of a known residual block (a subclass only if it keeps the forward)."""
    for cls, spec in _known_blocks().items():
        if isinstance(module, cls) and type(module).forward is cls.forward:
            return spec
    return None


@dataclass
class Step:
    """One step of the encoder replay: a plain leaf module or a whole known residual block."""

    name: str
    module: nn.Module
    block: BlockSpec | None = None


@dataclass
class GatePoint:
    """Where one structured gate sits and what its export slices.

    ``layer`` (conv/linear) loses output units, ``norms`` (BatchNorms between it and its activation)
    lose the same entries, ``consumer`` (the next conv/linear, or the head) loses the matching inputs.
    The gate is a forward hook on ``activation`` (called exactly once per forward pass).
    """

    layer: str
    norms: tuple[str, ...]
    activation: str
    consumer: str
    units: int
    block: str | None = None        # name of the residual block holding it (None: a plain layer)


@dataclass
class Structure:
    """Result of :func:`analyse_structure`: gate points, ungated layers (with reasons), the steps."""

    kind: str                                   # "chain" (no residual block) or "residual"
    points: dict[str, GatePoint]
    ungated: dict[str, str]
    steps: list[Step] = field(default_factory=list)


def _units(module: nn.Module) -> int:
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels


def _in_units(module: nn.Module) -> int:
    return module.in_features if isinstance(module, nn.Linear) else module.in_channels


def _grouped(module: nn.Module) -> bool:
    return isinstance(module, _CONV_TYPES) and module.groups != 1


def _blocks(model: nn.Module, head: str) -> dict[str, BlockSpec]:
    """Outermost known residual blocks outside the head."""
    found: dict[str, BlockSpec] = {}
    for name, module in model.named_modules():
        if not name or name == head or name.startswith(head + "."):
            continue
        if any(name.startswith(b + ".") for b in found):
            continue
        spec = block_spec(module)
        if spec is not None:
            found[name] = spec
    return found


def _owner(name: str, blocks: dict[str, BlockSpec]) -> str | None:
    return next((b for b in blocks if name.startswith(b + ".")), None)


def _steps(trace: Trace, blocks: dict[str, BlockSpec], modules: dict[str, nn.Module], prefix: str = "") -> list[Step]:
    """The trace's leaves (under ``prefix``) with each known block's leaves folded into one step."""
    seen: set[str] = set()
    steps: list[Step] = []
    for leaf in trace.leaves:
        if prefix and not leaf.name.startswith(prefix + "."):
            continue
        owner = _owner(leaf.name, blocks)
        if owner is None:
            steps.append(Step(leaf.name, leaf.module))
        elif owner not in seen:
            seen.add(owner)
            steps.append(Step(owner, modules[owner], blocks[owner]))
    return steps


def _replay(steps: list[Step], x: Tensor) -> Tensor:
    h = x
    for step in steps:
        if isinstance(step.module, nn.Linear) and h.ndim > 2:
            h = h.flatten(1)  # torch.flatten in forward() is invisible to hooks
        h = step.module(h)
    return h


def _same(a: Tensor, b: Tensor) -> bool:
    return a.flatten(1).shape == b.flatten(1).shape and torch.equal(a.flatten(1), b.flatten(1))


@torch.no_grad()
def _diagnose(model: nn.Module, trace: Trace, blocks: dict[str, BlockSpec], example: Tensor,
              steps: list[Step]) -> list[str]:
    """Name what breaks the step replay: reused or unsupported leaves, and the deepest container
    modules whose forward is not the plain chain of their children (branches, residual additions,
    functional operations)."""
    problems = [f"{leaf.name} ({type(leaf.module).__name__}) is called {trace.calls.get(leaf.name, 0)} times"
                for leaf in trace.leaves if trace.calls.get(leaf.name, 0) != 1]
    for step in steps:
        m = step.module
        if step.block is not None or trace.calls.get(step.name, 0) != 1:
            continue
        if not isinstance(m, _PLAIN_TYPES):
            problems.append(f"{step.name} ({type(m).__name__}) is not a supported layer type")
        elif _grouped(m):
            problems.append(f"{step.name} is a grouped convolution (groups={m.groups})")
    modules = dict(model.named_modules())
    captured: dict[str, tuple[Tensor, Tensor]] = {}
    handles = []

    def hook(name):
        def fn(module, args, output):
            if name not in captured and args and isinstance(args[0], Tensor) and isinstance(output, Tensor):
                captured[name] = (args[0], output)
        return fn

    head = trace.head_name
    for name, module in modules.items():
        if (name and list(module.children()) and name not in blocks and _owner(name, blocks) is None
                and not (name == head or name.startswith(head + "."))):
            handles.append(module.register_forward_hook(hook(name)))
    try:
        model(example)
    finally:
        for h in handles:
            h.remove()
    bad = []
    for name, (inp, out) in captured.items():
        sub = _steps(trace, blocks, modules, prefix=name)
        try:
            ok = bool(sub) and _same(_replay(sub, inp), out)
        except Exception:  # noqa: BLE001 - a shape error is a mismatch too
            ok = False
        if not ok:
            bad.append(name)
    deepest = [n for n in bad if not any(o.startswith(n + ".") for o in bad)]
    problems += [f"{n} ({type(modules[n]).__name__}): its forward is not the plain chain of its sub-modules "
                 "(a branch, a residual addition or a functional operation)" for n in deepest]
    problems = list(dict.fromkeys(problems))  # a reused leaf appears once per call in the trace
    if not problems:
        problems.append("the model's own forward() combines its sub-modules in a way other than a plain chain "
                        "(e.g. a residual addition or a functional operation between them)")
    return problems


SUPPORTED = ("structured FFW supports encoders that are a chain of conv/linear -> [BatchNorm] -> activation layers "
             "(pooling/flatten/dropout in between), like SimpleConvNet and the MLP, and residual networks built "
             "from debiaskit's BasicBlock (ResNet-18), where it gates each block's internal channels "
             "(conv1 -> bn1 -> relu1 -> conv2) and leaves the channels of the residual stream ungated")


def analyse_structure(model: nn.Module, example: Tensor, head: str) -> Structure:
    """Find the structured gate points of ``model`` (see the module docstring); raise ModelError with
    the offending modules when the encoder is not made of supported steps. The forward passes run in
    eval mode (BatchNorm statistics untouched, no dropout); the model's mode is restored.

    Example::

        s = analyse_structure(build_model("resnet18", num_classes=10, input_shape=(3, 16, 16)), x[:2], "fc")
        sorted(s.points)[:1]   # ['layer1.0.conv1']; s.ungated['stem.0'] says why the stem is not gated
    """
    was = model.training
    model.eval()
    try:
        return _analyse(model, example, head)
    finally:
        model.train(was)


def _analyse(model: nn.Module, example: Tensor, head: str) -> Structure:
    trace = trace_encoder(model, example, head)
    modules = dict(model.named_modules())
    blocks = _blocks(model, head)
    steps = _steps(trace, blocks, modules)
    plain_ok = all(trace.calls.get(leaf.name, 0) == 1 for leaf in trace.leaves) and all(
        isinstance(s.module, _PLAIN_TYPES) and not _grouped(s.module) for s in steps if s.block is None)
    captured: list[Tensor] = []
    handle = modules[head].register_forward_pre_hook(lambda m, args: captured.append(args[0]) if not captured else None)
    try:
        with torch.no_grad():
            model(example)
            replays = plain_ok and _same(_replay(steps, example), captured[0])
    except Exception:  # noqa: BLE001 - e.g. a shape mismatch of the replay
        replays = False
    finally:
        handle.remove()
    if not replays:
        problems = _diagnose(model, trace, blocks, example, steps)
        raise ModelError(f"structured FFW cannot gate units of this model exactly: {'; '.join(problems)}. "
                         f"{SUPPORTED}. Residual-like or branching modules it does not know cannot be pruned per "
                         "unit without breaking the model: use mode='unstructured' for this model.")
    points: dict[str, GatePoint] = {}
    ungated: dict[str, str] = {}
    for i, step in enumerate(steps):
        if step.block is not None:
            _block_points(step, modules, points, ungated)
        elif isinstance(step.module, GATED_TYPES):
            reason = _plain_point(i, steps, head, modules, points)
            if reason:
                ungated[step.name] = reason
    return Structure(kind="residual" if any(s.block is not None for s in steps) else "chain",
                     points=points, ungated=ungated, steps=steps)


def _plain_point(i: int, steps: list[Step], head: str, modules: dict[str, nn.Module],
                 points: dict[str, GatePoint]) -> str | None:
    """Add the gate point of plain layer ``steps[i]``; return why not if it cannot be gated."""
    layer = steps[i]
    units = _units(layer.module)
    j, norms = i + 1, []
    while j < len(steps) and steps[j].block is None and isinstance(steps[j].module, NORM_TYPES) \
            and steps[j].module.num_features == units:
        norms.append(steps[j].name)
        j += 1
    if j >= len(steps) or steps[j].block is not None or not isinstance(steps[j].module, ACTIVATION_TYPES):
        return "no activation right after it (a structured gate sits after the non-linearity)"
    act = steps[j].name
    k = j + 1
    while k < len(steps) and steps[k].block is None and isinstance(steps[k].module, ZERO_PRESERVING_TYPES):
        k += 1
    if k < len(steps):
        nxt = steps[k]
        if nxt.block is not None:
            return (f"its activation feeds the residual block {nxt.name!r}, whose input is also the identity "
                    "shortcut (residual stream): pruning it is not free")
        if not isinstance(nxt.module, GATED_TYPES):
            return f"a {type(nxt.module).__name__} ({nxt.name}) that does not map zero to zero sits between it and the next layer"
        consumer = nxt.name
    else:
        consumer = head
        if not isinstance(modules[head], GATED_TYPES):
            return f"the head {head!r} is a {type(modules[head]).__name__}, not a conv/linear whose inputs can be sliced"
    points[layer.name] = GatePoint(layer=layer.name, norms=tuple(norms), activation=act, consumer=consumer,
                                   units=units)
    return None


def _block_points(step: Step, modules: dict[str, nn.Module], points: dict[str, GatePoint],
                  ungated: dict[str, str]) -> None:
    """Gate points inside a known residual block; its residual-stream layers go to ``ungated``."""
    internal = set()
    for layer, norms, act, consumer in step.block.internal:
        names = [f"{step.name}.{n}" for n in (layer, *norms, act, consumer)]
        lay, *nrm, actm, con = (modules.get(n) for n in names)
        units = _units(lay) if isinstance(lay, GATED_TYPES) else -1
        ok = (isinstance(lay, GATED_TYPES) and isinstance(con, GATED_TYPES) and not _grouped(lay) and not _grouped(con)
              and all(isinstance(n, NORM_TYPES) and n.num_features == units for n in nrm)
              and isinstance(actm, ACTIVATION_TYPES) and _in_units(con) == units)
        if not ok:
            raise ModelError(f"residual block {step.name!r} ({type(modules[step.name]).__name__}) does not have the "
                             f"expected internal layers {names} (conv/linear -> BatchNorm -> activation -> conv/linear "
                             "of matching sizes); use mode='unstructured'")
        internal.add(names[0])
        points[names[0]] = GatePoint(layer=names[0], norms=tuple(names[1:1 + len(norms)]), activation=names[-2],
                                     consumer=names[-1], units=units, block=step.name)
    for name, module in modules[step.name].named_modules(prefix=step.name):
        if isinstance(module, GATED_TYPES) and name not in internal:
            ungated[name] = (f"writes into the residual stream of block {step.name!r} (its output is added to the "
                             "shortcut): pruning it is not free")
