"""Layer pruning: remove whole residual blocks / transformer layers, replacing each by an identity.

A block is a *candidate* when, in one traced forward, (1) it is a child of an ``nn.Sequential`` or
``nn.ModuleList`` (a stage), (2) it runs once, (3) its output is one tensor with the shape of its first
input tensor, and (4) inside its forward an addition takes that very input tensor as an operand: the block
is ``y = g(x + f(x))`` (ResNet BasicBlock/Bottleneck without downsample, ViT encoder blocks, BERT layers,
YOLO C2f bottlenecks with ``shortcut=True``). Candidates nested inside another candidate are dropped.
Removing a candidate replaces it with :class:`SkipBlock` (returns its first input), or, for the layers of a
Hugging Face model's layer stack, deletes it and re-indexes the rest with the config following
(:mod:`prunekit.structured.layer_stack`), so every output keeps its shape; when ``f(x) = 0`` (and ``g`` is
the identity on ``x``, e.g. ReLU after ReLU) the removal is exact.

Scores (lower = removed first): ``1 - cos(x, block(x))`` per sample, averaged over calibration batches
(ShortGPT's "block influence"), or, with ``eval_fn``, the metric drop when the block alone is skipped.
The result lists the removed blocks by name; :func:`remove_blocks` replays them on a fresh model.

>>> import torch
>>> class Res(torch.nn.Module):
...     def __init__(self): super().__init__(); self.f = torch.nn.Linear(4, 4)
...     def forward(self, x): return x + self.f(x)
>>> net = torch.nn.Sequential(torch.nn.Linear(4, 4), Res(), Res(), torch.nn.Linear(4, 2))
>>> res = prune_layers(net, torch.randn(2, 4), n=1)
>>> res.candidates, len(res.removed), type(net[int(res.removed[0])]).__name__
(['1', '2'], 1, 'SkipBlock')
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from prunekit._atomic import write_text
from prunekit._inputs import ExampleInputs, call_model, eval_mode
from prunekit._keywords import keyword_only
from prunekit.errors import ApplyError, ConfigError
from prunekit.measure.macs import count_macs
from prunekit.measure.params import count_params
from prunekit.measure.profile import evaluate
from prunekit.structured.layer_stack import delete_layers, restore_layers, stack_of
from prunekit.structured.oracle import run_outputs

_ADDS = {
    torch.add,
    torch.Tensor.add,
    torch.Tensor.add_,
    torch.Tensor.__add__,
    torch.Tensor.__radd__,
    torch.Tensor.__iadd__,
}


class SkipBlock(nn.Module):
    """Stands in for a removed block: returns its first input unchanged."""

    def __init__(self, replaced: str = "") -> None:
        super().__init__()
        self.replaced = replaced

    def forward(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        return x

    def extra_repr(self) -> str:
        return f"replaced={self.replaced}"


def _first_tensor(args: tuple, kwargs: dict) -> torch.Tensor | None:
    for v in list(args) + list(kwargs.values()):
        if isinstance(v, torch.Tensor):
            return v
    return None


class _ResidualSpy(TorchFunctionMode):
    """Marks every open block whose input tensor is an operand of an addition."""

    def __init__(self, open_blocks: list[tuple[str, torch.Tensor]], residual: set[str]) -> None:
        super().__init__()
        self.open_blocks = open_blocks
        self.residual = residual

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _ADDS:
            operands = list(args) + list(kwargs.values())
            for name, x in self.open_blocks:
                if any(op is x for op in operands):
                    self.residual.add(name)
        return func(*args, **kwargs)


def find_blocks(model: nn.Module, example_inputs: ExampleInputs) -> list[str]:
    """Names of the residual blocks that :func:`prune_layers` may remove (module docstring), in order.

    >>> import torchvision
    >>> find_blocks(torchvision.models.resnet18(), torch.zeros(1, 3, 32, 32))[:3]
    ['layer1.0', 'layer1.1', 'layer2.1']
    """
    stage_children = {
        f"{pname}.{cname}" if pname else cname: child
        for pname, parent in model.named_modules()
        if isinstance(parent, (nn.Sequential, nn.ModuleList))
        for cname, child in parent.named_children()
    }
    calls: dict[str, int] = {}
    shapes_ok: dict[str, bool] = {}
    open_blocks: list[tuple[str, torch.Tensor]] = []
    residual: set[str] = set()
    handles = []

    def pre(name: str) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            calls[name] = calls.get(name, 0) + 1
            x = _first_tensor(args, kwargs)
            open_blocks.append((name, x))

        return hook

    def post(name: str) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
            _, x = open_blocks.pop()
            shapes_ok[name] = isinstance(out, torch.Tensor) and x is not None and out.shape == x.shape

        return hook

    for name, child in stage_children.items():
        handles.append(child.register_forward_pre_hook(pre(name), with_kwargs=True))
        handles.append(child.register_forward_hook(post(name), with_kwargs=True))
    try:
        with eval_mode(model), torch.no_grad(), _ResidualSpy(open_blocks, residual):
            call_model(model, example_inputs)
    finally:
        for h in handles:
            h.remove()
    found = [n for n in stage_children if n in residual and calls.get(n) == 1 and shapes_ok.get(n)]
    return [n for n in found if not any(n.startswith(o + ".") for o in found if o != n)]


def _swap(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name)
    old = parent.get_submodule(child)
    setattr(parent, child, new)  # Sequential/ModuleList children included: they live in parent._modules
    return old


def skip_blocks(model: nn.Module, blocks: Mapping[str, str]) -> Callable[[], None]:
    """Remove ``blocks`` ({name: class name}) in place, unverified; return a function that undoes it.

    Layers of a Hugging Face layer stack are deleted and the rest re-indexed, with the config following
    (:mod:`prunekit.structured.layer_stack`); any other block is replaced by :class:`SkipBlock`.
    """
    swapped: list[tuple[str, nn.Module]] = []
    stacks: dict[str, list[int]] = {}
    undo_stack: list[dict[str, Any]] = []

    def undo() -> None:
        for state in reversed(undo_stack):
            restore_layers(model, state)
        for name, old in reversed(swapped):
            _swap(model, name, old)

    try:
        for name, kind in blocks.items():
            stack = stack_of(model, name)
            if stack is not None:
                stacks.setdefault(stack, []).append(int(name.rpartition(".")[2]))
            else:
                swapped.append((name, _swap(model, name, SkipBlock(kind))))
        for stack, positions in stacks.items():
            undo_stack.append(delete_layers(model, stack, positions))
    except BaseException:
        undo()
        raise
    return undo


def remove_blocks(model: nn.Module, names: Iterable[str], example_inputs: ExampleInputs) -> nn.Module:
    """Remove the blocks ``names`` in place (transactional: verified by a forward that must give the same
    output shapes; on failure everything is put back and ApplyError is raised).

    A block is replaced by :class:`SkipBlock`, except the layers of a Hugging Face model's layer stack, which
    are deleted: the remaining layers are re-indexed (``model.layers.0 ...``) and ``config.num_hidden_layers``
    says the real count, so ``save_pretrained`` writes what stock transformers loads.

    >>> import torchvision
    >>> m = torchvision.models.resnet18()
    >>> _ = remove_blocks(m, ["layer3.1"], torch.zeros(1, 3, 32, 32))
    >>> type(m.layer3[1]).__name__
    'SkipBlock'
    """
    names = list(names)
    modules = dict(model.named_modules())
    for n in names:
        if n not in modules or not n:
            raise ConfigError(f"no block named {n!r} in the model")
    shapes = [o.shape for o in run_outputs(model, example_inputs)]
    undo: Callable[[], None] | None = None
    try:
        undo = skip_blocks(model, {n: type(modules[n]).__name__ for n in names})
        new = [o.shape for o in run_outputs(model, example_inputs)]
        if new != shapes:
            raise ApplyError(f"output shapes changed from {shapes} to {new}")
    except BaseException as exc:  # interrupts too: the model is never left half-changed
        if undo is not None:
            undo()
        if isinstance(exc, ApplyError) or not isinstance(exc, Exception):
            raise
        raise ApplyError(f"removing blocks {names} broke the forward: {type(exc).__name__}: {exc}") from exc
    return model


def block_scores(model: nn.Module, names: list[str], data: Iterable[ExampleInputs]) -> dict[str, float]:
    """``1 - cos(x, block(x))`` per block, per sample (flattened), averaged over all samples of ``data``.

    >>> net = torch.nn.Sequential(torch.nn.Identity())
    >>> block_scores(net, ["0"], [torch.ones(2, 3)])
    {'0': 0.0}
    """
    sums = dict.fromkeys(names, 0.0)
    count = dict.fromkeys(names, 0)
    handles = []

    def hook(name: str) -> Callable:
        def fn(module: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
            x = _first_tensor(args, kwargs)
            a, b = x.detach().double().flatten(1), out.detach().double().flatten(1)
            cos = torch.nn.functional.cosine_similarity(a, b, dim=1, eps=1e-12)
            sums[name] += float((1.0 - cos).clamp_min(0.0).sum())
            count[name] += a.shape[0]

        return fn

    for n in names:
        handles.append(model.get_submodule(n).register_forward_hook(hook(n), with_kwargs=True))
    try:
        with eval_mode(model), torch.no_grad():
            for batch in data:
                call_model(model, batch)
    finally:
        for h in handles:
            h.remove()
    return {n: sums[n] / max(1, count[n]) for n in names}


@dataclass
class LayerPruneResult:
    """Which blocks were removed (names, in model order), every candidate's score, sizes before/after."""

    removed: list[str]
    candidates: list[str]
    scores: dict[str, float]
    score: str
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    kinds: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "removed": list(self.removed),
            "candidates": list(self.candidates),
            "scores": dict(self.scores),
            "score": self.score,
            "kinds": dict(self.kinds),
            "params_before": self.params_before,
            "params_after": self.params_after,
            "macs_before": self.macs_before,
            "macs_after": self.macs_after,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write :meth:`to_dict` as JSON (atomically); :func:`load_removed` reads the names back."""
        return write_text(path, json.dumps(self.to_dict(), indent=1))


def load_removed(path: str | os.PathLike) -> list[str]:
    """The removed block names saved by :meth:`LayerPruneResult.save` (for :func:`remove_blocks`)."""
    try:
        removed = json.loads(Path(path).read_text())["removed"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ConfigError(f"cannot read removed blocks from {path}: {exc}") from exc
    if not isinstance(removed, list) or not all(isinstance(n, str) for n in removed):
        raise ConfigError(f"{path}: 'removed' must be a list of block names")
    return removed


@keyword_only("n", "ratio", "data", "eval_fn")
def prune_layers(
    model: nn.Module,
    example_inputs: ExampleInputs,
    *,
    n: int | None = None,
    ratio: float | None = None,
    data: Iterable[ExampleInputs] | None = None,
    eval_fn: Callable[[nn.Module], float] | None = None,
) -> LayerPruneResult:
    """Remove the ``n`` (or ``round(ratio * candidates)``) least important residual blocks, in place.

    ``data``: calibration batches (each like ``example_inputs``; default ``[example_inputs]``) for the
    cosine score. ``eval_fn(model) -> float`` (higher is better) scores each block by the metric drop
    when it alone is skipped instead.

    >>> import torchvision
    >>> m = torchvision.models.resnet18()
    >>> prune_layers(m, torch.zeros(1, 3, 32, 32), n=2).macs_after < 556_000_000
    True
    """
    if (n is None) == (ratio is None):
        raise ConfigError("give exactly one of n (blocks to remove) or ratio (fraction of candidate blocks)")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
        raise ConfigError(f"n must be a non-negative integer, got {n!r}")
    if ratio is not None and (not isinstance(ratio, (int, float)) or not 0.0 <= float(ratio) < 1.0):
        raise ConfigError(f"ratio must be in [0, 1), got {ratio!r}")
    candidates = find_blocks(model, example_inputs)
    k = n if n is not None else round(float(ratio) * len(candidates))
    if k > len(candidates) or (k == len(candidates) and k > 0):
        raise ConfigError(
            f"cannot remove {k} blocks: the model has {len(candidates)} removable residual blocks "
            "and at least one must stay"
        )
    kinds = {c: type(model.get_submodule(c)).__name__ for c in candidates}
    if eval_fn is not None:
        base = evaluate(model, eval_fn)
        scores = {}
        for c in candidates:
            old = _swap(model, c, SkipBlock(kinds[c]))
            try:
                scores[c] = base - evaluate(model, eval_fn)
            finally:
                _swap(model, c, old)
        how = "eval_drop"
    else:
        batches = list(data) if data is not None else [example_inputs]
        scores = block_scores(model, candidates, batches)
        how = "cosine"
    order = sorted(candidates, key=lambda c: (scores[c], candidates.index(c)))
    removed = sorted(order[:k], key=candidates.index)
    params_before, macs_before = count_params(model).total, count_macs(model, example_inputs)
    remove_blocks(model, removed, example_inputs)
    return LayerPruneResult(
        removed,
        candidates,
        scores,
        how,
        int(params_before),
        int(count_params(model).total),
        int(macs_before),
        int(count_macs(model, example_inputs)),
        kinds,
    )
