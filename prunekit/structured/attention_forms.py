"""Attention modules whose code ties their attention width to their residual width, in a prunable form.

Some attention modules compute the width of one tensor from another's: torchvision's Swin
(``ShiftedWindowAttention``, ``ShiftedWindowAttentionV2``) reads the stream width ``C`` from its input and
splits the q/k/v projection as ``(3, num_heads, C // num_heads)``; MaxViT's
``RelativePositionalMultiHeadAttention`` merges its heads back into the input's width ``D``. Once the
residual stream is cut, or heads are removed, the attention width ``heads * head_dim`` and the stream width
differ and that code fails, so the structural engine pins both. The *prunable form* of such a module is a
subclass with the same parameters, buffers, ``state_dict`` keys and outputs whose forward sizes each dim from
the tensor it belongs to and splits heads by a head-width attribute (:mod:`prunekit.graph.heads` then finds
the split), so the stream and whole heads can be cut apart. Each form is one :func:`register_form` entry,
keyed by the module's exact class (module path and name; looked up only once that module was imported).

:func:`prunekit.graph.trace.trace` traces every such module in its prunable form (:func:`prunable_forms`,
undone after the trace); :func:`prunekit.apply` turns every one a plan touches into it before cutting, so a
saved plan replays the same way on a freshly built model.

>>> import torch
>>> from torchvision.models.swin_transformer import ShiftedWindowAttention
>>> attn = ShiftedWindowAttention(8, [4, 4], [2, 2], num_heads=2).eval()
>>> x = torch.randn(1, 6, 6, 8)
>>> ref = attn(x)
>>> _ = make_prunable(attn)
>>> type(attn).__name__, attn.head_dim
('PrunableShiftedWindowAttention', 4)
>>> bool(torch.allclose(attn(x), ref, atol=1e-6))
True
"""

from __future__ import annotations

import contextlib
import importlib
import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Form", "is_prunable_form", "make_prunable", "prunable_forms", "register_form", "swappable"]


@dataclass(frozen=True)
class Form:
    """A prunable form: its ``forward(module, x)`` and ``prepare(module)``, the attributes to set on the
    module from its current widths (removed again by the undo)."""

    forward: Callable[[nn.Module, torch.Tensor], torch.Tensor]
    prepare: Callable[[nn.Module], dict[str, Any]]


_REGISTRY: dict[tuple[str, str], Form] = {}
_CLASSES: dict[type, type] = {}  # original class -> its prunable subclass


def register_form(
    module_path: str,
    class_name: str,
    forward: Callable[[nn.Module, torch.Tensor], torch.Tensor],
    prepare: Callable[[nn.Module], dict[str, Any]] | None = None,
) -> None:
    """Give the class ``class_name`` of ``module_path`` a prunable form (module docstring)."""
    _REGISTRY[(module_path, class_name)] = Form(forward, prepare or (lambda m: {}))


def _form(module: nn.Module) -> Form | None:
    cls = type(module)
    form = _REGISTRY.get((cls.__module__, cls.__qualname__))
    imported = sys.modules.get(cls.__module__)
    return form if form is not None and getattr(imported, cls.__qualname__, None) is cls else None


def swappable(module: nn.Module) -> bool:
    """Is ``module`` of a class with a registered prunable form (and not in that form yet)?"""
    return _form(module) is not None


def _prunable_class(cls: type, form: Form) -> type:
    """The prunable subclass of ``cls``: an attribute of this module by its name, so pickle finds it."""
    if cls not in _CLASSES:
        name = f"Prunable{cls.__name__}"
        sub = type(name, (cls,), {"forward": form.forward, "__module__": __name__})
        _CLASSES[cls] = globals()[name] = sub
    return _CLASSES[cls]


def __getattr__(name: str) -> type:
    """A prunable class by its name (``PrunableShiftedWindowAttention``), built on first use (unpickling)."""
    for (path, class_name), form in _REGISTRY.items():
        if name == f"Prunable{class_name}":
            return _prunable_class(getattr(importlib.import_module(path), class_name), form)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def is_prunable_form(module: nn.Module) -> bool:
    return type(module) in _CLASSES.values()


def make_prunable(module: nn.Module) -> Callable[[], None]:
    """Turn ``module`` into its prunable form in place (its class becomes a subclass whose forward is the
    form's; the form's attributes are set). Returns the undo. A module with no form is left alone (a no-op
    undo)."""
    form = _form(module)
    if form is None:
        return lambda: None
    cls = type(module)
    attrs = form.prepare(module)
    module.__class__ = _prunable_class(cls, form)
    for name, value in attrs.items():
        setattr(module, name, value)

    def undo() -> None:
        module.__class__ = cls
        for name in attrs:
            delattr(module, name)

    return undo


@contextlib.contextmanager
def prunable_forms(model: nn.Module) -> Iterator[None]:
    """Every module of ``model`` with a registered form in that form for the ``with`` block (a trace), then
    back to its own class."""
    undos = [make_prunable(m) for m in model.modules() if swappable(m)]
    try:
        yield
    finally:
        for undo in reversed(undos):
            undo()


# torchvision's Swin: ShiftedWindowAttention and ShiftedWindowAttentionV2


def _region_mask(
    pad_h: int, pad_w: int, window: list[int], shift: list[int], like: torch.Tensor
) -> torch.Tensor:
    """``(windows, N, N)``: 0 where two positions of a window came from the same region before the cyclic
    shift, -100 where they did not (the shifted-window mask of the Swin paper)."""
    region = like.new_zeros((pad_h, pad_w))
    cuts_h = (0, pad_h - window[0], pad_h - shift[0], pad_h)
    cuts_w = (0, pad_w - window[1], pad_w - shift[1], pad_w)
    for i in range(3):
        for j in range(3):
            region[cuts_h[i] : cuts_h[i + 1], cuts_w[j] : cuts_w[j + 1]] = 3 * i + j
    region = region.view(pad_h // window[0], window[0], pad_w // window[1], window[1])
    region = region.permute(0, 2, 1, 3).reshape(-1, window[0] * window[1])
    same = region.unsqueeze(1) == region.unsqueeze(2)
    return torch.zeros_like(same, dtype=like.dtype).masked_fill(~same, -100.0)


def window_attention(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Shifted-window self-attention of ``module`` (a Swin attention in prunable form) on ``x`` of shape
    ``(B, H, W, C)``: pad to whole windows, roll by the shift, attend within each window with
    ``module.num_heads`` heads of ``module.head_dim`` (scaled dot product with the relative position bias,
    or V2's cosine attention with its learned logit scale), then undo the roll and the padding."""
    window, heads = list(module.window_size), module.num_heads
    b, h, w, _ = x.shape
    x = F.pad(x, (0, 0, 0, -w % window[1], 0, -h % window[0]))  # to whole windows
    _, pad_h, pad_w, _ = x.shape
    # a window as large as the map sees all of it: no shift
    shift = [0 if window[d] >= size else module.shift_size[d] for d, size in enumerate((pad_h, pad_w))]
    if sum(shift) > 0:
        x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    rows, cols = pad_h // window[0], pad_w // window[1]
    x = x.view(b, rows, window[0], cols, window[1], -1).permute(0, 1, 3, 2, 4, 5)
    x = x.reshape(b * rows * cols, window[0] * window[1], -1)
    n = x.size(1)

    logit_scale = getattr(module, "logit_scale", None)
    q, k, v = F.linear(x, module.qkv.weight).chunk(3, dim=-1)
    if module.qkv.bias is not None:
        bq, bk, bv = module.qkv.bias.chunk(3)
        q, v = q + bq, v + bv
        k = k if logit_scale is not None else k + bk  # V2 ignores the key bias
    q, k, v = (t.reshape(x.size(0), n, heads, module.head_dim).transpose(1, 2) for t in (q, k, v))
    if logit_scale is not None:
        attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        attn = attn * torch.clamp(logit_scale, max=math.log(100.0)).exp()
    else:
        attn = (q * module.scale) @ k.transpose(-2, -1)
    attn = attn + module.get_relative_position_bias()
    if sum(shift) > 0:
        mask = _region_mask(pad_h, pad_w, window, shift, x)
        attn = (attn.view(b, rows * cols, -1, n, n) + mask.unsqueeze(1).unsqueeze(0)).flatten(0, 1)
    attn = F.dropout(F.softmax(attn, dim=-1), p=module.attention_dropout, training=module.training)
    x = (attn @ v).transpose(1, 2).reshape(x.size(0), n, -1)
    x = F.linear(x, module.proj.weight, module.proj.bias)
    x = F.dropout(x, p=module.dropout, training=module.training)

    x = x.view(b, rows, cols, window[0], window[1], -1).permute(0, 1, 3, 2, 4, 5).reshape(b, pad_h, pad_w, -1)
    if sum(shift) > 0:
        x = torch.roll(x, shifts=(shift[0], shift[1]), dims=(1, 2))
    return x[:, :h, :w, :].contiguous()


def _swin_widths(module: nn.Module) -> dict[str, Any]:
    """The head width the module computes with now, and its logit scale (which stays if heads narrow)."""
    head_dim = module.qkv.out_features // 3 // module.num_heads
    return {"head_dim": head_dim, "scale": head_dim**-0.5}


for _name in ("ShiftedWindowAttention", "ShiftedWindowAttentionV2"):
    register_form("torchvision.models.swin_transformer", _name, window_attention, _swin_widths)


# torchvision's MaxViT: RelativePositionalMultiHeadAttention


def grid_attention(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """MaxViT's relative-position attention on ``x`` of shape ``(B, G, P, D)`` (G windows or grid cells of P
    positions each), with ``module.n_heads`` heads of ``module.head_dim``; the merged heads keep their own
    width, so ``module.merge`` maps them back to the stream whatever its width."""
    b, g, p, _ = x.shape
    q, k, v = (
        t.reshape(b, g, p, module.n_heads, module.head_dim).transpose(2, 3)
        for t in module.to_qkv(x).chunk(3, dim=-1)
    )
    logits = q @ (k * module.scale_factor).transpose(-2, -1) + module.get_relative_positional_bias()
    out = (logits.softmax(dim=-1) @ v).transpose(2, 3).reshape(b, g, p, -1)
    return module.merge(out)


register_form("torchvision.models.maxvit", "RelativePositionalMultiHeadAttention", grid_attention)
