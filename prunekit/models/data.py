"""Data named on the command line (``--data``, ``--val-data``, recipes): files, the bundled digits, factories.

``load_batches(spec)`` reads:

- ``PATH.pt`` / ``PATH.pth``: ``torch.save`` of a tensor ``x``, a pair ``(x, y)`` or a dict
  ``{"x": ..., "y": ...}`` (loaded with ``weights_only=True``: no pickle code runs);
- ``PATH.npz``: arrays ``x`` and optionally ``y``;
- ``digits``: the bundled digits training split (``(N, 1, 8, 8)`` images and labels, as ``prunekit demo``);
- ``module.path:factory``: a callable returning an iterable of batches, used as it is;

and cuts the tensors into batches of ``batch_size`` (the first ``max_batches`` only, when given): tensors
``x`` or pairs ``(x, y)``, the batch format every data-driven criterion and ``finetune`` take. With
``shuffle=True`` (training) the result is a seeded, reshuffling ``DataLoader`` of ``(x, y)`` pairs.

>>> len(load_batches("digits", batch_size=64, max_batches=3)), load_batches("digits", 8, 1)[0][0].shape
(3, torch.Size([8, 1, 8, 8]))
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from prunekit.errors import ConfigError

DATA_HELP = (
    "a .pt/.pth holding x, (x, y) or {'x': ..., 'y': ...}, a .npz with arrays x (and y), 'digits', "
    "or module.path:factory returning an iterable of batches"
)


def _read(spec: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    if spec == "digits":
        from prunekit.demo.data import load_splits

        s = load_splits()
        return s.x_train, s.y_train
    path = Path(spec)
    if not path.is_file():
        raise ConfigError(f"--data {spec!r}: no such file (give a .pt/.pth/.npz file, 'digits' or a factory)")
    if path.suffix in (".pt", ".pth"):
        try:
            obj: Any = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ConfigError(f"--data {spec!r}: cannot load it as tensors ({type(exc).__name__})") from exc
        if isinstance(obj, dict):
            if "x" not in obj:
                raise ConfigError(f"--data {spec!r}: a dict needs an 'x' entry (and optionally 'y')")
            return obj["x"], obj.get("y")
        if isinstance(obj, (tuple, list)) and len(obj) == 2:
            return obj[0], obj[1]
        return obj, None
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            if "x" not in z:
                raise ConfigError(f"--data {spec!r}: the .npz needs an array named 'x' (and optionally 'y')")
            return torch.from_numpy(z["x"]), torch.from_numpy(z["y"]) if "y" in z else None
    raise ConfigError(f"--data {spec!r}: unknown format {path.suffix!r}; use .pt, .pth or .npz")


def load_batches(
    spec: str, batch_size: int = 64, max_batches: int | None = None, *, shuffle: bool = False, seed: int = 0
) -> Any:
    """Batches ``x`` or ``(x, y)`` read from ``spec`` (see the module docstring)."""
    if not Path(spec).suffix and ":" in spec and spec != "digits":
        from prunekit.models.spec import call_factory

        return call_factory(spec, what="an iterable of batches")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch size must be a positive integer, got {batch_size!r}")
    if max_batches is not None and (not isinstance(max_batches, int) or max_batches < 1):
        raise ConfigError(f"max batches must be a positive integer or None, got {max_batches!r}")
    x, y = _read(spec)
    if not isinstance(x, torch.Tensor) or x.dim() < 1 or len(x) == 0:
        raise ConfigError(f"--data {spec!r}: x must be a non-empty tensor with a batch dimension")
    if y is not None and (not isinstance(y, torch.Tensor) or len(y) != len(x)):
        raise ConfigError(f"--data {spec!r}: y must be a tensor with one entry per row of x ({len(x)})")
    if x.is_floating_point():
        x = x.float()
    if shuffle:
        if y is None:
            raise ConfigError(f"--data {spec!r}: training needs targets: store y next to x")
        generator = torch.Generator().manual_seed(seed)
        return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True, generator=generator)
    out = []
    for i in range(0, len(x), batch_size):
        out.append(x[i : i + batch_size] if y is None else (x[i : i + batch_size], y[i : i + batch_size]))
        if max_batches is not None and len(out) >= max_batches:
            break
    return out
