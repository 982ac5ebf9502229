"""Label tensors: which channel slot each position of a traced tensor belongs to.

A label is an int64 tensor with the same number of dims as the real tensor. Each label dim is either the real
size (some slot varies along it) or 1 ("no slot varies along this dim": batch, spatial, tokens). ``-1`` means
"no slot": a position that can never be removed (model inputs, tensors built from Python ints, pinned ops).
Labels therefore stay tiny: a (1, 64, 112, 112) activation has a (1, 64, 1, 1) label.

>>> compress(torch.tensor([[3, 3, 3]])).tolist()
[[3]]
"""

from __future__ import annotations

import math

import torch

NO_SLOT = -1


def blank(ndim: int) -> torch.Tensor:
    """A label with no slot anywhere, for a tensor of ``ndim`` dims."""
    return torch.full((1,) * ndim, NO_SLOT, dtype=torch.long)


def align(label: torch.Tensor, ndim: int) -> torch.Tensor:
    """Left-pad ``label`` with size-1 dims to ``ndim`` dims (broadcasting alignment)."""
    if label.dim() == ndim:
        return label
    if label.dim() > ndim:
        extra = label.dim() - ndim
        if any(s != 1 for s in label.shape[:extra]):
            raise ValueError(f"cannot align label of shape {tuple(label.shape)} to {ndim} dims")
        return label.reshape(label.shape[extra:])
    return label.reshape((1,) * (ndim - label.dim()) + tuple(label.shape))


def varying(label: torch.Tensor) -> list[int]:
    """Dims along which some slot varies (label size > 1)."""
    return [d for d, s in enumerate(label.shape) if s > 1]


def compress(label: torch.Tensor, dims: list[int] | None = None) -> torch.Tensor:
    """Shrink every dim along which ``label`` is constant to size 1."""
    for d in range(label.dim()) if dims is None else dims:
        if label.shape[d] > 1:
            first = label.narrow(d, 0, 1)
            if torch.equal(label, first.expand_as(label)):
                label = first
    return label


def along(label: torch.Tensor, dim: int, size: int) -> tuple[torch.Tensor, bool]:
    """Slot of each position along ``dim`` (length ``size``), and whether the label varies elsewhere too."""
    dim = dim % label.dim()
    others = any(s > 1 for d, s in enumerate(label.shape) if d != dim)
    index = [0] * label.dim()
    index[dim] = slice(None)
    vec = label[tuple(index)]
    return vec.expand(size).contiguous(), others


def reshape_blocks(s_in: list[int], s_out: list[int]) -> list[tuple[list[int], list[int]]] | None:
    """Pair up groups of input and output dims (ignoring size-1 dims) that a reshape maps onto each other."""
    ins = [d for d, n in enumerate(s_in) if n != 1]
    outs = [d for d, n in enumerate(s_out) if n != 1]
    if 0 in s_in or 0 in s_out:
        return None
    blocks, i, j = [], 0, 0
    while i < len(ins) and j < len(outs):
        bi, bo = [ins[i]], [outs[j]]
        pi, po = s_in[ins[i]], s_out[outs[j]]
        i, j = i + 1, j + 1
        while pi != po:
            if pi < po:
                if i == len(ins):
                    return None
                bi.append(ins[i])
                pi *= s_in[ins[i]]
                i += 1
            else:
                if j == len(outs):
                    return None
                bo.append(outs[j])
                po *= s_out[outs[j]]
                j += 1
        blocks.append((bi, bo))
    if i != len(ins) or j != len(outs):
        return None
    return blocks


def reshape_label(
    label: torch.Tensor, s_in: list[int], s_out: list[int]
) -> tuple[torch.Tensor, list[list[int]]] | None:
    """Label of ``x.reshape(s_out)`` given the label of ``x`` (shape ``s_in``).

    Only the dim blocks that carry slots are materialised. Returns the new label and the "splits": blocks
    where dims carrying slots became several dims of size > 1 (e.g. C -> (heads, head_dim)), as lists of
    output dims, whichever of them the slots now vary along. Returns None when the shapes cannot be matched.

    >>> lab, splits = reshape_label(torch.arange(2).repeat_interleave(6).view(1, 12), [1, 12], [1, 2, 6])
    >>> lab.shape, splits  # the slots vary along the first dim only, and the block is still a split
    (torch.Size([1, 2, 1]), [[1, 2]])
    """
    blocks = reshape_blocks(s_in, s_out)
    if blocks is None:
        return None
    lab = label.reshape([label.shape[d] for d in range(len(s_in)) if s_in[d] != 1])
    expand_shape: list[int] = []
    new_shape: list[int] = []
    materialised: list[list[int]] = []
    for bi, bo in blocks:
        if any(label.shape[d] > 1 for d in bi):
            expand_shape += [s_in[d] for d in bi]
            new_shape += [s_out[d] for d in bo]
            materialised.append(bo)
        else:
            expand_shape += [1] * len(bi)
            new_shape += [1] * len(bo)
    lab = lab.expand(expand_shape).reshape(new_shape)
    full = [1] * len(s_out)
    k = 0
    for d, n in enumerate(s_out):
        if n != 1:
            full[d] = new_shape[k]
            k += 1
    lab = lab.reshape(full)
    lab = compress(lab, [d for bo in materialised for d in bo])
    splits = [bo for bo in materialised if len(bo) >= 2]
    return lab, splits


def numel(shape: list[int] | tuple[int, ...]) -> int:
    return math.prod(shape)
