"""Recipes: one YAML file that says how a model is pruned, so a run can be repeated exactly.

    method: structured        # structured | unstructured | layers
    criterion: l2             # structured: a group criterion (l1, l2, ...); unstructured: magnitude | random
    scope: global             # local | global
    ratio: 0.5                # structured: share of units; layers: share of blocks
    # sparsity: 0.9           # unstructured, instead of ratio: share of weights masked
    # target: {macs: 0.5}     # structured only, instead of ratio: macs | params | latency_ms | speedup
    #                         # (+ runtime: onnxruntime, threads: 1 for latency_ms / speedup)
    # n: 2                    # layers only, instead of ratio: number of blocks
    max_ratio: 0.9            # structured
    round_to: 8               # structured
    ignore: [fc]              # structured: modules whose channels stay
    pattern: unstructured     # unstructured: unstructured | N:M | block:RxC
    schedule:                 # one-shot | iterative (steps) | gradual (start_step, end_step, frequency)
      kind: iterative
      steps: 3
    finetune: {epochs: 1, lr: 0.001, optimizer: adam}   # optional; needs train_data in run_recipe
    seed: 0

:func:`load_recipe` reads it with ``yaml.safe_load`` and checks every key before anything runs (a bad key is
named in a one-line :class:`ConfigError`); :func:`run_recipe` runs it on a model.

>>> r = recipe_from_dict({"method": "structured", "ratio": 0.25})
>>> r.method, r.criterion, r.schedule.kind
('structured', 'l2', 'one-shot')
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit._inputs import ExampleInputs
from prunekit.config import PruneConfig, SparsifyConfig
from prunekit.errors import ConfigError
from prunekit.recover.config import TrainConfig

METHODS = ("structured", "unstructured", "layers")
SCHEDULES = ("one-shot", "iterative", "gradual")
_TOP = {
    "method", "criterion", "scope", "ratio", "sparsity", "target", "n", "max_ratio", "round_to", "ignore",
    "pattern", "schedule", "finetune", "seed",
}  # fmt: skip
_FINETUNE = {"steps", "epochs", "lr", "optimizer", "weight_decay", "momentum", "schedule", "max_grad_norm"}


@dataclass
class ScheduleSpec:
    """When to prune: ``one-shot``; ``iterative`` (``steps`` prune steps, fine-tuning between); ``gradual``
    (cubic schedule over training steps ``start_step .. end_step`` every ``frequency``)."""

    kind: str = "one-shot"
    steps: int = 1
    start_step: int = 0
    end_step: int | None = None
    frequency: int | None = None


@dataclass
class Recipe:
    """A validated recipe (module docstring); ``to_dict()`` round-trips through :func:`recipe_from_dict`."""

    method: str
    criterion: str
    scope: str
    ratio: float | None = None
    sparsity: float | None = None
    target: dict[str, float] | None = None
    n: int | None = None
    max_ratio: float = 0.9
    round_to: int | None = None
    ignore: list[str] = field(default_factory=list)
    pattern: str = "unstructured"
    schedule: ScheduleSpec = field(default_factory=ScheduleSpec)
    finetune: dict[str, Any] | None = None
    seed: int = 0

    def prune_config(self, data: Iterable | None = None) -> PruneConfig:
        """The :class:`prunekit.PruneConfig` of a structured recipe (``data``: calibration batches).

        >>> recipe_from_dict({"method": "structured", "ratio": 0.25, "ignore": ["fc"]}).prune_config().ignore
        ('fc',)
        """
        return PruneConfig(
            ratio=self.ratio or 0.0, criterion=self.criterion, scope=self.scope, ignore=tuple(self.ignore),
            round_to=self.round_to, max_ratio=self.max_ratio, target=self.target, data=data,
        )  # fmt: skip

    def sparsify_config(self) -> SparsifyConfig:
        """The :class:`prunekit.SparsifyConfig` of an unstructured recipe.

        >>> recipe_from_dict({"method": "unstructured", "sparsity": 0.5}).sparsify_config().sparsity
        0.5
        """
        return SparsifyConfig(self.sparsity, self.pattern, self.criterion, self.scope, seed=self.seed)

    def to_dict(self) -> dict[str, Any]:
        """The recipe as YAML/JSON data (unset keys left out), accepted back by :func:`recipe_from_dict`."""
        d = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        d["schedule"] = {k: v for k, v in d["schedule"].items() if v is not None}
        if self.method != "unstructured":
            d.pop("pattern")
        return d


def _num(d: dict, key: str, where: str, *, low: float, high: float, integer: bool = False) -> Any:
    v = d[key]
    ok = isinstance(v, int) if integer else isinstance(v, (int, float))
    if isinstance(v, bool) or not ok or not math.isfinite(v) or not low <= v <= high:
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"{where}{key}: must be {kind} in [{low}, {high}], got {v!r}")
    return v


def _recipe_head(data: Any, w: str) -> Recipe:
    """The :class:`Recipe` of ``data``'s method, criterion, scope and seed, once its keys are all known."""
    if not isinstance(data, dict):
        raise ConfigError(f"{w}a recipe is a mapping of keys (method, ratio, ...), got {type(data).__name__}")
    for key in data:
        if key not in _TOP:
            raise ConfigError(f"{w}unknown key {key!r}; known keys: {', '.join(sorted(_TOP))}")
    method = data.get("method")
    if method not in METHODS:
        raise ConfigError(f"{w}method: must be one of {', '.join(METHODS)}, got {method!r}")
    default_criterion = "magnitude" if method == "unstructured" else "l2"
    criterion = data.get("criterion", default_criterion)
    if not isinstance(criterion, str):
        raise ConfigError(f"{w}criterion: must be a name, got {criterion!r}")
    scope = data.get("scope", "global")
    if scope not in ("local", "global"):
        raise ConfigError(f"{w}scope: must be local or global, got {scope!r}")
    seed = _num(data, "seed", w, low=0, high=2**32, integer=True) if "seed" in data else 0
    return Recipe(method, criterion, scope, seed=seed)


def _amount_keys(data: dict, w: str, method: str) -> dict:
    """``data`` with exactly one amount key that ``method`` uses (``ratio``/``target``, ``sparsity``, ``n``).

    An unstructured recipe's ``ratio`` is read as ``sparsity`` with a :class:`DeprecationWarning` (reported
    at the caller of :func:`recipe_from_dict`).
    """
    if method == "unstructured" and "ratio" in data and "sparsity" not in data:
        warnings.warn(
            f"{w}the amount of an unstructured recipe is 'sparsity'; 'ratio' is deprecated there",
            DeprecationWarning,
            stacklevel=3,
        )
        data = {("sparsity" if k == "ratio" else k): v for k, v in data.items()}
    given = [k for k in ("ratio", "sparsity", "target", "n") if k in data]
    allowed = {"structured": ("ratio", "target"), "unstructured": ("sparsity",), "layers": ("ratio", "n")}[
        method
    ]
    for k in given:
        if k not in allowed:
            raise ConfigError(f"{w}{k}: not used by method {method}; give one of {', '.join(allowed)}")
    if len(given) != 1:
        raise ConfigError(
            f"{w}give exactly one of {', '.join(allowed)} for method {method}, got {given or 'none'}"
        )
    return data


def _target(t: Any, w: str) -> dict[str, Any]:
    """A ``target`` mapping, checked by building a :class:`prunekit.structured.target.Target` from it."""
    from prunekit.structured.target import Target

    if not isinstance(t, dict):
        raise ConfigError(f"{w}target: must be a mapping like {{macs: 0.5}}, got {t!r}")
    try:
        Target(**t)
    except TypeError as exc:
        keys = "macs, params, latency_ms, speedup, runtime, threads"
        raise ConfigError(f"{w}target: keys are {keys}; got {sorted(t)}") from exc
    except ConfigError as exc:
        raise ConfigError(f"{w}target: {exc}") from exc
    return dict(t)


def _finetune(ft: Any, w: str) -> dict[str, Any]:
    """A ``finetune`` mapping: known keys, exactly one of steps or epochs, values a TrainConfig accepts."""
    if not isinstance(ft, dict):
        raise ConfigError(f"{w}finetune: must be a mapping like {{epochs: 1, lr: 0.001}}, got {ft!r}")
    for k in ft:
        if k not in _FINETUNE:
            raise ConfigError(f"{w}finetune.{k}: unknown key; known keys: {', '.join(sorted(_FINETUNE))}")
    if ("steps" in ft) == ("epochs" in ft):
        raise ConfigError(f"{w}finetune: give exactly one of steps or epochs")
    try:
        TrainConfig(**ft)  # a bad value fails when the recipe is read, not after pruning
    except ConfigError as exc:
        raise ConfigError(f"{w}finetune: {exc}") from None
    return dict(ft)


def recipe_from_dict(data: Any, source: str = "recipe") -> Recipe:
    """Validate a parsed recipe (a dict as ``yaml.safe_load`` gives it) into a :class:`Recipe`.

    Every error is a :class:`ConfigError` whose message starts with ``source`` and names the key.

    >>> recipe_from_dict({"method": "layers", "n": 2}).n
    2
    """
    w = f"{source}: "
    r = _recipe_head(data, w)
    method = r.method
    data = _amount_keys(data, w, method)
    if "ratio" in data:
        r.ratio = float(_num(data, "ratio", w, low=0.0, high=0.999999))
    if "sparsity" in data:
        r.sparsity = float(_num(data, "sparsity", w, low=0.0, high=0.999999))
    if "n" in data:
        r.n = _num(data, "n", w, low=0, high=10**6, integer=True)
    if "target" in data:
        r.target = _target(data["target"], w)
    if "max_ratio" in data:
        r.max_ratio = float(_num(data, "max_ratio", w, low=1e-9, high=1.0))
    if data.get("round_to") is not None:
        r.round_to = _num(data, "round_to", w, low=1, high=2**20, integer=True)
    if "ignore" in data:
        ig = data["ignore"]
        if not isinstance(ig, list) or not all(isinstance(s, str) for s in ig):
            raise ConfigError(f"{w}ignore: must be a list of module names, got {ig!r}")
        r.ignore = list(ig)
    if "pattern" in data:
        if method != "unstructured" or not isinstance(data["pattern"], str):
            raise ConfigError(f"{w}pattern: a string, only for method unstructured")
        r.pattern = data["pattern"]
    r.schedule = _schedule(data.get("schedule", {}), w, method, r)
    if data.get("finetune") is not None:
        r.finetune = _finetune(data["finetune"], w)
    return r


def _schedule(s: Any, w: str, method: str, r: Recipe) -> ScheduleSpec:
    if isinstance(s, str):
        s = {"kind": s}
    if not isinstance(s, dict):
        raise ConfigError(f"{w}schedule: must be a mapping like {{kind: iterative, steps: 3}}, got {s!r}")
    known = {f.name for f in dataclasses.fields(ScheduleSpec)}
    for k in s:
        if k not in known:
            raise ConfigError(f"{w}schedule.{k}: unknown key; known keys: {', '.join(sorted(known))}")
    spec = ScheduleSpec(**s)
    ws = f"{w}schedule."
    if spec.kind not in SCHEDULES:
        raise ConfigError(f"{ws}kind: must be one of {', '.join(SCHEDULES)}, got {spec.kind!r}")
    if spec.kind != "one-shot" and method == "layers":
        raise ConfigError(f"{ws}kind: method layers is one-shot only")
    if spec.kind != "one-shot" and r.target is not None:
        raise ConfigError(f"{ws}kind: a target is searched one-shot; use ratio with {spec.kind}")
    if spec.kind == "iterative":
        if "steps" in s:
            _num(s, "steps", ws, low=1, high=1000, integer=True)
    if spec.kind == "gradual":
        for k in ("end_step", "frequency"):
            if k not in s:
                raise ConfigError(f"{ws}{k}: required for a gradual schedule")
            _num(s, k, ws, low=1, high=10**9, integer=True)
        if (spec.end_step - spec.start_step) % spec.frequency or spec.end_step <= spec.start_step:
            raise ConfigError(f"{ws}end_step - start_step must be a positive multiple of frequency")
    return spec


def load_recipe(path: str | os.PathLike) -> Recipe:
    """Read and validate a YAML recipe (``yaml.safe_load``).

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "r.yaml"
    >>> _ = p.write_text("method: structured\\ntarget: {macs: 0.5}\\n")
    >>> load_recipe(p).target
    {'macs': 0.5}
    """
    return recipe_from_dict(read_yaml(path, "recipe"), str(path))


def read_yaml(path: str | os.PathLike, what: str) -> Any:
    """``yaml.safe_load`` of the file at ``path``; an unreadable file or invalid YAML is one ConfigError line
    naming ``what`` the file was meant to be."""
    import yaml

    try:
        return yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from exc
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from exc


@dataclass
class RecipeResult:
    """What :func:`run_recipe` did: the recipe, the pruning result and the fine-tuning results."""

    recipe: Recipe
    result: dict[str, Any]
    finetune: list[dict[str, Any]] = field(default_factory=list)
    plans: list[Any] = field(default_factory=list)  # structural Plans, in the order applied (for save)

    def to_dict(self) -> dict[str, Any]:
        return {"recipe": self.recipe.to_dict(), "result": self.result, "finetune": list(self.finetune)}


def _train_loop(
    model: nn.Module, train_data: Iterable, ft: TrainConfig, on_step: Callable[[], Any], steps: int
) -> None:
    """Plain cross-entropy loop over ``train_data`` (cycled) for ``steps`` optimizer steps (gradual)."""
    from prunekit.recover.callbacks import cross_entropy
    from prunekit.recover.train import optimizer_step

    opt = (
        torch.optim.SGD(model.parameters(), lr=ft.lr, momentum=ft.momentum)
        if ft.optimizer == "sgd"
        else torch.optim.Adam(model.parameters(), lr=ft.lr)
    )
    done = 0
    model.train()
    while done < steps:
        for xb, yb in train_data:
            optimizer_step(model, cross_entropy(model(xb), yb), opt)
            on_step()
            done += 1
            if done >= steps:
                break


def run_recipe(
    recipe: Recipe,
    model: nn.Module,
    example_inputs: ExampleInputs,
    *,
    train_data: Iterable | None = None,
    calib_data: Iterable | None = None,
) -> RecipeResult:
    """Run ``recipe`` on ``model`` in place. ``train_data``: ``(inputs, targets)`` batches, required when the
    recipe fine-tunes or its schedule is iterative/gradual; ``calib_data``: batches for layer scores and
    data-driven criteria.

    >>> net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
    >>> res = run_recipe(recipe_from_dict({"method": "structured", "ratio": 0.5}), net, torch.zeros(1, 4))
    >>> res.result["removed_units"]
    8
    """
    from prunekit.recover.finetune import finetune as run_finetune

    kind = recipe.schedule.kind
    if (recipe.finetune is not None or kind != "one-shot") and train_data is None:
        raise ConfigError(
            f"this recipe trains (schedule {kind}, finetune {recipe.finetune}): pass train_data"
        )
    ft = TrainConfig(seed=recipe.seed, **(recipe.finetune or {"epochs": 1}))
    ft_runs: list[dict[str, Any]] = []

    def tune(m: nn.Module) -> None:
        if recipe.finetune is not None:
            ft_runs.append(run_finetune(m, train_data, ft, progress=False).to_dict())

    torch.manual_seed(recipe.seed)
    plans: list[Any] = []
    if recipe.method == "layers":
        from prunekit.structured.layers import prune_layers

        result = prune_layers(
            model, example_inputs, n=recipe.n, ratio=recipe.ratio, data=calib_data
        ).to_dict()
    elif recipe.method == "unstructured":
        result = _unstructured(recipe, model, train_data, ft, tune)
    else:
        result = _structured(recipe, model, example_inputs, train_data, calib_data, ft, tune, plans)
    if kind != "iterative":  # iterative schedules fine-tune after every step
        tune(model)
    return RecipeResult(recipe, result, ft_runs, plans)


def _unstructured(recipe: Recipe, model: nn.Module, train_data: Any, ft: TrainConfig, tune: Callable) -> dict:
    from prunekit.schedules import GradualPruner, iterative_prune
    from prunekit.sparse import sparsify

    s, kind, cfg = recipe.schedule, recipe.schedule.kind, recipe.sparsify_config()
    if kind == "one-shot":
        return sparsify(model, cfg).to_dict()
    common = {"pattern": cfg.pattern, "scope": cfg.scope, "criterion": cfg.criterion, "seed": cfg.seed}
    if kind == "iterative":
        return iterative_prune(model, tune, final_sparsity=cfg.sparsity, steps=s.steps, **common).to_dict()
    pruner = GradualPruner(
        model, cfg.sparsity, start_step=s.start_step, end_step=s.end_step, frequency=s.frequency, **common
    )
    _train_loop(model, train_data, ft, pruner.step, s.end_step)
    return pruner.to_dict()


def _structured(
    recipe: Recipe,
    model: nn.Module,
    x: ExampleInputs,
    train_data: Any,
    calib_data: Any,
    ft: TrainConfig,
    tune: Callable,
    plans: list[Any],
) -> dict:
    from prunekit.schedules.structured_gradual import StructuredGradualPruner
    from prunekit.structured import prune

    s, kind, cfg = recipe.schedule, recipe.schedule.kind, recipe.prune_config(calib_data)
    if kind == "one-shot":
        res = prune(model, x, cfg)
        plans.append(res.plan)
        return res.to_dict()
    if kind == "iterative":  # each step removes the same share of what is left: (1 - r)^steps = 1 - ratio
        step_ratio = 1.0 - (1.0 - recipe.ratio) ** (1.0 / s.steps)
        steps = []
        for _ in range(s.steps):
            res = prune(model, x, cfg.replace(ratio=step_ratio))
            plans.append(res.plan)
            steps.append(res.to_dict())
            tune(model)
        return {"steps": steps, "step_ratio": step_ratio}
    pruner = StructuredGradualPruner(
        model, x, recipe.ratio, start_step=s.start_step, end_step=s.end_step, frequency=s.frequency,
        config=cfg.replace(round_to=None),
    )  # fmt: skip
    _train_loop(model, train_data, ft, pruner.step, s.end_step)
    plan = pruner.finalize()
    plans.append(plan)
    return {**pruner.to_dict(), "removed_units": plan.removed_units, "plan": plan.to_dict()}
