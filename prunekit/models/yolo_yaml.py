"""Write a pruned YOLO's widths into its ``model.yaml``, so ultralytics' own trainer rebuilds it as pruned.

``YOLO.train`` (and ``yolo train model=pruned.pt``) never trains the loaded module: it calls
``DetectionModel(model.yaml, nc=...)`` and copies over the tensors whose shapes match. With the stock yaml
that is the dense network. A yaml can, however, state most pruned widths exactly:

- ``width_multiple`` and ``depth_multiple`` become 1 and ``scales`` go, so each layer's first argument is its
  real output width (ultralytics still rounds it up to a multiple of 8: a stock row states multiples of 8;
  a ``Prunekit<Layer>`` row states any width, see :mod:`prunekit.models.yolo_modules`);
- C2f-like blocks (``C2f``, ``C3k2``, ...) get their expansion ``e`` set so that ``int(c2 * e)`` is the pruned
  hidden width ``c``;
- Segment heads get their proto width.

Some widths ultralytics derives from others and no argument sets (SPPF's hidden width is half its input, the
Detect head's hidden widths follow the P3 width and the class count, a bottleneck's inner width equals its
block's hidden width). :func:`trainable_plan` therefore rebuilds the model from the derived yaml and compares
every tensor shape with the pruned model; a group that alone sets a mismatched width is cut again to the
width the rebuild derives, each group whose cut the yaml still cannot reproduce is kept whole, and the plan
is rebuilt, until the yaml rebuilds the pruned model exactly. Nothing is guessed: the check builds
the model the way ultralytics' trainer will (same class, class count and channels).

A model pruned without this (``prune_yolo(..., trainable=False)``) gets a yaml whose first layer names a
module that does not exist (:data:`NOT_IN_YAML`), so a stock ``train()`` fails loudly instead of training the
dense network; :func:`prunekit.models.yolo_train.finetune_yolo` trains it as it is.
"""

from __future__ import annotations

import copy
import inspect
import logging
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from prunekit.graph.groups import GroupReport
from prunekit.models.yolo_modules import HEADS, LAYERS, legacy_heads, needs_stated_head, register, stated_row
from prunekit.plan import Plan
from prunekit.structured.cut import apply
from prunekit.structured.select import build_plan

NOT_IN_YAML = "PrunedWidthsNotInYaml_FineTuneWith_prunekit_yolo_finetune"
FIRST_MODULE_KEY = "prunekit_first_module"  # where poisoned_yaml keeps the real name
MAX_ROUNDS = 32


def _init_names(cls: type) -> list[str]:
    try:
        return list(inspect.signature(cls).parameters)
    except (TypeError, ValueError):
        return []


def _multipliers(yaml: dict) -> tuple[float, float]:
    """``(depth, width)`` as ultralytics' ``parse_model`` reads them."""
    scales = yaml.get("scales")
    if scales:
        scale = yaml.get("scale") or next(iter(scales))
        depth, width, _max = scales[scale]
        return float(depth), float(width)
    return float(yaml.get("depth_multiple", 1.0)), float(yaml.get("width_multiple", 1.0))


def _layer_widths(model: nn.Module, ch: int) -> dict[int, int]:
    """Channel count of each top-level layer's output (tensor outputs only), from one small forward."""
    widths: dict[int, int] = {}
    hooks = []
    for i, layer in enumerate(model.model):

        def hook(_m: nn.Module, _a: Any, out: Any, i: int = i) -> None:
            if torch.is_tensor(out) and out.dim() == 4:
                widths[i] = int(out.shape[1])

        hooks.append(layer.register_forward_hook(hook))
    training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, ch, 64, 64))
    finally:
        model.train(training)
        for h in hooks:
            h.remove()
    return widths


def pruned_yaml(model: nn.Module, stated: Iterable[int] = ()) -> dict:
    """A copy of ``model.yaml`` whose layer arguments state ``model``'s current (pruned) widths.

    Layers whose index is in ``stated`` become ``Prunekit<Layer>`` rows (:mod:`prunekit.models.yolo_modules`)
    that state every conv width, derived ones included (where the layer type has such a row).

    >>> from prunekit.models.ultralytics import load_yolo
    >>> pruned_yaml(load_yolo("yolov8n.yaml"))["backbone"][0]
    [-1, 1, 'Conv', [16, 3, 2]]
    """
    from ultralytics.nn.modules import Classify, Segment

    yaml = copy.deepcopy(model.yaml)
    if FIRST_MODULE_KEY in yaml:  # un-poison (see poisoned_yaml)
        yaml["backbone"][0][2] = yaml.pop(FIRST_MODULE_KEY)
    depth, _width = _multipliers(yaml)
    widths = _layer_widths(model, int(yaml.get("channels", 3)))
    for i, (spec, layer) in enumerate(zip(yaml["backbone"] + yaml["head"], model.model, strict=True)):
        n, args = spec[1], spec[3]
        if n > 1:
            spec[1] = max(round(n * depth), 1)
        names = _init_names(type(layer))
        if names[:2] == ["c1", "c2"] and not isinstance(layer, Classify) and i in widths and args:
            args[0] = widths[i]  # (c1, c2, ...) layers: the yaml's first argument is c2
            c = getattr(layer, "c", None)
            if "e" in names and hasattr(layer, "forward_split") and isinstance(c, int):
                _set_expansion(args, names, type(layer), (c + 0.5) / widths[i])
        if isinstance(layer, Segment) and len(args) > 2:
            args[2] = int(layer.proto.cv1.conv.out_channels)
    _state_rows(yaml, model, set(stated))
    yaml.pop("scales", None)
    yaml.pop("scale", None)
    yaml["depth_multiple"] = yaml["width_multiple"] = 1.0
    return yaml


def _state_rows(yaml: dict, model: nn.Module, stated: set[int]) -> None:
    """Turn the rows of the ``stated`` layers into ``Prunekit<Layer>`` rows (in place); the head too when a
    stated layer's stock row was what made the heads non-legacy."""
    rows = yaml["backbone"] + yaml["head"]
    legacy = legacy_heads(yaml)
    if any(needs_stated_head(model.model[i]) for i in stated):
        stated = stated | {len(rows) - 1}
    for i in sorted(stated):
        row = stated_row(model.model[i], rows[i], legacy)
        if row is not None:
            rows[i][:] = row


def _unround_layers(model: nn.Module) -> set[int]:
    """Layers of ``model`` whose output width is not a multiple of 8."""
    return {i for i, w in _layer_widths(model, int(model.yaml.get("channels", 3))).items() if w % 8}


def statable(model: nn.Module, layer: int) -> bool:
    """Whether layer ``layer`` of ``model`` has a ``Prunekit<Layer>`` row."""
    return type(model.model[layer]).__name__ in HEADS + LAYERS


def _set_expansion(args: list, names: list[str], cls: type, e: float) -> None:
    """Set ``e`` among a layer's yaml arguments (its ``__init__`` args minus ``c1`` and the repeat count)."""
    yaml_names = [n for n in names if n not in ("c1", "n")]
    pos = yaml_names.index("e")
    params = inspect.signature(cls).parameters
    while len(args) < pos:
        args.append(params[yaml_names[len(args)]].default)
    if len(args) == pos:
        args.append(e)
    else:
        args[pos] = e


class BuildError(ValueError):
    """Ultralytics could not build a yaml; ``layer`` is the index of the layer it failed on (or None)."""

    def __init__(self, err: BaseException, layer: int | None) -> None:
        super().__init__(f"layer {layer}: {type(err).__name__}: {err}")
        self.layer = layer


def rebuild(model: nn.Module, yaml: dict) -> nn.Module:
    """What ultralytics' trainer builds from ``yaml`` for this model's task and class count."""
    from ultralytics.utils import LOGGER

    register()
    head = model.model[-1]
    nc = getattr(head, "nc", None) or yaml.get("nc")
    level = LOGGER.level
    LOGGER.setLevel(logging.WARNING)  # ClassificationModel logs a summary even with verbose=False
    try:
        return type(model)(cfg=copy.deepcopy(yaml), ch=int(yaml.get("channels", 3)), nc=nc, verbose=False)
    except Exception as err:  # a layer's own check (e.g. C2PSA's c1 == c2): find which layer
        raise BuildError(err, _failing_layer(err)) from err
    finally:
        LOGGER.setLevel(level)


def _failing_layer(err: BaseException) -> int | None:
    """The layer index ``parse_model`` was building when ``err`` was raised, or else the layer whose forward
    raised it (ultralytics runs a forward while building, to find the strides; its layers carry ``.i``)."""
    tb, layer = err.__traceback__, None
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code.co_name == "parse_model":
            layer = frame.f_locals.get("i")
        elif layer is None and frame.f_code.co_name == "forward":
            index = getattr(frame.f_locals.get("self"), "i", None)
            layer = index if isinstance(index, int) else None
        tb = tb.tb_next
    return layer if isinstance(layer, int) else None


def shape_mismatches(
    model: nn.Module, yaml: dict, shapes: dict[str, tuple[int, ...]] | None = None
) -> list[tuple[str, list[int]]]:
    """``(tensor name, differing dims)`` between ``model`` and the model ``yaml`` builds; ``shapes``, when
    given, receives the built shape of each differing tensor."""
    built = rebuild(model, yaml).state_dict()
    ours = model.state_dict()
    if built.keys() != ours.keys():
        missing = sorted(set(ours) ^ set(built))[:3]
        raise ValueError(f"the yaml builds different tensors (e.g. {missing})")
    bad = []
    for name, t in ours.items():
        other = built[name]
        if t.shape != other.shape:
            if t.dim() != other.dim():
                raise ValueError(f"{name}: {tuple(t.shape)} vs {tuple(other.shape)}")
            bad.append((name, [d for d in range(t.dim()) if t.shape[d] != other.shape[d]]))
            if shapes is not None:
                shapes[name] = tuple(other.shape)
    return bad


def trainable_plan(
    model: nn.Module,
    make_view: Any,
    x: torch.Tensor,
    plan: Plan,
    report: GroupReport,
    finish: Any,
    *,
    stock_modules: bool = False,
    scores: dict[int, torch.Tensor] | None = None,
) -> tuple[Plan, dict, list[int], dict[int, str]]:
    """Shrink ``plan`` until a yaml rebuilds the pruned model exactly; return it, that yaml, the kept groups
    and why each was kept (the layer, its type and the tensor the yaml could not rebuild).

    A layer the yaml's stock row cannot rebuild is first stated as a ``Prunekit<Layer>`` row (unless
    ``stock_modules``). Where the rebuilt model still differs, a group whose width ultralytics derives (a
    bottleneck's inner width from its block's, SPPF's hidden width from its input) is cut again to the width
    the yaml builds, keeping its units of highest ``scores`` (the group's per-unit importance; plan meta
    ``recut_for_yaml``); groups are kept whole only where neither works.
    ``make_view(model)`` gives the traced view the plan was made for and ``finish(model, plan)`` adds the plan
    entries the engine cannot derive (C2f's ``c``). ``model`` itself is not changed.
    """
    removed = {g.id: list(g.removed) for g in plan.groups}
    owner: dict[tuple[str, int], set[int]] = {}
    for g in report.groups:
        for m in g.members:
            owner.setdefault((m.name, m.dim), set()).add(g.id)
    kept: list[int] = []
    why: dict[int, str] = {}
    recut: dict[int, int] = {}  # group id -> times re-cut to a derived width
    stated: set[int] = set()
    for _ in range(MAX_ROUNDS):
        trial_model = copy.deepcopy(model)
        apply(make_view(trial_model), plan, x)
        if not stock_modules:  # a stock row rounds its width up to 8, so the next layer's build would fail
            stated |= {i for i in _unround_layers(trial_model) if statable(trial_model, i)}
        while True:
            yaml = pruned_yaml(trial_model, stated)
            bad, built = _mismatches(trial_model, yaml)
            layers = {int(name.split(".")[1]) for name, _dims in bad if name.startswith("model.")}
            new = set() if stock_modules else {i for i in layers - stated if statable(trial_model, i)}
            if not new:
                break
            stated |= new
        if not bad:
            recut_widths = {str(gid): width for gid, width in _recut_widths(plan, recut)}
            plan.meta.setdefault("ultralytics", {})["recut_for_yaml"] = recut_widths
            return plan, yaml, kept, why
        widths = {} if scores is None else _derived_widths(bad, built, report, removed, recut, set(kept))
        if widths:
            by_id = {g.id: g for g in report.groups}
            for gid, width in widths.items():
                removed[gid] = _lowest(by_id[gid], scores[gid], width)
                recut[gid] = recut.get(gid, 0) + 1
            plan = finish(model, build_plan(report, removed, plan.meta))
            continue
        drop = _groups_to_keep(bad, owner, removed, trial_model)
        if not drop:
            raise ValueError(f"the yaml cannot reproduce {bad[0][0]} and no pruned group explains it")
        for gid in drop:
            removed.pop(gid)
            recut.pop(gid, None)
            kept.append(gid)
            why[gid] = _why_kept(trial_model, _first_owned(bad, owner, gid), stated, stock_modules)
        plan = finish(model, build_plan(report, removed, plan.meta))
    raise ValueError(f"no yaml-expressible plan after {MAX_ROUNDS} rounds")


#: times one group may be re-cut to the width the yaml builds before it is kept whole instead (a derived
#: width that moves again after the re-cut means the widths feed each other)
MAX_RECUTS = 2


def _derived_widths(
    bad: list[tuple[str, list[int]]],
    built: dict[str, tuple[int, ...]],
    report: GroupReport,
    removed: dict[int, list[int]],
    recut: dict[int, int],
    kept: set[int],
) -> dict[int, int]:
    """Group id -> the width the yaml builds for it, for each group that alone spans a mismatched dim one
    unit per index, where every mismatched dim of the group asks the same width and that width is reachable
    (at most the group's width, its pinned units kept). A group the selection left whole (``round_to``) may
    be cut this way; one already kept whole for the yaml (``kept``) is not."""
    by_member: dict[tuple[str, int], list] = {}
    for g in report.groups:
        for m in g.members:
            by_member.setdefault((m.name, m.dim), []).append((g, m))
    asked: dict[int, set[int]] = {}
    groups = {}
    for name, dims in bad:
        for d in dims:
            owners = by_member.get((name, d), [])
            if len(owners) != 1 or name not in built:
                continue
            ((g, m),) = owners
            if g.id not in kept and m.size == len(m.index) == g.width:
                asked.setdefault(g.id, set()).add(built[name][d])
                groups[g.id] = g
    out = {}
    for gid, want in asked.items():
        g = groups[gid]
        width = next(iter(want))
        reachable = int(g.unit_pinned.sum()) <= width <= g.width
        changed = g.width - width != len(removed.get(gid, ()))
        if len(want) == 1 and reachable and changed and recut.get(gid, 0) < MAX_RECUTS:
            out[gid] = width
    return out


def _lowest(group: Any, scores: torch.Tensor, width: int) -> list[int]:
    """The ``group.width - width`` unpinned units of ``group`` with the lowest ``scores``, sorted."""
    order = torch.argsort(scores.detach().float().cpu(), stable=True).tolist()
    free = [u for u in order if not group.unit_pinned[u]]
    return sorted(free[: group.width - width])


def _recut_widths(plan: Plan, recut: dict[int, int]) -> list[tuple[int, int]]:
    """``(group id, kept width)`` of every re-cut group still cut in ``plan``."""
    by_id = {g.id: g for g in plan.groups}
    return [(gid, by_id[gid].width - len(by_id[gid].removed)) for gid in recut if gid in by_id]


def _first_owned(bad: list[tuple[str, list[int]]], owner: dict[tuple[str, int], set[int]], gid: int) -> str:
    """The first mismatched tensor with a dim of group ``gid`` (else the first mismatched tensor)."""
    return next((name for name, dims in bad if any(gid in owner.get((name, d), ()) for d in dims)), bad[0][0])


def _why_kept(model: nn.Module, tensor: str, stated: set[int], stock_modules: bool) -> str:
    """Why the layer holding ``tensor`` cannot be rebuilt with its cut, in words.

    >>> from prunekit.models.ultralytics import load_yolo
    >>> _why_kept(load_yolo("yolov8n.yaml"), "model.9.cv1.conv.weight", set(), True)
    'layer 9 (SPPF): model.9.cv1.conv.weight: a stock SPPF row cannot state this width (stock_modules)'
    """
    parts = tensor.split(".")
    if parts[0] != "model" or not parts[1].isdigit():
        return f"{tensor}: not in a yaml layer"
    i = int(parts[1])
    kind = type(model.model[i]).__name__
    if stock_modules:
        how = f"a stock {kind} row cannot state this width (stock_modules)"
    elif i in stated:
        how = f"its Prunekit{kind} row does not rebuild it"
    elif not statable(model, i):
        how = f"{kind} has no Prunekit row and its stock row cannot state this width"
    else:
        how = "the yaml cannot state this width"
    return f"layer {i} ({kind}): {tensor}: {how}"


def _mismatches(
    model: nn.Module, yaml: dict
) -> tuple[list[tuple[str, list[int]]], dict[str, tuple[int, ...]]]:
    """:func:`shape_mismatches` and the shapes the yaml builds for those tensors; a layer ultralytics could
    not build is reported as all its tensors, with no built shapes."""
    try:
        built: dict[str, tuple[int, ...]] = {}
        return shape_mismatches(model, yaml, built), built
    except BuildError as err:
        if err.layer is None:
            raise
        prefix = f"model.{err.layer}."
        return [(k, list(range(t.dim()))) for k, t in model.state_dict().items() if k.startswith(prefix)], {}


def _groups_to_keep(
    bad: list[tuple[str, list[int]]],
    owner: dict[tuple[str, int], set[int]],
    removed: dict[int, list[int]],
    trial: nn.Module,
) -> set[int]:
    """Pruned groups to keep whole: those owning a mismatched dim; if all of those are whole already (the
    width derives from another dim, e.g. SPPF's hidden = input / 2), the groups of the first such tensor's
    other dims."""
    drop: set[int] = set()
    for name, dims in bad:
        drop |= set().union(*(owner.get((name, d), set()) for d in dims)) & removed.keys()
    if drop or not bad:
        return drop
    name = bad[0][0]  # one tensor at a time: keeping its other groups may fix the tensors after it
    state = trial.state_dict()
    drop = set().union(*(owner.get((name, d), set()) for d in range(state[name].dim()))) & removed.keys()
    if drop or not name.startswith("model."):
        return drop
    # still nothing: the width derives from a pruned width elsewhere in the same layer (e.g. a hidden width
    # computed from the layer's output width): keep the layer's pruned groups whole
    prefix = ".".join(name.split(".")[:2]) + "."
    for other, t in state.items():
        if other.startswith(prefix):
            drop |= set().union(*(owner.get((other, d), set()) for d in range(t.dim()))) & removed.keys()
    return drop


def checkpoint_yaml(model: nn.Module) -> dict:
    """The yaml to store with ``model``: its own if it still rebuilds it, else :func:`pruned_yaml` if that
    rebuilds it exactly, else :func:`poisoned_yaml` (a stock ``train()`` then fails, not trains dense)."""
    for candidate in (lambda: model.yaml, lambda: pruned_yaml(model)):
        try:
            yaml = candidate()
            if not shape_mismatches(model, yaml):
                return copy.deepcopy(yaml)
        except (ValueError, KeyError, TypeError, IndexError, RuntimeError):  # BuildError is a ValueError
            continue
    return poisoned_yaml(model.yaml)


def poisoned_yaml(yaml: dict) -> dict:
    """``yaml`` with its first layer renamed to :data:`NOT_IN_YAML`: building it fails with that name."""
    out = copy.deepcopy(yaml)
    if out["backbone"][0][2] != NOT_IN_YAML:
        out[FIRST_MODULE_KEY] = out["backbone"][0][2]
        out["backbone"][0][2] = NOT_IN_YAML
    return out
