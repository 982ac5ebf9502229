"""Approximate cuts of a normalised residual stream (opt-in: ``trace(..., stream=True)``).

By default a ``layer_norm`` / ``rms_norm`` over a dim carrying channel slots pins them: the norm's mean and
variance are taken over the width, so removing a channel changes every other channel's output and no cut
is exact. In *stream* mode such a norm is cut instead: its weight and bias entries are linked to the
normalised channels (they go with them), its ``normalized_shape`` follows, and the statistics are then
taken over the kept channels only (the "renormalised" approximation of Minitron). The slots are recorded
as approximate with :data:`REASON`, so the groups holding them, and every plan removing one of their units,
say so.

A *norm site* is a call whose result normalises the LAST dim of its input over that dim alone:
``layer_norm`` / ``rms_norm`` with a one-dim ``normalized_shape``, or ``mean(-1, keepdim=True)`` (the
statistics of a hand-written RMSNorm: Llama, T5). Every site is recorded in call order
(``Tracer.stream_sites``: the slots of its last dim, ``-1`` where none), so calibration forwards can
measure each stream channel where the norms see it (:mod:`prunekit.structured.stream`).

A view that sizes a stream dim with a Python int (``x.reshape(n, self.hidden_dim, -1)`` in torchvision's
ViT) must follow the cut: the int is the running module's width attribute (by exact name,
:data:`WIDTH_ATTRS`, and value), recorded as a plan attribute; an int read from a shape inside that module
follows by itself; any other int pins the dim (:func:`sized_view`). A module that reads a width as an int
and then splits channels with sizes given as plain ints (torchvision's Swin:
``reshape(B, N, 3, num_heads, C // num_heads)``) may derive them from that width: the widths it read stay
(:func:`derived_split`).

>>> import torch
>>> net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 2))
>>> from prunekit.graph.groups import build_groups
>>> [g.approximate for g in build_groups(net, torch.zeros(1, 3), stream=True).prunable_groups]
[['LayerNorm statistics over a cut width']]
>>> [g.width for g in build_groups(net, torch.zeros(1, 3)).prunable_groups]  # default: pinned
[]
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from prunekit.graph.labels import align, reshape_blocks
from prunekit.graph.trace import AttrRecord, Tracer

REASON = "LayerNorm statistics over a cut width"
#: attributes holding the width of the module that sizes a view with them: the residual width, or the
#: output width of transformers' Conv1D (GPT-2: ``x.view(*x.shape[:-1], self.nf)``)
WIDTH_ATTRS = ("hidden_dim", "hidden_size", "embed_dim", "d_model", "n_embd", "dim", "num_features", "nf")

#: the functions of a norm site whose output is the normalised stream (not the ``mean`` statistics)
NORM_FUNCS = {F.layer_norm, torch.layer_norm, F.rms_norm, getattr(torch, "rms_norm", F.rms_norm)}
_MEANS = {torch.mean, torch.Tensor.mean}


def site_input(func: Any, args: tuple, kwargs: dict) -> torch.Tensor | None:
    """The tensor whose last dim the call normalises (see the module docstring), else None."""
    x = args[0] if args else kwargs.get("input")
    if not isinstance(x, torch.Tensor) or x.dim() == 0:
        return None
    if func in NORM_FUNCS:
        shape = args[1] if len(args) > 1 else kwargs.get("normalized_shape")
        k = len(shape) if isinstance(shape, (tuple, list, torch.Size)) else 1
        return x if k == 1 else None
    if func in _MEANS:
        dim = args[1] if len(args) > 1 else kwargs.get("dim")
        keepdim = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
        if isinstance(dim, (tuple, list)) and len(dim) == 1:
            dim = dim[0]
        return x if keepdim and isinstance(dim, int) and dim % x.dim() == x.dim() - 1 else None
    return None


def cut_site(tr: Tracer, x: torch.Tensor, weights: list[torch.Tensor]) -> bool:
    """Record an approximate norm site on ``x``; False (nothing recorded) when slots vary on another dim.

    ``weights``: the norm's affine tensors (linked to the channels). The running ``nn.LayerNorm`` /
    ``nn.RMSNorm`` gets its ``normalized_shape`` recorded as a plan attribute.
    """
    L = align(tr.label(x), x.dim())
    if any(L.shape[d] > 1 for d in range(x.dim() - 1)):
        return False
    channels = L.reshape(-1)
    tr.stream_sites.append(channels)
    if channels.numel() == 1:  # no slot varies along the normalised dim: nothing to cut here
        return True
    for w in weights:
        tr.link(channels, tr.vec(w, 0))
    tr.approximate(channels, REASON)
    mname = tr.module_stack[-1]
    module = tr.model.get_submodule(mname) if mname else tr.model
    if isinstance(module, (nn.LayerNorm, nn.RMSNorm)) and tuple(module.normalized_shape) == (x.shape[-1],):
        tr.attrs.append(AttrRecord(mname, "normalized_shape", channels, 1, x.shape[-1], shape=True))
    return True


def sized_view(tr: Tracer, L: torch.Tensor, s_in: list[int], s_out: list[int], req: list) -> None:
    """Stream mode, a view/reshape: record or pin every slot-carrying dim it sizes with a Python int.

    Only dims passed through unchanged (one input dim onto one output dim) are looked at: splits and head
    merges have their own rules.
    """
    mname = tr.module_stack[-1]
    module = tr.model.get_submodule(mname) if mname else tr.model
    for bi, bo in reshape_blocks(s_in, s_out) or []:
        d = bo[0]
        if len(bi) != 1 or len(bo) != 1 or L.shape[d] == 1 or req[d] in (None, -1):
            continue
        if (mname, req[d]) in tr.shape_reads:  # read from a shape in this module: it follows the cut
            continue
        slots = L.reshape(-1) if L.numel() == L.shape[d] else None
        names = [n for n in WIDTH_ATTRS if getattr(module, n, None) == req[d] and type(req[d]) is int]
        if slots is not None and names:
            for name in names:
                tr.attr(mname, module, name, slots)
        else:
            tr.pin(L, f"a view sizes a stream dim with the Python int {req[d]}, which would not follow a cut")


def derived_split(tr: Tracer) -> None:
    """Stream mode, a view splitting channels with no size the code lets adapt (no -1, no head attribute):
    pin every dim whose size the running module read as a Python int (the split sizes may derive from it)."""
    mname = tr.module_stack[-1]
    why = "its width was read as a Python int in a module that splits channels by plain ints"
    for (module, _value), reads in tr.shape_reads.items():
        if module == mname:
            for slots in reads:
                tr.pin(slots, why)
