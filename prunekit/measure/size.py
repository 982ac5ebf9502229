"""Model size: bytes of the saved weights (safetensors) and of the same bytes compressed with zstandard.

What is saved is the model as it would be deployed: every unique parameter by its *effective* value
(masked weights with their zeros, not the dense original plus a mask) and the persistent buffers
(e.g. BatchNorm running statistics), without mask buffers. Tied tensors are saved once. Zeros left by
unstructured pruning do not shrink ``dense_bytes``; they show in ``compressed_bytes``.
"""

from __future__ import annotations

from dataclasses import dataclass

import safetensors.torch
import torch
import zstandard
from torch import nn
from torch.nn.utils import parametrize

from prunekit._jsondata import JsonData
from prunekit.errors import ConfigError
from prunekit.measure.params import named_effective_parameters, pruning_hooks

DEFAULT_ZSTD_LEVEL = 9


@dataclass
class SizeInfo(JsonData):
    """``dense_bytes``: safetensors file size; ``compressed_bytes``: that file compressed with ``codec``."""

    dense_bytes: int
    compressed_bytes: int
    codec: str

    _derived = ("ratio",)

    @property
    def ratio(self) -> float:
        """``dense_bytes / compressed_bytes``."""
        return self.dense_bytes / self.compressed_bytes


def _mask_state_names(model: nn.Module) -> set[str]:
    """State-dict names that belong to masks or to the stored (unmasked) originals of masked tensors."""
    skip = set()
    state = model.state_dict(keep_vars=True)
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        if parametrize.is_parametrized(module):
            inner = f"{prefix}parametrizations."
            skip.update(name for name in state if name.startswith(inner))
        for hook in pruning_hooks(module):
            skip.update({f"{prefix}{hook._tensor_name}_orig", f"{prefix}{hook._tensor_name}_mask"})
    return skip


def effective_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU copies of what a deployed ``model`` stores: effective parameters + buffers.

    Parameters come from :func:`~prunekit.measure.params.named_effective_parameters` (unique, masks applied);
    persistent buffers come from ``state_dict`` minus mask buffers, each shared buffer once. Every tensor is a
    fresh copy, so the result can be given to ``safetensors`` even when the model shares storage.

    >>> sorted(effective_state_dict(nn.BatchNorm1d(4)))
    ['bias', 'num_batches_tracked', 'running_mean', 'running_var', 'weight']
    """
    out = {
        name: t.cpu().clone(memory_format=torch.contiguous_format)
        for name, t in named_effective_parameters(model)
    }
    skip = _mask_state_names(model)
    seen: set[int] = set()
    for name, value in model.state_dict(keep_vars=True).items():
        if name in skip or isinstance(value, nn.Parameter) or id(value) in seen:
            continue
        seen.add(id(value))
        out[name] = value.detach().cpu().clone(memory_format=torch.contiguous_format)
    return out


def check_zstd_level(zstd_level: int) -> None:
    """Raise :class:`~prunekit.errors.ConfigError` unless ``zstd_level`` is a zstd level in [1, 22].

    >>> check_zstd_level(19)
    """
    if not 1 <= zstd_level <= 22:
        raise ConfigError(f"zstd_level must be in [1, 22], got {zstd_level}")


def model_size(model: nn.Module, *, zstd_level: int = DEFAULT_ZSTD_LEVEL) -> SizeInfo:
    """Size of ``model``'s effective state dict as safetensors bytes, and compressed with zstandard.

    The default level 9 is fast (~0.05 s per MB of weights on one core); pass ``zstd_level=19`` for close to
    the best ratio zstd reaches (about 20 % smaller on 90 %-sparse weights, but 0.5-1.5 s per MB).

    >>> model_size(nn.Linear(10, 5)).codec
    'zstd-9'
    """
    check_zstd_level(zstd_level)
    data = safetensors.torch.save(effective_state_dict(model))
    compressed = zstandard.ZstdCompressor(level=zstd_level).compress(data)
    return SizeInfo(dense_bytes=len(data), compressed_bytes=len(compressed), codec=f"zstd-{zstd_level}")
