"""Propagation rules for normalisation layers, contractions (conv, linear, matmul, einsum, attention).

>>> from prunekit.graph.rules import RULES
>>> torch.nn.functional.conv2d in RULES and torch.nn.functional.scaled_dot_product_attention in RULES
True
"""

from __future__ import annotations

import torch
from torch import nn

from prunekit.graph.heads import CONFIG_FFN_FIELDS, record_config, record_heads, record_weight_attrs
from prunekit.graph.labels import NO_SLOT, align, along, blank, compress, varying
from prunekit.graph.rules import (
    NO_OUTPUT_RULES,
    arg,
    lab,
    outs,
    pin_all,
    pin_inputs,
    resolve_function,
    rule,
)
from prunekit.graph.rules_shape import elementwise_label
from prunekit.graph.stream import cut_site, site_input
from prunekit.graph.trace import Tracer

# ---------------------------------------------------------------------------------------------------------
# normalisation layers


@rule("batch_norm", "instance_norm")
def batch_norm(tr: Tracer, func, args, kwargs, out) -> None:
    x = args[0]
    names = ("running_mean", "running_var", "weight", "bias")
    state = [arg(args, kwargs, i, n) for i, n in zip((1, 2, 3, 4), names, strict=True)]
    L = lab(tr, x)
    if x.dim() < 2:
        return pin_all(tr, func, args, kwargs, out)
    xc, others = along(L, 1, x.shape[1])
    if others:
        return pin_all(tr, func, args, kwargs, out)
    for t in state:
        if isinstance(t, torch.Tensor):
            tr.link(xc, tr.vec(t, 0))
    holder = next((t for t in (state[2], state[0]) if isinstance(t, torch.Tensor) and tr.is_state(t)), None)
    if holder is not None:
        mname, module = tr.owner(holder)
        if isinstance(module, (nn.modules.batchnorm._NormBase,)) and hasattr(module, "num_features"):
            tr.attr(mname, module, "num_features", xc)
    tr.set_label(out, L)


@rule("layer_norm", "rms_norm")
def layer_norm(tr: Tracer, func, args, kwargs, out) -> None:
    x, shape = args[0], arg(args, kwargs, 1, "normalized_shape")
    k = len(shape) if isinstance(shape, (tuple, list, torch.Size)) else 1
    L = lab(tr, x)
    weights = [w for w in (arg(args, kwargs, 2, "weight"), arg(args, kwargs, 3, "bias")) if w is not None]
    if tr.stream and site_input(func, args, kwargs) is x and cut_site(tr, x, weights):
        return tr.set_label(out, L)
    why = "normalised over channels: its statistics depend on the channel count"
    if any(L.shape[d] > 1 for d in range(x.dim() - k, x.dim())):
        tr.pin(L, why)
    for i, n in ((2, "weight"), (3, "bias")):
        w = arg(args, kwargs, i, n)
        if isinstance(w, torch.Tensor):
            if tr.is_state(w):
                for d in range(w.dim()):
                    tr.pin(tr.slots(w, d), why)
            else:
                tr.pin(tr.label(w), why)
    tr.set_label(out, L)


@rule("group_norm")
def group_norm(tr: Tracer, func, args, kwargs, out) -> None:
    x, g = args[0], int(arg(args, kwargs, 1, "num_groups"))
    L = lab(tr, x)
    xc, others = along(L, 1, x.shape[1])
    if others:
        return pin_all(tr, func, args, kwargs, out)
    C = x.shape[1]
    tr.unite(xc.view(g, C // g), "group norm group meets a fixed-size tensor")
    for i, n in ((2, "weight"), (3, "bias")):
        w = arg(args, kwargs, i, n)
        if isinstance(w, torch.Tensor):
            tr.link(xc, tr.vec(w, 0))
    w = arg(args, kwargs, 2, "weight")
    mod = tr.owner(w) if tr.is_state(w) else None
    if mod is not None and isinstance(mod[1], nn.GroupNorm):
        tr.attr(mod[0], mod[1], "num_channels", xc)
        tr.attr(mod[0], mod[1], "num_groups", xc, C // g)
    elif g != 1:
        tr.pin(xc, "functional group_norm: num_groups is a Python int that cannot be updated")
    tr.note(xc, f"{tr.where()}: GroupNorm removes whole groups of {C // g} channels")
    tr.set_label(out, L)


# ---------------------------------------------------------------------------------------------------------
# contractions


def _module_of(tr: Tracer, w: torch.Tensor, cls: type) -> tuple[str, nn.Module] | None:
    own = tr.owner(w) if tr.is_state(w) else None
    if own is not None and isinstance(own[1], cls) and getattr(own[1], "weight", None) is w:
        return own
    return None


def _channel_vec(tr: Tracer, x: torch.Tensor, dim: int) -> torch.Tensor:
    """Slot of each channel of activation ``x`` along ``dim``; pins the label if it also varies elsewhere."""
    L = lab(tr, x)
    v, others = along(L, dim, x.shape[dim])
    if others:
        tr.pin(L, "input carries channel slots on several dims")
        return torch.full((x.shape[dim],), NO_SLOT, dtype=torch.long)
    return v


@rule("conv1d", "conv2d", "conv3d")
def conv(tr: Tracer, func, args, kwargs, out) -> None:
    x, w = args[0], arg(args, kwargs, 1, "weight")
    b, g = arg(args, kwargs, 2, "bias"), int(arg(args, kwargs, 6, "groups", 1))
    batched = x.dim() == w.dim()
    cdim = 1 if batched else 0
    xc = _channel_vec(tr, x, cdim)
    wo, wi = tr.vec(w, 0), tr.vec(w, 1)
    n_out, ipg = w.shape[0], w.shape[1]
    opg = n_out // g
    own = _module_of(tr, w, nn.modules.conv._ConvNd)
    if g == 1:
        tr.link(xc, wi)
    elif ipg == 1:  # depthwise (with multiplier): input channel k feeds outputs k*opg .. k*opg+opg-1
        tr.link(xc.view(g, 1).expand(g, opg), wo.view(g, opg))
        tr.note(wo, f"{tr.where()}: depthwise conv (groups={g}) removes whole groups")
        if own is None:  # a functional call: `groups` is a Python int no plan can update
            tr.pin(wo, f"functional depthwise conv (groups={g} passed as a number) cannot change its width")
    else:  # grouped: the same offsets go in every group, `groups` stays
        tr.link(xc.view(g, ipg), wi.view(1, ipg))
        tr.unite(wo.view(g, opg).t().contiguous(), "grouped conv")
        tr.note(wo, f"{tr.where()}: grouped conv (groups={g}) removes the same offsets in every group")
        tr.note(xc, f"{tr.where()}: grouped conv (groups={g}) removes the same offsets in every group")
    if isinstance(b, torch.Tensor):
        tr.link(wo, tr.vec(b, 0))
    if own is not None and not own[1].transposed:
        tr.attr(own[0], own[1], "in_channels", xc)
        tr.attr(own[0], own[1], "out_channels", wo)
        if g > 1 and ipg == 1:
            tr.attr(own[0], own[1], "groups", xc)
    shape = [1] * out.dim()
    shape[cdim] = n_out
    tr.set_label(out, wo.view(shape))


@rule("conv_transpose1d", "conv_transpose2d", "conv_transpose3d")
def conv_transpose(tr: Tracer, func, args, kwargs, out) -> None:
    x, w = args[0], arg(args, kwargs, 1, "weight")
    b, g = arg(args, kwargs, 2, "bias"), int(arg(args, kwargs, 6, "groups", 1))
    if g != 1 or x.dim() != w.dim():
        return pin_all(tr, func, args, kwargs, out)
    xc = _channel_vec(tr, x, 1)
    wi, wo = tr.vec(w, 0), tr.vec(w, 1)
    tr.link(xc, wi)
    if isinstance(b, torch.Tensor):
        tr.link(wo, tr.vec(b, 0))
    own = _module_of(tr, w, nn.modules.conv._ConvNd)
    if own is not None and own[1].transposed:
        tr.attr(own[0], own[1], "in_channels", xc)
        tr.attr(own[0], own[1], "out_channels", wo)
    shape = [1] * out.dim()
    shape[1] = w.shape[1]
    tr.set_label(out, wo.view(shape))


@rule("linear")
def linear(tr: Tracer, func, args, kwargs, out) -> None:
    x, w, b = args[0], arg(args, kwargs, 1, "weight"), arg(args, kwargs, 2, "bias")
    xin = _channel_vec(tr, x, -1)
    wi = tr.vec(w, 1) if w.dim() == 2 else tr.vec(w, 0)
    tr.link(xin, wi)
    wo = tr.vec(w, 0) if w.dim() == 2 else torch.full((1,), NO_SLOT, dtype=torch.long)
    if isinstance(b, torch.Tensor) and b.dim() == 1 and w.dim() == 2:
        tr.link(wo, tr.vec(b, 0))
    own = _module_of(tr, w, nn.Linear)
    if own is not None:
        tr.attr(own[0], own[1], "in_features", wi)
        tr.attr(own[0], own[1], "out_features", wo)
        record_config(tr, CONFIG_FFN_FIELDS, wo, w.shape[0])
    if out.dim() == 0:
        return tr.set_label(out, blank(0))
    shape = [1] * out.dim()
    shape[-1] = out.shape[-1]
    tr.set_label(out, wo.view(shape) if w.dim() == 2 else blank(out.dim()))


_GATE_COUNTS = (("lstm", 4), ("gru", 3), ("rnn_tanh", 1), ("rnn_relu", 1))
#: gate blocks stacked in the weight rows
_GATES = {f: n for name, n in _GATE_COUNTS for f in resolve_function(name)}


@rule("lstm", "gru", "rnn_tanh", "rnn_relu")
def rnn(tr: Tracer, func, args, kwargs, out) -> None:
    """``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN``: hidden unit ``j`` is one unit in every layer and direction.

    A unit is its gate rows (4 for LSTM, 3 for GRU, 1 for RNN) of ``weight_ih``, ``weight_hh`` and the biases,
    its column of ``weight_hh``, and the next layer's input column(s). Removing it is exact: with those rows
    zeroed every gate pre-activation is 0, so from a zero initial state its state stays 0 (LSTM: c = c/2 + 0,
    GRU: h = h/2 + 0), and nobody reads it. ``nn.RNN*`` has one ``hidden_size`` for every layer, so unit ``j``
    goes from all of them at once. An initial state passed in by the caller keeps its (fixed) size: the units
    stay. Packed sequences and LSTM projections (``proj_size``) are pinned.
    """
    if len(args) < 9 or not isinstance(args[3], bool) or not isinstance(args[2], (list, tuple)):
        return pin_all(tr, func, args, kwargs, out)  # packed form: (data, batch_sizes, hx, params, ...)
    x, hx, params = args[0], args[1], list(args[2])
    layers, dirs = int(args[4]), 2 if args[7] else 1
    per = 4 if args[3] else 2
    own = tr.owner(params[0]) if params else None
    module = own[1] if own is not None else None
    plain = isinstance(module, nn.RNNBase) and not getattr(module, "proj_size", 0)
    if not plain or len(params) != per * layers * dirs:
        return pin_all(tr, func, args, kwargs, out)
    gates, hidden = _GATES[func], params[1].shape[1]
    why = "an RNN hidden unit: gate rows, recurrent column and state go together"
    rows = [tr.vec(params[k * per], 0).view(gates, hidden).T for k in range(layers * dirs)]
    cols = [tr.vec(params[k * per + 1], 1).view(hidden, 1) for k in range(layers * dirs)]
    tr.unite(torch.cat(rows + cols, 1), why)  # column 0 (layer 0's first gate) now stands for the unit
    units = rows[0][:, 0].contiguous()
    for k in range(layers * dirs):
        layer, w_ih = k // dirs, params[k * per]
        for p in params[k * per + 1 : k * per + per]:  # weight_hh and the biases: the same gate rows
            tr.link(tr.vec(w_ih, 0), tr.vec(p, 0), why)
        feed = _channel_vec(tr, x, -1) if layer == 0 else units.repeat(dirs)
        tr.link(feed, tr.vec(w_ih, 1))
    for h in hx if isinstance(hx, (list, tuple)) else [hx]:
        made = tr.born.get(id(h))
        if made is None or made[0] is not h or made[1] != own[0]:  # a state from the caller: fixed size
            tr.link(_channel_vec(tr, h, -1), units, "initial state passed in: its size is fixed")
    tr.attr(own[0], module, "hidden_size", units)
    tr.attr(own[0], module, "input_size", tr.vec(params[0], 1))
    results = outs(out)
    tr.set_label(results[0], units.repeat(dirs).view([1] * (results[0].dim() - 1) + [dirs * hidden]))
    for t in results[1:]:  # final states, (layers * dirs, batch, hidden)
        tr.set_label(t, units.view([1] * (t.dim() - 1) + [hidden]))


@rule("embedding")
def embedding(tr: Tracer, func, args, kwargs, out) -> None:
    w = arg(args, kwargs, 1, "weight")
    wd = tr.vec(w, 1)
    own = _module_of(tr, w, nn.Embedding)
    if own is not None:
        tr.attr(own[0], own[1], "embedding_dim", wd)
    shape = [1] * out.dim()
    shape[-1] = out.shape[-1]
    tr.set_label(out, wd.view(shape))


def slice_union(tr: Tracer, labels: list[torch.Tensor], nb: int, why: str) -> torch.Tensor:
    """Unite every slot inside each batch slice (e.g. each attention head) of ``labels``.

    Activation-by-activation contractions cannot drop single contracted channels exactly (the masked
    reference keeps their products), so only whole batch slices (heads) are removable. Returns the
    representative slot of each slice, shape = the broadcast batch shape.
    """
    bshape = torch.broadcast_shapes(*[tuple(L.shape[:nb]) for L in labels])
    rows = [
        L.expand(*bshape, *L.shape[nb:]).reshape(max(1, int(torch.Size(bshape).numel())), -1) for L in labels
    ]
    M = torch.cat(rows, 1)
    tr.unite(M, why)
    rep = M.max(1).values
    return compress(rep.view(bshape) if nb else rep.view(()))


@rule("matmul", "mm", "bmm", "__matmul__", "__rmatmul__")
def matmul(tr: Tracer, func, args, kwargs, out) -> None:
    a, b = args[0], args[1]
    if func in _RMATMUL:
        a, b = b, a
    if a.dim() < 2 or b.dim() < 2:
        return pin_all(tr, func, args, kwargs, out)
    w_t = tr.transposed(b)
    if w_t is not None:  # x @ W.T is F.linear(x, W): nn.Linear written by hand (Falcon's FalconLinear)
        return linear(tr, func, (a, w_t), {}, out)
    if tr.is_state(b) and b.dim() == 2:  # x @ W
        xin = _channel_vec(tr, a, -1)
        tr.link(xin, tr.vec(b, 0))
        record_weight_attrs(tr, b)
        shape = [1] * out.dim()
        shape[-1] = out.shape[-1]
        return tr.set_label(out, tr.vec(b, 1).view(shape))
    if tr.is_state(a) and a.dim() == 2:  # W @ x
        xin = _channel_vec(tr, b, -2)
        tr.link(xin, tr.vec(a, 1))
        shape = [1] * out.dim()
        shape[-2] = out.shape[-2]
        return tr.set_label(out, tr.vec(a, 0).view(shape))
    nd = out.dim()
    nb = nd - 2
    La, Lb = align(tr.label(a), nd), align(tr.label(b), nd)
    rep = slice_union(tr, [La, Lb], nb, "contraction of two activations over a channel dim")
    tr.set_label(out, rep.reshape(*rep.shape, 1, 1) if nb else blank(nd))


_RMATMUL = set(resolve_function("__rmatmul__"))


@rule("addmm", "baddbmm", "addbmm")
def addmm(tr: Tracer, func, args, kwargs, out) -> None:
    # the products may come as keywords: alibi.baddbmm(batch1=q, batch2=k, beta=..., alpha=...) (BLOOM)
    bias = arg(args, kwargs, 0, "input")
    a = arg(args, kwargs, 1, "mat1") if "batch1" not in kwargs else kwargs["batch1"]
    b = arg(args, kwargs, 2, "mat2") if "batch2" not in kwargs else kwargs["batch2"]
    tmp = torch.matmul(a, b)
    matmul(tr, torch.matmul, (a, b), {}, tmp)
    label = elementwise_label(tr, [tmp, bias], out.dim(), "added to a fixed-size tensor")
    tr.set_label(out, label)


@rule("einsum")
def einsum(tr: Tracer, func, args, kwargs, out) -> None:
    eq = args[0]
    ops = list(args[1]) if len(args) == 2 and isinstance(args[1], (list, tuple)) else list(args[1:])
    eq = eq.replace(" ", "")
    if "..." in eq or "->" not in eq or len(ops) != 2:
        return pin_all(tr, func, args, kwargs, out)
    ins, res = eq.split("->")
    terms = ins.split(",")
    batch = [c for c in res if all(c in t for t in terms)]
    labels = []
    for t, term in zip(ops, terms, strict=True):
        L = lab(tr, t)
        perm = [term.index(c) for c in batch] + [i for i, c in enumerate(term) if c not in batch]
        labels.append(L.permute(perm))
    rep = slice_union(tr, labels, len(batch), "contraction of two activations over a channel dim")
    shape = [rep.shape[batch.index(c)] if c in batch else 1 for c in res]
    perm_shape = rep.reshape([rep.shape[i] for i in range(len(batch))] + [1] * (len(res) - len(batch)))
    order = [batch.index(c) if c in batch else None for c in res]
    extra = iter(range(len(batch), len(res)))
    perm = [o if o is not None else next(extra) for o in order]
    tr.set_label(out, perm_shape.permute(perm).reshape(shape))


@rule("scaled_dot_product_attention")
def sdpa(tr: Tracer, func, args, kwargs, out) -> None:
    q, k, v = args[0], args[1], args[2]
    mask = arg(args, kwargs, 3, "attn_mask")
    nd = q.dim()
    if k.dim() != nd or v.dim() != nd or nd < 3:
        return pin_all(tr, func, args, kwargs, out)
    Lq, Lk, Lv = lab(tr, q), lab(tr, k), lab(tr, v)
    hq, hk = q.shape[-3], k.shape[-3]
    if hq != hk:  # grouped-query attention: query head i reads key/value head i // (hq // hk)
        r = hq // hk
        Lk = Lk.repeat_interleave(r, dim=-3) if Lk.shape[-3] > 1 else Lk
        Lv = Lv.repeat_interleave(r, dim=-3) if Lv.shape[-3] > 1 else Lv
    rep = slice_union(tr, [Lq, Lk, Lv], nd - 2, "attention over channels that are not whole heads")
    if isinstance(mask, torch.Tensor):
        Lm = align(tr.label(mask), nd)
        if (Lm >= 0).any() and varying(Lm) == [nd - 3] and mask.shape[-3] == hq == rep.shape[-1]:
            # a per-head bias that travels with its head (T5's and MPNet's relative position bias: an
            # Embedding with one column per head): its head dim is the heads
            tr.link(along(Lm, nd - 3, hq)[0], rep.reshape(-1, hq)[0])
        elif (Lm >= 0).any():
            tr.pin(Lm, "attention mask carries channel slots")
            tr.pin(rep, "attention mask carries channel slots")
        elif mask.dim() >= 3 and mask.shape[-3] > 1 and rep.dim() >= 1 and rep.shape[-1] > 1:
            tr.pin(rep, "per-head attention mask of fixed size")
    if rep.dim() >= 1 and rep.shape[-1] > 1:
        tr.note(rep, f"{tr.where()}: attention removes whole heads")
        heads = rep.reshape(-1, rep.shape[-1])[0]
        record_heads(tr, heads, q.shape[-1], heads[:: hq // hk] if hq != hk else None)
    tr.set_label(out, rep.reshape(*rep.shape, 1, 1))


# ---------------------------------------------------------------------------------------------------------
# ops without tensor outputs that still matter


def setitem(tr: Tracer, func, args, kwargs, out) -> None:
    pin_inputs(tr, (args[0], args[2]) if len(args) > 2 else args[:1], {}, "in-place assignment into a tensor")


def iterate(tr: Tracer, func, args, kwargs, out) -> None:
    L = lab(tr, args[0])
    if args[0].dim() and L.shape[0] > 1:
        tr.pin(L, "iterating over a dim that carries channel slots")


def shape_read(tr: Tracer, func, args, kwargs, out) -> None:
    """``x.shape`` / ``x.size()``: remember which channel slots each Python int read stands for.

    An int cannot carry a label, so a width read from one tensor and used for another (``B, N, C =
    x.shape`` ... ``y.reshape(B, N, C)``) is invisible to the rules; :func:`merge_heads` uses these
    records to pin the source of such a width too.
    """
    x = args[0]
    if tr.is_state(x):  # a parameter's own dims are not labels (and reading them must not allocate slots)
        return
    L = lab(tr, x)
    if L.numel() == 1:  # the common case: no slot varies along any dim
        return
    dim = arg(args, kwargs, 1, "dim") if func is torch.Tensor.size else None
    for d in range(x.dim()) if dim is None else [dim % x.dim()]:
        if L.shape[d] > 1:
            v, _ = along(L, d, x.shape[d])
            tr.shape_reads.setdefault((tr.module_stack[-1], x.shape[d]), []).append(v)


NO_OUTPUT_RULES.update(
    {
        torch.Tensor.__setitem__: setitem,
        torch.Tensor.__iter__: iterate,
        torch.Tensor.shape.__get__: shape_read,
        torch.Tensor.size: shape_read,
    }
)
