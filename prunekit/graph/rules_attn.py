"""Attention heads: the ``nn.MultiheadAttention`` rule and head-count attributes of attention modules.

Heads are removed whole (q, k and v rows of a head and the matching ``out_proj`` columns together), so the
softmax scale ``1/sqrt(head_dim)`` and ``head_dim`` never change. The stream's channels (``in_proj`` columns,
``out_proj`` rows) are linked to the modules around it; ``embed_dim`` follows them
(:mod:`prunekit.graph.shape_attrs`).

Head-count attributes are recognised by exact name (``HEAD_ATTRS``, ``KV_HEAD_ATTRS``, ``INNER_ATTRS``) on the
module whose forward runs the attention, and only when their value equals the traced count, so code that
uses ``self.num_heads`` in a ``view`` keeps working after the cut. A Hugging Face ``config`` held by the root
model is updated the same way (``CONFIG_HEAD_FIELDS``, ``CONFIG_FFN_FIELDS``) when every layer agrees;
widths a
config cannot express (different per layer) are only in the plan (``Plan.meta["per_layer_attrs"]``).

>>> from prunekit.graph.rules import RULES
>>> torch.nn.functional.multi_head_attention_forward in RULES
True
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from prunekit.graph.labels import NO_SLOT, along, blank
from prunekit.graph.rules import arg, lab, pin_all, rule
from prunekit.graph.trace import Tracer
from prunekit.structured.mha import head_attention


def _attention(
    tr: Tracer,
    func,
    args: tuple,
    kwargs: dict,
    out,
    *,
    queries: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    w_in: torch.Tensor,
    b_in: torch.Tensor | None,
    w_out: torch.Tensor,
    b_out: torch.Tensor | None,
    num_heads: int,
    head_dim: int,
    need_weights: bool,
    attn_mask: torch.Tensor | None,
) -> None:
    """Shared rule: q/k/v rows of head h + out_proj columns of head h form one unit."""
    for x in queries:
        L = lab(tr, x)
        v, others = along(L, -1, x.shape[-1])
        if others:
            tr.pin(L, "input carries channel slots on several dims")
            v = torch.full((x.shape[-1],), NO_SLOT, dtype=torch.long)
        tr.link(v, tr.vec(w_in, 1))
    rows_in = tr.vec(w_in, 0).view(3, num_heads, head_dim)
    if b_in is not None:
        tr.link(rows_in.reshape(-1), tr.vec(b_in, 0))
    cols_out = tr.vec(w_out, 1).view(num_heads, head_dim)
    per_head = torch.cat([rows_in.permute(1, 0, 2).reshape(num_heads, -1), cols_out], 1)
    tr.unite(per_head, "attention head meets a fixed-size tensor")
    heads = per_head.max(1).values
    if need_weights:
        tr.pin(heads, "attention weights averaged over heads are used (need_weights=True)")
    if attn_mask is not None and attn_mask.dim() == 3:
        tr.pin(heads, "per-head attention mask of fixed size")
    if attn_mask is not None and (tr.label(attn_mask) >= 0).any():
        tr.pin(heads, "attention mask carries channel slots")
    tr.note(heads, f"{tr.where()}: attention removes whole heads")
    own = tr.owner(w_in)
    if own is not None and isinstance(own[1], nn.MultiheadAttention) and own[1].num_heads == num_heads:
        tr.attr(own[0], own[1], "num_heads", heads)
    wo = tr.vec(w_out, 0)
    if b_out is not None:
        tr.link(wo, tr.vec(b_out, 0))
    res = [t for t in (out if isinstance(out, tuple) else (out,)) if isinstance(t, torch.Tensor)]
    main = res[0]
    shape = [1] * main.dim()
    shape[-1] = main.shape[-1]
    tr.set_label(main, wo.view(shape))
    for t in res[1:]:
        tr.set_label(t, blank(t.dim()))


@rule(objs=(F.multi_head_attention_forward,))
def multi_head_attention(tr: Tracer, func, args, kwargs, out) -> None:
    q, k, v = args[0], args[1], args[2]
    num_heads = int(arg(args, kwargs, 4, "num_heads"))
    w_in, b_in = arg(args, kwargs, 5, "in_proj_weight"), arg(args, kwargs, 6, "in_proj_bias")
    unsupported = (
        arg(args, kwargs, 17, "use_separate_proj_weight", False)
        or arg(args, kwargs, 7, "bias_k") is not None
        or arg(args, kwargs, 9, "add_zero_attn", False)
        or arg(args, kwargs, 21, "static_k") is not None
        or arg(args, kwargs, 22, "static_v") is not None
        or not isinstance(w_in, torch.Tensor)
    )
    if unsupported:  # kdim/vdim != embed_dim, bias_k/bias_v, add_zero_attn, static k/v: not handled
        return pin_all(tr, func, args, kwargs, out)
    embed = q.shape[-1]
    _attention(
        tr,
        func,
        args,
        kwargs,
        out,
        queries=(q, k, v),
        w_in=w_in,
        b_in=b_in,
        w_out=arg(args, kwargs, 11, "out_proj_weight"),
        b_out=arg(args, kwargs, 12, "out_proj_bias"),
        num_heads=num_heads,
        head_dim=embed // num_heads,
        need_weights=bool(arg(args, kwargs, 15, "need_weights", True)),
        attn_mask=arg(args, kwargs, 16, "attn_mask"),
    )


@rule(objs=(head_attention,))
def pruned_head_attention(tr: Tracer, func, args, kwargs, out) -> None:
    _attention(
        tr,
        func,
        args,
        kwargs,
        out,
        queries=(args[0], args[1], args[2]),
        w_in=args[5],
        b_in=args[6],
        w_out=args[7],
        b_out=args[8],
        num_heads=int(args[3]),
        head_dim=int(args[4]),
        need_weights=bool(kwargs.get("need_weights", True)),
        attn_mask=kwargs.get("attn_mask"),
    )
