"""``sparsity_report``: how many weights of each Linear/Conv layer are zero, and over the whole model.

It counts zero VALUES of the effective weight (``layer.weight``, masked if a mask is on), like the classic
check ``100 * float((model.fc1.weight == 0).sum()) / model.fc1.weight.nelement()``. Every prunable layer gets
a row, masked or not; a weight shared by several layers is counted once; lazy, uninitialised layers are
skipped. Biases, norms and embeddings are not counted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from rich.table import Table
from torch import nn
from torch.nn.utils import parametrize

from prunekit.sparse.masks import get_mask
from prunekit.sparse.sparsify import PRUNABLE


@dataclass
class SparsityRow:
    """One layer's weight: ``zeros`` of ``numel`` values are zero; ``masked`` if a prunekit mask is on it."""

    name: str
    kind: str
    shape: tuple[int, ...]
    numel: int
    zeros: int
    masked: bool

    @property
    def sparsity(self) -> float:
        return self.zeros / self.numel if self.numel else 0.0


@dataclass
class SparsityReport:
    """Per-layer and global sparsity of a model's prunable weights."""

    rows: list[SparsityRow]

    @property
    def numel(self) -> int:
        return sum(row.numel for row in self.rows)

    @property
    def zeros(self) -> int:
        return sum(row.zeros for row in self.rows)

    @property
    def sparsity(self) -> float:
        """Global sparsity: zero weights / all weights of the reported layers."""
        return self.zeros / self.numel if self.numel else 0.0

    def lines(self) -> list[str]:
        """The classic check, one line per layer then the global line.

        >>> SparsityReport([SparsityRow("fc1", "Linear", (2, 2), 4, 1, True)]).lines()
        ['Sparsity in fc1.weight: 25.00%', 'Global sparsity: 25.00%']
        """
        out = [f"Sparsity in {_param(row.name)}: {100.0 * row.sparsity:.2f}%" for row in self.rows]
        out.append(f"Global sparsity: {100.0 * self.sparsity:.2f}%")
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())

    def to_dict(self) -> dict:
        """JSON-serialisable: ``{"layers": {name: {...}}, "numel", "zeros", "sparsity"}``."""
        return {
            "layers": {
                row.name: {
                    "kind": row.kind,
                    "shape": list(row.shape),
                    "numel": row.numel,
                    "zeros": row.zeros,
                    "sparsity": row.sparsity,
                    "masked": row.masked,
                }
                for row in self.rows
            },
            "numel": self.numel,
            "zeros": self.zeros,
            "sparsity": self.sparsity,
        }

    def table(self, notes: Mapping[str, str] | None = None) -> Table:
        """A rich table: one row per layer and a footer over all prunable weights of the report.

        ``notes`` (layer name -> text) fills a "Note" column, e.g. why :func:`~prunekit.sparse.sparsify`
        skipped a layer.

        >>> rep = SparsityReport([SparsityRow("fc", "Linear", (2, 2), 4, 1, False)])
        >>> rep.table(notes={"fc": "skipped"}).columns[-1].header
        'Note'
        """
        table = Table(title="Sparsity of prunable weights (Linear / Conv)", show_footer=True)
        table.add_column("Layer", footer="all prunable weights")
        table.add_column("Kind")
        table.add_column("Shape")
        table.add_column("Weights", justify="right", footer=f"{self.numel:,}")
        table.add_column("Zeros", justify="right", footer=f"{self.zeros:,}")
        table.add_column("Sparsity", justify="right", footer=f"{100.0 * self.sparsity:.2f}%")
        table.add_column("Masked")
        if notes:
            table.add_column("Note")
        for row in self.rows:
            note = [notes.get(row.name, "")] if notes else []
            table.add_row(
                _param(row.name),
                row.kind,
                "x".join(str(s) for s in row.shape),
                f"{row.numel:,}",
                f"{row.zeros:,}",
                f"{100.0 * row.sparsity:.2f}%",
                "yes" if row.masked else "no",
                *note,
            )
        return table

    def __rich__(self) -> Table:
        return self.table()


def sparsity_report(model: nn.Module) -> SparsityReport:
    """Count zero weights in every Linear / Conv / ConvTranspose layer of ``model``.

    >>> model = nn.Sequential(nn.Linear(4, 4))
    >>> with torch.no_grad():
    ...     model[0].weight[:2] = 0
    >>> print(sparsity_report(model))
    Sparsity in 0.weight: 50.00%
    Global sparsity: 50.00%
    """
    rows, seen = [], set()
    with torch.no_grad():
        for name, module in model.named_modules():
            if not isinstance(module, PRUNABLE):
                continue
            mask = get_mask(module)
            stored = module.parametrizations.weight.original if mask is not None else module.weight
            if isinstance(stored, nn.parameter.UninitializedParameter) or id(stored) in seen:
                continue
            seen.add(id(stored))
            weight = module.weight
            kind = parametrize.type_before_parametrizations(module).__name__
            zeros = int((weight == 0).sum())
            rows.append(SparsityRow(name, kind, tuple(weight.shape), weight.numel(), zeros, mask is not None))
    return SparsityReport(rows)


def _param(name: str) -> str:
    return f"{name}.weight" if name else "weight"
