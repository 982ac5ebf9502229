"""When to prune: one-shot, iterative, gradual (cubic), lottery ticket, at initialisation (SNIP).

Every schedule drives the same masks as :func:`prunekit.sparsify` (``torch.nn.utils.parametrize``; exact
counts; a weight pruned once stays pruned) on the layers ``include``/``exclude`` select, and defaults to
``scope="global"`` (one magnitude ranking over all selected weights), the usual choice at high sparsity.

- :func:`one_shot` / :func:`iterative_prune`: prune to the target at once, or in ``steps`` steps with
  ``train_fn(model)`` fine-tuning after each (per-step targets: :func:`step_targets`).
- :class:`GradualPruner`: Zhu & Gupta's cubic schedule (:func:`cubic_sparsity`) as a callback, ``step()``
  after every ``optimizer.step()`` of any training loop.
- :func:`lottery_ticket`: iterative magnitude pruning with rewinding to init or iteration ``k``, with an
  optional random re-initialisation control.
- :func:`snip` / :func:`snip_scores`: connection sensitivity at initialisation.

Structured groups (soft masks on coupled channels, physical removal at the end) plug in through
:mod:`prunekit.schedules.masking`. Optional loss terms for regularised sparse training are in
:mod:`prunekit.regularize`.

>>> from torch import nn
>>> model = nn.Sequential(nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 10))
>>> one_shot(model, 0.9).sparsity
0.9
"""

from __future__ import annotations

from prunekit.schedules.at_init import snip, snip_scores
from prunekit.schedules.cubic import GradualPruner, cubic_sparsity
from prunekit.schedules.iterative import PruneStep, ScheduleResult, iterative_prune, one_shot, step_targets
from prunekit.schedules.lottery import LotteryResult, Snapshot, TicketRound, TrainRun, lottery_ticket
from prunekit.schedules.masking import MaskSet, UnstructuredMasks, make_mask_set

__all__ = [
    "GradualPruner",
    "LotteryResult",
    "MaskSet",
    "PruneStep",
    "ScheduleResult",
    "Snapshot",
    "TicketRound",
    "TrainRun",
    "UnstructuredMasks",
    "cubic_sparsity",
    "iterative_prune",
    "lottery_ticket",
    "make_mask_set",
    "one_shot",
    "snip",
    "snip_scores",
    "step_targets",
]
