"""The exactness oracle: a physically pruned model must equal the *masked reference*.

Masked reference (precise definition): a deep copy of the ORIGINAL model, in eval mode, in which every
parameter and buffer entry that the plan removes — for each cut ``(name, dim, indices)``, the slice
``tensor.index_select(dim, indices)`` — is set to zero in place; nothing else changes (no module attribute,
no shape, no code path). It computes with the full original widths. The pruned model computes with the
reduced widths. Both run on the same example inputs under ``torch.no_grad()`` in eval mode; every output
tensor (flattened from tuples/lists/dicts/dataclasses, in order) is compared.

Pass criterion, per output tensor and in float64: ``max|pruned - ref| <= rtol * max|ref| + atol`` with
``rtol = 1e-4`` (fp32 rounding) and ``atol = 1e-30`` (an absolute epsilon that matters only for outputs that
are exactly zero), output shapes equal and no NaN/inf. The tolerance follows each output's own scale: an
untrained model whose outputs are ~1e-9 is judged as strictly as a trained one. ``rel_err`` is the largest
``max|pruned - ref| / max|ref|`` over the outputs; outputs whose largest value is below ``TINY`` (1e-6) are
flagged (``Comparison.tiny``), since fp32 models that small are usually untrained and may leave channels
unexercised. With ``compare_at`` (``check(..., compare_at="head")``) the outputs of that submodule are
compared instead of the model's. Discrete decisions (top-k, sort, argmax, comparisons, NMS) taken on inputs
that agree within the tolerance are replayed from the reference into the pruned run
(:mod:`prunekit.structured.replay`): a near-tie flipped by rounding is not an error.

>>> import torch
>>> from prunekit.plan import Plan
>>> net = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
>>> plan = Plan(removals={"0.weight": {0: [0]}, "0.bias": {0: [0]}, "2.weight": {1: [0]}},
...             signature={"0.weight": [4, 2], "0.bias": [4], "2.weight": [1, 4]})
>>> ref = masked_reference(net, plan); float(ref[0].weight.detach()[0].abs().sum())
0.0
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from prunekit._inputs import ExampleInputs, call_model, eval_scope, flatten_tensors
from prunekit.errors import ConfigError
from prunekit.plan import Plan
from prunekit.structured.replay import Decisions

RTOL = 1e-4
ATOL = 1e-30  #: absolute epsilon for outputs that are exactly zero
TINY = 1e-6  #: outputs whose largest magnitude is below this are flagged as too small to judge well


def _removed(model: nn.Module, plan: Plan) -> Iterator[tuple[torch.Tensor, int, torch.Tensor]]:
    """(tensor, dim, indices) of every cut of ``plan``, on ``model``'s own tensors."""
    state = dict(model.named_parameters(remove_duplicate=False))
    state.update(dict(model.named_buffers(remove_duplicate=False)))
    for name, dims in plan.removals.items():
        t = state[name]
        for dim, idx in dims.items():
            yield t, dim, torch.as_tensor(idx, dtype=torch.long, device=t.device)


def masked_reference(model: nn.Module, plan: Plan) -> nn.Module:
    """A deep copy of ``model`` (eval mode) with every entry the plan removes set to zero."""
    ref = copy.deepcopy(model).eval()
    with torch.no_grad():
        for t, dim, idx in _removed(ref, plan):
            t.index_fill_(dim, idx, 0)
    return ref


@contextlib.contextmanager
def masked_in_place(model: nn.Module, plan: Plan) -> Iterator[nn.Module]:
    """``model`` itself as the masked reference inside the block; every zeroed entry is put back bit-exactly.

    No copy of the model: only the removed entries are saved (what the cut frees anyway).

    >>> from prunekit.plan import Plan
    >>> lin = torch.nn.Linear(2, 3)
    >>> before = lin.weight.detach().clone()
    >>> with masked_in_place(lin, Plan(removals={"weight": {0: [1]}}, signature={"weight": [3, 2]})):
    ...     float(lin.weight.detach()[1].abs().sum())
    0.0
    >>> torch.equal(lin.weight.detach(), before)
    True
    """
    saved = []
    try:
        with torch.no_grad():
            for t, dim, idx in _removed(model, plan):
                saved.append((t, dim, idx, t.index_select(dim, idx)))
                t.index_fill_(dim, idx, 0)
        yield model
    finally:
        with torch.no_grad():
            for t, dim, idx, old in reversed(saved):  # reverse: entries cut along two dims end original
                t.index_copy_(dim, idx, old)


@dataclass
class Reference:
    """The masked reference's outputs on the example inputs, and the discrete decisions its forward took."""

    outputs: list[torch.Tensor]
    decisions: Decisions


def reference_outputs(
    model: nn.Module, plan: Plan, example_inputs: ExampleInputs, at: str | None = None
) -> Reference:
    """Run the masked reference of ``plan`` on ``example_inputs`` from ``model`` itself (masked in place)."""
    decisions = Decisions(RTOL)
    with masked_in_place(model, plan), decisions.recording():
        outputs = [t.clone() for t in run_outputs(model, example_inputs, at)]  # outputs may alias state
    return Reference(outputs, decisions)


def compare_with(
    model: nn.Module, reference: Reference, example_inputs: ExampleInputs, at: str | None = None
) -> Comparison:
    """Run the pruned ``model`` with ``reference``'s decisions replayed and compare with its outputs."""
    with reference.decisions.replaying():
        outputs = run_outputs(model, example_inputs, at, reference.decisions.stack)
    return compare(outputs, reference.outputs)


def run_outputs(
    model: nn.Module, example_inputs: ExampleInputs, at: str | None = None, stack: list[str] | None = None
) -> list[torch.Tensor]:
    """All output tensors of one eval-mode, no-grad forward: of the model, or of its submodule ``at``.

    ``at`` names the module whose outputs are compared instead of the model's (every call of it, in order):
    a detector's head, before the top-k and non-maximum suppression that follow it. Those are exact too, but
    discontinuous: a 1e-7 difference may swap which boxes survive, so the final detections of two equal
    networks can differ (:mod:`prunekit.structured.replay` removes that for the check). The module must be
    called during the forward. ``stack``: kept at the running module's name (see ``eval_scope``).
    """
    captured: list[object] = []
    handle = None
    if at is not None:
        handle = model.get_submodule(at).register_forward_hook(lambda m, a, out: captured.append(out))
    try:
        with eval_scope(model, stack):
            out = call_model(model, example_inputs)
    finally:
        if handle is not None:
            handle.remove()
    if at is not None and not captured:
        raise ConfigError(f"module {at!r} was not called during the forward: nothing to compare at it")
    return [t.detach() for t in flatten_tensors(captured if at is not None else out)]


@dataclass
class Comparison:
    """Outcome of comparing pruned outputs with the masked reference."""

    ok: bool
    max_abs_err: float
    ref_max_abs: float
    tolerance: float  # the tolerance of the output with the largest err / tolerance
    shapes_equal: bool
    n_values: int = 0  # output entries compared (0: every output empty, e.g. a detector that kept no box)
    rel_err: float = 0.0  # largest max|pruned - ref| / max|ref| over the outputs
    tiny: bool = False  # every compared float output's largest magnitude is below TINY


def compare(pruned: list[torch.Tensor], reference: list[torch.Tensor], rtol: float = RTOL) -> Comparison:
    """Apply the pass criterion of the module docstring."""
    shapes_equal = len(pruned) == len(reference) and all(
        a.shape == b.shape for a, b in zip(pruned, reference, strict=False)
    )
    if not shapes_equal:
        return Comparison(False, float("inf"), float("nan"), float("nan"), False, rel_err=float("inf"))
    err, ref_max, rel, tol, ok, finite, scales = 0.0, 0.0, 0.0, rtol, True, True, []
    worst = -1.0
    for a, b in zip(pruned, reference, strict=True):
        if not a.is_floating_point():
            exact = torch.equal(a, b)
            ok, err = ok and exact, max(err, 0.0 if exact else float("inf"))
            rel = max(rel, 0.0 if exact else float("inf"))
            continue
        a, b = a.double(), b.double()
        finite = finite and bool(torch.isfinite(a).all()) and bool(torch.isfinite(b).all())
        if not a.numel():
            continue
        e, scale = float((a - b).abs().max()), float(b.abs().max())
        t = rtol * scale + ATOL
        ok = ok and e <= t
        err, ref_max, scales = max(err, e), max(ref_max, scale), [*scales, scale]
        rel = max(rel, e / scale if scale > 0 else (0.0 if e == 0 else float("inf")))
        if e / t > worst:
            worst, tol = e / t, t
    tiny = bool(scales) and max(scales) < TINY
    n = sum(b.numel() for b in reference)
    return Comparison(finite and ok, err, ref_max, tol, True, n, rel, tiny)
