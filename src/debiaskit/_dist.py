"""Data-parallel helpers: one process per device, launched by ``torchrun`` (the standard PyTorch launcher).
A ground-layer module (like ``runs``): train, methods, audit and FFW all use it.

Everything here is a no-op at world size 1 (no process group), so the same code runs in tests, from the
CLI and under ``torchrun --nproc-per-node N -m debiaskit ...``. Nothing is global: the process group is
the only shared state, and it is torch's.

Conventions used by the loop, the methods, FFW and the audit:

* **Global batch.** ``batch_size`` is the *global* batch; each of the W ranks takes ``batch_size / W``
  samples per step (it must divide), so hyper-parameters mean the same at every world size.
* **Sharding** (:func:`shard`) follows ``torch.utils.data.DistributedSampler``: every rank draws the
  same permutation (same seed), the order is padded by repeating its first ``W - len % W`` entries so
  that its length divides by W, and rank r takes ``order[r::W]``. With a per-rank batch of ``B / W``,
  step k of the W ranks together visits exactly the global batch ``order[kB:(k+1)B]`` of a 1-rank run.
  The only difference: when ``len(order) % W != 0`` the last global batch repeats up to W - 1 samples
  of the epoch's first batch once (as DistributedSampler does); a 1-rank run does not.
* **Gradients.** With more than one rank the model is wrapped in ``DistributedDataParallel`` (gradients
  averaged; at world size 1 nothing is wrapped and every collective here is a no-op); auxiliary
  modules of a method (LfF's biased model, privacy heads, ...) average theirs with :func:`average_gradients`.
  Losses that are not a plain mean over the batch use global normalisers (:func:`all_reduce_sum`) or
  global batch statistics (:func:`all_gather_with_grad`), so that the averaged gradient equals the
  gradient of the 1-rank loss on the global batch.
* **Per-sample state** is updated on every rank from the global batch (:func:`all_gather`), so it is
  identical everywhere; whole-dataset passes are split across ranks and gathered (:func:`map_shards`).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ._io import atomic_folder, check_output
from ._validate import check_device as _check_device
from .errors import ConfigError

LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def is_distributed() -> bool:
    """True when a process group is initialised (under torchrun, or made by the caller)."""
    return dist.is_available() and dist.is_initialized()


def _several_ranks() -> bool:
    """Collectives only do something with more than one rank (a 1-rank group costs nothing either)."""
    return is_distributed() and dist.get_world_size() > 1


def rank_and_world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without a process group."""
    if is_distributed():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """Rank 0 (or no process group): the process that writes files and prints."""
    return rank_and_world()[0] == 0


def backend() -> str | None:
    """The process group's backend (``gloo``, ``nccl`` or ``cpu:gloo,cuda:nccl``), None without one."""
    return str(dist.get_backend()) if is_distributed() else None


def launched_by_torchrun() -> bool:
    """True when the environment carries torchrun's variables (RANK, WORLD_SIZE, ...)."""
    return all(v in os.environ for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def init_from_env(*, timeout_s: float = 1800.0) -> bool:
    """Initialise the process group from torchrun's environment; False (nothing done) outside torchrun.

    The backend serves CPU tensors with gloo and, where CUDA is available, CUDA tensors with NCCL
    (``cpu:gloo,cuda:nccl``), so ``--device cpu`` and ``--device cuda`` both work under torchrun.
    """
    if not launched_by_torchrun() or is_distributed():
        return False
    name = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"
    dist.init_process_group(backend=name, timeout=datetime.timedelta(seconds=timeout_s))
    return True


def shutdown() -> None:
    """Destroy the process group if this process made one."""
    if is_distributed():
        dist.destroy_process_group()


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def check_device(device: str | torch.device) -> torch.device:
    """The torch device for ``device``, checked BEFORE any compute (:func:`debiaskit._validate.check_device`:
    a clear error when CUDA is not there). Under torchrun, ``cuda`` means this rank's GPU
    (``cuda:LOCAL_RANK``), which becomes the current CUDA device."""
    dev = _check_device(device)
    if dev.type != "cuda":
        return dev
    if dev.index is None and launched_by_torchrun():
        dev = torch.device("cuda", local_rank())
        if dev.index >= torch.cuda.device_count():
            raise ConfigError(
                f"--device cuda under torchrun: rank {local_rank()} of this node has no GPU "
                f"({torch.cuda.device_count()} visible); start at most one rank per GPU "
                "(torchrun --nproc-per-node <= number of GPUs)"
            )
    torch.cuda.set_device(dev.index or 0)
    return torch.device("cuda", dev.index or 0)


def per_rank_batch(batch_size: int, world: int) -> int:
    """The per-rank batch of a global ``batch_size`` on ``world`` ranks (it must divide)."""
    if batch_size % world:
        raise ConfigError(
            f"the batch size {batch_size} is the global batch and must divide by the number of ranks "
            f"({world}); use e.g. --batch-size {max(world, batch_size // world * world)}"
        )
    return batch_size // world


def shard(order: Tensor, *, rank: int, world: int) -> Tensor:
    """This rank's part of ``order`` with DistributedSampler semantics (see the module docstring)."""
    if world == 1:
        return order
    pad = (-len(order)) % world
    if pad:
        order = torch.cat([order, order[:pad].repeat(pad // max(len(order), 1) + 1)[:pad]])
    return order[rank::world]


# -- collectives (no-ops at world size 1) -----------------------------------------------------------------
def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Sum of ``tensor`` over ranks (a new tensor; no gradient)."""
    if not _several_ranks():
        return tensor
    out = tensor.detach().clone()
    dist.all_reduce(out)
    return out


def average_gradients(modules: nn.Module | Sequence[nn.Module] | Sequence[nn.Parameter]) -> None:
    """Average the ``.grad`` of auxiliary modules over ranks (the DDP-wrapped model averages its own)."""
    if not _several_ranks():
        return
    items: list[nn.Module | nn.Parameter] = [modules] if isinstance(modules, nn.Module) else list(modules)
    params: list[Tensor] = []
    for m in items:
        params += m.parameters() if isinstance(m, nn.Module) else [m]
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    world = dist.get_world_size()
    flat = torch.cat([g.reshape(-1) for g in grads])  # one collective for all of them
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def all_gather(tensor: Tensor) -> Tensor:
    """Concatenation over ranks (rank order) along dim 0; rows may differ in number per rank. No gradient."""
    if not _several_ranks():
        return tensor
    world = dist.get_world_size()
    tensor = tensor.detach().contiguous()
    sizes = torch.tensor([len(tensor)], device=tensor.device)
    all_sizes = [torch.zeros_like(sizes) for _ in range(world)]
    dist.all_gather(all_sizes, sizes)
    counts = [int(s) for s in all_sizes]
    longest = max(counts)
    padded = torch.zeros((longest, *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
    padded[: len(tensor)] = tensor
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:c] for p, c in zip(parts, counts)])


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sends every rank the summed gradient of its own rows (all_reduce based,
    so it works on gloo, which has no reduce_scatter)."""

    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:
        world, rank = dist.get_world_size(), dist.get_rank()
        parts = [torch.empty_like(tensor) for _ in range(world)]
        dist.all_gather(parts, tensor.contiguous())
        ctx.rows, ctx.rank = len(tensor), rank
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def all_gather_with_grad(tensor: Tensor) -> Tensor:
    """Global batch of a per-sample tensor with gradient to this rank's rows (equal rows per rank).

    For a batch statistic S (mutual information, a normaliser) computed identically on every rank from the
    gathered tensor, each rank's gradient of its own rows is W times dS/d(rows) after the backward
    all-reduce; DDP's average over ranks then gives exactly dS/d(theta) of the 1-rank computation.
    """
    if not _several_ranks():
        return tensor
    return _GatherWithGrad.apply(tensor)


def global_batch_order(position: Tensor) -> Tensor:
    """Where each row of an all-gathered batch goes so that the rows follow ``position`` (e.g. each sample's
    place in the epoch's permutation): gathered rows come rank by rank, a 1-rank batch in permutation order.
    Apply it to tensors gathered with :func:`all_gather` / :func:`all_gather_with_grad` (order-sensitive uses:
    SGD over collected features, running statistics)."""
    return torch.argsort(all_gather(position), stable=True)


def broadcast_(tensors: Tensor | Sequence[Tensor], *, src: int = 0) -> None:
    """Overwrite ``tensors`` on every rank with rank ``src``'s values (in place)."""
    if not _several_ranks():
        return
    for t in [tensors] if isinstance(tensors, Tensor) else tensors:
        dist.broadcast(t.data, src=src)


def broadcast_object(obj, *, src: int = 0):
    """Rank ``src``'s Python object on every rank (small JSON-like values: decisions, records)."""
    if not _several_ranks():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if _several_ranks():
        dist.barrier()


def map_shards(n: int, compute: Callable[[Tensor], Any]) -> Any:
    """``compute(index)`` over ``range(n)`` split across ranks (rank r takes ``r::W``), gathered in order.

    ``compute`` returns one row per index - a tensor, or a tuple of tensors (None entries pass through) -
    on any device; the result is identical on every rank, and equal to ``compute(torch.arange(n))`` at
    world size 1.
    """
    rank, world = rank_and_world()
    if world == 1:
        return compute(torch.arange(n))
    index = torch.arange(n)[rank::world]
    rows = compute(index)
    parts = rows if isinstance(rows, tuple) else (rows,)
    where = all_gather(index)
    out: list[Tensor | None] = []
    for part in parts:
        if part is None:
            out.append(None)
            continue
        gathered = all_gather(part)
        ordered = torch.empty_like(gathered)
        ordered[where.to(gathered.device)] = gathered
        out.append(ordered)
    return tuple(out) if isinstance(rows, tuple) else out[0]


def replicas_agree(tensors: Sequence[Tensor]) -> bool:
    """True when ``tensors`` hold bitwise the same values on every rank (a cheap checksum; for tests)."""
    if not _several_ranks():
        return True
    flat = torch.cat([t.detach().double().reshape(-1).cpu() for t in tensors])
    stats = torch.stack([flat.sum(), (flat * torch.arange(1, len(flat) + 1, dtype=flat.dtype)).sum()])
    low, high = stats.clone(), stats.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    return bool(torch.equal(low, high))


# -- BatchNorm statistics across ranks (opt-in: --sync-bn) ---------------------------------------------------
# torch's SyncBatchNorm reduces batch statistics only for these device types; CPU tensors over gloo raise
_SYNC_BN_DEVICES = ("cuda", "xpu", "hpu")


def check_sync_bn(device: str | torch.device) -> None:
    """Refuse ``sync_bn`` where torch cannot do it: under torchrun (a process group) with CPU tensors.

    Without a process group SyncBatchNorm computes exactly what BatchNorm computes (nothing to synchronise),
    so one process on any device is accepted."""
    device = torch.device(device)
    if is_distributed() and device.type not in (*_SYNC_BN_DEVICES, torch._C._get_privateuse1_backend_name()):
        raise ConfigError(
            f"--sync-bn with --device {device} under torchrun: torch {torch.__version__.split('+')[0]}'s "
            "SyncBatchNorm synchronises statistics of GPU tensors only (cuda, xpu, hpu: NCCL), not of "
            "CPU tensors over gloo. Drop --sync-bn (each rank then normalises with its own batch "
            "statistics) or train with --device cuda"
        )


def convert_sync_batchnorm(model: nn.Module) -> dict[str, type]:
    """Replace ``model``'s BatchNorm layers by SyncBatchNorm, in place, sharing their parameters and buffers
    (torch's ``convert_sync_batchnorm``); returns {layer name: original class} for :func:`revert_sync_batchnorm`."""
    if isinstance(model, nn.modules.batchnorm._BatchNorm):
        raise ConfigError("--sync-bn: the model itself is a BatchNorm layer; wrap it in a module")
    classes = {
        name: type(m)
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, nn.SyncBatchNorm)
    }
    nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return classes


def revert_sync_batchnorm(model: nn.Module, classes: dict[str, type]) -> nn.Module:
    """Put plain BatchNorm layers (``classes``) back in place of SyncBatchNorm ones, sharing their tensors, so the
    trained model is the user's architecture again (same state_dict; saved and reloaded as the plain model)."""
    for name, m in list(model.named_modules()):
        if isinstance(m, nn.SyncBatchNorm) and name in classes:
            bn = classes[name](
                m.num_features,
                eps=m.eps,
                momentum=m.momentum,
                affine=m.affine,
                track_running_stats=m.track_running_stats,
            )
            bn.weight, bn.bias = m.weight, m.bias
            bn.running_mean, bn.running_var, bn.num_batches_tracked = (
                m.running_mean,
                m.running_var,
                m.num_batches_tracked,
            )
            bn.train(m.training)
            model.set_submodule(name, bn)
    return model


@contextmanager
def rank0_folder(
    out: Path, *, kind: Any, force: bool = False, inputs: tuple[Path, ...] = (), pinned: tuple[Any, ...] = ()
) -> Iterator[Path | None]:
    """``atomic_folder`` on rank 0 (the one writer: checked and locked before any compute, published on success);
    ``None`` on the other ranks, which check the same output rule (so every rank refuses a bad ``--out``
    with the same message) and, on leaving, wait until rank 0 has published the folder. Without a process
    group: ``atomic_folder``."""
    if rank_and_world()[0] == 0:
        with atomic_folder(out, kind=kind, force=force, inputs=inputs, pinned=pinned) as staging:
            yield staging
    else:
        check_output(out, kind=kind, force=force, inputs=inputs)
        yield None
    barrier()


def description() -> dict[str, object]:
    """What run.json records about the processes: world size and backend (None without a process group)."""
    rank, world = rank_and_world()
    return {"world_size": world, "backend": backend()}
