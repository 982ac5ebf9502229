"""Gradual *structured* pruning: the cubic schedule on coupled channel groups, soft masks while training,
physical removal at the end.

:class:`StructuredGradualPruner` follows the same schedule as :class:`prunekit.schedules.GradualPruner`
(:func:`prunekit.schedules.cubic_sparsity`), but its unit is a unit of a structural group (a channel with
everything coupled to it: the conv filter, BN entries, the next layer's input slice). At each pruning step
the groups are re-scored on the current weights and the removed set grows to ``round(s_t * units)``
(``scope="global"``, or ``s_t`` of every group with ``scope="local"``; units removed once stay removed).
A removed unit is a *soft* cut: every parameter/buffer entry the physical cut would take out is set to zero,
its gradient is masked, and ``step()`` re-zeroes it after every optimizer step (momentum, weight decay).
Zeroing exactly those entries is the masked reference that :func:`prunekit.check` proves equal to the
physical cut, so :meth:`StructuredGradualPruner.finalize` (plan + :func:`prunekit.structured.apply`) does not
change the model's eval outputs. Parameters are new objects after ``finalize``: build a new optimizer.

    pruner = StructuredGradualPruner(model, x, 0.5, start_step=0, end_step=1000, frequency=100)
    for xb, yb in batches:
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad(); loss.backward(); opt.step()
        pruner.step()
    plan = pruner.finalize()               # channels physically removed
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from prunekit._inputs import ExampleInputs
from prunekit.config import PruneConfig, resolve
from prunekit.criteria import GroupCriterion
from prunekit.errors import ConfigError
from prunekit.plan import Plan
from prunekit.schedules.cubic import CubicSchedule
from prunekit.schedules.masking import check_int
from prunekit.structured import pipeline
from prunekit.structured.cut import apply
from prunekit.structured.select import build_plan, choose_units


class StructuredGradualPruner:
    """Raise the removed share of structural units from ``initial_ratio`` to ``final_ratio`` (cubic).

    Steps as in :class:`prunekit.schedules.GradualPruner`: pruning after training steps ``start_step,
    start_step + frequency, ..., end_step``. ``criterion``/``scope``/``ignore``/``max_ratio`` as in
    :func:`prunekit.prune` (or a :class:`prunekit.PruneConfig` as ``config``, its ratio replaced by the
    schedule's; the scope is ``"global"`` unless given); ``data``/``loss_fn`` feed data-driven criteria,
    re-scored at every pruning step. ``keep_whole``: ids of prunable groups (of :attr:`report`) never pruned;
    the schedule's ratio is then that of the other groups' units.

    >>> net = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 2))
    >>> x = torch.randn(4, 6)
    >>> pruner = StructuredGradualPruner(net, x, 0.5, start_step=0, end_step=20, frequency=10)
    >>> for _ in range(20):
    ...     _ = pruner.step()
    >>> pruner.removed_units(), net[0].out_features
    (16, 32)
    >>> _ = pruner.finalize(); net[0].out_features
    16
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: ExampleInputs,
        final_ratio: float,
        *,
        start_step: int,
        end_step: int,
        frequency: int,
        initial_ratio: float = 0.0,
        config: PruneConfig | None = None,
        criterion: str | GroupCriterion | None = None,
        scope: str | None = None,
        ignore: Iterable[str | nn.Module] | None = None,
        max_ratio: float | None = None,
        data: Any = None,
        loss_fn: Callable[..., torch.Tensor] | None = None,
        keep_whole: Iterable[int] = (),
    ) -> None:
        self.schedule = CubicSchedule.checked(
            initial_ratio,
            final_ratio,
            start_step=start_step,
            end_step=end_step,
            frequency=frequency,
            what="ratio",
        )
        self.final_ratio, self.initial_ratio = self.schedule.final, self.schedule.initial
        self.start_step, self.end_step = self.schedule.start_step, self.schedule.end_step
        self.frequency, self.n_steps = self.schedule.frequency, self.schedule.n_steps
        cfg = resolve(
            PruneConfig, config, "StructuredGradualPruner", "ratio", criterion=criterion, scope=scope,
            ignore=ignore, max_ratio=max_ratio, data=data, loss_fn=loss_fn,
        )  # fmt: skip
        if cfg.target is not None or cfg.round_to is not None:
            raise ConfigError("StructuredGradualPruner follows its schedule: give no target or round_to")
        #: the options; the ratio is the schedule's, and units are ranked globally unless ``scope`` says so
        self.config = cfg.replace(ratio=self.final_ratio, scope=cfg.scope or "global")
        self.model = model
        self.example_inputs = example_inputs
        self.criterion = self.config.criterion
        self.scope = self.config.scope
        self.max_ratio = self.config.max_ratio
        self.config = pipeline.with_names(self.config, model)
        self.report = pipeline.trace(model, example_inputs, self.config, "StructuredGradualPruner")
        self.groups = {g.id: g for g in self.report.prunable_groups}
        #: ids of groups never pruned (``keep_whole``); the ratio is that of the other groups' units
        self.keep_whole = sorted(set(keep_whole))
        unknown = set(self.keep_whole) - set(self.groups)
        if unknown:
            raise ConfigError(f"keep_whole: no prunable group with id {sorted(unknown)[0]}")
        self._selectable = dataclasses.replace(
            self.report, groups=[g for g in self.report.groups if g.id not in set(self.keep_whole)]
        )
        self.total_units = sum(g.width for g in self.groups.values())
        self.removed: dict[int, list[int]] = {}
        self.last_step = 0
        self.history: list[tuple[int, int]] = []  # (step, removed units) at every pruning step
        self._hooks: list[Any] = []
        self._keep: dict[str, torch.Tensor] = {}
        self._apply(0)

    def ratio_at(self, step: int) -> float:
        """The share of units the schedule removes after ``step`` training steps."""
        return self.schedule.at(step)

    def is_pruning_step(self, step: int) -> bool:
        """True if units are removed after training step ``step``."""
        return self.schedule.is_pruning_step(step)

    def step(self) -> float:
        """Count one training step (after ``optimizer.step()``): re-zero the cut entries, prune if due."""
        self.last_step += 1
        self._apply(self.last_step)
        return self.ratio_at(self.last_step)

    @property
    def done(self) -> bool:
        return self.last_step >= self.end_step

    def removed_units(self) -> int:
        return sum(len(u) for u in self.removed.values())

    def _tensors(self) -> dict[str, torch.Tensor]:
        tensors = dict(self.model.named_parameters(remove_duplicate=False))
        tensors.update(dict(self.model.named_buffers(remove_duplicate=False)))
        return tensors

    def _select(self, ratio: float) -> None:
        scores = pipeline.score(self.model, self.example_inputs, self.report, self.config)
        for gid, s in scores.items():  # units removed before rank first; every other score is > 0
            s = s.clamp_min(1e-30)
            s[self.removed.get(gid, [])] = 0.0
            scores[gid] = s
        new = choose_units(self._selectable, scores, ratio, self.scope, None, self.max_ratio)
        for gid, units in self.removed.items():
            if not set(units) <= set(new.get(gid, [])):
                raise RuntimeError(f"group {gid}: a removed unit came back (selection is not monotone)")
        self.removed = new
        self._rebuild_masks()

    def _rebuild_masks(self) -> None:
        tensors = self._tensors()
        keep: dict[str, torch.Tensor] = {}
        for gid, units in self.removed.items():
            g = self.groups[gid]
            mask = np.zeros(g.width, dtype=bool)
            mask[units] = True
            for m in g.members:
                idx = m.index[mask[m.units]]
                if len(idx):
                    t = tensors[m.name]
                    k = keep.setdefault(m.name, torch.ones_like(t))
                    k.index_fill_(m.dim, torch.as_tensor(idx, dtype=torch.long, device=t.device), 0)
        for h in self._hooks:
            h.remove()
        self._hooks = []
        self._keep = keep
        params = dict(self.model.named_parameters(remove_duplicate=False))
        for name, k in keep.items():
            if name in params and params[name].requires_grad:
                self._hooks.append(params[name].register_hook(lambda grad, k=k: grad * k))
        self._zero()

    def _zero(self) -> None:
        self.zero_removed(self.model)

    def zero_removed(self, model: nn.Module) -> None:
        """Zero the removed units' entries in ``model``: the pruned model itself, or a copy whose parameters
        and buffers have the same names and shapes (an EMA of it, a checkpoint being written)."""
        tensors = dict(model.named_parameters(remove_duplicate=False))
        tensors.update(dict(model.named_buffers(remove_duplicate=False)))
        with torch.no_grad():
            for name, k in self._keep.items():
                t = tensors.get(name)
                if t is None or t.shape != k.shape:
                    raise ConfigError(f"{name}: the model to zero has no tensor of shape {tuple(k.shape)}")
                t.mul_(k.to(t.device, t.dtype))

    def _apply(self, step: int) -> None:
        if self.is_pruning_step(step):
            self._select(self.ratio_at(step))
            self.history.append((step, self.removed_units()))
        else:
            self._zero()

    def plan(self) -> Plan:
        """The plan cutting the units removed so far."""
        meta = pipeline.plan_meta(self.config, self.report, self.ratio_at(self.last_step), schedule="cubic")
        return build_plan(self.report, self.removed, meta)

    def finalize(self) -> Plan:
        """Physically remove the cut units (raises if the schedule has not finished); returns the plan."""
        if not self.done:
            raise ConfigError(
                f"the schedule ends at step {self.end_step}, this is step {self.last_step}: "
                "keep calling step()"
            )
        self._zero()
        plan = self.plan()
        for h in self._hooks:
            h.remove()
        self._hooks, self._keep = [], {}
        apply(self.model, plan, self.example_inputs)
        return plan

    def state_dict(self) -> dict[str, Any]:
        """Step count and removed units (JSON-serialisable); weights live in the model's state dict."""
        return {
            "last_step": self.last_step,
            "removed": {str(k): list(v) for k, v in self.removed.items()},
            "history": [list(h) for h in self.history],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume: restore the step and the removed units (and their soft masks)."""
        removed = {int(k): [int(u) for u in v] for k, v in state.get("removed", {}).items()}
        for gid, units in removed.items():
            if gid not in self.groups or any(not 0 <= u < self.groups[gid].width for u in units):
                raise ConfigError(f"state has units of group {gid} this model does not have")
        self.last_step = check_int(state.get("last_step"), "last_step", 0)
        self.history = [(int(s), int(n)) for s, n in state.get("history", [])]
        self.removed = removed
        self._rebuild_masks()

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.state_dict(),
            "final_ratio": self.final_ratio,
            "initial_ratio": self.initial_ratio,
            "start_step": self.start_step,
            "end_step": self.end_step,
            "frequency": self.frequency,
            "scope": self.scope,
            "total_units": self.total_units,
        }
