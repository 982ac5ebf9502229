"""Gradual pruning with the cubic schedule of Zhu & Gupta (2017), as a callback for any training loop.

"To prune, or not to prune" (arXiv:1710.01878) raises the sparsity from ``s_i`` to ``s_f`` over ``n`` pruning
steps spaced ``Δt`` training steps apart, starting at step ``t0``:

    s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n Δt))^3      for t in {t0, t0 + Δt, ..., t0 + n Δt}

fast at first, while there are many redundant weights, then slower. Between pruning steps the sparsity stays
where the last one put it. :class:`GradualPruner` does this to a model's masks: call ``pruner.step()``
after every ``optimizer.step()``; at each pruning step the masks grow to exactly the scheduled sparsity
(exact counts from :func:`prunekit.sparse.masks_from_scores`; masks only grow) and the masked weights read
as zero and get zero gradient from then on.

    pruner = GradualPruner(model, 0.9, start_step=0, end_step=2000, frequency=100)
    for x, y in batches:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
        pruner.step()
    pruner.finalize()                      # masks made permanent
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from torch import nn

from prunekit.criteria import Criterion
from prunekit.errors import ConfigError
from prunekit.schedules.masking import ScoreFn, check_fraction, check_int, make_mask_set
from prunekit.sparse.unstructured import Selector


def cubic_sparsity(
    step: int, *, initial: float, final: float, start: int, frequency: int, n_steps: int
) -> float:
    """The sparsity in force after training step ``step`` under the cubic schedule (module docstring).

    Pruning happens at ``start + k * frequency`` for ``k = 0 .. n_steps``; between those steps the value of
    the last one holds. Before ``start`` it is ``initial``, from ``start + n_steps * frequency`` on ``final``.

    >>> [round(cubic_sparsity(t, initial=0.0, final=0.9, start=0, frequency=10, n_steps=4), 4)
    ...  for t in (0, 9, 10, 20, 30, 40, 99)]
    [0.0, 0.0, 0.5203, 0.7875, 0.8859, 0.9, 0.9]
    """
    check_int(step, "step", 0)
    check_int(start, "start", 0)
    check_int(frequency, "frequency", 1)
    check_int(n_steps, "n_steps", 1)
    k = max(0, min((step - start) // frequency, n_steps))  # pruning steps done after the first, so far
    if k == 0:
        return float(initial)
    if k == n_steps:
        return float(final)
    return float(final + (initial - final) * (1.0 - k / n_steps) ** 3)


@dataclass(frozen=True)
class CubicSchedule:
    """The steps of a cubic schedule and the fraction in force after each (shared by the gradual pruners).

    Pruning happens after training steps ``start_step, start_step + frequency, ..., end_step``; ``at(t)`` is
    :func:`cubic_sparsity` at step ``t`` (``0`` before ``start_step``). Build it with :meth:`checked`.

    >>> s = CubicSchedule.checked(0.0, 0.5, start_step=10, end_step=20, frequency=5)
    >>> s.at(9), s.at(15), s.at(99), s.is_pruning_step(15), s.is_pruning_step(16)
    (0.0, 0.4375, 0.5, True, False)
    """

    initial: float
    final: float
    start_step: int
    end_step: int
    frequency: int

    @classmethod
    def checked(
        cls,
        initial: float,
        final: float,
        *,
        start_step: int,
        end_step: int,
        frequency: int,
        what: str = "sparsity",
    ) -> CubicSchedule:
        """Validate every argument (``what`` names the fraction in the messages) and build the schedule."""
        final = check_fraction(final, f"final_{what}")
        initial = check_fraction(initial, f"initial_{what}")
        if initial > final:
            raise ConfigError(
                f"initial_{what} ({initial}) must not exceed final_{what} ({final}): pruned stays pruned"
            )
        start_step = check_int(start_step, "start_step", 0)
        frequency = check_int(frequency, "frequency", 1)
        span = check_int(end_step, "end_step", 0) - start_step
        if span <= 0 or span % frequency:
            lower = start_step + max(1, span // frequency) * frequency
            raise ConfigError(
                f"end_step - start_step ({span}) must be a positive multiple of frequency "
                f"({frequency}): e.g. end_step={lower}"
            )
        return cls(initial, final, start_step, int(end_step), frequency)

    @property
    def n_steps(self) -> int:
        return (self.end_step - self.start_step) // self.frequency

    def at(self, step: int) -> float:
        """The fraction in force after ``step`` training steps."""
        if step < self.start_step:
            return 0.0
        return cubic_sparsity(
            step,
            initial=self.initial,
            final=self.final,
            start=self.start_step,
            frequency=self.frequency,
            n_steps=self.n_steps,
        )

    def is_pruning_step(self, step: int) -> bool:
        """True if pruning happens after training step ``step``."""
        offset = step - self.start_step
        return 0 <= offset <= self.end_step - self.start_step and offset % self.frequency == 0


class GradualPruner:
    """Raise a model's sparsity from ``initial_sparsity`` to ``final_sparsity`` on the cubic schedule.

    - ``start_step`` / ``end_step`` / ``frequency``: masks are updated after training steps
      ``start_step, start_step + frequency, ..., end_step`` (``end_step - start_step`` must be a positive
      multiple of ``frequency``). Step ``t`` is the number of ``step()`` calls so far, i.e. of optimizer
      steps done. After ``end_step`` the masks hold exactly ``final_sparsity`` of the selection.
    - ``pattern``: ``"unstructured"`` or ``"block:RxC"`` (structured groups: later, see
      :mod:`prunekit.schedules.masking`); ``scope``: ``"global"`` (one ranking over all selected weights)
      or ``"local"`` (every layer to the same sparsity, as in the paper); ``criterion``: ``"magnitude"``,
      ``"random"`` or a callable ``{name: layer} -> {name: scores}``; ``include``/``exclude`` as in
      :func:`prunekit.sparsify`.

    The constructor masks the selected layers at once (all-ones masks until the first pruning step) so the
    model's state-dict keys stay the same for the whole run; parameters stay the same objects, so an
    optimizer made before or after works. To resume: build the model and the pruner, load the model's
    state dict, then ``pruner.load_state_dict(saved)``.

    >>> import torch
    >>> model = nn.Sequential(nn.Linear(20, 20), nn.ReLU(), nn.Linear(20, 4))
    >>> pruner = GradualPruner(model, 0.8, start_step=0, end_step=30, frequency=10)
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.01)
    >>> for _ in range(30):
    ...     model(torch.randn(8, 20)).square().mean().backward()
    ...     opt.step(); opt.zero_grad()
    ...     _ = pruner.step()
    >>> pruner.sparsity()
    0.8
    """

    def __init__(
        self,
        model: nn.Module,
        final_sparsity: float,
        *,
        start_step: int,
        end_step: int,
        frequency: int,
        initial_sparsity: float = 0.0,
        pattern: str = "unstructured",
        scope: str = "global",
        criterion: str | Criterion | ScoreFn = "magnitude",
        include: Iterable[Selector] | Selector | None = None,
        exclude: Iterable[Selector] | Selector | None = None,
        seed: int = 0,
    ) -> None:
        self.schedule = CubicSchedule.checked(
            initial_sparsity, final_sparsity, start_step=start_step, end_step=end_step, frequency=frequency
        )
        self.final_sparsity, self.initial_sparsity = self.schedule.final, self.schedule.initial
        self.start_step, self.end_step = self.schedule.start_step, self.schedule.end_step
        self.frequency, self.n_steps = self.schedule.frequency, self.schedule.n_steps
        self.target = make_mask_set(
            model,
            pattern=pattern,
            scope=scope,
            criterion=criterion,
            include=include,
            exclude=exclude,
            seed=seed,
        )
        self.model = model
        self.pattern = str(pattern)
        self.scope = scope
        self.criterion = criterion if isinstance(criterion, str) else "custom"
        self.last_step = 0
        self.history: list[tuple[int, float]] = []  # (step, sparsity reached) at every pruning step
        self._apply(0)

    def sparsity_at(self, step: int) -> float:
        """The sparsity the masks hold after ``step`` training steps (0 before ``start_step``).

        >>> pruner = GradualPruner(nn.Linear(8, 8), 0.5, start_step=10, end_step=20, frequency=5)
        >>> pruner.sparsity_at(9), pruner.sparsity_at(10), pruner.sparsity_at(15), pruner.sparsity_at(99)
        (0.0, 0.0, 0.4375, 0.5)
        """
        return self.schedule.at(step)

    def is_pruning_step(self, step: int) -> bool:
        """True if the masks are updated after training step ``step``."""
        return self.schedule.is_pruning_step(step)

    def step(self) -> float:
        """Count one training step (call it after ``optimizer.step()``); prune if it is a pruning step.

        Returns the sparsity the schedule now asks for.
        """
        self.last_step += 1
        self._apply(self.last_step)
        return self.sparsity_at(self.last_step)

    def _apply(self, step: int) -> None:
        if self.is_pruning_step(step):
            self.target.prune_to(self.sparsity_at(step))
            self.history.append((step, self.target.sparsity()))
        elif step == 0:
            self.target.prune_to(0.0)  # all-ones masks: the state-dict keys stay the same for the whole run

    @property
    def done(self) -> bool:
        """True once the last pruning step has run."""
        return self.last_step >= self.end_step

    def sparsity(self) -> float:
        """Fraction of the selected weights masked right now."""
        return self.target.sparsity()

    def finalize(self) -> nn.Module:
        """Make the masks permanent (plain weights with zeros); raise if the schedule has not finished."""
        if not self.done:
            raise ConfigError(
                f"the schedule ends at step {self.end_step}, this is step {self.last_step}: keep calling "
                "step(), or use prunekit.remove_masks to keep the current masks"
            )
        return self.target.finalize()

    def _config(self) -> dict[str, Any]:
        return {
            "final_sparsity": self.final_sparsity,
            "initial_sparsity": self.initial_sparsity,
            "start_step": self.start_step,
            "end_step": self.end_step,
            "frequency": self.frequency,
            "pattern": self.pattern,
            "scope": self.scope,
            "criterion": self.criterion,
            "layers": list(self.target.names),
        }

    def state_dict(self) -> dict[str, Any]:
        """The step count and the schedule (JSON-serialisable); the masks live in the model's state dict."""
        return {"last_step": self.last_step, "history": [list(h) for h in self.history], **self._config()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at ``state["last_step"]``; the schedule must match. Masks short of the target are grown."""
        mine = self._config()
        for key, value in mine.items():
            if state.get(key) != value:
                raise ConfigError(
                    f"state was saved with {key}={state.get(key)!r}, this pruner has {value!r}: "
                    "build the pruner with the same schedule and layers"
                )
        self.last_step = check_int(state.get("last_step"), "last_step", 0)
        self.history = [(int(s), float(v)) for s, v in state.get("history", [])]
        self.target.prune_to(self.sparsity_at(self.last_step))

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary: schedule, current step and sparsity, the mask-update history."""
        return {**self.state_dict(), "sparsity": self.sparsity()}
