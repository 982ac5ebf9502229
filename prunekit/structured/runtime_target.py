"""Prune to a latency or speedup measured on the deployment runtime (``Target(..., runtime="openvino")``).

The search of a :class:`~prunekit.config.Target` whose ``runtime`` is set, in three steps:

1. **Table.** The per-group latency table of the model on the runtime
   (:mod:`prunekit.structured.latency_table`; read from its cache when the same model, runtime and machine
   were timed before). Its width step becomes ``round_to`` when the config leaves ``round_to`` unset.
2. **Selection.** Units are taken greedily across all groups by the importance they carry per millisecond
   they save (as in NetAdapt and NVIDIA's HALP): each group offers a move from where it stands to one of its
   later stops (kept widths on ``round_to``'s step, units in its removal order, lowest scores first), the
   stop with the least importance per ms over the whole move (its lower convex hull, :func:`greedy_units`),
   so a step the table credits with no saving does not hide the saving behind it. A move's cost is the sum
   of its units' scores, each divided by the mean score of its group (as global ranking does,
   :func:`prunekit.structured.select.choose_units`), and its gain is the latency the table says it saves.
   The cheapest importance per ms saved goes first, until the saving the table predicts for all groups
   together (:meth:`~prunekit.structured.latency_table.LatencyTable.predict`) reaches the budget: the share
   of the dense time the target asks to remove.
3. **Correction.** The plan (with the road's plan transforms) is applied to a copy, exported and timed end to
   end next to the dense model (their runs alternated), both on the runtime with ``threads`` threads. When
   the measured latency is further than ``tolerance`` (relative) from the goal, the budget is scaled by how
   much of its predicted saving was measured (measured / predicted), by at most :data:`MAX_STEP` either way
   (a timing disturbed by other work cannot send the search to an over-cut model; a timing whose saving is
   that far off the prediction is taken twice, the faster reading kept), and the selection runs
   again, at most ``corrections`` times. A scaled budget outside the bracket the measured attempts set (one
   too slow, one too fast), or one giving a plan already measured, is replaced by the bracket's midpoint; when
   that too repeats a plan, ``round_to``'s steps are coarser than the tolerance and the search stops.
   The attempt closest to the goal is kept (its measured time, not a prediction, is reported).
   When even everything the table credits measures too slow, the rest is cut as well (a group timed alone
   may save less than the timing's noise, so the table credits it nothing, though all of them together
   save much): every group as far as max_ratio allows, then the share of the uncredited units bisected on
   measured times (:meth:`RuntimeTargetSearch._beyond_the_table`).

A speedup target is the dense time over the pruned one, both timed in the same attempt; a latency target is
the pruned model's median ms. The result's ``target`` dict has the requested and reached latency and speedup,
the predicted ms of the plan, the runtime and its version, the threads, the attempts, the table's record
(cached or measured, seconds, measurements) and the ``round_to`` used with the reason.

A goal the dense model already meets, or one that pruning every group as far as ``max_ratio`` allows does
not reach within the tolerance, is a :class:`~prunekit.errors.ConfigError`; the user's model is untouched
then.
"""

from __future__ import annotations

import copy
import heapq
import math
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.plan import Plan
from prunekit.structured.cut import apply
from prunekit.structured.latency_table import LatencyTable, Timer, build_table, orders_of
from prunekit.structured.pipeline import PlanTransform, Scored, plan_of_units
from prunekit.structured.select import mean_normalised

__all__ = ["TOLERANCE", "RuntimeTargetSearch", "greedy_units"]

#: relative distance from the goal latency within which a measured plan is accepted
TOLERANCE = 0.05
#: at most this many re-selections after the first measured plan
CORRECTIONS = 6
#: A correction changes the budget by at most this factor either way (one noisy timing cannot over-cut).
MAX_STEP = 2.0


def _steps(width: int, removable: int, round_to: int) -> list[int]:
    """The numbers of removed units a group may stop at: its kept width a multiple of ``round_to`` (or its
    whole width), at most ``removable`` removed.

    >>> _steps(10, 7, 4), _steps(10, 7, 1)[:3]
    ([0, 2, 6], [0, 1, 2])
    """
    return [k for k in range(removable + 1) if k == 0 or (width - k) % round_to == 0]


def greedy_units(
    table: LatencyTable,
    orders: dict[int, list[int]],
    costs: dict[int, torch.Tensor],
    widths: dict[int, int],
    budget_ms: float,
    round_to: int = 1,
) -> dict[int, list[int]]:
    """Units removed per group (ids -> unit indices) so the table's predicted saving reaches ``budget_ms``,
    taking the moves of least importance per ms saved first (module docstring). ``costs[g][u]`` is unit
    ``u``'s normalised importance; a group not in ``table`` stays whole.

    A group's move runs from where it stands to whichever later stop has the least importance per ms saved
    over the whole move (:func:`_best_move`: a step that saves nothing on its own cannot block the larger
    saving behind it), so the greedy walks each group's lower convex hull of (ms saved, importance). The move
    that reaches the budget stops at its first stop that does, or the one before when that lands nearer.
    Moves that save nothing are never taken: past everything the table credits with a saving, a budget
    gets just that."""
    heap: list[tuple[float, int, int, int]] = []  # (cost per ms, group, from stop, to stop)
    curves: dict[int, tuple[np.ndarray, np.ndarray, list[int]]] = {}
    for gid, order in orders.items():
        if gid not in table.groups or not order:
            continue
        stops = _steps(widths[gid], len(order), round_to)
        entry = table.groups[gid]
        spent = np.concatenate([[0.0], np.cumsum(costs[gid][order].double().numpy())])[stops]
        saved = np.array([entry.saved(k) for k in stops])
        curves[gid] = (spent, saved, stops)
        _push(heap, curves, gid, 0)
    at = dict.fromkeys(curves, 0)  # each group's stop index
    base = table.base_ms
    kept = dict.fromkeys(curves, 1.0)  # each group's share of the dense time kept (LatencyTable.predict)

    def saving(gid: int, i: int) -> float:
        """The predicted saving with group ``gid`` at stop ``i`` and the others where they stand."""
        share = max(0.0, 1.0 - curves[gid][1][i] / base) if base > 0 else 1.0
        return base * (1.0 - math.prod(v for g, v in kept.items() if g != gid) * share)

    now, done = 0.0, budget_ms <= 0
    while heap and not done:
        _, gid, i, j = heapq.heappop(heap)
        before = now
        for k in range(i + 1, j + 1):  # the move's stops in turn: the first that reaches the budget ends it
            now = saving(gid, k)
            if now >= budget_ms:
                done = True
                if budget_ms - before < now - budget_ms:
                    k, now = k - 1, before  # the stop before misses by less than this one overshoots
                break
            before = now
        at[gid] = k
        kept[gid] = max(0.0, 1.0 - curves[gid][1][k] / base) if base > 0 else 1.0
        if not done:
            _push(heap, curves, gid, j)
    return {gid: sorted(orders[gid][: curves[gid][2][i]]) for gid, i in at.items() if i}


def _best_move(spent: np.ndarray, saved: np.ndarray, i: int) -> tuple[float, int] | None:
    """The least importance per ms saved from stop ``i`` to any later stop and the farthest such stop, or
    None when no later stop saves more than stop ``i``.

    >>> _best_move(np.array([0.0, 1.0, 2.0, 3.0]), np.array([0.0, 0.0, 0.0, 6.0]), 0)
    (0.5, 3)
    >>> _best_move(np.array([0.0, 1.0, 5.0]), np.array([0.0, 2.0, 3.0]), 0)
    (0.5, 1)
    """
    gain = saved[i + 1 :] - saved[i]
    ok = gain > 1e-12
    if not ok.any():
        return None
    ratio = np.where(ok, (spent[i + 1 :] - spent[i]) / np.where(ok, gain, 1.0), np.inf)
    best = float(ratio.min())
    return best, i + 1 + int(np.flatnonzero(ratio <= best * (1 + 1e-9) + 1e-15)[-1])


def _push(heap: list, curves: dict, gid: int, i: int) -> None:
    spent, saved, _ = curves[gid]
    move = _best_move(spent, saved, i)
    if move is not None:
        heapq.heappush(heap, (move[0], gid, i, move[1]))


def normalised(scored: Scored) -> dict[int, torch.Tensor]:
    """Every group's scores divided by their mean, as global ranking compares them."""
    return {gid: mean_normalised(s) for gid, s in scored.scores.items()}


class RuntimeTargetSearch:
    """The search of a runtime target (module docstring): ``plan`` found and :meth:`info` for the result.

    ``cache`` overrides the latency tables' directory (:func:`prunekit.structured.latency_table.cache_dir`).
    """

    def __init__(
        self,
        scored: Scored,
        transforms: Sequence[PlanTransform] = (),
        *,
        cache: str | os.PathLike | None = None,
        tolerance: float = TOLERANCE,
        corrections: int = CORRECTIONS,
    ) -> None:
        start = time.perf_counter()
        self.scored, self.transforms = scored, transforms
        cfg = scored.config
        self.target = cfg.target
        if self.target is None or self.target.runtime is None or not self.target.timed:
            raise ConfigError("a runtime search needs Target(latency_ms= or speedup=, runtime=...)")
        self.tolerance = tolerance
        self.timer = Timer(self.target.runtime, self.target.threads, cfg.latency_runs, scored.example_inputs)
        try:
            with torch.no_grad():
                self.work = copy.deepcopy(scored.model)
            self.orders = orders_of(scored)
            self.table = build_table(scored, self.orders, self.timer, cache=cache, round_to=cfg.round_to)
            self.round_to = cfg.round_to or self.table.round_to
            self.round_to_reason = (
                "given" if cfg.round_to else f"latency table: {self.table.steps.get('note', '')}"
            )
            self.dense = self.timer.load(self.work)
            self.attempts: list[dict[str, Any]] = []
            self.plan = self._search(corrections)
        finally:
            self.timer.close()
        self.seconds = time.perf_counter() - start

    def _goal_fraction(self, dense_ms: float) -> float:
        """The share of the dense time the target asks to keep."""
        t = self.target
        return 1.0 / t.value if t.metric == "speedup" else t.value / dense_ms

    def _plan(self, budget_ms: float) -> tuple[Plan, dict[int, list[int]]]:
        widths = {g.id: g.width for g in self.scored.report.prunable_groups}
        costs = normalised(self.scored)
        return self._plan_of(greedy_units(self.table, self.orders, costs, widths, budget_ms, self.round_to))

    def _filled(self, removed: dict[int, list[int]], share: float) -> dict[int, list[int]]:
        """``removed`` with ``share`` of every group's units it leaves (in their removal order) taken too,
        each group stopping on a ``round_to`` step: ``share=1`` is every group as far as max_ratio allows."""
        widths = {g.id: g.width for g in self.scored.report.prunable_groups}
        out = {}
        for gid, order in self.orders.items():
            have = len(removed.get(gid, []))
            want = have + share * (len(order) - have)
            stops = [k for k in _steps(widths[gid], len(order), self.round_to) if k <= want + 1e-9]
            k = max([have, *stops])
            if k:
                out[gid] = sorted(order[:k])
        return out

    def _plan_of(self, removed: dict[int, list[int]]) -> tuple[Plan, dict[int, list[int]]]:
        ratio = sum(len(u) for u in removed.values()) / max(1, self.scored.total_units)
        cfg = self.scored.config
        options = (ratio, "global", self.round_to, cfg.max_ratio)
        plan = plan_of_units(self.scored, removed, *options, self.transforms, {"round_to": self.round_to})
        return plan, removed

    def _measure(self, plan: Plan) -> tuple[float, float]:
        """``(dense ms, pruned ms)`` timed with their runs alternated on the runtime (:meth:`Timer.pair`)."""
        with torch.no_grad():
            pruned = copy.deepcopy(self.work)
        apply(pruned, plan, self.scored.example_inputs)
        return self.timer.pair(self.dense, self.timer.load(pruned))

    def _measure_checked(self, plan: Plan, predicted_saved: float) -> tuple[float, float, bool]:
        """:meth:`_measure`, timed once more when the saving it reads is off the table's prediction by more
        than :data:`MAX_STEP` either way (other work on the machine slows whichever model it lands on); the
        reading with the lower pruned / dense ratio is kept, since a disturbance only adds time."""
        dense_ms, pruned_ms = self._measure(plan)
        saved = 1.0 - pruned_ms / dense_ms
        if predicted_saved <= 0 or predicted_saved / MAX_STEP <= saved <= predicted_saved * MAX_STEP:
            return dense_ms, pruned_ms, False
        again = self._measure(plan)
        return (*min((dense_ms, pruned_ms), again, key=lambda pair: pair[1] / pair[0]), True)

    def _search(self, corrections: int) -> Plan:
        base = self.table.base_ms
        most = self.table.saved({g: len(o) for g, o in self.orders.items()})
        dense_now = self.timer.time_session(self.dense)
        keep = self._goal_fraction(dense_now)
        if keep >= 1.0:
            raise ConfigError(
                f"target {self.target.metric}={self.target.value} is already met by the dense model "
                f"({dense_now:.4g} ms on {self.target.runtime})"
            )
        budget = (1.0 - keep) * base  # ms to save, in the table's time
        slow, fast = 0.0, math.inf  # budgets measured too slow / fast: the goal's budget lies between
        full_too_slow = False
        best: tuple[float, Plan] | None = None
        for _ in range(1 + corrections):
            plan, removed = self._plan(min(budget, most))
            if self._seen(removed) and fast < math.inf:
                budget = (slow + fast) / 2  # the scaled budget repeats a plan: halve the bracket instead
                plan, removed = self._plan(min(budget, most))
            if self._seen(removed):
                break  # no budget left between two measured plans: round_to's steps are this coarse
            predicted = self.table.predict({g: len(u) for g, u in removed.items()})
            dense_ms, pruned_ms, retimed = self._measure_checked(plan, 1.0 - predicted / base)
            goal_ms = self._goal_fraction(dense_ms) * dense_ms
            error = pruned_ms / goal_ms - 1.0
            self.attempts.append(
                {
                    "budget_ms": budget,
                    "predicted_ms": predicted * dense_ms / base,  # in this attempt's time
                    "dense_ms": dense_ms,
                    "pruned_ms": pruned_ms,
                    "goal_ms": goal_ms,
                    "removed_units": sum(len(u) for u in removed.values()),
                    "retimed": retimed,
                    "removed": removed,
                }
            )
            if best is None or abs(error) < abs(best[0]):
                best = (error, plan)
                self.chosen = len(self.attempts) - 1
            if pruned_ms > goal_ms:
                slow = max(slow, min(budget, most))
                full_too_slow = full_too_slow or budget >= most
            else:
                fast = min(fast, budget)
            if abs(error) <= self.tolerance or full_too_slow:
                break
            predicted_saved = max((base - predicted) / base, 1e-9)
            measured_saved = max(1.0 - pruned_ms / dense_ms, 0.05 * predicted_saved)
            scaled = (1.0 - self._goal_fraction(dense_ms)) * base * predicted_saved / measured_saved
            budget = min(max(scaled, budget / MAX_STEP), budget * MAX_STEP)
            if not slow < budget < fast:  # the scaling left the bracket the measurements set
                budget = (slow + fast) / 2 if fast < math.inf else max(budget, 2 * slow)
        if full_too_slow and abs(best[0]) > self.tolerance:
            best = self._beyond_the_table(best, corrections)
        chosen = self.attempts[self.chosen]
        if chosen["pruned_ms"] > chosen["goal_ms"] * (1 + self.tolerance) and full_too_slow:
            raise ConfigError(
                f"target {self.target.metric}={self.target.value} is unreachable on {self.target.runtime}: "
                f"pruning as far as max_ratio={self.scored.config.max_ratio} allows gives "
                f"{chosen['pruned_ms']:.4g} ms (dense {chosen['dense_ms']:.4g} ms); raise max_ratio or relax "
                "the target"
            )
        assert best is not None
        return best[1]

    def _beyond_the_table(self, best: tuple[float, Plan], corrections: int) -> tuple[float, Plan]:
        """The table's every credited saving measured too slow: cut what it credits nothing too.

        A group timed alone may save less than the timing's noise (a few per cent of a small model), and
        then the table credits it with nothing, although all such groups cut together save most of the
        time. So the plan of everything the table credits is filled with a share of every other unit
        (:meth:`_filled`): first all of them (as far as max_ratio allows, the true limit of the search),
        then, if that is fast enough, the share bisected between the two on measured times."""
        base = max(self.attempts, key=lambda a: a["removed_units"])["removed"]
        lo, hi, share = 0.0, 1.0, 1.0
        for _ in range(1 + corrections):
            removed = self._filled(base, share)
            if self._seen(removed):
                break
            plan, removed = self._plan_of(removed)
            dense_ms, pruned_ms = self._measure(plan)
            goal_ms = self._goal_fraction(dense_ms) * dense_ms
            error = pruned_ms / goal_ms - 1.0
            units = sum(len(u) for u in removed.values())
            predicted = self.table.predict({g: len(u) for g, u in removed.items()})
            self.attempts.append({
                "budget_ms": None, "fill": share, "predicted_ms": predicted * dense_ms / self.table.base_ms,
                "dense_ms": dense_ms,
                "pruned_ms": pruned_ms, "goal_ms": goal_ms, "removed_units": units, "retimed": False,
                "removed": removed,
            })  # fmt: skip
            if abs(error) < abs(best[0]):
                best = (error, plan)
                self.chosen = len(self.attempts) - 1
            if abs(error) <= self.tolerance or (share == 1.0 and error > 0):
                break  # reached, or even everything is too slow: the target is unreachable
            lo, hi = (share, hi) if error > 0 else (lo, share)
            share = (lo + hi) / 2
        return best

    def _seen(self, removed: dict[int, list[int]]) -> bool:
        return any(a["removed"] == removed for a in self.attempts)

    def info(self, model: nn.Module | None = None) -> dict[str, Any]:
        """Requested vs reached (the measured attempt that was kept); ``model`` is not timed again."""
        chosen = self.attempts[self.chosen]
        dense_ms, pruned_ms, goal_ms = chosen["dense_ms"], chosen["pruned_ms"], chosen["goal_ms"]
        t = self.target
        speedup = dense_ms / pruned_ms
        requested_speedup = t.value if t.metric == "speedup" else dense_ms / t.value
        table = self.table
        return {
            "metric": t.metric,
            "requested": t.value,
            "achieved": speedup if t.metric == "speedup" else pruned_ms,
            "before": dense_ms,
            "after": pruned_ms,
            "met": pruned_ms <= goal_ms,
            "within_tolerance": abs(pruned_ms / goal_ms - 1.0) <= self.tolerance,
            "tolerance": self.tolerance,
            "requested_ms": goal_ms,
            "reached_ms": pruned_ms,
            "predicted_ms": chosen["predicted_ms"],
            "requested_speedup": requested_speedup,
            "reached_speedup": speedup,
            "runtime": t.runtime,
            "runtime_version": table.runtime_version,
            "threads": t.threads,
            "scope": "global",
            "ratio": self.plan.meta["ratio"],
            "round_to": self.round_to,
            "round_to_reason": self.round_to_reason,
            "evaluations": len(self.attempts),
            "corrections": len(self.attempts) - 1,
            "attempts": [{k: v for k, v in a.items() if k != "removed"} for a in self.attempts],
            "search_seconds": self.seconds,
            "table": {
                "cached": table.cached,
                "path": table.path,
                "seconds": table.seconds,
                "measurements": table.measurements,
                "groups": len(table.groups),
                "base_ms": table.base_ms,
            },
        }
