"""How closely a runtime reproduces PyTorch, judged the same way for every runtime.

fp32: the largest absolute difference over all outputs, divided by the output's scale (the largest absolute
value PyTorch gives), must stay within ``Tolerance.fp32_rel``. INT8 cannot meet that; it is judged by the
cosine similarity of each output with PyTorch's and by how often the arg-max over the last axis of the first
output agrees (top-1 for a classifier).

>>> import numpy as np
>>> ref = [np.array([[1.0, 3.0, 2.0]])]
>>> compare(ref, [np.array([[1.0, 3.0005, 2.0]])]).ok
True
>>> compare(ref, [np.array([[3.0, 1.0, 2.0]])], int8=True).ok
False
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from prunekit._jsondata import JsonData
from prunekit.deploy.runtimes.base import Tolerance


@dataclass
class Agreement(JsonData):
    """The outcome of :func:`compare`; ``ok`` says whether it is within the tolerance, ``note`` why not."""

    ok: bool
    criterion: str
    rel_err: float
    max_abs_err: float
    cosine: float
    top1: float
    note: str = ""

    def summary(self) -> str:
        """A few characters for a table cell, e.g. ``rel 2e-06`` or ``cos 0.999 top1 1.00``."""
        if self.note:
            return self.note
        if self.criterion == "fp32":
            return f"rel {self.rel_err:.0e}" + ("" if self.ok else " FAIL")
        return f"cos {self.cosine:.3f} top1 {self.top1:.2f}" + ("" if self.ok else " FAIL")


def _numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    array = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return array.astype(np.float64)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.dot(a.ravel(), b.ravel()) / norm) if norm else float(np.array_equal(a, b))


def compare(
    reference: Sequence[np.ndarray | torch.Tensor],
    outputs: Sequence[np.ndarray],
    *,
    int8: bool = False,
    tolerance: Tolerance | None = None,
) -> Agreement:
    """Compare a runtime's ``outputs`` with PyTorch's ``reference`` (same order, same shapes).

    A different number of outputs, or a shape that differs, gives ``ok=False`` with a ``note`` naming it.

    >>> compare([np.ones((1, 2))], [np.ones((2, 1))]).note
    'output 0 shape (2, 1), PyTorch (1, 2)'
    """
    tol = tolerance or Tolerance()
    criterion = "int8" if int8 else "fp32"
    nan = float("nan")
    if len(reference) != len(outputs):
        note = f"{len(outputs)} outputs, PyTorch {len(reference)}"
        return Agreement(False, criterion, nan, nan, nan, nan, note)
    refs, gots = [_numpy(r) for r in reference], [_numpy(o) for o in outputs]
    for i, (ref, got) in enumerate(zip(refs, gots, strict=True)):
        if ref.shape != got.shape:
            return Agreement(
                False, criterion, nan, nan, nan, nan, f"output {i} shape {got.shape}, PyTorch {ref.shape}"
            )
    pairs = [(r, g) for r, g in zip(refs, gots, strict=True) if r.size]
    max_abs = max((float(np.max(np.abs(r - g))) for r, g in pairs), default=0.0)
    scale = max((float(np.max(np.abs(r))) for r in refs if r.size), default=0.0)
    rel = max_abs / scale if scale else max_abs
    cosine = min((_cosine(r, g) for r, g in pairs), default=1.0)
    first_ref, first_got = refs[0], gots[0]
    top1 = 1.0
    if first_ref.ndim >= 1 and first_ref.size:
        top1 = float(np.mean(first_ref.argmax(axis=-1) == first_got.argmax(axis=-1)))
    ok = cosine >= tol.int8_cosine and top1 >= tol.int8_top1 if int8 else rel <= tol.fp32_rel
    return Agreement(bool(ok), criterion, rel, max_abs, cosine, top1)
