"""Unstructured, N:M and block sparsity as weight masks (``torch.nn.utils.parametrize``).

>>> import torch
>>> from torch import nn
>>> from prunekit.sparse import remove_masks, sparsify, sparsity_report
>>> model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
>>> result = sparsify(model, 0.3, exclude=["2"])
>>> print(sparsity_report(model))
Sparsity in 0.weight: 30.08%
Sparsity in 2.weight: 0.00%
Global sparsity: 24.06%
>>> _ = remove_masks(model)  # permanent; outputs unchanged
"""

from __future__ import annotations

import sys

from prunekit.sparse import unstructured as _unstructured
from prunekit.sparse.masks import Mask, apply_masks, get_mask, is_masked, remove_masks
from prunekit.sparse.patterns import Pattern, parse_pattern
from prunekit.sparse.report import SparsityReport, SparsityRow, sparsity_report
from prunekit.sparse.unstructured import (
    LayerSparsity,
    SparsifyResult,
    masks_from_scores,
    select_layers,
    sparsify,
)

# ``prunekit.sparse.sparsify`` is the function; the module defining it is ``prunekit.sparse.unstructured``.
# Its former dotted path stays importable for one release
# (``from prunekit.sparse.sparsify import Selector``).
sys.modules.setdefault(f"{__name__}.sparsify", _unstructured)

__all__ = [
    "LayerSparsity",
    "Mask",
    "Pattern",
    "SparsifyResult",
    "SparsityReport",
    "SparsityRow",
    "apply_masks",
    "get_mask",
    "is_masked",
    "masks_from_scores",
    "parse_pattern",
    "remove_masks",
    "select_layers",
    "sparsify",
    "sparsity_report",
]
