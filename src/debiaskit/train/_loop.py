"""One training loop; methods plug into it through :class:`TrainingMethod`.

The loop owns the epochs, shuffling, device placement, progress, logging and model selection;
a method owns its losses, auxiliary models and optimisers. Nothing here is global: seeds, devices
and paths are passed in, and under ``torch.distributed`` each rank trains on its own shard of the
indices and only rank 0 logs.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import _dist
from .._io import load_checkpoint, save_checkpoint
from .._validate import (
    NON_NEGATIVE,
    POSITIVE,
    POSITIVE_INT,
    SEED,
    check_not_empty,
    check_targets,
    check_training_data,
    describe_divergence,
    require,
)
from ..data import Batch, as_bias_data, iterate_batches
from ..errors import ConfigError, DebiaskitError
from ..models import batch_memory_format, laid_out
from ._amp import Precision, check_amp
from ._state import flatten_state, rng_state, set_rng_state, unflatten_state


@dataclass
class TrainConfig:
    """Optimisation settings shared by every method (methods may read extra keys from ``extra``).

    Example::

        fit(model, splits.train, config=TrainConfig(epochs=5, batch_size=128, lr=1e-3, optimizer="adam", seed=0))
    """

    epochs: int = 10
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    optimizer: str = "adam"
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    amp: str = "off"  # mixed precision of the training steps: off, bf16 or fp16 (see train._amp)
    sync_bn: bool = False  # under torchrun: BatchNorm statistics over the global batch (SyncBatchNorm; GPU only)

    def __post_init__(self) -> None:
        for name, rule in (
            ("epochs", POSITIVE_INT),
            ("batch_size", POSITIVE_INT),
            ("lr", POSITIVE),
            ("weight_decay", NON_NEGATIVE),
            ("seed", SEED),
        ):
            require(name, getattr(self, name), rule)
        if self.optimizer not in ("adam", "sgd"):
            raise ConfigError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        self.amp = check_amp(self.amp)


def make_optimizer(params, config: TrainConfig) -> torch.optim.Optimizer:
    """The optimiser ``config`` names (``"adam"``, or ``"sgd"`` with momentum 0.9) over ``params``, at its lr and weight decay."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)


@dataclass
class TrainContext:
    """What a method sees: the model, data, config and the loop's state."""

    model: nn.Module
    train_data: Any
    config: TrainConfig
    device: torch.device
    generator: torch.Generator
    num_classes: int
    head: str | None = None
    val_data: Any = None
    epoch: int = 0
    step: int = 0
    steps_per_epoch: int = 0
    rank: int = 0
    world_size: int = 1
    precision: Precision | None = None
    memory_format: torch.memory_format | None = None  # of the input batches (models/_layout.py)

    @property
    def unwrapped(self) -> nn.Module:
        """The user's module (inside DistributedDataParallel when distributed): hook it, name its head,
        evaluate it (DistributedDataParallel's forward is for training steps taken on every rank)."""
        return _unwrap(self.model)

    @property
    def batch_size(self) -> int:
        """This rank's batch: ``config.batch_size`` (the global batch) / world size."""
        return self.config.batch_size // self.world_size

    # -- what methods call instead of loss.backward() / optimizer.step() (mixed precision, several ranks) --
    def backward(self, loss: Tensor) -> None:
        """``loss.backward()``, loss-scaled under ``--amp fp16``."""
        if self.precision is None:
            loss.backward()
        else:
            self.precision.backward(loss)

    def step_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """``optimizer.step()`` (through the gradient scaler under ``--amp fp16``)."""
        if self.precision is None:
            optimizer.step()
        else:
            self.precision.step(optimizer)

    def full_precision(self):
        """Context with autocast off (small auxiliary heads on detached features train in float32)."""
        return self.precision.full_precision() if self.precision is not None else contextlib.nullcontext()

    def sync_grads(self, *modules: nn.Module) -> None:
        """Average the gradients of auxiliary modules over ranks before stepping them (the model's own
        gradients are averaged by DistributedDataParallel). A no-op on one process."""
        _dist.average_gradients([m for m in modules if m is not None])

    def gather(self, *tensors: Tensor) -> tuple[Tensor, ...]:
        """The global batch of per-sample tensors (concatenated over ranks, no gradient): per-sample state is
        updated from it on every rank, so it stays identical everywhere. Identity on one process."""
        return tuple(_dist.all_gather(t) for t in tensors)

    def gather_with_grad(self, tensor: Tensor) -> Tensor:
        """The global batch of ``tensor`` with gradient to this rank's rows (batch statistics such as MI)."""
        return _dist.all_gather_with_grad(tensor)

    def global_sum(self, tensor: Tensor) -> Tensor:
        """Sum over ranks, detached (global normalisers of weighted losses)."""
        return _dist.all_reduce_sum(tensor)

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.config.epochs


class ConflictFlags(NamedTuple):
    """Training samples a method flagged as bias-conflicting (mined, error set, pseudo-bias b^ != y).

    ``index``: training-sample indices the flags are about; ``flagged``: bool per index;
    ``pseudo_bias``: the method's b^ per index where it has one (else None).
    """

    index: Tensor  # type: ignore[assignment]  # a field named like tuple.index: the field wins at runtime
    flagged: Tensor
    pseudo_bias: Tensor | None = None

    def report(self, dataset) -> dict[str, float]:
        """Precision / recall of the flags against the TRUE alignment of ``dataset`` (the training set).

        For reports only (the comparison harness, run folders): no training decision reads it. A sample
        counts as conflicting if it conflicts on any bias attribute. Without alignment flags only the
        counts are returned.
        """
        flagged = self.flagged.bool().cpu()
        out = {"mined": int(flagged.sum()), "mined_share": float(flagged.float().mean())}
        aligned = getattr(dataset, "aligned", None)
        if aligned is None:
            return out
        aligned = aligned[self.index.cpu()]
        conflicting = ~(aligned.bool() if aligned.ndim == 1 else aligned.bool().all(1))
        tp = int((flagged & conflicting).sum())
        out.update(
            {
                "true_conflicting": int(conflicting.sum()),
                "precision": tp / max(int(flagged.sum()), 1),
                "recall": tp / max(int(conflicting.sum()), 1),
            }
        )
        return out


class TrainingMethod(nn.Module):
    """Base class of training-time methods; the default is ERM (vanilla).

    A method is an ``nn.Module`` (as in DomainBed): auxiliary models are sub-modules, per-sample or
    per-group state is registered buffers, and ``state_dict()`` also holds its optimisers and every
    other public attribute (counters, diagnostics), so a checkpoint of the model plus the method
    resumes bit-identically. Rules for subclasses: call ``super().__init__()`` first; create every
    sub-module and optimiser the method will ever use in :meth:`setup` (a later phase may
    re-initialise them or set a sub-module to None); put expensive work whose result is state in
    :meth:`prepare` (skipped on resume); keep objects that are not state in private attributes
    (leading underscore).

    Subclasses override :meth:`setup`, :meth:`training_step` and optionally :meth:`prepare`,
    :meth:`epoch_indices` (which samples this epoch visits, e.g. JTT's upsampling), :meth:`end_epoch`,
    :meth:`final_model`, :meth:`conflict_flags` and :meth:`extra_models`. The name and whether the
    method reads ``batch.b`` come from its registry entry (``info``, set by ``register_method``).

    Example (a method re-weighting the loss; see DEVELOPERS.md, "Add a method")::

        class Focal(TrainingMethod):
            def __init__(self, *, gamma: float = 2.0) -> None:
                super().__init__()
                self.gamma = gamma

            def training_step(self, batch, ctx):
                logits = ctx.model(batch.x)
                ce = F.cross_entropy(logits, batch.y, reduction="none")
                loss = ((1 - torch.exp(-ce)) ** self.gamma * ce).mean()
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                return {"loss": float(loss)}
    """

    info: ClassVar[Any] = None  # the MethodInfo this class is registered with

    def __init__(self) -> None:
        super().__init__()

    @property
    def name(self) -> str:
        return self.info.name if self.info is not None else "vanilla"

    @property
    def uses_bias_labels(self) -> bool:
        return bool(self.info.uses_bias_labels) if self.info is not None else False

    def setup(self, ctx: TrainContext) -> None:
        """Create the method's optimisers, sub-modules and buffers (cheap; also run before a resume)."""
        self.optimizer = make_optimizer(ctx.model.parameters(), ctx.config)

    def prepare(self, ctx: TrainContext) -> None:
        """Work before the first epoch whose result is state (JTT's identification model, DCWP's mining
        and mask search). Skipped on resume: the checkpoint holds its result."""

    def epoch_indices(self, ctx: TrainContext) -> Tensor | None:
        return None

    def training_step(self, batch: Batch, ctx: TrainContext) -> dict[str, float]:
        self.optimizer.zero_grad(set_to_none=True)
        logits = ctx.model(batch.x)
        loss = F.cross_entropy(logits, batch.y)
        ctx.backward(loss)
        ctx.step_optimizer(self.optimizer)
        return {"loss": float(loss.detach()), "acc": float((logits.argmax(1) == batch.y).float().mean())}

    def end_epoch(self, ctx: TrainContext) -> dict[str, float]:
        return {}

    def final_model(self, ctx: TrainContext) -> nn.Module:
        return ctx.model

    def conflict_flags(self, *, online: bool = False) -> ConflictFlags | None:
        """The training samples this method treats as bias-conflicting, for reports that hold the true
        labels (the method itself never compares them). ``online=True``: the latest per-visit flags of a
        method that flags while it trains, before they are frozen. None when the method flags nothing."""
        return None

    def extra_models(self, model: nn.Module) -> dict[str, nn.Module]:
        """Variants of the returned ``model`` worth reporting beside it (e.g. CALM's head refit), by name."""
        return {}

    def state(self) -> dict[str, Any]:
        """JSON-able description recorded in the run (hyper-parameters, diagnostics)."""
        return {}

    # -- checkpointing: nn.Module state plus optimisers and plain attributes -------------------------------
    def get_extra_state(self) -> dict[str, Any]:
        """Optimisers (by attribute name), sub-modules dropped by a phase, and every public plain attribute."""
        optimizers, attributes = {}, {}
        for key, value in vars(self).items():
            if key.startswith("_") or key == "training" or callable(value):  # functions are behaviour, not state
                continue
            if isinstance(value, torch.optim.Optimizer):
                optimizers[key] = value.state_dict()
            else:
                attributes[key] = value
        dropped = [name for name, module in self._modules.items() if module is None]
        return {"optimizers": optimizers, "attributes": attributes, "dropped_modules": dropped}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        for key, value in state["attributes"].items():
            setattr(self, key, value)
        for key, value in state["optimizers"].items():
            optimizer = vars(self).get(key)
            if not isinstance(optimizer, torch.optim.Optimizer):
                raise ConfigError(
                    f"the checkpoint holds optimiser {key!r} of method {self.name}, but setup() did not "
                    "create it; create every optimiser in setup()"
                )
            optimizer.load_state_dict(value)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """``nn.Module.load_state_dict`` after shaping the method like the checkpoint: sub-modules that a
        phase dropped are dropped, buffers are resized (their size is known only after setup or prepare)."""
        _shape_like(self, "", state_dict)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


def _shape_like(module: nn.Module, prefix: str, state: dict[str, Any]) -> None:
    extra = state.get(prefix + "_extra_state") if isinstance(module, TrainingMethod) else None
    for name in (extra or {}).get("dropped_modules", []):
        if name in module._modules:
            module._modules[name] = None
    for name, buf in module._buffers.items():
        key = prefix + name
        if key in state and name not in module._non_persistent_buffers_set:
            saved = state[key]
            if buf is None or buf.shape != saved.shape or buf.dtype != saved.dtype:
                module._buffers[name] = torch.empty_like(saved, device=buf.device if buf is not None else "cpu")
    for name, child in module._modules.items():
        if child is not None:
            _shape_like(child, f"{prefix}{name}.", state)


@dataclass
class FitResult:
    """What :func:`fit` returns: the selected model (eval mode), one record per epoch, the method's whole
    wall time and which epoch was selected by which rule.

    Example::

        result = fit(model, splits.train, config=TrainConfig(epochs=3))
        result.model, result.history[-1]["loss"], result.wall_time_s, result.selected_epoch
    """

    model: nn.Module
    history: list[dict[str, float]]
    wall_time_s: float  # the method's whole cost: setup, preparation and every epoch (across resumes)
    selected_epoch: int
    selection: str
    resumed_from_epoch: int | None = None


CHECKPOINT_KIND = "train"


def fit(
    model: nn.Module,
    train_data,
    *,
    method: TrainingMethod | None = None,
    config: TrainConfig | None = None,
    num_classes: int | None = None,
    head: str | None = None,
    val_data=None,
    select: Callable[[nn.Module], float] | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    log: Callable[[dict], None] | None = None,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    checkpoint_meta: dict[str, Any] | None = None,
) -> FitResult:
    """Train ``model`` on ``train_data`` (any dataset of (x, y, b)) with ``method`` (default ERM).

    ``select``: optional score (higher is better) computed at the end of each epoch on data the
    caller chose (never the test set); the best epoch's weights are returned. Without it the last
    epoch is returned.

    ``checkpoint``: a file written (atomically, as one unit) after the method's preparation and after
    every epoch: model, method state (sub-modules, buffers, optimisers), random generators, history and
    selection state. With ``resume=True`` training continues from it and ends with the weights an
    uninterrupted run would have reached, bit for bit (same data, config, method and machine);
    ``checkpoint_meta`` (JSON) identifies the run and must match on resume. The returned wall time is
    the method's whole cost, setup and preparation included, summed over the interrupted runs and their resumes.

    Under ``torchrun`` (a process group is initialised) each rank trains on its shard of every epoch's
    order with ``config.batch_size / world_size`` samples per step (``config.batch_size`` is the global
    batch; see :mod:`debiaskit._dist` for the padding of remainders), the model is wrapped in
    DistributedDataParallel, the logged epoch statistics are averaged over ranks and rank 0 alone writes
    the checkpoint (every rank reads it on resume).

    Example::

        result = fit(model, splits.train, config=TrainConfig(epochs=5, seed=0), num_classes=10)
        result = fit(model, splits.train, config=cfg, checkpoint="run/.ckpt.safetensors", resume=True)
    """
    config = config or TrainConfig()
    method = method or TrainingMethod()
    check_not_empty(train_data)
    train_data = as_bias_data(train_data)  # the data contract: any (x, y, b) or (x, y) dataset, kept lazy
    device = _dist.check_device(device)  # checked (rel's rules), then this rank's GPU under torchrun
    if config.sync_bn:
        _dist.check_sync_bn(device)
    if resume and checkpoint is None:
        raise ConfigError("resume=True needs the checkpoint file of the interrupted run")
    start = time.perf_counter()  # the method's whole cost: setup and preparation count
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    rank, world = _dist.rank_and_world()
    per_rank_batch = _dist.per_rank_batch(config.batch_size, world)
    model.to(device).train()
    # --sync-bn: batch statistics over all ranks (auxiliary models copied from it by methods sync too); undone at the end
    bn_classes = _dist.convert_sync_batchnorm(model) if config.sync_bn else {}
    # channels-last image batches where the model takes them unchanged (CPU): decided before any DDP wrapping,
    # identically on every rank
    layout = batch_memory_format(
        model, next(iter(iterate_batches(train_data, batch_size=2, device=device))).x, device=device
    )
    if world > 1:
        # gradients are averaged across ranks; methods see the wrapped model as ctx.model
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    n = len(train_data)
    ncls = num_classes or getattr(train_data, "num_classes", None)
    if ncls is None:
        raise ConfigError("num_classes is required for datasets that do not define it")
    check_training_data(train_data, num_classes=ncls)
    ctx = TrainContext(
        model=model,
        train_data=train_data,
        config=config,
        device=device,
        generator=generator,
        num_classes=ncls,
        head=head,
        val_data=val_data,
        rank=rank,
        world_size=world,
        precision=Precision(config.amp, device) if config.amp != "off" else None,
        memory_format=layout,
    )
    ctx.steps_per_epoch = math.ceil(math.ceil(n / world) / per_rank_batch)
    settings = {
        k: v for k, v in asdict(config).items() if k != "sync_bn" or v
    }  # checkpoints from before the flag resume
    identity = {
        "config": settings,
        "method": method.name,
        "num_samples": n,
        "num_classes": ncls,
        "selection": select is not None,
        **(checkpoint_meta or {}),
    }
    loop = _LoopState(best_epoch=config.epochs)
    method.setup(ctx)
    if resume and checkpoint is not None:  # (resume without a checkpoint was refused above)
        loop = _restore(
            Path(checkpoint),
            model=_unwrap(model),
            method=method,
            generator=generator,
            identity=identity,
            precision=ctx.precision,
        )
        ctx.step = loop.step
    else:
        method.prepare(ctx)

    def elapsed() -> float:  # this process since before setup, plus what the interrupted runs before a resume spent
        return loop.elapsed_s + time.perf_counter() - start

    if checkpoint is not None and not resume and rank == 0:  # after the preparation: JTT's or DCWP's can be long
        _save(
            Path(checkpoint),
            loop,
            model=_unwrap(model),
            method=method,
            generator=generator,
            identity=identity,
            elapsed_s=elapsed(),
            precision=ctx.precision,
        )
    resumed_from = loop.epoch if resume else None
    bar = _progress(progress and rank == 0, config.epochs * ctx.steps_per_epoch, method.name)
    bar.advance_by(loop.epoch * ctx.steps_per_epoch)
    try:
        for epoch in range(loop.epoch, config.epochs):
            ctx.epoch = epoch
            indices = method.epoch_indices(ctx)
            order = torch.arange(n) if indices is None else indices
            order = _dist.shard(order[torch.randperm(len(order), generator=generator)], rank=rank, world=world)
            ctx.steps_per_epoch = math.ceil(len(order) / per_rank_batch)
            sums: dict[str, float] = {}
            steps = 0
            for batch in iterate_batches(train_data, batch_size=per_rank_batch, indices=order, device=device):
                batch = batch._replace(x=laid_out(batch.x, layout))
                if method.uses_bias_labels and batch.b is None:
                    raise DebiaskitError(f"method {method.name} needs bias labels, but the training data has none")
                if not hasattr(train_data, "y"):  # in-memory targets were checked once, before training
                    check_targets(batch.y, num_classes=ncls, index=batch.index)
                if ctx.precision is None:
                    stats = method.training_step(batch, ctx)
                else:
                    with ctx.precision.autocast():
                        stats = method.training_step(batch, ctx)
                    ctx.precision.update()
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0.0) + v
                steps += 1
                ctx.step += 1
                bar.advance(stats)
            record = {"epoch": epoch + 1, **_mean_over_ranks({k: v / max(steps, 1) for k, v in sums.items()}, world)}
            record.update(method.end_epoch(ctx))
            if not all(math.isfinite(v) for v in record.values() if isinstance(v, float)):
                raise DebiaskitError(describe_divergence(train_data, epoch + 1, record))
            if select is not None:  # on the plain module, identically on every rank
                score = float(select(_unwrap(method.final_model(ctx))))
                record["selection_score"] = score
                if score > loop.best_score:
                    loop.best_score, loop.best_epoch = score, epoch + 1
                    loop.best_state = copy.deepcopy(_unwrap(method.final_model(ctx)).state_dict())
            record["time_s"] = elapsed()
            loop.history.append(record)
            loop.epoch, loop.step = epoch + 1, ctx.step
            if checkpoint is not None and rank == 0:
                _save(
                    Path(checkpoint),
                    loop,
                    model=_unwrap(model),
                    method=method,
                    generator=generator,
                    identity=identity,
                    elapsed_s=elapsed(),
                    precision=ctx.precision,
                )
            if log is not None and rank == 0:
                log(record)
    finally:
        bar.close()
        if bn_classes:  # also after an interruption: the user's module gets its own BatchNorm layers back
            _dist.revert_sync_batchnorm(_unwrap(model), bn_classes)
    final = _unwrap(method.final_model(ctx))
    if loop.best_state is not None:
        final.load_state_dict(loop.best_state)
    if bn_classes:  # a method's final model copied from the converted one: plain BatchNorm again too
        _dist.revert_sync_batchnorm(final, bn_classes)
    final.eval()
    return FitResult(
        model=final,
        history=loop.history,
        wall_time_s=elapsed(),
        selected_epoch=loop.best_epoch,
        selection="best validation score" if select else "last epoch",
        resumed_from_epoch=resumed_from,
    )


@dataclass
class _LoopState:
    """What the loop itself carries from epoch to epoch (the rest is the model's and the method's state)."""

    epoch: int = 0  # finished epochs
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_score: float = -math.inf
    best_epoch: int = 0
    best_state: dict[str, Tensor] | None = None
    elapsed_s: float = 0.0


def _save(
    path: Path,
    loop: _LoopState,
    *,
    model: nn.Module,
    method: TrainingMethod,
    generator: torch.Generator,
    identity: dict[str, Any],
    elapsed_s: float,
    precision: Precision | None = None,
) -> None:
    state = {
        "model": dict(model.state_dict()),
        "method": dict(method.state_dict()),
        "rng": rng_state(generator),
        "best_state": loop.best_state,
    }
    tensors, skeleton = flatten_state(state)
    meta = {
        "identity": identity,
        "state": skeleton,
        "epoch": loop.epoch,
        "step": loop.step,
        "history": loop.history,
        "best_score": loop.best_score,
        "best_epoch": loop.best_epoch,
        "elapsed_s": elapsed_s,
        "amp_scaler": precision.state_dict() if precision is not None else {},
    }  # fp16's loss scale
    _, meta = flatten_state(meta)  # non-finite floats (best_score = -inf before any selection) survive JSON
    save_checkpoint(path, tensors, meta, kind=CHECKPOINT_KIND)


def _restore(
    path: Path,
    *,
    model: nn.Module,
    method: TrainingMethod,
    generator: torch.Generator,
    identity: dict[str, Any],
    precision: Precision | None = None,
) -> _LoopState:
    if not path.is_file():
        raise ConfigError(f"nothing to resume: {path} does not exist (start without resume)")
    tensors, meta = load_checkpoint(path, kind=CHECKPOINT_KIND)
    meta = unflatten_state({}, meta)
    saved = meta["identity"]
    differ = sorted(k for k in set(saved) | set(identity) if saved.get(k) != identity.get(k))
    if differ:
        raise ConfigError(
            f"the checkpoint {path} belongs to another run: {', '.join(differ)} differ "
            f"({'; '.join(f'{k}: saved {saved.get(k)!r}, now {identity.get(k)!r}' for k in differ[:3])}); "
            "resume with the same settings, or start afresh"
        )
    state = unflatten_state(tensors, meta["state"])
    model.load_state_dict(state["model"])
    method.load_state_dict(state["method"])
    set_rng_state(generator, state["rng"])
    if precision is not None:
        precision.load_state_dict(meta.get("amp_scaler") or {})
    return _LoopState(
        epoch=meta["epoch"],
        step=meta["step"],
        history=meta["history"],
        best_score=meta["best_score"],
        best_epoch=meta["best_epoch"],
        best_state=state["best_state"],
        elapsed_s=meta["elapsed_s"],
    )


def _mean_over_ranks(stats: dict[str, float], world: int) -> dict[str, float]:
    """Epoch statistics averaged over ranks (each rank's are means over equally many samples)."""
    if world == 1 or not stats:
        return stats
    keys = sorted(stats)
    total = _dist.all_reduce_sum(torch.tensor([float(stats[k]) for k in keys], dtype=torch.float64))
    return {k: float(v) / world for k, v in zip(keys, total)}


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


class _progress:
    """A rich progress bar (or nothing when disabled)."""

    def __init__(self, enabled: bool, total: int, label: str) -> None:
        self.bar = None
        if enabled:
            from rich.console import Console
            from rich.markup import escape
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            # the label and stats are text, not markup or emoji codes (a method may be named anything)
            self.bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[stats]}"),
                console=Console(emoji=False),
            )
            self.bar.start()
            self.task = self.bar.add_task(escape(label), total=total, stats="")
            self._escape = escape

    def advance_by(self, steps: int) -> None:
        if self.bar is not None and steps:
            self.bar.update(self.task, advance=steps)

    def advance(self, stats: dict[str, float]) -> None:
        if self.bar is not None:
            text = " ".join(f"{k}={v:.3f}" for k, v in list(stats.items())[:3])
            self.bar.update(self.task, advance=1, stats=self._escape(text))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
