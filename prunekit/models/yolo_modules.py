"""yaml modules that build a stock ultralytics layer with stated conv widths: ``Prunekit<Layer>``.

Ultralytics derives some widths from others and no yaml argument sets them: a detection head's hidden widths
follow the P3 width and the class count (``max(16, P3 / 4, 64)``, ``max(P3, min(nc, 100))``), SPPF's hidden
width is half its input, a C3k2 bottleneck's inner width half the block's hidden width. A pruned model whose
cuts changed them could not be rebuilt by ultralytics' trainer. A yaml row such as::

    [[15, 18, 21], 1, PrunekitDetect, [nc, false, {cv2.0.0.conv: [40, 64], ...}]]
    [-1, 1, PrunekitSPPF, [128, 5, 3, false, {cv1.conv: [40, 128], cv2.conv: [128, 160]}]]

builds the stock layer from the arguments ``parse_model`` gives it (for a head: ``nc`` and the appended
``reg_max``, ``end2end`` and input widths; then the stated ``legacy``), and gives every listed ``Conv2d`` (and
the ``BatchNorm2d`` of its ``Conv``) the stated ``[out, in]``. An integer entry ``c`` states the hidden width
of a C2f-like or PSA-like block (``self.c``): the block is built with the expansion ``e`` that gives it, so
what the constructor derives from it (an ``Attention``'s head count and key width, ``forward_split``'s sizes)
is that of the pruned block. Since every conv width is stated, the widths need not be multiples of 8 (the
rounding ``parse_model`` applies to a row's first argument only changes what the constructor is given).
The module built **is** the stock class:
checkpoints pickle ultralytics' own classes and load, predict, validate and export in a process that never
imports prunekit. Rebuilding from the yaml (``train()``) needs the ``Prunekit<Layer>`` names in ultralytics'
model namespace: :func:`register` puts them there (``load_yolo``, ``prune_yolo`` and every rebuild call it);
a process without it fails with ``KeyError: 'PrunekitDetect'``, never trains a dense model silently.

How it fits ``parse_model`` without patching it: ``parse_model`` resolves a layer name in the globals of
``ultralytics.nn.tasks`` (where :func:`register` puts the classes) and decides how to build a layer by
membership tests such as ``m in base_modules`` or ``m in {Detect, Segment, ...}``. ``Prunekit<Layer>``'s
metaclass makes it compare and hash equal to ``<Layer>``, so it passes the same tests; its ``__new__`` returns
the stock layer. Identity tests do not pass: layers with such special cases (``m is C2fAttn``, ...) are not in
:data:`LAYERS`, a head row states ``legacy`` itself (``m is C3k2`` sets it), and a short SPPF row gets the
activation ``m is SPPF`` gives it.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

PREFIX = "Prunekit"
# heads parse_model builds from (nc, ..., reg_max, end2end, ch) and sets ``legacy`` on
HEADS = ("Detect", "Segment", "Segment26", "Pose", "Pose26", "OBB", "OBB26")
# single-input blocks parse_model builds as (c1, c2, [n,] *args) with no identity special case
# single-input blocks parse_model builds as (c1, c2, [n,] *args); C3k2's identity test only sets ``legacy``,
# which a stated head states itself (:func:`needs_stated_head`)
LAYERS = ("Conv", "C2f", "C3k2", "C3", "C3x", "C2PSA", "C2fPSA", "PSA", "SPPF", "SPP", "Bottleneck",
          "C3Ghost", "ELAN1", "RepNCSPELAN4", "SCDown", "RepC3")  # fmt: skip
_LEGACY_OFF = ("C3k2", "A2C2f", "C2fCIB")  # their stock rows switch the heads to the non-legacy branch
# blocks whose constructor asserts c1 == c2 and derives ``c`` from c1 (the C2f-likes derive it from c2)
_SAME_IO = ("C2PSA", "C2fPSA", "PSA")


def _stock(name: str) -> type:
    from ultralytics.nn import modules

    return getattr(modules, name)


class _SameAs(type(nn.Module)):
    """Metaclass: a ``Prunekit<Layer>`` class compares and hashes equal to ``<Layer>`` (its ``base``)."""

    base: str

    def __eq__(cls, other: object) -> bool:
        return cls is other or other is _stock(cls.base)

    def __hash__(cls) -> int:
        return hash(_stock(cls.base))


def _build(cls: type, args: tuple) -> nn.Module:
    if cls.base in HEADS:  # yaml args, then legacy and the conv table, then what parse_model appends
        *own, legacy, convs, reg_max, end2end, ch = args
        args = (*own, reg_max, end2end, ch)
        _stock(cls.base).legacy = legacy  # as parse_model does for a stock head row
    else:
        *args, convs = args
        args = _hidden_args(cls.base, list(args), convs.get("c"))
    module = _stock(cls.base)(*args)
    c = convs.get("c")
    if isinstance(c, int) and getattr(module, "c", None) != c:
        if "e" in inspect.signature(_stock(cls.base)).parameters:
            raise ValueError(f"{PREFIX}{cls.base}: built with c={module.c}, the row states c={c}")
        module.c = c  # no expansion argument (ELAN1, RepNCSPELAN4): only forward_split reads c
    if cls.base == "SPPF" and len(args) <= 3:  # as parse_model does for a short (pre-YOLO26) SPPF row
        from ultralytics.nn.modules import Conv

        module.cv1.act = Conv.default_act
    for path, widths in convs.items():
        if path != "c":
            _resize(module, path, int(widths[0]), int(widths[1]))
    return module


def _hidden_args(base: str, args: list, c: int | None) -> list:
    """``args`` (``c1, c2, ...`` as ``parse_model`` passes them) with ``e`` set so the block's ``c`` is ``c``;
    a block asserting ``c1 == c2`` gets ``c2 = c1`` (its output conv's width is stated in the table).

    >>> _hidden_args("C2PSA", [40, 48, 1, 0.5], 128)
    [40, 40, 1, 3.2125]
    """
    if base in _SAME_IO:
        args[1] = args[0]
    if c is None:
        return args
    params = inspect.signature(_stock(base)).parameters
    names = list(params)
    if "e" not in names:
        return args
    pos = names.index("e")
    while len(args) < pos:
        args.append(params[names[len(args)]].default)
    e = (c + 0.5) / (args[0] if base in _SAME_IO else args[1])
    return [*args[:pos], e, *args[pos + 1 :]]


def _class(base: str) -> type:
    def __new__(cls: type, *args: Any) -> nn.Module:
        return _build(cls, args)

    doc = f"Builds a stock ``{base}`` from its yaml arguments, then resizes the ``Conv2d`` layers it lists."
    return _SameAs(f"{PREFIX}{base}", (nn.Module,), {"base": base, "__new__": __new__, "__doc__": doc})


def _resize(module: nn.Module, path: str, out: int, in_: int) -> None:
    """Replace the ``Conv2d`` at ``path`` by one with ``out`` / ``in_`` channels (fresh weights; a depthwise
    conv stays depthwise), and the ``BatchNorm2d`` of its ultralytics ``Conv`` by one of ``out`` features.

    >>> from ultralytics.nn.modules import Conv
    >>> m = Conv(16, 16, 3)
    >>> _resize(m, "conv", 24, 16); m.conv.weight.shape[0], m.bn.num_features
    (24, 24)
    """
    conv = module.get_submodule(path)
    if not isinstance(conv, nn.Conv2d):
        raise ValueError(f"{PREFIX}: {path} is a {type(conv).__name__}, not a Conv2d")
    if (conv.out_channels, conv.in_channels) == (out, in_):
        return
    depthwise = conv.groups > 1 and conv.groups == conv.in_channels
    if (conv.groups > 1 and not depthwise) or (depthwise and out != in_):
        raise ValueError(f"{PREFIX}: {path} has {conv.groups} groups; it cannot become {out} x {in_}")
    new = nn.Conv2d(
        in_, out, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
        groups=in_ if depthwise else 1, bias=conv.bias is not None, padding_mode=conv.padding_mode,
    )  # fmt: skip
    parent_path, _, leaf = path.rpartition(".")
    parent = module.get_submodule(parent_path) if parent_path else module
    setattr(parent, leaf, new)
    bn = getattr(parent, "bn", None)
    if leaf == "conv" and isinstance(bn, nn.BatchNorm2d):
        parent.bn = nn.BatchNorm2d(out, eps=bn.eps, momentum=bn.momentum)


def _convs(layer: nn.Module) -> dict[str, Any]:
    """Every ``Conv2d`` of ``layer`` as ``path: [out, in]``; ``c: width`` for a block with a hidden width."""
    table: dict[str, Any] = {
        n: [m.out_channels, m.in_channels] for n, m in layer.named_modules() if isinstance(m, nn.Conv2d)
    }
    if isinstance(getattr(layer, "c", None), int):
        table["c"] = int(layer.c)
    return table


def stated_row(layer: nn.Module, row: list, legacy: bool) -> list | None:
    """The ``Prunekit<Layer>`` row for ``layer`` (pruned) whose width-stating stock row is ``row``: every
    ``Conv2d`` of the layer stated with its current widths; None if its type has no such row."""
    base = type(layer).__name__
    if base in HEADS:
        return [row[0], row[1], PREFIX + base, [*row[3], legacy, _convs(layer)]]
    if base not in LAYERS:
        return None
    return [row[0], row[1], PREFIX + base, [*row[3], _convs(layer)]]  # the table is taken off before building


def legacy_heads(yaml: dict) -> bool:
    """Whether ``parse_model`` builds ``yaml``'s heads in their legacy (YOLOv8) form."""
    return not any(spec[2] in _LEGACY_OFF for spec in yaml["backbone"] + yaml["head"])


def needs_stated_head(layer: nn.Module) -> bool:
    """Whether stating ``layer`` removes a stock row the heads' ``legacy`` depends on."""
    return type(layer).__name__ in _LEGACY_OFF


def register() -> None:
    """Make every ``Prunekit<Layer>`` a name ultralytics' ``parse_model`` resolves (idempotent)."""
    from ultralytics.nn import tasks

    for base in HEADS + LAYERS:
        if not hasattr(tasks, PREFIX + base):
            setattr(tasks, PREFIX + base, _class(base))
