"""``criterion="sparsegpt"``: SparseGPT as a mask-making method behind the criterion name lookup.

SparseGPT (:mod:`prunekit.sparse.sparsegpt`) prunes layer by layer and rewrites the kept weights, so it
gives masks rather than scores: ``sparsify`` calls :meth:`SparseGPT.masks`; structured pruning raises a
:class:`~prunekit.errors.ConfigError` saying so.

>>> from prunekit.criteria import get_criterion
>>> get_criterion("sparsegpt").needs_data, get_criterion("sparsegpt").scores_weights
(True, False)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from prunekit.criteria import register_criterion
from prunekit.criteria.base import Criterion
from prunekit.errors import ConfigError


class SparseGPT(Criterion):
    """Masks (and reconstructed kept weights) from :func:`prunekit.sparse.sparsegpt.sparsegpt_masks`."""

    name = "sparsegpt"
    needs_data = True

    def masks(
        self, model: nn.Module, names: list[str], sparsity: float, pattern: Any, scope: str, data: Any
    ) -> dict[str, torch.Tensor]:
        from prunekit.sparse.masks import get_mask
        from prunekit.sparse.sparsegpt import check_sparsegpt_layer, sparsegpt_masks

        if scope != "local":
            raise ConfigError("sparsegpt prunes layer by layer: use scope='local'")
        modules = dict(model.named_modules())
        for name in names:
            check_sparsegpt_layer(modules[name], name)
            if get_mask(modules[name]) is not None:
                raise ConfigError(f"sparsegpt needs unmasked layers; {name!r} is masked: remove_masks first")
        return sparsegpt_masks(model, names, data, sparsity, pattern)


register_criterion("sparsegpt", SparseGPT())
