"""``finetune``: win back accuracy after pruning, optionally distilling from the dense model, on 1 or N ranks.

One loop for every case: an optimizer and schedule (as in :func:`prunekit.recover.train`), the loss, KD,
zero-keeping, evaluation, best weights and early stopping from
:class:`~prunekit.recover.callbacks.PruneCallbacks`, and a rich progress bar. Under
``torchrun --nproc_per_node=N`` the same call joins the process group, shards the data, trains a
``DistributedDataParallel`` copy of the model (gloo on CPU, nccl on GPU), evaluates on rank 0 only, and
leaves every rank with rank 0's final weights; see :mod:`prunekit.recover.distributed`.

Masked (``prunekit.sparse``) models stay exactly as sparse: their pruned weights read as zero in every
forward and their ``original`` gets zero gradient there. Plain zeros are kept with ``keep_zeros=True``.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from rich.console import Console
from torch import nn

from prunekit._inputs import call_model, to_device
from prunekit.config import resolve
from prunekit.errors import ConfigError
from prunekit.progress import Bar, enabled, progress_bar
from prunekit.recover import distributed as dist_utils
from prunekit.recover.callbacks import EvalFn, EvalPoint, LossFn, PruneCallbacks, check_callback_args
from prunekit.recover.config import DistillConfig, TrainConfig
from prunekit.recover.train import (
    _check_args,
    _device_of,
    _make_optimizer,
    _num_batches,
    cosine_schedule,
    optimizer_step,
)


@dataclass
class FinetuneResult:
    """What :func:`finetune` did.

    ``steps``: optimizer steps run (per rank); ``steps_per_epoch``: batches per pass over this rank's data
    (``None`` if the data has no ``len()``); ``history``: every evaluation (step 0 included);
    ``best_metric``/``best_step``: the best evaluation; ``restored_best``: the model holds those weights;
    ``final_metric``: the metric of the weights the model holds now; ``losses``: training loss per step
    (rank 0's batches); ``world_size``: ranks that trained (1 = no DDP).
    """

    steps: int
    steps_per_epoch: int | None
    history: list[EvalPoint]
    best_metric: float | None
    best_step: int | None
    final_metric: float | None
    restored_best: bool
    stopped_early: bool
    losses: list[float]
    wall_seconds: float
    world_size: int
    distilled: bool

    def to_dict(self) -> dict:
        """JSON-serialisable summary (``nan`` losses become ``None``).

        >>> FinetuneResult(1, 1, [], None, None, None, False, False, [0.5], 0.1, 1, False).to_dict()["steps"]
        1
        """
        return {
            "steps": self.steps,
            "steps_per_epoch": self.steps_per_epoch,
            "history": [{k: _json_float(v) for k, v in point.to_dict().items()} for point in self.history],
            "best_metric": self.best_metric,
            "best_step": self.best_step,
            "final_metric": self.final_metric,
            "restored_best": self.restored_best,
            "stopped_early": self.stopped_early,
            "losses": [_json_float(v) for v in self.losses],
            "wall_seconds": self.wall_seconds,
            "world_size": self.world_size,
            "distilled": self.distilled,
        }


def _json_float(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def finetune(
    model: nn.Module,
    train_data: Iterable,
    config: TrainConfig | None = None,
    *,
    distill: DistillConfig | None = None,
    steps: int | None = None,
    epochs: int | None = None,
    lr: float | None = None,
    optimizer: str | None = None,
    weight_decay: float | None = None,
    momentum: float | None = None,
    schedule: str | None = None,
    max_grad_norm: float | None = None,
    loss_fn: LossFn | None = None,
    eval_fn: EvalFn | None = None,
    eval_every: int | None = None,
    patience: int | None = None,
    min_delta: float | None = None,
    restore_best: bool | None = None,
    teacher: nn.Module | None = None,
    kd_alpha: float | None = None,
    kd_temperature: float | None = None,
    feature_kd: Sequence[str] | Mapping[str, str] | None = None,
    feature_kd_weight: float | None = None,
    keep_zeros: bool | None = None,
    distributed: bool | None = None,
    seed: int | None = None,
    progress: bool | None = None,
    console: Console | None = None,
) -> FinetuneResult:
    """Fine-tune ``model`` in place on ``(inputs, targets)`` batches, ``steps`` or ``epochs`` (exactly one).

    - ``train_data``: a re-iterable of batches (a ``DataLoader``, a list); ``inputs`` may be a tensor, a tuple
      or a dict (:func:`prunekit._inputs.call_model`); batches go to the model's device. ``steps`` cycles
      through the data as often as needed.
    - ``loss_fn(outputs, targets)``: default cross-entropy on the logits. ``optimizer`` ``"adam"`` (AdamW) or
      ``"sgd"`` (Nesterov), ``schedule`` ``"constant"`` or ``"cosine"`` (to 0), ``max_grad_norm`` clips.
    - ``eval_fn(model) -> float`` (higher is better; eval mode, ``no_grad``) runs at step 0, every
      ``eval_every`` steps (default: once per epoch, or only at the end when the data has no ``len()``) and
      at the last step. With ``restore_best`` the best evaluated weights (kept in memory) are loaded at the
      end; ``patience`` evaluations without improving by more than ``min_delta`` stop early.
    - ``teacher``: the dense model, for knowledge distillation: ``(1 - kd_alpha) * task + kd_alpha *
      KL(teacher || student at kd_temperature) * T**2`` (defaults 0.5, 4.0); ``feature_kd`` names modules
      whose outputs (equal shapes) are matched with an MSE weighted by ``feature_kd_weight``.
    - ``keep_zeros=True``: zero weights of unmasked Linear/Conv layers stay zero (masked layers always do).
    - ``distributed``: ``None`` = use DDP when launched by ``torchrun`` with more than one rank (or when a
      process group exists); the process group is joined once and kept until the process exits (see
      :func:`~prunekit.recover.distributed.init_distributed`); the model and teacher move to the rank's
      device, each rank trains on its shard (``batch_size`` is per rank), rank 0 evaluates and prints, and
      all ranks end with rank 0's weights.
    - ``progress``: a bar on stderr (steps, loss, metric, time remaining); ``None`` follows
      :func:`prunekit.progress.enabled` (the command line's terminal without ``--quiet``,
      ``PRUNEKIT_PROGRESS``). ``console``: a rich console of the caller's that gets one line per epoch (mean
      loss, latest evaluation) whether or not the bar shows; without it those lines show above the bar only.
    - ``seed`` seeds dropout and a loader without its own generator (``seed + rank``), the caller's RNG kept.

    Options come as ``config`` (:class:`~prunekit.recover.config.TrainConfig`) and ``distill``
    (:class:`~prunekit.recover.config.DistillConfig`) or as the keywords above (defaults: ``lr=1e-3``,
    ``optimizer="adam"``, ...); a keyword that disagrees with a given config is a :class:`ConfigError`.

    Every argument is checked, and the first batch is run once in eval mode to check the loss (and the
    feature shapes), before the model changes. The model's train/eval flags are restored at the end.

    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    >>> model = nn.Linear(4, 3)
    >>> acc = lambda m: float((m(x).argmax(1) == y).float().mean())
    >>> res = finetune(model, [(x, y)], steps=30, lr=0.05, eval_fn=acc, eval_every=10, progress=False)
    >>> res.steps, [p.step for p in res.history], res.final_metric == res.best_metric
    (30, [0, 10, 20, 30], True)
    >>> finetune(model, [(x, y)], TrainConfig(steps=5), steps=6)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    prunekit.errors.ConfigError: finetune: steps=6 conflicts with config.steps=5; ...
    """
    cfg = _train_config(
        config, steps=steps, epochs=epochs, lr=lr, optimizer=optimizer, weight_decay=weight_decay,
        momentum=momentum, schedule=schedule, max_grad_norm=max_grad_norm, loss_fn=loss_fn, eval_fn=eval_fn,
        eval_every=eval_every, patience=patience, min_delta=min_delta, restore_best=restore_best,
        keep_zeros=keep_zeros, seed=seed,
    )  # fmt: skip
    kd = _distill_config(
        distill, teacher=teacher, alpha=kd_alpha, temperature=kd_temperature, feature_kd=feature_kd,
        feature_kd_weight=feature_kd_weight,
    )  # fmt: skip
    return _run(model, train_data, cfg, kd, distributed, progress, console)


def _train_config(config: Any, **given: Any) -> TrainConfig:
    if config is not None and not isinstance(config, TrainConfig):
        raise ConfigError(f"finetune: config must be a TrainConfig, got {type(config).__name__}")
    return resolve(TrainConfig, config, "finetune", (), **given)


def _distill_config(distill: Any, **given: Any) -> DistillConfig | None:
    """``distill`` or the distillation keywords (``None``: no teacher, no distillation)."""
    if distill is not None and not isinstance(distill, DistillConfig):
        raise ConfigError(f"finetune: distill must be a DistillConfig, got {type(distill).__name__}")
    if distill is None and given["teacher"] is None:
        keywords = {"kd_alpha": "alpha", "kd_temperature": "temperature", "feature_kd": "feature_kd"}
        for name, key in (keywords | {"feature_kd_weight": "feature_kd_weight"}).items():
            if given[key] is not None:
                raise ConfigError(f"{name} is set but there is no teacher: pass teacher=<dense model>")
        return None
    return resolve(DistillConfig, distill, "finetune", (), **given)


def _join(
    model: nn.Module, teacher: nn.Module | None, train_data: Iterable, use_ddp: bool, seed: int | None
) -> tuple[dist_utils.DistInfo | None, Iterable]:
    """With DDP: join the process group, move model and teacher to the rank's device, shard the data.

    Returns the rank's info (``None`` without DDP) and the data this rank trains on.
    """
    if not use_ddp:
        return None, train_data
    info = dist_utils.init_distributed()
    model.to(info.device)
    if teacher is not None:
        teacher.to(info.device)
    return info, dist_utils.shard(train_data, info.rank, info.world_size, seed=seed or 0)


def _train(
    model: nn.Module,
    cb: PruneCallbacks,
    cfg: TrainConfig,
    batches: Iterator,
    info: dist_utils.DistInfo | None,
    total: int | None,
    per_epoch: int | None,
    progress: bool | None,
    console: Console | None,
) -> list[float]:
    """Seed the run (``seed + rank``, the caller's RNG kept), build optimizer and schedule, run :func:`_loop`.

    ``model`` is trained through its DDP wrapper when ``info`` is given; the bar (on stderr, when
    :func:`prunekit.progress.enabled`) and the epoch lines (to ``console``) come from rank 0 only.
    """
    device = _device_of(model)
    rank = info.rank if info is not None else 0
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        if cfg.seed is not None:
            torch.manual_seed(cfg.seed + rank)
        net = dist_utils.wrap(model, info) if info is not None else model
        opt = _make_optimizer(model, cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.momentum)
        sched = cosine_schedule(opt, total) if cfg.schedule == "cosine" else None
        with progress_bar(
            "finetune", total, progress=enabled(progress) and rank == 0,
            fields="loss {task.fields[loss]:.4f}  metric {task.fields[metric]}", loss=float("nan"),
            metric="-",
        ) as bar:  # fmt: skip
            log = _epoch_log(bar, console if rank == 0 else None)
            return _loop(
                net, model, cb, opt, sched, batches, cfg.steps, cfg.max_grad_norm, device, bar, log, per_epoch
            )


def _run(
    model: nn.Module,
    train_data: Iterable,
    cfg: TrainConfig,
    kd: DistillConfig | None,
    distributed: bool | None,
    progress: bool,
    console: Console | None,
) -> FinetuneResult:
    """The fine-tuning :func:`finetune` describes, with its options resolved."""
    kd_args = _kd_args(kd)
    teacher = kd_args["teacher"]
    check_callback_args(
        model, **kd_args, loss_fn=cfg.loss_fn, eval_fn=cfg.eval_fn, eval_every=cfg.eval_every,
        patience=cfg.patience, min_delta=cfg.min_delta,
    )  # fmt: skip
    use_ddp = _check_finetune_args(model, train_data, cfg, teacher, distributed)
    start = time.perf_counter()
    info, train_data = _join(model, teacher, train_data, use_ddp, cfg.seed)
    device = _device_of(model)
    per_epoch = _num_batches(train_data)
    total = cfg.steps if cfg.steps is not None else (None if per_epoch is None else per_epoch * cfg.epochs)
    batches = _batches(train_data, cfg.epochs)
    first = next(batches, None)
    if first is None:
        raise ConfigError("train_data gave no batch: give it at least one (inputs, targets) batch")

    cb = PruneCallbacks(
        model, **kd_args, loss_fn=cfg.loss_fn, keep_zeros=cfg.keep_zeros, eval_fn=cfg.eval_fn,
        eval_every=cfg.eval_every or per_epoch or total, patience=cfg.patience, min_delta=cfg.min_delta,
        keep_best=cfg.restore_best,
    )  # fmt: skip
    flags = [(module, module.training) for module in model.modules()]
    try:
        cb.check_batch(*_split(first, device))  # raises before the model changes
        every = itertools.chain([first], batches)
        losses = _train(model, cb, cfg, every, info, total, per_epoch, progress, console)
        if cfg.eval_fn is not None and cb.history[-1].step != cb.step:
            cb.evaluate()
        restored = cfg.restore_best and cb.restore_best()
        if info is not None:
            dist_utils.broadcast_state(model)  # buffers (BatchNorm statistics) are per rank until here
            dist_utils.barrier()  # the group stays up: a new group later under torchrun could hang
    finally:
        cb.close()
        for module, flag in flags:
            module.training = flag

    return FinetuneResult(
        steps=cb.step,
        steps_per_epoch=per_epoch,
        history=list(cb.history),
        best_metric=cb.best_metric,
        best_step=cb.best_step,
        final_metric=(cb.best_metric if restored else cb.history[-1].metric) if cb.history else None,
        restored_best=restored,
        stopped_early=cb.should_stop,
        losses=losses,
        wall_seconds=time.perf_counter() - start,
        world_size=info.world_size if info is not None else 1,
        distilled=teacher is not None,
    )


def _kd_args(kd: DistillConfig | None) -> dict[str, Any]:
    """``kd`` as the distillation keywords of :class:`PruneCallbacks` (none: no teacher)."""
    if kd is None:
        return {"teacher": None, "kd_alpha": None, "kd_temperature": None, "feature_kd": None,
                "feature_kd_weight": 1.0}  # fmt: skip
    return {
        "teacher": kd.teacher,
        "kd_alpha": kd.alpha,
        "kd_temperature": kd.temperature,
        "feature_kd": None if kd.feature_kd is None else dict(kd.feature_kd),
        "feature_kd_weight": kd.feature_kd_weight,
    }


def _loop(
    net: nn.Module,
    model: nn.Module,
    cb: PruneCallbacks,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler | None,
    batches: Iterator,
    steps: int | None,
    max_grad_norm: float | None,
    device: torch.device,
    bar: Bar,
    log: Callable[[str], None],
    per_epoch: int | None,
) -> list[float]:
    """The training steps: ``net`` (the model, or its DDP wrapper) on each batch until ``steps`` or a stop."""
    losses: list[float] = []
    if cb.eval_fn is not None:
        cb.evaluate()  # step 0
    model.train()
    for batch in batches:
        inputs, targets = _split(batch, device)
        loss = cb.loss(call_model(net, inputs), targets, inputs)
        optimizer_step(model, loss, opt, sched, max_grad_norm=max_grad_norm)
        stop = cb.after_step()
        losses.append(cb.last["total"])
        metric = "-"
        if cb.history:  # step 0 is the evaluation before any training
            metric = f"{cb.history[-1].metric:.4f} (best {cb.best_metric:.4f} at step {cb.best_step})"
        bar.advance(loss=losses[-1], metric=metric)
        if per_epoch and cb.step % per_epoch == 0:
            mean = sum(losses[-per_epoch:]) / len(losses[-per_epoch:])
            log(f"epoch {cb.step // per_epoch}: loss {mean:.4f}, metric {metric}")
        if stop or (steps is not None and cb.step >= steps):
            break
    return losses


def _epoch_log(bar: Bar, console: Console | None) -> Callable[[str], None]:
    """Where epoch lines go: ``console`` when given (printed above a live bar), else the bar (off: none)."""
    if console is None:
        return bar.log
    return lambda text: console.print(text, highlight=False, markup=False)


def _batches(data: Iterable, epochs: int | None) -> Iterator:
    """Batches for ``epochs`` passes, or forever (``epochs=None``: the caller stops at ``steps``)."""
    epoch = 0
    while epochs is None or epoch < epochs:
        dist_utils.set_epoch(data, epoch)
        count = 0
        for batch in data:
            count += 1
            yield batch
        if count == 0:
            return
        epoch += 1


def _split(batch: Any, device: torch.device) -> tuple[Any, Any]:
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        raise ConfigError(f"every batch must be an (inputs, targets) pair, got {type(batch).__name__}")
    return to_device(batch[0], device), to_device(batch[1], device)


def _check_finetune_args(
    model: nn.Module,
    train_data: Iterable,
    cfg: TrainConfig,
    teacher: nn.Module | None,
    distributed: object,
) -> bool:
    """The checks of :func:`finetune` needing the model or data but no forward; returns whether to use DDP."""
    if isinstance(train_data, Iterator):
        raise ConfigError("train_data is a one-shot iterator: pass a DataLoader or a list of batches")
    _check_args(model, train_data, 1, cfg.lr, cfg.weight_decay, cfg.optimizer, cfg.schedule)
    if cfg.schedule == "cosine" and cfg.steps is None and _num_batches(train_data) is None:
        raise ConfigError('schedule="cosine" with epochs needs data with len(): pass steps= instead')
    if distributed not in (None, True, False):
        raise ConfigError(f"distributed must be None (auto), True or False, got {distributed!r}")
    use_ddp = dist_utils.launched_with_torchrun() or dist_utils.is_distributed()
    if distributed is True and not use_ddp:
        raise ConfigError("distributed=True but this process was not launched by torchrun with >1 rank")
    use_ddp = use_ddp and distributed is not False
    if teacher is not None and not use_ddp and _device_of(teacher) != _device_of(model):
        raise ConfigError(
            f"teacher is on {_device_of(teacher)}, the model on {_device_of(model)}: move them to one device"
        )
    return use_ddp
