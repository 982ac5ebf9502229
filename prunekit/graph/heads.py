"""Head-count and width attributes of attention modules, and of the model's Hugging Face config.

Heads are removed whole, so ``head_dim`` never changes; the attributes that count heads or hold the attention
width are recognised by exact name (``HEAD_ATTRS``, ``KV_HEAD_ATTRS``, ``INNER_ATTRS``) on the module whose
forward runs the attention, and only when their value equals the traced count. The rules record them (see
:meth:`prunekit.graph.trace.Tracer.attr`) so that :func:`prunekit.apply` updates them with the cut. A config
held by the model is recorded with ``shared=True``: it changes only when every layer agrees; per-layer widths
a config cannot express stay in the plan (``Plan.meta["per_layer_attrs"]``).

>>> "num_heads" in HEAD_ATTRS and "all_head_size" in INNER_ATTRS
True
"""

from __future__ import annotations

import torch
from torch import nn

from prunekit.graph.labels import along, reshape_blocks
from prunekit.graph.trace import Tracer

#: attributes holding the number of (query) heads of the module that runs the attention
HEAD_ATTRS = ("num_heads", "num_attention_heads", "n_heads", "n_head", "num_attn_heads")
#: attributes holding the number of key/value heads (grouped-query attention)
KV_HEAD_ATTRS = ("num_key_value_heads", "num_kv_heads", "n_kv_heads")
#: attributes holding the width of one head (a view sized by them keeps working when heads go)
HEAD_DIM_ATTRS = ("head_dim", "attention_head_size", "head_size", "dim_head")
#: attributes holding the attention width num_heads * head_dim (used in views and splits)
INNER_ATTRS = ("all_head_size", "inner_dim", "attn_dim", "split_size")
#: attributes of a module owning ``W`` in ``x @ W`` (transformers' Conv1D): (out width, in width)
MATMUL_WEIGHT_ATTRS = (("nf", 1), ("nx", 0))
CONFIG_HEAD_FIELDS = ("num_attention_heads", "n_head", "n_heads", "num_heads", "encoder_attention_heads")
CONFIG_KV_FIELDS = ("num_key_value_heads",)
CONFIG_FFN_FIELDS = ("intermediate_size", "ffn_dim", "hidden_dim", "n_inner", "d_ff", "encoder_ffn_dim")


def _int_attr(obj: object, name: str) -> int | None:
    value = getattr(obj, name, None)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def current_module(tr: Tracer) -> tuple[str, nn.Module]:
    """(fqn, module) whose forward is running now."""
    name = tr.module_stack[-1]
    return name, tr.model.get_submodule(name)


def record_config(tr: Tracer, fields: tuple[str, ...], slots: torch.Tensor, old: int) -> None:
    """Record the model config's ``<field>`` (== ``old``) as following the kept count of ``slots``."""
    owner = tr.config_owner
    if owner is None:
        return
    for field in fields:
        if _int_attr(owner[1].config, field) == old:
            tr.attr(owner[0], owner[1], f"config.{field}", slots, shared=True)


def record_heads(
    tr: Tracer, heads: torch.Tensor, head_dim: int, kv_heads: torch.Tensor | None = None
) -> None:
    """Record the head-count attributes of the running module: ``heads`` = one slot per (query) head."""
    heads = heads.reshape(-1)
    if (heads < 0).all():
        return
    mname, module = current_module(tr)
    _record_head_attrs(tr, mname, module, HEAD_ATTRS, heads, head_dim)
    if kv_heads is not None:
        kv_heads = kv_heads.reshape(-1)
        for name in KV_HEAD_ATTRS:
            if _int_attr(module, name) == len(kv_heads):
                tr.attr(mname, module, name, kv_heads)
        record_config(tr, CONFIG_KV_FIELDS, kv_heads, len(kv_heads))


def _record_head_attrs(
    tr: Tracer, mname: str, module: nn.Module, names: tuple[str, ...], heads: torch.Tensor, head_dim: int
) -> None:
    """Record ``module``'s attributes in ``names`` equal to the head count, its inner-width attributes
    (heads x ``head_dim``) and the model config's head-count fields."""
    n = len(heads)
    for name in names:
        if _int_attr(module, name) == n:
            tr.attr(mname, module, name, heads)
    for name in INNER_ATTRS:
        if _int_attr(module, name) == n * head_dim:
            tr.attr(mname, module, name, heads.repeat_interleave(head_dim))
    record_config(tr, CONFIG_HEAD_FIELDS, heads, n)


def record_view_heads(tr: Tracer, heads: torch.Tensor, head_dim: int) -> None:
    """A view sized by a head-count attribute: record every head attribute of that count (query or kv)."""
    if (heads < 0).all():
        return
    mname, module = current_module(tr)
    _record_head_attrs(tr, mname, module, HEAD_ATTRS + KV_HEAD_ATTRS, heads, head_dim)


def split_attr(tr: Tracer, size: object) -> str | None:
    """The running module's attention-width attribute that ``x.split(size)`` was given, if any."""
    if not isinstance(size, int):
        return None
    _, module = current_module(tr)
    return next((name for name in INNER_ATTRS if _int_attr(module, name) == size), None)


def record_weight_attrs(tr: Tracer, w: torch.Tensor) -> None:
    """Width attributes of the module owning ``W`` in ``x @ W`` (transformers' Conv1D: ``nf``, ``nx``)."""
    own = tr.owner(w)
    if own is None or w.dim() != 2 or getattr(own[1], "weight", None) is not w:
        return
    for name, dim in MATMUL_WEIGHT_ATTRS:
        if _int_attr(own[1], name) == w.shape[dim]:
            tr.attr(own[0], own[1], name, tr.vec(w, dim))
    record_config(tr, CONFIG_FFN_FIELDS, tr.vec(w, 1), w.shape[1])


def merge_heads(tr: Tracer, label: torch.Tensor, s_in: list[int], s_out: list[int], req: list) -> None:
    """In an attention module, a view merging heads back into one width: record or pin its attributes.

    ``out.reshape(B, N, -1)`` and ``reshape(B, N, self.all_head_size)`` (an attribute of the traced width)
    keep working once heads go: the head-count and width attributes of that count are recorded, so that
    :func:`prunekit.apply` updates them (the attention that split the heads may have left them alone:
    ``view(B, N, -1, self.head_dim)`` and a matmul-based attention name no count). A width given as a plain
    Python int (``reshape(B, N, D)`` with ``D`` read from the unchanged input) would break: the heads are
    pinned, and so is a tensor dim of that size read inside this module (``B, N, D = x.shape``), since ``D``
    may be its width, which must then stay equal to the (now fixed) merged width.
    """
    if label.numel() == 1 or len(s_out) >= len(s_in):  # no slots, or nothing merged: the common cases
        return
    mname, module = current_module(tr)
    if not any(_int_attr(module, name) is not None for name in HEAD_ATTRS):
        return
    inner = {_int_attr(module, name) for name in INNER_ATTRS} - {None}
    for bi, bo in reshape_blocks(s_in, s_out) or []:
        carrying = [d for d in bi if label.shape[d] > 1]
        if len(bi) < 2 or len(bo) != 1 or not carrying or req[bo[0]] is None:
            continue
        if req[bo[0]] == -1 or req[bo[0]] in inner:
            heads, others = along(label, carrying[0], s_in[carrying[0]])
            if len(carrying) == 1 and not others:
                record_view_heads(tr, heads, s_out[bo[0]] // len(heads))
            continue
        why = "heads merged into a width given as a Python int (not -1 or an attribute)"
        tr.pin(label, why)
        for slots in tr.shape_reads.get((mname, req[bo[0]]), []):
            tr.pin(slots, f"its width was read as a Python int and used where {why}")


def heads_dim(tr: Tracer, requested: list[int | None], block: list[int]) -> int | None:
    """In a view that splits channels into ``block`` dims, the dim sized by a head-count attribute.

    Only when the last dim is sized by a head-width attribute (``self.head_dim``): code that computes the head
    width as ``C // self.num_heads`` from the unchanged residual width would break after a cut.
    """
    _, module = current_module(tr)
    dims = {_int_attr(module, name) for name in HEAD_DIM_ATTRS} - {None}
    if requested[block[-1]] not in dims:  # `C // self.num_heads` would not follow a cut of num_heads
        return None
    counts = {_int_attr(module, name) for name in HEAD_ATTRS + KV_HEAD_ATTRS} - {None}
    found = [d for d in block[:-1] if requested[d] in counts]
    # (3, num_heads, head_dim) with num_heads == 3: the heads dim comes after the q/k/v dim. A wrong pick
    # only unites more (fewer, larger units): never an inexact cut.
    return found[-1] if found else None
