"""Data-parallel fine-tuning under ``torchrun``: join the process group, wrap in DDP, shard the data.

``torchrun --nproc_per_node=N script.py`` starts N processes and tells each who it is through
environment variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``).
:func:`init_distributed` reads them and joins the group: ``nccl`` when CUDA is available (one GPU per
local rank), ``gloo`` on CPU.
:func:`shard` gives each rank its part of the training data, :func:`wrap` wraps the model in
``DistributedDataParallel`` (gradients are averaged over ranks, so all ranks keep identical weights), and
:func:`broadcast_state` copies rank 0's parameters and buffers to every rank. Only rank 0 should print,
evaluate and save (:func:`is_main`). :func:`prunekit.recover.finetune` does all of this by itself when it runs
under ``torchrun``; these functions are for users who write their own loop.
"""

from __future__ import annotations

import atexit
import gc
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, IterableDataset, RandomSampler

from prunekit.errors import ConfigError

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistInfo:
    """Who this process is: ``rank`` of ``world_size``, its ``local_rank`` on the node, the ``backend`` and
    the ``device`` it trains on; ``owned`` is True when :func:`init_distributed` created the process group
    (and :func:`cleanup` will destroy it)."""

    rank: int
    world_size: int
    local_rank: int
    backend: str
    device: torch.device
    owned: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_with_torchrun() -> bool:
    """True when ``torchrun`` (or ``torch.distributed.run``) started this process with more than one rank.

    >>> launched_with_torchrun()  # a plain ``python`` process
    False
    """
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_distributed() -> bool:
    """True when a process group with more than one rank is initialised.

    >>> is_distributed()
    False
    """
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's global rank: from the process group if initialised, else ``$RANK``, else 0.

    >>> rank()
    0
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """True on rank 0 (and in a plain single process): the rank that prints, evaluates and saves.

    >>> is_main()
    True
    """
    return rank() == 0


def init_distributed(backend: str | None = None) -> DistInfo:
    """Join the process group described by torchrun's environment variables (or describe the one that exists).

    Idempotent: a second call describes the group the first one created. ``backend=None`` picks ``nccl``
    when CUDA is available (and sets this process's GPU to ``LOCAL_RANK``), else ``gloo``. A group this
    function creates is destroyed when the process exits. Raises :class:`ConfigError` naming the first
    missing variable when not under torchrun.

    >>> init_distributed()  # doctest: +SKIP
    DistInfo(rank=0, world_size=2, local_rank=0, backend='gloo', device=device(type='cpu'), owned=True)
    """
    if not dist.is_available():
        raise ConfigError(
            "this torch build has no torch.distributed: install a build with distributed support"
        )
    if dist.is_initialized():
        name = dist.get_backend()
        local = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device("cuda", torch.cuda.current_device()) if name == "nccl" else torch.device("cpu")
        return DistInfo(dist.get_rank(), dist.get_world_size(), local, name, device, owned=False)
    values = {}
    for var in ENV_VARS:
        if var not in os.environ:
            raise ConfigError(f"${var} is not set: launch with torchrun --nproc_per_node=N (or set {var})")
        values[var] = os.environ[var]
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT"):
        if not values[var].isdigit():
            raise ConfigError(f"${var} must be a non-negative integer, got {values[var]!r}")
    name = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if name not in ("nccl", "gloo"):
        raise ConfigError(f"backend must be 'nccl' or 'gloo', got {name!r}")
    rank_, world, local = int(values["RANK"]), int(values["WORLD_SIZE"]), int(values["LOCAL_RANK"])
    if name == "nccl":
        if not torch.cuda.is_available():
            raise ConfigError("backend 'nccl' needs CUDA; use backend='gloo' on CPU")
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    dist.init_process_group(name, init_method="env://", rank=rank_, world_size=world)
    atexit.register(_destroy_at_exit)
    return DistInfo(rank_, world, local, name, device, owned=True)


def _destroy_at_exit() -> None:
    if dist.is_initialized():
        _destroy()


def _destroy() -> None:
    """Destroy the default group, after freeing unreachable DDP wrappers (their reducers hold the group).

    Without the collection a finished DDP wrapper, kept alive by reference cycles, can take the gloo group's
    last reference into interpreter shutdown, where destroying it aborts the process ("terminate called
    without an active exception", exit code -6) after all the work is done.
    """
    gc.collect()
    dist.destroy_process_group()


def cleanup(info: DistInfo) -> None:
    """Wait for every rank, then destroy the process group if :func:`init_distributed` created it.

    Call it once, at the end of the script (a group created by :func:`init_distributed` is also destroyed
    when the process exits). Do not join a new group afterwards: under torchrun a second group of the same
    name can read the first one's stale rendezvous keys and hang.

    >>> cleanup(init_distributed())  # doctest: +SKIP
    """
    if dist.is_initialized():
        dist.barrier()
        if info.owned:
            _destroy()


def barrier() -> None:
    """Wait until every rank gets here (a no-op without a process group).

    >>> barrier()
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def wrap(model: nn.Module, info: DistInfo) -> DistributedDataParallel:
    """``DistributedDataParallel(model)`` on this rank's device (the model must already be there).

    DDP copies rank 0's parameters and buffers to every rank when it is built, then averages gradients.
    Buffers are not re-broadcast before every forward (``broadcast_buffers=False``): prunekit masks are
    buffers as large as their weights and never change, and rank 0's BatchNorm statistics come out the same
    either way; call :func:`broadcast_state` before other ranks evaluate or save.

    >>> ddp = wrap(model, init_distributed())  # doctest: +SKIP
    """
    device_ids = [info.device.index] if info.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=False)


def shard(data: Iterable, rank: int, world_size: int, *, seed: int = 0) -> Iterable:
    """This rank's part of the training data; every rank gets the same number of batches.

    - A ``DataLoader`` over a map-style dataset is rebuilt with a ``DistributedSampler`` (shuffled if the
      loader shuffled, with ``seed``; call ``loader.sampler.set_epoch(epoch)`` each epoch). The batch size
      stays per rank, so one step sees ``world_size * batch_size`` samples. A loader that already has a
      ``DistributedSampler`` is returned as it is.
    - Any other iterable with ``len()`` (e.g. a list of batches) is split by batch: rank ``r`` takes batches
      ``r, r + world_size, ...``; the last ``len % world_size`` batches are dropped so the ranks stay in step.

    >>> [int(x) for x, _ in shard([(torch.tensor(i), 0) for i in range(5)], rank=1, world_size=2)]
    [1, 3]
    """
    if world_size == 1:
        return data
    if isinstance(data, DataLoader):
        return _shard_loader(data, rank, world_size, seed)
    try:
        count = len(data)  # type: ignore[arg-type]
    except TypeError:
        raise ConfigError(
            f"cannot split a {type(data).__name__} without len() over ranks: pass a DataLoader or a list"
        ) from None
    if count < world_size:
        raise ConfigError(f"train_data has {count} batches, fewer than the {world_size} ranks")
    return _BatchShard(data, rank, world_size, count // world_size)


def _shard_loader(loader: DataLoader, rank: int, world_size: int, seed: int) -> DataLoader:
    if isinstance(loader.sampler, DistributedSampler):
        return loader
    if isinstance(loader.dataset, IterableDataset):
        raise ConfigError("cannot shard an IterableDataset: give each rank its own part of the stream")
    if type(loader.batch_sampler) is not BatchSampler or loader.batch_size is None:
        raise ConfigError(
            "cannot shard a DataLoader with a custom batch_sampler: give it a DistributedSampler"
        )
    sampler = DistributedSampler(
        loader.dataset,
        num_replicas=world_size,
        rank=rank,
        shuffle=isinstance(loader.sampler, RandomSampler),
        seed=seed,
        drop_last=loader.drop_last,
    )
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=sampler,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        persistent_workers=loader.persistent_workers,
    )


class _BatchShard:
    """Every ``world_size``-th batch of ``data`` starting at ``rank``, ``count`` batches in all."""

    def __init__(self, data: Iterable, rank: int, world_size: int, count: int) -> None:
        self.data, self.rank, self.world_size, self.count = data, rank, world_size, count

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator:
        for index, batch in enumerate(self.data):
            if index >= self.count * self.world_size:
                return
            if index % self.world_size == self.rank:
                yield batch


def set_epoch(data: Iterable, epoch: int) -> None:
    """Tell a ``DistributedSampler`` (if ``data`` is a loader with one) which epoch starts, for its shuffle.

    >>> set_epoch([], 3)  # anything else: nothing to do
    """
    sampler = getattr(data, "sampler", None)
    if isinstance(sampler, DistributedSampler):
        sampler.set_epoch(epoch)


def _comm_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def broadcast_float(value: float, src: int = 0) -> float:
    """``value`` as rank ``src`` has it, on every rank (a no-op without a process group).

    >>> broadcast_float(0.5)
    0.5
    """
    if not is_distributed():
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=_comm_device())
    dist.broadcast(tensor, src)
    return float(tensor.item())


def mean_over_ranks(value: float) -> float:
    """The mean of ``value`` over all ranks (a no-op without a process group).

    >>> mean_over_ranks(2.0)
    2.0
    """
    if not is_distributed():
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(tensor)
    return float(tensor.item()) / dist.get_world_size()


@torch.no_grad()
def broadcast_state(model: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers (the whole state dict) into every rank's model, in place.

    >>> broadcast_state(nn.Linear(2, 2))  # a no-op without a process group
    """
    if not is_distributed():
        return
    for tensor in model.state_dict().values():
        dist.broadcast(tensor, src)
