"""Module attributes that state the size of one of the module's own tensors (``Linear.in_features``, ...).

:func:`shape_attrs` is the one table of them: ``attr -> (tensor, dim, factor)`` meaning
``module.attr == module.<tensor>.shape[dim] * factor``. The trace records every such attribute of every
module holding a cut tensor (:func:`record_shape_attrs`), so a plan updates them all: the second holder of a
tied weight, a module whose forward never ran, ``out_proj`` of ``nn.MultiheadAttention`` (its weight is read
by the attention op, not by ``linear``). :mod:`prunekit.structured.consistency` checks them after a cut.

>>> shape_attrs(torch.nn.Linear(3, 4))
{'out_features': ('weight', 0, 1), 'in_features': ('weight', 1, 1)}
"""

from __future__ import annotations

import torch
from torch import nn

from prunekit.graph.trace import Tracer

#: (tensor local name, dim, factor)
Spec = tuple[str, int, int]


def shape_attrs(module: nn.Module, groups: int | None = None) -> dict[str, Spec]:
    """The size attributes of ``module`` and the tensor dim each one states (empty for other classes).

    ``groups`` overrides a conv's ``groups`` (the factor of its grouped dim), for a plan that changes it.
    """
    if isinstance(module, nn.modules.conv._ConvNd):
        g = module.groups if groups is None else groups
        if module.transposed:  # weight (in, out / groups, *k)
            return {"in_channels": ("weight", 0, 1), "out_channels": ("weight", 1, g)}
        return {"out_channels": ("weight", 0, 1), "in_channels": ("weight", 1, g)}
    if isinstance(module, nn.Linear):
        return {"out_features": ("weight", 0, 1), "in_features": ("weight", 1, 1)}
    if isinstance(module, nn.Bilinear):
        return {
            "out_features": ("weight", 0, 1),
            "in1_features": ("weight", 1, 1),
            "in2_features": ("weight", 2, 1),
        }
    if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
        return {"num_embeddings": ("weight", 0, 1), "embedding_dim": ("weight", 1, 1)}
    if isinstance(module, nn.modules.batchnorm._NormBase):  # BatchNorm*, InstanceNorm*
        return {"num_features": ("weight" if module.affine else "running_mean", 0, 1)}
    if isinstance(module, nn.GroupNorm):
        return {"num_channels": ("weight", 0, 1)}
    if isinstance(module, nn.PReLU):
        return {"num_parameters": ("weight", 0, 1)}
    if isinstance(module, nn.RNNBase):
        sizes = {"input_size": ("weight_ih_l0", 1, 1)}
        return sizes | ({} if module.proj_size else {"hidden_size": ("weight_hh_l0", 1, 1)})
    if isinstance(module, nn.MultiheadAttention) and module._qkv_same_embed_dim:
        spec = ("in_proj_weight", 1, 1)
        return {"embed_dim": spec, "kdim": spec, "vdim": spec}
    return {}


def tensor_of(module: nn.Module, local: str) -> torch.Tensor | None:
    """The parameter or buffer ``local`` held directly by ``module`` (None if absent)."""
    t = module._parameters.get(local)
    return t if t is not None else module._buffers.get(local)


def record_shape_attrs(tr: Tracer) -> None:
    """Record the size attributes of every module holding a traced tensor dim that the cut may shrink.

    A rule may have recorded the attribute already (with the slots it saw): that record is kept.
    """
    done = {(rec.module, rec.attr) for rec in tr.attrs}
    for mname, module in tr.model.named_modules(remove_duplicate=False):
        for attr, (local, dim, factor) in shape_attrs(module).items():
            t = tensor_of(module, local)
            if t is None or (mname, attr) in done or t.dim() <= dim:
                continue
            slots = tr.allocated(t, dim)
            old = getattr(module, attr, None)
            if slots is None or not isinstance(old, int) or old != len(slots) * factor:
                continue
            tr.attr(mname, module, attr, slots.repeat(factor) if factor > 1 else slots)
            done.add((mname, attr))
