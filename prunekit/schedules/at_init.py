"""Pruning at initialisation: SNIP, connection sensitivity (Lee, Ajanthan & Torr, ICLR 2019).

Put a multiplicative gate ``c_j = 1`` on every weight; the sensitivity of the loss to removing connection
``j`` is ``|dL/dc_j| = |dL/dw_j * w_j|``. SNIP keeps the connections with the largest sensitivity, once,
before training, from one or a few batches: here the gradient ``g`` is averaged over the batches given, then
``|g * w|`` ranks the weights, globally by default (the paper's choice), with exact counts from
:func:`prunekit.sparse.masks_from_scores`.

The model runs in train mode (as during training) for the scores; its BatchNorm statistics, train/eval flags,
``.grad`` fields and the global RNG are left as they were. Only the masks change.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from prunekit._inputs import call_model, to_device
from prunekit.errors import ConfigError
from prunekit.schedules.masking import check_fraction
from prunekit.sparse import apply_masks, get_mask, masks_from_scores, select_layers
from prunekit.sparse.patterns import parse_pattern
from prunekit.sparse.unstructured import LayerSparsity, Selector, SparsifyResult, check_layers, check_scope

LossFn = Callable[[Any, Any], Tensor]
"""``loss_fn(model_output, targets) -> scalar tensor``; default cross-entropy."""


def snip_scores(
    model: nn.Module,
    batches: Iterable,
    *,
    loss_fn: LossFn = F.cross_entropy,
    include: Iterable[Selector] | Selector | None = None,
    exclude: Iterable[Selector] | Selector | None = None,
) -> dict[str, Tensor]:
    """SNIP connection sensitivity ``|mean_b dL_b/dw * w|`` per weight of the selected Linear/Conv layers.

    ``batches`` yields ``(inputs, targets)``; inputs may be a tensor, a tuple or a dict (see
    :func:`prunekit._inputs.call_model`). A masked weight scores 0.

    >>> layer = nn.Linear(2, 1, bias=False)
    >>> with torch.no_grad():
    ...     _ = layer.weight.copy_(torch.tensor([[2.0, -3.0]]))
    >>> batch = (torch.tensor([[1.0, 1.0]]), torch.tensor([[1.0]]))
    >>> snip_scores(layer, [batch], loss_fn=lambda out, y: (out * y).sum())[""].tolist()
    [[2.0, 3.0]]
    """
    if not callable(loss_fn):
        raise ConfigError(
            f"loss_fn must be a callable loss_fn(output, targets), got {type(loss_fn).__name__}"
        )
    names = select_layers(model, include, exclude)
    modules = dict(model.named_modules())
    layers = {name: modules[name] for name in names}
    check_layers(model, layers, parse_pattern("unstructured"))
    leaves = [_leaf_weight(module) for module in layers.values()]
    frozen = [name for name, leaf in zip(names, leaves, strict=True) if not leaf.requires_grad]
    if frozen:
        raise ConfigError(f"layer {frozen[0]!r} has requires_grad=False: SNIP needs its gradient; exclude it")
    device = leaves[0].device

    flags = {module: module.training for module in model.modules()}
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    sums = [torch.zeros_like(w) for w in leaves]
    count = 0
    try:
        with torch.random.fork_rng(devices=[]), torch.enable_grad():
            model.train()
            for batch in batches:
                if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
                    raise ConfigError("batches must yield (inputs, targets) pairs")
                inputs, targets = to_device(batch[0], device), to_device(batch[1], device)
                loss = loss_fn(call_model(model, inputs), targets)
                if not (isinstance(loss, Tensor) and loss.numel() == 1):
                    raise ConfigError("loss_fn must return a scalar tensor")
                grads = torch.autograd.grad(loss, leaves, allow_unused=True)
                for total, grad in zip(sums, grads, strict=True):
                    if grad is not None:
                        total.add_(grad)
                count += 1
    finally:
        with torch.no_grad():
            for live, saved in buffers:
                live.copy_(saved)
        for module, flag in flags.items():
            module.training = flag
    if count == 0:
        raise ConfigError("batches is empty: give SNIP at least one (inputs, targets) batch")
    with torch.no_grad():
        # d(loss)/d(original) = g * mask, so |grad * original| = |g * effective weight|: 0 where masked
        return {
            name: (total / count * leaf).abs() for name, total, leaf in zip(names, sums, leaves, strict=True)
        }


def snip(
    model: nn.Module,
    batches: Iterable,
    sparsity: float,
    *,
    loss_fn: LossFn = F.cross_entropy,
    scope: str = "global",
    include: Iterable[Selector] | Selector | None = None,
    exclude: Iterable[Selector] | Selector | None = None,
) -> SparsifyResult:
    """Mask ``sparsity`` of the selected weights by SNIP sensitivity (see :func:`snip_scores`); in place.

    Call it on the freshly initialised model, then train as usual: the masks keep pruned weights at zero.

    >>> model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    >>> batch = (torch.randn(32, 8), torch.randint(0, 3, (32,)))
    >>> snip(model, [batch], 0.75).sparsity
    0.75
    """
    target = check_fraction(sparsity, "sparsity")
    check_scope(scope, parse_pattern("unstructured"))
    scores = snip_scores(model, batches, loss_fn=loss_fn, include=include, exclude=exclude)
    masks = masks_from_scores(model, scores, target, scope=scope)
    apply_masks(model, masks)
    modules = dict(model.named_modules())
    layers = {}
    for name in scores:
        mask = get_mask(modules[name])
        layers[name] = LayerSparsity(numel=mask.numel(), pruned=int((mask == 0).sum()))
    return SparsifyResult("unstructured", scope, "snip", target, layers)


def _leaf_weight(module: nn.Module) -> Tensor:
    """The Parameter behind ``module.weight`` (the original when masked)."""
    if get_mask(module) is not None:
        return module.parametrizations.weight.original
    return module.weight
