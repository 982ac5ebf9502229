"""Sparsity patterns: what shape the zeros take, and how a mask follows from a score tensor.

A pattern is parsed from a short string into a frozen :class:`Pattern`:

- ``"unstructured"``: any single weight may go.
- ``"N:M"`` (e.g. ``"2:4"``): in every group of ``M`` consecutive weights along the input channels keep the
  ``N`` with the highest score (NVIDIA Ampere "2:4" style; sparsity is fixed at ``1 - N/M``).
- ``"block:RxC"`` (e.g. ``"block:4x4"``): whole ``R x C`` tiles of the 2-D weight go together.

Every function here works on a weight-shaped tensor in the *canonical layout* ``(out, *kernel, in)``: output
channels first, input (reduction) channels last, kernel positions in between. A Linear weight already is
in this layout; ``prunekit.sparse.sparsify`` permutes conv weights into it (the NVIDIA ASP convention). From
the canonical tensor ``t``:

- ``N:M`` groups are ``M`` consecutive entries of ``t.reshape(-1, in)``: ``M`` must divide ``in``.
- ``block:RxC`` tiles ``t.reshape(out, -1)`` (columns ordered kernel position, then input channel): ``R`` must
  divide ``out`` and ``C`` the number of columns. A block's score is the SUM of its entries' scores (L1 of the
  block for magnitude); all blocks have the same size, so sums compare fairly across layers.

The unit of pruning is one weight (unstructured, N:M) or one block. Units whose every weight is already
masked rank first (score ``-inf``), so masks only grow and exact counts hold when a layer is pruned again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import Tensor

from prunekit.errors import ConfigError

_NM = re.compile(r"^(\d+):(\d+)$")
_BLOCK = re.compile(r"^block:(\d+)x(\d+)$")
_HELP = 'use "unstructured", "N:M" (e.g. "2:4") or "block:RxC" (e.g. "block:4x4")'


@dataclass(frozen=True)
class Pattern:
    """A parsed sparsity pattern. Build it with :func:`parse_pattern`.

    >>> parse_pattern("2:4")
    Pattern(kind='n:m', n=2, m=4, rows=0, cols=0)
    """

    kind: str  # "unstructured" | "n:m" | "block"
    n: int = 0
    m: int = 0
    rows: int = 0
    cols: int = 0

    def __str__(self) -> str:
        if self.kind == "n:m":
            return f"{self.n}:{self.m}"
        if self.kind == "block":
            return f"block:{self.rows}x{self.cols}"
        return "unstructured"

    @property
    def fixed_sparsity(self) -> float | None:
        """The sparsity the pattern implies by itself (``1 - N/M`` for N:M), else ``None``."""
        return 1.0 - self.n / self.m if self.kind == "n:m" else None

    def unfit(self, shape: tuple[int, ...]) -> str | None:
        """Why a canonical ``(out, *kernel, in)`` weight shape cannot hold the pattern (``None`` if it can).

        N:M groups run along the input channels, so those must be a multiple of M (as in NVIDIA's ASP);
        blocks tile the 2-D ``out x (kernel * in)`` view, which both block sides must divide.

        >>> parse_pattern("2:4").unfit((64, 7, 7, 3))
        '3 input channels, not a multiple of 4'
        >>> parse_pattern("block:4x4").unfit((8, 16)) is None
        True
        """
        if self.kind == "n:m" and shape[-1] % self.m:
            return f"{shape[-1]} input channels, not a multiple of {self.m}"
        if self.kind == "block":
            out, cols = shape[0], _numel(shape) // shape[0]
            if out % self.rows or cols % self.cols:
                return f"2-D weight {out}x{cols}, not a multiple of {self.rows}x{self.cols}"
        return None

    def check(self, shape: tuple[int, ...], name: str) -> None:
        """Raise :class:`ConfigError` if a canonical ``(out, *kernel, in)`` shape cannot hold the pattern.

        >>> parse_pattern("2:4").check((8, 6), "fc")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        prunekit.errors.ConfigError: pattern 2:4 does not fit layer 'fc': 6 input channels, not a multiple...
        """
        why = self.unfit(shape)
        if why is not None:
            raise ConfigError(f"pattern {self} does not fit layer {name!r}: {why}; exclude it")


def parse_pattern(spec: str | Pattern) -> Pattern:
    """Parse ``"unstructured"``, ``"N:M"`` or ``"block:RxC"`` into a :class:`Pattern`.

    >>> str(parse_pattern("block:4x2"))
    'block:4x2'
    >>> parse_pattern("foo")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    prunekit.errors.ConfigError: unknown pattern 'foo': use "unstructured", "N:M" (e.g. "2:4") or ...
    """
    if isinstance(spec, Pattern):
        return spec
    if not isinstance(spec, str):
        raise ConfigError(f"pattern must be a string, got {type(spec).__name__}: {_HELP}")
    text = spec.strip().lower()
    if text == "unstructured":
        return Pattern("unstructured")
    if match := _NM.match(text):
        n, m = int(match[1]), int(match[2])
        if not 1 <= n < m:
            raise ConfigError(f"pattern {spec!r} needs 1 <= N < M (e.g. 2:4), got N={n}, M={m}")
        return Pattern("n:m", n=n, m=m)
    if match := _BLOCK.match(text):
        rows, cols = int(match[1]), int(match[2])
        if rows < 1 or cols < 1:
            raise ConfigError(f"pattern {spec!r} needs block sides >= 1, got {rows}x{cols}")
        return Pattern("block", rows=rows, cols=cols)
    raise ConfigError(f"unknown pattern {spec!r}: {_HELP}")


def unit_scores(pattern: Pattern, scores: Tensor, kept: Tensor) -> Tensor:
    """Score of every pruning unit of one layer (canonical layout), ``-inf`` where a unit is already masked.

    ``kept`` is the layer's current mask (1 = kept). Returns a tensor of weights' shape for unstructured
    and N:M, and an ``(out/R, cols/C)`` tensor of block sums for blocks.

    >>> unit_scores(parse_pattern("block:1x2"), torch.tensor([[1.0, 2.0, 3.0, 4.0]]), torch.ones(1, 4))
    tensor([[3., 7.]])
    """
    kept = kept.bool()
    if pattern.kind != "block":
        return scores.masked_fill(~kept, float("-inf"))
    out = scores.shape[0]
    grid = (out // pattern.rows, pattern.rows, -1, pattern.cols)
    sums = scores.masked_fill(~kept, 0).reshape(grid).sum(dim=(1, 3))
    alive = kept.reshape(grid).any(dim=3).any(dim=1)
    return sums.masked_fill(~alive, float("-inf"))


def lowest_k(scores: Tensor, k: int) -> Tensor:
    """Boolean mask of exactly ``k`` entries of a 1-D tensor with the lowest scores.

    Ties are broken by position (earlier goes first), so the count is exact even when many scores are equal.

    >>> lowest_k(torch.tensor([0.0, 1.0, 0.0, 0.0]), 2)
    tensor([ True, False,  True, False])
    """
    pruned = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    if k <= 0:
        return pruned
    if k >= scores.numel():
        return ~pruned
    threshold = scores.kthvalue(k).values
    pruned = scores < threshold
    need = k - int(pruned.sum())
    ties = (scores == threshold).nonzero().flatten()[:need]
    pruned[ties] = True
    return pruned


def nm_keep(pattern: Pattern, scores: Tensor, kept: Tensor) -> Tensor:
    """Keep-mask (bool, canonical layout) with the ``N`` best of every ``M`` along the last dim.

    Already masked weights stay masked, so a group may end with fewer than ``N`` kept (never more).

    >>> nm_keep(parse_pattern("2:4"), torch.tensor([[4.0, 1.0, 3.0, 2.0]]), torch.ones(1, 4))
    tensor([[ True, False,  True, False]])
    """
    units = unit_scores(pattern, scores, kept).reshape(-1, pattern.m)
    order = torch.sort(units, dim=1, descending=True, stable=True).indices
    keep = torch.zeros_like(units, dtype=torch.bool)
    keep.scatter_(1, order[:, : pattern.n], True)
    return (keep.reshape(scores.shape)) & kept.bool()


def expand_units(pattern: Pattern, pruned_units: Tensor, shape: tuple[int, ...]) -> Tensor:
    """Turn a pruned-units mask (from :func:`lowest_k`) back into a canonical keep-mask of ``shape``.

    >>> expand_units(parse_pattern("block:1x2"), torch.tensor([[True, False]]), (1, 4))
    tensor([[False, False,  True,  True]])
    """
    if pattern.kind != "block":
        return ~pruned_units.reshape(shape)
    tiles = pruned_units.repeat_interleave(pattern.rows, 0).repeat_interleave(pattern.cols, 1)
    return ~tiles.reshape(shape)


def _numel(shape: tuple[int, ...]) -> int:
    total = 1
    for size in shape:
        total *= size
    return total
