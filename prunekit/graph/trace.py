"""Trace one forward pass at the torch-function level and propagate channel-slot labels.

Every prunable parameter dim gets a range of integer *slot* ids the first time an op rule asks for it
(conv weight dim 0 = out channels, dim 1 = in channels per group, norm weights, ...). Each traced tensor
carries a label (see :mod:`prunekit.graph.labels`). Op rules (:mod:`prunekit.graph.rules`) compute output
labels and record *links* (two slots must be removed together) and *pins* (a slot must never be removed,
with the reason). Union-find over the links happens later, in :mod:`prunekit.graph.groups`.

>>> tr = trace(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2)), torch.zeros(1, 4))
>>> [(r.name, r.dim, r.size) for r in tr.ranges][:2]
[('0.weight', 1, 4), ('0.weight', 0, 8)]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from prunekit._inputs import ExampleInputs, call_model, eval_scope, flatten_tensors
from prunekit.graph.labels import NO_SLOT, align, along, blank


@dataclass
class SlotRange:
    """The slots of one dim of one parameter or buffer: ids ``start .. start + size - 1``."""

    name: str
    dim: int
    start: int
    size: int
    kind: str  # "param" or "buffer"


@dataclass
class AttrRecord:
    """A module attribute whose new value is (kept positions of ``slots``) // ``divisor``."""

    module: str
    attr: str
    slots: torch.Tensor
    divisor: int
    old: int
    shared: bool = False  # one attribute of several records (a model config): set only if all agree
    shape: bool = False  # the attribute is a one-dim shape, ``(size,)`` (``LayerNorm.normalized_shape``)


_OP_NAMES: dict[Any, str] = {}


def op_name(func: Any) -> str:
    """Readable name of a traced function (``conv2d``, ``Tensor.view``, ...)."""
    try:
        return _OP_NAMES[func]
    except KeyError:
        name = _OP_NAMES[func] = _op_name(func)
        return name
    except TypeError:  # an unhashable callable
        return _op_name(func)


def _op_name(func: Any) -> str:
    name = getattr(func, "__name__", None) or repr(func)
    owner = getattr(func, "__objclass__", None)
    if owner is not None and name != "__get__":
        return f"Tensor.{name}"
    if name == "__get__":
        return f"Tensor.{getattr(getattr(func, '__self__', None), '__name__', 'attr')}"
    return name


@dataclass
class Tracer:
    """Trace state: slot ranges, labels of live tensors, links, pins and attribute records."""

    model: nn.Module
    #: cut norms over a labelled last dim approximately instead of pinning (:mod:`prunekit.graph.stream`)
    stream: bool = False
    names: dict[int, str] = field(default_factory=dict)
    kinds: dict[int, str] = field(default_factory=dict)
    shapes: dict[str, list[int]] = field(default_factory=dict)  # name -> shape, as traced
    ranges: list[SlotRange] = field(default_factory=list)
    n_slots: int = 0
    links: list[tuple[torch.Tensor, torch.Tensor, int]] = field(default_factory=list)
    pins: list[tuple[torch.Tensor, int]] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    notes: list[tuple[torch.Tensor, str]] = field(default_factory=list)
    #: slots whose removal is approximate, and why (stream mode only)
    approx: list[tuple[torch.Tensor, str]] = field(default_factory=list)
    #: stream mode: the slots of the normalised dim of every norm site, in call order
    stream_sites: list[torch.Tensor] = field(default_factory=list)
    attrs: list[AttrRecord] = field(default_factory=list)
    #: (module, int value) -> slot vectors of the shape dims read as that int inside that module
    shape_reads: dict[tuple[str, int], list[torch.Tensor]] = field(default_factory=dict)
    rule_errors: list[str] = field(default_factory=list)
    #: the model's output shapes as traced; None where sizes may follow the data (see ``data_sized``)
    output_shapes: list[list[int] | None] = field(default_factory=list)
    #: the first op seen whose output size follows the input *values* (nonzero, a boolean mask, NMS), if
    #: any: the model's output sizes may then change with the cut without anything being wrong (a
    #: detector's box count; it reaches the outputs through Python ints the trace cannot follow)
    data_sized: str | None = None
    n_calls: int = 0
    op: str = ""
    module_stack: list[str] = field(default_factory=lambda: [""])
    #: the outermost module holding a ``config`` object (a Hugging Face model, maybe inside a wrapper)
    config_owner: tuple[str, nn.Module] | None = None
    _labels: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    #: id -> (tensor, module name) for zero tensors made from sizes alone (an RNN's default initial state)
    born: dict[int, tuple[torch.Tensor, str]] = field(default_factory=dict)
    #: id(W.T) -> (W.T, W) for 2-D parameters transposed during the trace (``x @ self.weight.T``)
    _transposed: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    _range_of: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)  # (id, dim) -> slot ids
    _owners: dict[int, tuple[str, nn.Module]] = field(default_factory=dict)
    _reason_ids: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for mname, module in self.model.named_modules(remove_duplicate=False):
            if self.config_owner is None:
                cfg = getattr(module, "config", None)
                if cfg is not None and not isinstance(cfg, (int, float, str, dict, list, tuple)):
                    self.config_owner = (mname, module)
            for kind, store in (("param", module._parameters), ("buffer", module._buffers)):
                for local, t in store.items():
                    if t is not None and id(t) not in self.names:
                        name = f"{mname}.{local}" if mname else local
                        self.names[id(t)] = name
                        self.kinds[id(t)] = kind
                        self._owners[id(t)] = (mname, module)
                        self.shapes[name] = list(t.shape)

    # ---- where are we --------------------------------------------------------------------------------
    def where(self) -> str:
        return f"{self.op} in {self.module_stack[-1] or '<model>'}"

    def owner(self, t: torch.Tensor) -> tuple[str, nn.Module] | None:
        """(module fqn, module) that owns parameter/buffer ``t``, or None for activations."""
        return self._owners.get(id(t))

    def is_state(self, t: Any) -> bool:
        return isinstance(t, torch.Tensor) and id(t) in self.names

    def mark_transposed(self, t: torch.Tensor, w: torch.Tensor) -> None:
        """Remember that ``t`` is ``w.T`` for a 2-D parameter/buffer ``w`` (see :meth:`transposed`)."""
        self._transposed[id(t)] = (t, w)

    def transposed(self, t: torch.Tensor) -> torch.Tensor | None:
        """The 2-D parameter/buffer ``W`` when ``t`` is ``W.T`` (or ``W.t()``, ``W.transpose(0, 1)``)."""
        entry = self._transposed.get(id(t))
        return entry[1] if entry is not None and entry[0] is t else None

    # ---- slots ----------------------------------------------------------------------------------------
    def slots(self, t: torch.Tensor, dim: int) -> torch.Tensor:
        """Slot ids of dim ``dim`` of parameter/buffer ``t`` (allocated on first use; -1 for size-1 dims)."""
        dim = dim % t.dim()
        size = t.shape[dim]
        if size <= 1:
            return torch.full((size,), NO_SLOT, dtype=torch.long)
        key = (id(t), dim)
        ids = self._range_of.get(key)
        if ids is None:  # one tensor per range, shared by every caller: rules never modify labels in place
            r = SlotRange(self.names[id(t)], dim, self.n_slots, size, self.kinds[id(t)])
            self.ranges.append(r)
            ids = self._range_of[key] = torch.arange(r.start, r.start + r.size)
            self.n_slots += size
        return ids

    def allocated(self, t: torch.Tensor, dim: int) -> torch.Tensor | None:
        """Slot ids of dim ``dim`` of parameter/buffer ``t`` if a rule asked for them, else None."""
        return self._range_of.get((id(t), dim % t.dim())) if self.is_state(t) else None

    def vec(self, t: torch.Tensor, dim: int) -> torch.Tensor:
        """Slot of each index along ``dim`` of ``t``: its own slots for state tensors, else from its label."""
        if self.is_state(t):
            return self.slots(t, dim)
        lab = align(self.label(t), t.dim())
        v, others = along(lab, dim, t.shape[dim])
        if others:
            self.pin(lab, "tensor used as a weight carries channel slots on several dims")
            return torch.full((t.shape[dim],), NO_SLOT, dtype=torch.long)
        return v

    # ---- labels ---------------------------------------------------------------------------------------
    def label(self, t: torch.Tensor) -> torch.Tensor:
        """Label of tensor ``t``: recorded, or derived for a free parameter, or 'no slot'."""
        entry = self._labels.get(id(t))
        if entry is not None and entry[0] is t:
            return entry[1]
        if self.kinds.get(id(t)) == "param" and t.dim() > 0:
            dims = [d for d in range(t.dim()) if t.shape[d] > 1]
            if dims:  # free parameter (layer scale, cls token, pos embedding): slots along its last dim > 1
                d = dims[-1]
                shape = [1] * t.dim()
                shape[d] = t.shape[d]
                return self.slots(t, d).view(shape)
        return blank(t.dim())

    def set_label(self, t: torch.Tensor, lab: torch.Tensor) -> None:
        lab = align(lab, t.dim())
        for s, n in zip(lab.shape, t.shape, strict=True):
            if s != 1 and s != n:
                raise RuntimeError(f"label shape {tuple(lab.shape)} does not fit tensor {tuple(t.shape)}")
        self._labels[id(t)] = (t, lab)

    # ---- links and pins -------------------------------------------------------------------------------
    def link(self, a: torch.Tensor, b: torch.Tensor, why: str = "meets a fixed-size tensor") -> None:
        """Slots at the same (broadcast) position must go together; a slot facing 'no slot' is pinned.

        Only recorded here: the filtering (which pairs are edges, which slots get pinned) happens once for
        all links in :func:`prunekit.graph.groups.groups_from_trace`, vectorised.
        """
        if a.shape != b.shape:
            a, b = torch.broadcast_tensors(a, b)
        a, b = a.reshape(-1), b.reshape(-1)
        if a.numel() > 4096:  # a large broadcast repeats pairs: keep each distinct pair once
            key = torch.unique((a + 1) * (1 << 32) + (b + 1))
            a, b = key // (1 << 32) - 1, key % (1 << 32) - 1
        self.links.append((a, b, self._reason(why)))

    def unite(self, rows: torch.Tensor, why: str = "meets a fixed-size tensor") -> None:
        """Every row of the 2-D ``rows`` becomes one unit (a -1 in a row pins the row)."""
        self.link(rows[:, :1].expand_as(rows), rows, why)

    def pin(self, lab: torch.Tensor, why: str) -> None:
        """Slots in ``lab`` (``-1`` entries ignored) must never be removed, because of ``why``."""
        self.pins.append((lab.reshape(-1), self._reason(why)))

    def _reason(self, why: str) -> int:
        """Id of the reason ``'<op> in <module>: why'`` (each distinct text is stored once)."""
        text = f"{self.op} in {self.module_stack[-1] or '<model>'}: {why}"
        rid = self._reason_ids.get(text)
        if rid is None:
            rid = self._reason_ids[text] = len(self.reasons)
            self.reasons.append(text)
        return rid

    def note(self, slots: torch.Tensor, text: str) -> None:
        s = slots.reshape(-1)
        s = s[s >= 0]
        if s.numel():
            self.notes.append((s[:1].clone(), text))

    def approximate(self, slots: torch.Tensor, text: str) -> None:
        """Removing any of ``slots`` changes the outputs beyond the oracle's tolerance (``text``: why)."""
        s = slots.reshape(-1)
        s = s[s >= 0]
        if s.numel():
            self.approx.append((s, text))

    def attr(
        self,
        module: str,
        obj: nn.Module,
        attr: str,
        slots: torch.Tensor,
        divisor: int = 1,
        shared: bool = False,
    ) -> None:
        old = obj
        for part in attr.split("."):  # "config.num_attention_heads": an attribute of an attribute
            old = getattr(old, part)
        self.attrs.append(AttrRecord(module, attr, slots, divisor, int(old), shared))


class _Mode(TorchFunctionMode):
    def __init__(self, tracer: Tracer) -> None:
        super().__init__()
        from prunekit.graph.rules import on_call  # the rules import this module

        self.tracer = tracer
        self.on_call = on_call

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.on_call(self.tracer, func, args, kwargs, out)
        return out


def trace(model: nn.Module, example_inputs: ExampleInputs, stream: bool = False) -> Tracer:
    """Run ``model`` once (eval mode, no grad) on ``example_inputs`` and return the labelled trace.

    ``stream=True`` cuts norms over channel slots approximately instead of pinning them
    (:mod:`prunekit.graph.stream`). Attention modules with a prunable form (torchvision's Swin and
    MaxViT) run in it for the trace (:mod:`prunekit.structured.attention_forms`), as :func:`prunekit.apply`
    will cut them.

    >>> tr = trace(torch.nn.Conv2d(3, 8, 3), torch.zeros(1, 3, 8, 8))
    >>> tr.n_slots  # 3 input channels, 8 output channels, 8 bias entries
    19
    """
    from prunekit.structured.attention_forms import prunable_forms  # structured/ imports graph/

    tracer = Tracer(model, stream)
    with prunable_forms(model), eval_scope(model, tracer.module_stack), _Mode(tracer):
        out = call_model(model, example_inputs)
    tracer.op, tracer.module_stack = "output", [""]
    for t in flatten_tensors(out):
        tracer.pin(tracer.label(t), "model outputs keep their shape")
        tracer.output_shapes.append(None if tracer.data_sized else list(t.shape))
    tracer._labels.clear()
    tracer.born.clear()
    return tracer
