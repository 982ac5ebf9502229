"""Pruning the normalised residual stream: importance from calibration data, and how it is verified.

``prune(model, x, ratio, stream=True, data=calib)`` (also ``plan_prune`` and ``check``) traces in stream
mode (:mod:`prunekit.graph.stream`): one width of the residual stream is removed everywhere it goes
(embeddings, patch embedding, every producer and consumer, norm weights and biases, position embeddings,
class tokens, heads) and the norms then normalise over the kept channels. That is an approximation, so:

- the channels of a stream group are ranked on the calibration batches ``data``: by the mean of ``x**2``
  of the stream at every norm input (``stream="activation"``, what ``True`` means); by the mean of ``y**2``
  of every norm's output, its scale and shift applied (``stream="output"``: what the layers reading the
  stream see, which differs from the input where the norm's weights are far from 1, as in post-norm
  BERT); by ``sqrt(sum y**2) * ||W[:, c]||`` over the linear layers reading channel ``c``
  (``stream="weighted"``, Wanda's activation-times-weight score summed over the stream's consumers); or
  at random (``stream="random"``, a baseline; seeded); other groups use ``criterion`` as usual;
- the plan records why it is approximate (``Plan.approximate``, kept in ``Plan.meta``, so a saved plan
  replays the same cut);
- ``prune`` verifies such a plan with ``verify="approximate"`` (its default then): the pruned outputs are
  compared with the ORIGINAL model's and the relative error ``max|y - y0| / max|y0|`` is returned as
  ``PruneResult.approx_error``; asking for ``verify="exact"`` is a ConfigError; ``check`` reports
  ``status="approximate"`` with ``rel_err``, never ``ok``.

>>> import torch
>>> net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 2))
>>> import prunekit as pk
>>> res = pk.prune(net, torch.randn(4, 3), ratio=0.25, stream=True, data=[torch.randn(16, 3)])
>>> net[1].normalized_shape, res.plan.approximate, res.approx_error < 1
((6,), ['LayerNorm statistics over a cut width'], True)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from prunekit._inputs import ExampleInputs, call_model, eval_mode
from prunekit.config import VERIFY
from prunekit.criteria._data import split_batch
from prunekit.errors import ConfigError, PruneError
from prunekit.graph.groups import Group, GroupReport
from prunekit.graph.stream import NORM_FUNCS, site_input
from prunekit.plan import Plan
from prunekit.structured.oracle import Reference, compare_with, reference_outputs

IMPORTANCE = ("activation", "output", "weighted", "random", "slicegpt")


def importance(stream: Any) -> str | None:
    """The stream importance a ``stream=`` argument asks for: None (off), ``"activation"``, ``"output"``,
    ``"weighted"``, ``"random"`` or ``"slicegpt"`` (the invariant transform first, then the activation
    ranking: :mod:`prunekit.structured.slicegpt`)."""
    if stream is None or stream is False:
        return None
    if stream is True:
        return "activation"
    if isinstance(stream, str) and stream in IMPORTANCE:
        return stream
    raise ConfigError(
        "stream must be True, False, 'activation', 'output', 'weighted', 'random' or 'slicegpt', "
        f"got {stream!r}"
    )


class _Sites(TorchFunctionMode):
    """Mean ``x**2`` over every position of each norm site's input (its last dim kept), in call order; with
    ``output``, of the norm's output instead (a ``mean`` site, the statistics of a hand-written RMSNorm,
    has no output of its own there: its input is taken)."""

    def __init__(self, output: bool = False) -> None:
        super().__init__()
        self.output = output
        self.seen: list[torch.Tensor] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        x = site_input(func, args, kwargs)
        result = func(*args, **kwargs)
        if x is not None:
            if self.output and func in NORM_FUNCS:
                x = result
            x = x.detach().double()
            self.seen.append(x.pow(2).reshape(-1, x.shape[-1]).mean(0))
        return result


def site_energy(model: nn.Module, report: GroupReport, data: Any, output: bool = False) -> np.ndarray:
    """Per slot: the mean ``x**2`` summed over the norm sites where the slot's channel is normalised (with
    ``output``: the mean ``y**2`` of the norms' outputs)."""
    if data is None:
        raise ConfigError(
            "stream pruning ranks the stream's channels on calibration data: pass data=<iterable of input "
            "batches> (or stream='random')"
        )
    energy = np.zeros(len(report.slot_unit))
    n = 0
    with eval_mode(model), torch.no_grad():
        for n, batch in enumerate(data, 1):
            inputs, _ = split_batch(batch)
            sites = _Sites(output)
            try:
                with sites:
                    call_model(model, inputs)
            except Exception as exc:
                raise ConfigError(
                    f"calibration batch {n - 1} does not run through the model: {type(exc).__name__}: {exc}"
                ) from None
            if len(sites.seen) != len(report.stream_sites):
                raise PruneError(
                    f"calibration batch {n - 1} reached {len(sites.seen)} norms, the example inputs "
                    f"{len(report.stream_sites)}: the stream cannot be followed on this data"
                )
            for i, (seen, slots) in enumerate(zip(sites.seen, report.stream_sites, strict=True)):
                if len(slots) == 1:
                    continue
                if len(seen) != len(slots):
                    raise ConfigError(
                        f"calibration batch {n - 1}: norm {i} sees width {len(seen)}, the example inputs "
                        f"gave {len(slots)}: calibration batches must have the example inputs' layout"
                    )
                s = slots.numpy()
                keep = s >= 0
                np.add.at(energy, s[keep], seen.numpy()[keep])
    if n == 0:
        raise ConfigError("stream pruning got calibration data with no batches")
    return energy / n


def stream_scores(
    model: nn.Module, report: GroupReport, data: Any, how: str, seed: int = 0
) -> dict[int, torch.Tensor]:
    """Scores of every prunable approximate (stream) group's units, by group id (lowest go first)."""
    groups = [g for g in report.prunable_groups if g.approximate]
    if how == "random":
        gen = torch.Generator().manual_seed(seed)
        return {g.id: torch.rand(g.width, generator=gen, dtype=torch.float64) for g in groups}
    energy = site_energy(model, report, data, output=how in ("output", "weighted"))
    touched = np.flatnonzero(energy)
    g_of, u_of = report.slot_group[touched], report.slot_unit[touched]
    out = {}
    for g in groups:
        score = np.zeros(g.width)
        mine = g_of == g.id
        np.add.at(score, u_of[mine], energy[touched[mine]])
        if how == "weighted":
            score = np.sqrt(score * consumer_norms(model, g))
        out[g.id] = torch.from_numpy(score)
    return out


def consumer_norms(model: nn.Module, group: Group) -> np.ndarray:
    """Per unit of ``group``: the sum of ``||W[:, c]||**2`` over the ``nn.Linear`` layers whose input columns
    ``c`` the group holds (the layers reading the stream; zeros where none does)."""
    params = dict(model.named_parameters())
    modules = dict(model.named_modules())
    out = np.zeros(group.width)
    for m in group.members:
        owner, _, leaf = m.name.rpartition(".")
        if leaf != "weight" or m.dim != 1 or not isinstance(modules.get(owner), nn.Linear):
            continue
        cols = params[m.name].detach().double().pow(2).sum(0).numpy()
        np.add.at(out, m.units, cols[m.index])
    return out


def verify_mode(verify: str | None, plan: Plan) -> str:
    """What ``prune`` checks for ``plan``: ``"exact"``, ``"approximate"`` or ``"shapes"`` (None: default)."""
    if verify is not None and verify not in VERIFY:
        raise ConfigError(f"verify must be 'exact', 'approximate' or 'shapes', got {verify!r}")
    if verify is None:
        return "approximate" if plan.approximate else "exact"
    if verify == "exact" and plan.approximate:
        raise ConfigError(
            f"verify='exact' cannot hold for this plan ({'; '.join(plan.approximate)}): pass "
            "verify='approximate' to measure its output error, or verify='shapes'"
        )
    return verify


def original_outputs(model: nn.Module, example_inputs: ExampleInputs, at: str | None = None) -> Reference:
    """The unpruned model's outputs (nothing masked): what an approximate cut is measured against."""
    return reference_outputs(model, Plan(), example_inputs, at)


def relative_error(
    model: nn.Module, reference: Reference, example_inputs: ExampleInputs, at: str | None = None
) -> float:
    """``max|y - y0| / max|y0|`` of ``model``'s outputs against ``reference`` (inf if shapes differ)."""
    cmp = compare_with(model, reference, example_inputs, at)
    return cmp.max_abs_err / max(cmp.ref_max_abs, 1e-30) if cmp.shapes_equal else float("inf")
