"""Propagation rules for element-wise, shape, spatial and reduction ops (see :mod:`prunekit.graph.rules`).

>>> torch.Tensor.view in RULES and torch.cat in RULES
True
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from prunekit.graph.heads import (
    current_module,
    heads_dim,
    merge_heads,
    record_view_heads,
    split_attr,
)
from prunekit.graph.labels import align, along, blank, compress, reshape_label, varying
from prunekit.graph.rules import (
    RULES,
    arg,
    blank_all,
    lab,
    outs,
    pin_all,
    pin_inputs,
    resolve_function,
    rule,
    set_all,
    where_indices,
)
from prunekit.graph.stream import cut_site, derived_split, site_input, sized_view
from prunekit.graph.trace import Tracer

# ---------------------------------------------------------------------------------------------------------
# element-wise ops (any number of tensor operands, broadcasting)


def elementwise_label(tr: Tracer, tensors: list[torch.Tensor], out_ndim: int, why: str) -> torch.Tensor:
    if len(tensors) == 1:
        return lab(tr, tensors[0]) if tensors[0].dim() == out_ndim else align(tr.label(tensors[0]), out_ndim)
    labels = [align(tr.label(t), out_ndim) for t in tensors]
    shapes = [[1] * (out_ndim - t.dim()) + list(t.shape) for t in tensors]
    vdims = {d for L in labels for d in varying(L)}
    labels = torch.broadcast_tensors(*labels)
    # an operand with real size > 1 along a labelled dim is rigid where it has no slot
    rigid = [any(s[d] > 1 for d in vdims) for s in shapes]
    order = sorted(range(len(labels)), key=lambda i: -int((labels[i] >= 0).sum()))
    ref = order[0]
    out = labels[ref].clone()
    pairs = []
    for i in order[1:]:
        a, b = labels[ref], labels[i]
        both = (a >= 0) & (b >= 0) & (a != b)
        if both.any():
            pairs.append((a[both], b[both]))
            tr.link(pairs[-1][0], pairs[-1][1])
        out = torch.where(out >= 0, out, b)
    fixed = torch.zeros_like(out, dtype=torch.bool)
    for L, r in zip(labels, rigid, strict=True):
        if r:
            fixed |= L < 0
    if fixed.any():
        tr.pin(out[fixed], why)
    if pairs and len(varying(out)) >= 2:
        return canonical(out, pairs)
    return compress(out)


def canonical(label: torch.Tensor, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Replace each slot by the smallest slot it was just united with (keeps labels compressible).

    E.g. ViT: ``cat([cls_token, patches]) + pos_embedding`` unites the class token's channels with the patch
    channels; without this the label would vary along the token dim forever.
    """
    a = torch.cat([p[0] for p in pairs])
    b = torch.cat([p[1] for p in pairs])
    values, inv = torch.unique(torch.cat([a, b, label.reshape(-1)]), return_inverse=True)
    n = len(values)
    k = len(a)
    graph = coo_matrix((np.ones(k, dtype=np.int8), (inv[:k].numpy(), inv[k : 2 * k].numpy())), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    smallest = np.full(comp.max() + 1, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(smallest, comp, values.numpy())
    mapped = torch.from_numpy(smallest[comp[inv[2 * k :].numpy()]]).view(label.shape)
    return compress(torch.where(label >= 0, mapped, label))


# fmt: off
_ELEMENTWISE = (
    "add", "sub", "subtract", "mul", "multiply", "div", "divide", "true_divide", "floor_divide",
    "remainder", "fmod", "pow", "maximum", "minimum", "fmax", "fmin", "atan2", "hypot", "where",
    "masked_fill", "lerp", "addcmul", "addcdiv", "eq", "ne", "lt", "le", "gt", "ge", "logical_and",
    "logical_or", "logical_xor", "logical_not", "bitwise_and", "bitwise_or", "copysign", "xlogy",
    "clamp", "clip", "clamp_min", "clamp_max", "add_", "sub_", "mul_", "div_", "pow_", "clamp_",
    "clamp_min_", "clamp_max_", "masked_fill_", "lerp_", "addcmul_", "addcdiv_", "copy_", "relu",
    "relu_", "relu6", "elu", "elu_", "selu", "selu_", "celu", "gelu", "silu", "mish", "hardswish",
    "hardsigmoid", "hardtanh", "hardtanh_", "leaky_relu", "leaky_relu_", "softplus", "softsign",
    "tanhshrink", "logsigmoid", "sigmoid", "sigmoid_", "tanh", "tanh_", "exp", "exp_", "expm1", "log",
    "log_", "log1p", "log2", "sqrt", "sqrt_", "rsqrt", "abs", "abs_", "neg", "neg_", "erf", "erfc",
    "sin", "cos", "square", "reciprocal", "sign", "floor", "ceil", "round", "trunc", "frac",
    "nan_to_num", "threshold", "hardshrink", "softshrink", "rrelu", "dropout", "dropout1d", "dropout2d",
    "dropout3d", "alpha_dropout", "feature_alpha_dropout", "contiguous", "clone", "detach", "detach_",
    "to", "float", "double", "half", "bfloat16", "type", "type_as", "cpu", "requires_grad_", "bool",
    "long", "int", "zeros_like", "ones_like", "empty_like", "full_like", "rand_like", "randn_like",
    "isnan", "isinf", "isfinite", "__add__", "__radd__", "__iadd__", "__sub__", "__rsub__", "__isub__",
    "__mul__", "__rmul__", "__imul__", "__truediv__", "__rtruediv__", "__itruediv__", "__div__",
    "__rdiv__", "__floordiv__", "__rfloordiv__", "__mod__", "__pow__", "__rpow__", "__ipow__",
    "__and__", "__or__", "__xor__", "__invert__", "__eq__", "__ne__", "__lt__", "__le__", "__gt__",
    "__ge__", "__neg__", "__abs__",
)
# fmt: on


@rule(*_ELEMENTWISE, objs=(torch.Tensor.data.__get__,))
def elementwise(tr: Tracer, func, args, kwargs, out) -> None:
    if where_indices(func, args, kwargs):
        pin_inputs(tr, args, kwargs, "indices of nonzeros along a channel dim depend on the channel count")
        return blank_all(tr, out)
    if func in _FIRST_ONLY:  # .to(other), type_as(other), zeros_like(x): only the first tensor is data
        operands = [args[0]]
    else:
        operands = [t for t in list(args) + list(kwargs.values()) if isinstance(t, torch.Tensor)]
    res = outs(out)
    if not operands:
        blank_all(tr, out)
        return
    label = elementwise_label(tr, operands, res[0].dim(), "combined with a fixed-size tensor")
    for t in res:
        tr.set_label(t, label if t.dim() == label.dim() else align(label, t.dim()))


_FIRST_ONLY = set(resolve_function("to") + resolve_function("type_as"))
for _n in ("zeros_like", "ones_like", "empty_like", "full_like", "rand_like", "randn_like"):
    _FIRST_ONLY.update(resolve_function(_n))


@rule("new_zeros", "new_ones", "new_full", "new_empty", "new_tensor")
def factory(tr: Tracer, func, args, kwargs, out) -> None:
    blank_all(tr, out)


@rule("zeros")
def zeros(tr: Tracer, func, args, kwargs, out) -> None:
    """Zeros made from sizes alone: no slots; the module that made them is remembered (``nn.LSTM`` makes its
    own zero initial state, sized by ``hidden_size``, which follows a cut)."""
    blank_all(tr, out)
    if isinstance(out, torch.Tensor):
        tr.born[id(out)] = (out, tr.module_stack[-1])


@rule("prelu")
def prelu(tr: Tracer, func, args, kwargs, out) -> None:
    x, w = args[0], arg(args, kwargs, 1, "weight")
    L = lab(tr, x)
    if w.numel() > 1:
        xc, others = along(L, 1, x.shape[1])
        if others:
            return pin_all(tr, func, args, kwargs, out)
        tr.link(xc, tr.vec(w, 0))
    set_all(tr, out, L)


# ---------------------------------------------------------------------------------------------------------
# shape ops


def _requested(func, args, kwargs, x: torch.Tensor, out: torch.Tensor) -> list[int | None]:
    """The sizes a view/reshape/unflatten call asked for (-1 marks the dim the code lets adapt)."""
    req: list[int | None] = [None] * out.dim()
    if func in _VIEWS:
        shape = args[1:] if len(args) > 1 else kwargs.get("shape", kwargs.get("size", ()))
        if len(shape) == 1 and isinstance(shape[0], (tuple, list, torch.Size)):
            shape = shape[0]
        if len(shape) == out.dim():
            req = [int(s) for s in shape]
    elif func in _UNFLATTEN:
        dim = arg(args, kwargs, 1, "dim") % x.dim()
        sizes = list(arg(args, kwargs, 2, "sizes"))
        for i, s in enumerate(sizes):
            req[dim + i] = int(s)
    return req


_VIEWS = set(resolve_function("view") + resolve_function("reshape"))
_UNFLATTEN = set(resolve_function("unflatten"))


def _split_constraint(
    tr: Tracer, L: torch.Tensor, sizes: list[int], block: list[int], adapt: int
) -> torch.Tensor:
    """A view split a labelled dim into ``block`` (sizes ``sizes``); only ``adapt`` may shrink.

    The code's next view of the cut tensor keeps every other dim of the block at its size, so a cut must
    remove the same offsets along ``adapt`` in every block of the others: positions sharing an index along
    ``adapt`` (and along every dim outside the block) are united. Where the slots do not vary along
    ``adapt`` at all (the dim was permuted before: after a channel shuffle the removed channels of one unit
    lie in whole rows of the kept dims), no cut keeps that structure: the slots are pinned.
    """
    others = [d for d in block if d != adapt and L.shape[d] > 1]
    if not others:  # the slots vary along the shrinking dim only: any cut keeps the view's layout
        return L
    if L.shape[adapt] == 1:
        why = (
            f"channel dim split into {sizes} after a reorder: the slots vary along a dim the code keeps "
            f"at its size, not along the one that shrinks (size {sizes[block.index(adapt)]})"
        )
        tr.unite(L.reshape(1, -1), why)
        tr.pin(L, why)
        return L.amax(dim=others, keepdim=True)
    rest = [d for d in range(L.dim()) if d not in others]
    rows = L.permute(rest + others).reshape(-1, math.prod(L.shape[d] for d in others))
    tr.unite(rows, "split dim carries slots")
    tr.note(
        L,
        f"{tr.where()}: channel dim split into {sizes}; dim of size {sizes[block.index(adapt)]} shrinks, "
        "the others are kept",
    )
    # every position sharing an index along `adapt` is now one unit: one slot per index is enough
    # (keeps e.g. rotary embeddings along head_dim from meeting per-channel slots)
    return L.amax(dim=others, keepdim=True)


def _one_after_channels(L: torch.Tensor, s_in: list[int], s_out: list[int], req: list[int | None]) -> bool:
    """Does a view/reshape/unflatten insert a size-1 dim right after a dim carrying slots, before other dims?

    ``view(b, g, c // g, h, w)`` with ``c == g`` asks for a 1 the code computes from the width: the slots
    must then stay. Trailing ones (``view(b, c, 1, 1)``) and ``unsqueeze`` are not ambiguous.
    """
    if s_out.count(1) <= s_in.count(1):
        return False
    for d in range(len(s_out) - 2):
        if L.shape[d] > 1 and req[d + 1] == 1 and any(n > 1 for n in s_out[d + 2 :]):
            return True
    return False


@rule("view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as", "reshape_as", "ravel")
def reshape(tr: Tracer, func, args, kwargs, out) -> None:
    x = args[0]
    if func in _VIEWS and len(args) > 1 and isinstance(args[1], torch.dtype):
        return pin_all(tr, func, args, kwargs, out)
    res = reshape_label(lab(tr, x), list(x.shape), list(out.shape))
    if res is None:
        return pin_all(tr, func, args, kwargs, out)
    L, splits = res
    req = _requested(func, args, kwargs, x, out)
    if _one_after_channels(L, list(x.shape), list(out.shape), req):
        tr.pin(
            L,
            "view puts a size-1 dim after a channel dim (a split C -> (C, C // C) as in a channel "
            "shuffle with one channel per group?): its size would not follow a cut",
        )
    merge_heads(tr, lab(tr, x), list(x.shape), list(out.shape), req)
    if tr.stream:
        sized_view(tr, L, list(x.shape), list(out.shape), req)
    for block in splits:
        by_attr = heads_dim(tr, req, block)  # view(b, n, self.num_heads, d): the heads dim shrinks
        adapt = next((d for d in block if req[d] == -1), by_attr if by_attr is not None else block[-1])
        if tr.stream and by_attr is None and req[adapt] not in (None, -1):
            derived_split(tr)
        L = _split_constraint(tr, L, [out.shape[d] for d in block], block, adapt)
        if by_attr is not None and adapt == by_attr and L.shape[adapt] > 1:
            inner = math.prod(out.shape[d] for d in block if d > adapt)
            record_view_heads(tr, L.reshape(-1), inner)
    tr.set_label(out, L)


@rule(
    "permute",
    "transpose",
    "swapaxes",
    "swapdims",
    "movedim",
    "moveaxis",
    "t",
    "adjoint",
    objs=(torch.Tensor.T.__get__, torch.Tensor.mT.__get__, torch.Tensor.mH.__get__, torch.Tensor.H.__get__),
)
def reorder(tr: Tracer, func, args, kwargs, out) -> None:
    x = args[0]
    tr.set_label(out, func(lab(tr, x), *args[1:], **kwargs))
    if x.dim() == 2 and tr.is_state(x) and out.shape == x.shape[::-1] and out.stride() == x.stride()[::-1]:
        tr.mark_transposed(out, x)  # W.T (a view with the strides swapped): x @ W.T is a linear layer


@rule("expand", "expand_as", "broadcast_to")
def expand(tr: Tracer, func, args, kwargs, out) -> None:
    tr.set_label(out, align(tr.label(args[0]), out.dim()))


@rule("repeat", "tile")
def repeat(tr: Tracer, func, args, kwargs, out) -> None:
    x = args[0]
    L = align(tr.label(x), out.dim())
    for d in varying(L):
        if out.shape[d] != L.shape[d]:
            return pin_all(tr, func, args, kwargs, out)
    tr.set_label(out, L)


@rule("cat", "concat", "concatenate")
def cat(tr: Tracer, func, args, kwargs, out) -> None:
    ts = [t for t in arg(args, kwargs, 0, "tensors") if not (t.dim() == 1 and t.shape[0] == 0)]
    dim = arg(args, kwargs, 1, "dim", 0) % out.dim()
    labels = [lab(tr, t) for t in ts]
    shape = [max(L.shape[d] for L in labels) for d in range(out.dim())]
    pieces = []
    for t, L in zip(ts, labels, strict=True):
        s = list(shape)
        s[dim] = t.shape[dim]
        pieces.append(L.expand(s))
    tr.set_label(out, compress(torch.cat(pieces, dim), [dim]))


@rule("stack")
def stack(tr: Tracer, func, args, kwargs, out) -> None:
    ts = list(arg(args, kwargs, 0, "tensors"))
    dim = arg(args, kwargs, 1, "dim", 0) % out.dim()
    labels = torch.broadcast_tensors(*[lab(tr, t) for t in ts])
    tr.set_label(out, compress(torch.stack(labels, dim), [dim]))


@rule("chunk", "split", "tensor_split", "unbind", "split_with_sizes")
def split(tr: Tracer, func, args, kwargs, out) -> None:
    x = args[0]
    res = outs(out)
    L = lab(tr, x)
    is_unbind = func in _UNBIND
    default_dim = 0
    dim = arg(args, kwargs, 1 if is_unbind else 2, "dim", default_dim) % x.dim()
    if L.shape[dim] == 1:
        for t in res:
            tr.set_label(t, L.select(dim, 0) if is_unbind else L)
        return
    sizes = [t.shape[dim] for t in res]
    attr = split_attr(tr, arg(args, kwargs, 1, "split_size")) if func in _SPLIT else None
    chunk_like = func in _CHUNK or attr is not None  # split(self.split_size): the attribute follows the cut
    if is_unbind or not chunk_like or len(set(sizes)) != 1 or sum(sizes) != x.shape[dim]:
        return pin_all(tr, func, args, kwargs, out)
    n, size = len(res), sizes[0]
    if attr is not None:
        mname, module = current_module(tr)
        tr.attr(mname, module, attr, along(L.narrow(dim, 0, size), dim, size)[0])
    if n > 1:
        rows = L.movedim(dim, 0).reshape(n, size, -1).permute(1, 0, 2).reshape(size, -1)
        tr.unite(rows, "chunk piece meets a fixed-size tensor")
        tr.note(L, f"{tr.where()}: chunk({n}) needs equal removal in every piece")
    for i, t in enumerate(res):
        tr.set_label(t, L.narrow(dim, i * size, size))


_UNBIND = set(resolve_function("unbind"))
_SPLIT = set(resolve_function("split"))
_CHUNK = set(resolve_function("chunk"))


def _index_dims(idx: Any, ndim: int) -> tuple[set[int], bool] | None:
    """Input dims touched by a non-trivial index, and whether the index is understood."""
    if not isinstance(idx, tuple):
        idx = (idx,)
    consumed = []
    for e in idx:
        if e is None or e is Ellipsis:
            consumed.append(0 if e is None else -1)
        elif isinstance(e, torch.Tensor) and e.dtype == torch.bool:
            consumed.append(e.dim())
        else:
            consumed.append(1)
    if consumed.count(-1) > 1:
        return None
    n_explicit = sum(c for c in consumed if c > 0)
    touched: set[int] = set()
    d = 0
    for e, c in zip(idx, consumed, strict=True):
        if c == -1:
            d += ndim - n_explicit
            continue
        if c == 0:
            continue
        if not (isinstance(e, slice) and e == slice(None)):
            touched.update(range(d, d + c))
        d += c
    return touched, True


@rule("__getitem__")
def getitem(tr: Tracer, func, args, kwargs, out) -> None:
    x, idx = args[0], args[1]
    L = lab(tr, x)
    info = _index_dims(idx, x.dim())
    if info is None or any(L.shape[d] > 1 for d in info[0]):
        pin_inputs(tr, (x,), {}, "indexing along a dim that carries channel slots")
        return blank_all(tr, out)
    shape = list(L.shape)
    for d in info[0]:
        if d < x.dim():
            shape[d] = x.shape[d]
    tr.set_label(out, compress(L.expand(shape)[idx]))


@rule("narrow", "select", "index_select", "select_scatter")
def select_along(tr: Tracer, func, args, kwargs, out) -> None:
    x = args[0]
    L = lab(tr, x)
    dim = arg(args, kwargs, 1, "dim") % x.dim()
    if L.shape[dim] > 1 or func in _RULES_SELECT_SCATTER:
        return pin_all(tr, func, args, kwargs, out)
    tr.set_label(out, L.select(dim, 0) if out.dim() < x.dim() else L)


_RULES_SELECT_SCATTER = set(resolve_function("select_scatter"))


# ---------------------------------------------------------------------------------------------------------
# spatial ops: channels pass through unchanged


def _spatial(n_spatial: int | None):
    def fn(tr: Tracer, func, args, kwargs, out) -> None:
        x = args[0] if args else kwargs.get("input")
        L = lab(tr, x)
        k = x.dim() - 2 if n_spatial is None else n_spatial
        if any(L.shape[d] > 1 for d in range(x.dim() - k, x.dim())):
            return pin_all(tr, func, args, kwargs, out)
        set_all(tr, out, L)

    return fn


for _k in (1, 2, 3):
    for _n in (
        "max_pool{}d",
        "avg_pool{}d",
        "adaptive_avg_pool{}d",
        "adaptive_max_pool{}d",
        "lp_pool{}d",
        "max_pool{}d_with_indices",
        "adaptive_max_pool{}d_with_indices",
        "fractional_max_pool{}d",
    ):
        for _f in resolve_function(_n.format(_k)):
            RULES[_f] = _spatial(_k)
for _n in ("interpolate", "upsample", "upsample_nearest", "upsample_bilinear"):
    for _f in resolve_function(_n):
        RULES[_f] = _spatial(None)


@rule("pad")
def pad(tr: Tracer, func, args, kwargs, out) -> None:
    x, p = args[0], list(arg(args, kwargs, 1, "pad"))
    L = lab(tr, x)
    for i in range(len(p) // 2):
        d = x.dim() - 1 - i
        if (p[2 * i] or p[2 * i + 1]) and L.shape[d] > 1:
            return pin_all(tr, func, args, kwargs, out)
    tr.set_label(out, L)


@rule("roll", "flip")
def roll(tr: Tracer, func, args, kwargs, out) -> None:
    x = args[0]
    L = lab(tr, x)
    dims = arg(args, kwargs, 2 if func in _ROLL else 1, "dims")
    dims = list(range(x.dim())) if dims is None else ([dims] if isinstance(dims, int) else list(dims))
    if any(L.shape[d % x.dim()] > 1 for d in dims):
        return pin_all(tr, func, args, kwargs, out)
    tr.set_label(out, L)


_ROLL = set(resolve_function("roll"))


# ---------------------------------------------------------------------------------------------------------
# reductions: fine along unlabelled dims, pinned along labelled ones (their result depends on the width)


@rule(
    "sum",
    "mean",
    "amax",
    "amin",
    "max",
    "min",
    "var",
    "std",
    "norm",
    "logsumexp",
    "prod",
    "argmax",
    "argmin",
    "all",
    "any",
    "median",
    "nansum",
    "nanmean",
    "var_mean",
    "std_mean",
    "aminmax",
    "count_nonzero",
    "softmax",
    "log_softmax",
    "softmin",
    "normalize",
    "cumsum",
    "cumprod",
    "sort",
    "argsort",
    "topk",
)
def reduce(tr: Tracer, func, args, kwargs, out) -> None:
    x = args[0]
    others = [t for t in args[1:] if isinstance(t, torch.Tensor)]
    if others:  # torch.max(a, b) and friends are element-wise
        return elementwise(tr, func, args, kwargs, out)
    L = lab(tr, x)
    res = outs(out)
    if tr.stream and site_input(func, args, kwargs) is x and cut_site(tr, x, []):
        return tr.set_label(out, blank(x.dim()))
    name = getattr(func, "__name__", "")
    if name in ("norm", "normalize"):
        dim = arg(args, kwargs, 2, "dim", None if name == "norm" else 1)
    elif name == "topk":
        dim = arg(args, kwargs, 2, "dim", -1)
    else:
        dim = arg(args, kwargs, 1, "dim", None)
        if name in ("sort", "argsort") and dim is None:
            dim = -1
    if isinstance(dim, (str, torch.dtype)):
        return pin_all(tr, func, args, kwargs, out)
    dims = list(range(x.dim())) if dim is None else ([dim] if isinstance(dim, int) else list(dim))
    if x.dim() == 0:
        dims = []
    dims = sorted({d % x.dim() for d in dims}) if x.dim() else []
    if any(L.shape[d] > 1 for d in dims):
        pin_inputs(tr, (x,), {}, f"{name} over a dim that carries channel slots depends on the channel count")
        return blank_all(tr, out)
    for t in res:
        if t.dim() == x.dim():
            tr.set_label(t, L)
        else:
            keep = [d for d in range(x.dim()) if d not in dims]
            tr.set_label(t, L.reshape([L.shape[d] for d in keep]) if len(keep) == t.dim() else blank(t.dim()))
