"""Lottery tickets: iterative magnitude pruning with rewinding (Frankle & Carbin 2019, Frankle et al. 2020).

:func:`lottery_ticket` trains the dense model, then for each round prunes ``rate`` of the weights still left
(by magnitude of the trained weights), rewinds the surviving weights to their values at initialisation
(``rewind="init"``) or at training iteration ``k`` (``rewind=k``, "late rewinding", which makes tickets
work on deeper networks), and trains again. After round ``r`` a fraction ``(1 - rate) ** r`` of the
selected weights remains (exact counts). Rewinding restores every parameter and buffer (e.g. BatchNorm
running statistics) saved at that point; the masks are kept.

The training function gets the model and a :class:`TrainRun`, and calls ``run.step()`` after each
``optimizer.step()``, just like :class:`~prunekit.schedules.GradualPruner`: that is how the weights at
iteration ``k`` are captured during the first (dense) run::

    def train_fn(model, run):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        for x, y in batches:                  # a train_fn may skip its first run.start_step steps
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(); loss.backward(); opt.step()
            run.step()

With ``random_reinit_control=True`` each round also trains the same mask from a fresh random initialisation
(every module's ``reset_parameters()``, a different seed per round): the control of the paper, which loses
accuracy at small remaining fractions where the rewound ticket does not.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from prunekit.criteria import Criterion
from prunekit.errors import ConfigError
from prunekit.measure import evaluate
from prunekit.schedules.masking import check_fraction, check_int, make_mask_set
from prunekit.sparse.masks import Mask, own_parametrized_class
from prunekit.sparse.unstructured import Selector


class TrainRun:
    """Handed to ``train_fn(model, run)``: which run this is; call ``run.step()`` after each optimizer step.

    ``round``: 0 for the dense run, then 1, 2, ...; ``start_step``: the iteration the weights were rewound to
    (0 for the first run, for ``rewind="init"`` and for a control run); ``control``: True when this run trains
    the random re-initialisation of the round's mask; ``steps``: ``step()`` calls so far.

    >>> run = TrainRun(round=0, start_step=0)
    >>> run.step(); run.steps
    1
    """

    def __init__(
        self,
        *,
        round: int,
        start_step: int,
        control: bool = False,
        on_step: Callable[[int], None] | None = None,
    ) -> None:
        self.round = round
        self.start_step = start_step
        self.control = control
        self.steps = 0
        self._on_step = on_step

    def step(self) -> None:
        """Count one optimizer step (call it after ``optimizer.step()``)."""
        self.steps += 1
        if self._on_step is not None:
            self._on_step(self.steps)


class Snapshot:
    """Copies of a model's parameters and buffers (mask buffers excluded); :meth:`restore` writes them back.

    Tensors are tracked by object, not by name, so a snapshot taken before masking restores a masked layer's
    ``parametrizations.weight.original`` (the same Parameter object).

    >>> layer = nn.Linear(2, 2)
    >>> snap = Snapshot(layer)
    >>> with torch.no_grad():
    ...     _ = layer.weight.zero_()
    >>> snap.restore(); bool((layer.weight != 0).any())
    True
    """

    def __init__(self, model: nn.Module) -> None:
        mask_ids = {id(m.mask) for m in model.modules() if isinstance(m, Mask)}
        tensors = [p for p in model.parameters()] + [b for b in model.buffers() if id(b) not in mask_ids]
        self.pairs = [(t, t.detach().clone()) for t in tensors]

    def restore(self) -> None:
        with torch.no_grad():
            for live, saved in self.pairs:
                live.copy_(saved)


def reinit_randomly(model: nn.Module, seed: int) -> None:
    """Fresh initial values for all parameters (every module's ``reset_parameters()``), seeded; masks kept.

    Raises :class:`ConfigError` before any change if a module holds parameters but has no
    ``reset_parameters``.

    >>> layer = nn.Linear(4, 4)
    >>> before = layer.weight.detach().clone()
    >>> reinit_randomly(layer, seed=1); torch.equal(before, layer.weight)
    False
    """
    owners = _param_owners(model)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for module in owners:
            masks = {}  # unmask (the original Parameter comes back), reset, put the same Mask back
            if parametrize.is_parametrized(module):
                for pname in list(module.parametrizations):
                    masks[pname] = module.parametrizations[pname][0]
                    own_parametrized_class(module)
                    parametrize.remove_parametrizations(module, pname, leave_parametrized=False)
            try:
                module.reset_parameters()
            finally:
                for pname, mask in masks.items():
                    parametrize.register_parametrization(module, pname, mask)


def _param_owners(model: nn.Module) -> list[nn.Module]:
    """Modules that hold parameters themselves; raise if one of them cannot ``reset_parameters()``."""
    owners = []
    for name, module in model.named_modules():
        if isinstance(module, parametrize.ParametrizationList):
            continue
        if not (module._parameters or parametrize.is_parametrized(module)):
            continue
        if parametrize.is_parametrized(module):
            for pname, plist in module.parametrizations.items():
                if len(plist) != 1 or not isinstance(plist[0], Mask):
                    raise ConfigError(
                        f"module {name!r} has a parametrization on {pname} other than a prunekit mask: "
                        "set random_reinit_control=False"
                    )
        if not callable(getattr(module, "reset_parameters", None)):
            raise ConfigError(
                f"module {name or '(root)'!r} ({type(module).__name__}) holds parameters but has no "
                "reset_parameters(), so it cannot be re-initialised: set random_reinit_control=False"
            )
        owners.append(module)
    return owners


@dataclass
class TicketRound:
    """One round: the fraction of selected weights remaining, the ticket's score, the control's score."""

    round: int
    remaining: float
    metric: float | None
    control_metric: float | None
    masks: dict[str, Tensor] = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable (masks as kept counts per layer)."""
        return {
            "round": self.round,
            "remaining": self.remaining,
            "metric": self.metric,
            "control_metric": self.control_metric,
            "kept": {name: int(mask.sum()) for name, mask in self.masks.items()},
        }


@dataclass
class LotteryResult:
    """Round 0 is the trained dense model; round ``r`` the ticket after ``r`` prune-rewind-train rounds."""

    rewind: str | int
    rate: float
    scope: str
    rounds: list[TicketRound]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary."""
        return {
            "rewind": self.rewind,
            "rate": self.rate,
            "scope": self.scope,
            "rounds": [r.to_dict() for r in self.rounds],
        }


def _check_lottery_args(
    rounds: int, rate: float, rewind: str | int, train_fn: Any, eval_fn: Any
) -> tuple[float, int]:
    """Check the options of :func:`lottery_ticket`; return ``rate`` and the iteration to rewind to."""
    check_int(rounds, "rounds", 1)
    rate = check_fraction(rate, "rate", allow_zero=False)
    if rewind != "init" and (isinstance(rewind, bool) or not isinstance(rewind, int) or rewind < 0):
        raise ConfigError(f"rewind must be 'init' or an iteration >= 0, got {rewind!r}")
    if not callable(train_fn):
        raise ConfigError(f"train_fn must be a callable train_fn(model, run), got {type(train_fn).__name__}")
    if eval_fn is not None and not callable(eval_fn):
        raise ConfigError(f"eval_fn must be a callable eval_fn(model) -> float, got {type(eval_fn).__name__}")
    return rate, 0 if rewind == "init" else rewind


def _dense_run(
    model: nn.Module, train_fn: Callable[[nn.Module, TrainRun], Any], rewind_step: int
) -> tuple[Snapshot, Snapshot]:
    """Train the dense model once (round 0); return snapshots at initialisation and at ``rewind_step``.

    The rewind point is taken when ``run.step()`` reaches ``rewind_step`` (at once for 0). If the run calls
    it fewer times the model is restored to its initial values and :class:`ConfigError` is raised.
    """
    init = Snapshot(model)
    saved: dict[str, Snapshot] = {}
    if rewind_step == 0:
        saved["point"] = init

    def capture(step: int) -> None:
        if step == rewind_step and "point" not in saved:
            saved["point"] = Snapshot(model)

    train_fn(model, TrainRun(round=0, start_step=0, on_step=capture))
    if "point" not in saved:
        init.restore()
        raise ConfigError(
            f"rewind={rewind_step} but train_fn's first run called run.step() fewer times: call run.step() "
            "after every optimizer.step(), or rewind to an earlier iteration (the model was restored)"
        )
    return init, saved["point"]


def lottery_ticket(
    model: nn.Module,
    train_fn: Callable[[nn.Module, TrainRun], Any],
    *,
    rounds: int,
    rate: float = 0.2,
    rewind: str | int = "init",
    eval_fn: Callable[[nn.Module], float] | None = None,
    random_reinit_control: bool = False,
    scope: str = "global",
    include: Iterable[Selector] | Selector | None = None,
    exclude: Iterable[Selector] | Selector | None = None,
    seed: int = 0,
    criterion: str | Criterion = "magnitude",
) -> LotteryResult:
    """Find a winning ticket by iterative magnitude pruning with rewinding (module docstring); in place.

    ``rounds`` prune-rewind-train rounds, each pruning ``rate`` of the remaining selected weights
    (``scope="global"``: one ranking over all of them; ``"local"``: per layer). ``rewind`` is ``"init"`` or
    an iteration ``k`` (``train_fn`` must call ``run.step()`` at least ``k`` times in its first run). The
    model ends as the last round's trained ticket, masks on. ``eval_fn(model) -> float`` scores each round.
    ``criterion`` ranks the trained weights (``"magnitude"``, the paper's; any element criterion of
    :mod:`prunekit.criteria` by name or object, data-free ones only: ``train_fn`` owns the data).

    >>> def train_fn(model, run):
    ...     opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ...     for _ in range(5):
    ...         model(torch.randn(8, 6)).square().mean().backward()
    ...         opt.step(); opt.zero_grad(); run.step()
    >>> model = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 2))
    >>> res = lottery_ticket(model, train_fn, rounds=2, rate=0.5, rewind=2)
    >>> [r.remaining for r in res.rounds]
    [1.0, 0.5, 0.25]
    """
    rate, rewind_step = _check_lottery_args(rounds, rate, rewind, train_fn, eval_fn)
    mask_set = make_mask_set(model, scope=scope, include=include, exclude=exclude, criterion=criterion)
    if random_reinit_control:
        _param_owners(model)  # raises now if a module cannot be re-initialised
    init, point = _dense_run(model, train_fn, rewind_step)

    def score(m: nn.Module) -> float | None:
        return None if eval_fn is None else evaluate(m, eval_fn)

    history = [TicketRound(0, 1.0 - mask_set.sparsity(), score(model), None, mask_set.masks())]
    for r in range(1, rounds + 1):
        mask_set.prune_to(1.0 - (1.0 - rate) ** r)
        control = None
        if random_reinit_control:
            init.restore()
            reinit_randomly(model, seed + r)
            train_fn(model, TrainRun(round=r, start_step=0, control=True))
            control = score(model)
        point.restore()
        train_fn(model, TrainRun(round=r, start_step=rewind_step))
        history.append(TicketRound(r, 1.0 - mask_set.sparsity(), score(model), control, mask_set.masks()))
    return LotteryResult(rewind, rate, scope, history)
