"""``accelerate``: run sparse Linear (and optionally Conv2d) layers on sparse kernels where that is faster.

Per layer, on this machine, with the layer's real input (captured by a forward hook on the example inputs):

1. skip layers below ``min_sparsity`` (zeros in the effective weight), layers the example never calls, and
   layers that are not plain ``nn.Linear`` / ``nn.Conv2d`` (a subclass with its own ``forward``);
2. time the dense op (``F.linear`` / ``F.conv2d`` on the effective weight, so a mask's multiply is not
   charged to dense) against every kernel of :mod:`prunekit.sparse.kernels` in ``formats``, calls
   interleaved so that load from other processes hits all of them alike; a kernel whose output differs from
   dense by more than the tolerance, that raises, or that is over 4x slower on its warm-up call is dropped;
3. swap the layer for the fastest kernel only if it beats dense by ``min_speedup`` (medians).

With ``batch_sizes`` the example inputs are resized along dim 0 (their rows repeated or cut) and every
layer is timed at each size; ``dense_ms`` / ``kernel_ms`` are then geometric means over the sizes and
``timings`` has the medians per size. The rule: a kernel is a candidate only if it is at least as fast as
dense at every size; the candidate with the best geometric-mean speedup is chosen if that speedup is
>= ``min_speedup``. Tune for the batch sizes you will serve: a kernel that wins at batch 1 can lose at 32.

A layer timed alone has its weight in cache; in a whole forward pass a dense weight is streamed from memory,
which costs dense more than the smaller sparse weight, so these decisions lean towards dense.

The swap is undone by :func:`~prunekit.sparse.swap.decelerate` (or use :func:`accelerated` as a context
manager); a model with sparse kernels saves with :func:`prunekit.save` (its dense weights, and which layers
ran which kernel: :func:`prunekit.load` swaps them back without re-timing), deep-copies, and exports to
ONNX in its dense form.

Then the whole model is run again and its outputs must match the dense run within ``atol + rtol * |ref|``;
if not, every swap is undone and :class:`~prunekit.errors.ApplyError` is raised. Finally dense and sparse
end-to-end latencies are timed, interleaved (the dense side is the model as given: call
:func:`~prunekit.sparse.remove_masks` first, or the masks' multiply is charged to dense).

>>> import torch
>>> from torch import nn
>>> from prunekit.sparse import sparsify, remove_masks
>>> model = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 16))
>>> _ = sparsify(model, 0.95, exclude=["2"]); _ = remove_masks(model)
>>> res = accelerate(model, torch.randn(32, 512), runs=5, end_to_end=False)
>>> [(row.name, row.sparsity >= 0.95) for row in res.layers]
[('0', True), ('2', False)]
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from prunekit._inputs import ExampleInputs, at_batch, batch_size_of, call_model, eval_mode
from prunekit._jsondata import JsonData
from prunekit.errors import ApplyError, ConfigError
from prunekit.measure.latency import check_timing_args
from prunekit.sparse.kernels import (
    LINEAR_KERNELS,
    TILE_ROWS,
    SparseConv2d,
    SparseLinear,
    block_size_for,
    conv_unsupported,
)
from prunekit.sparse.swap import decelerate, set_module

FORMATS = ("csr", "bsr")
SLOW_FACTOR = 4.0  # a kernel this many times slower than dense on its warm-up call is not timed further


@dataclass
class LayerDecision(JsonData):
    """One layer: its sparsity, dense and per-kernel times (ms; ``None`` = not timed), the choice.

    ``dense_ms`` / ``kernel_ms``: medians, or their geometric mean over the batch sizes; ``timings``:
    ``{batch size: {"dense": ms, kernel: ms}}``, the medians at each size.
    """

    name: str
    kind: str
    weight_shape: list[int]
    input_shape: list[int] | None
    sparsity: float
    dense_ms: float | None
    kernel_ms: dict[str, float | None] = field(default_factory=dict)
    chosen: str = "dense"
    note: str = ""
    timings: dict[int, dict[str, float]] = field(default_factory=dict)

    @property
    def speedup(self) -> float:
        """Dense time / chosen kernel's time (1.0 when the layer stays dense)."""
        if self.chosen == "dense" or not self.dense_ms:
            return 1.0
        return self.dense_ms / self.kernel_ms[self.chosen]

    _derived = ("speedup",)


@dataclass
class AccelerateResult:
    """Per-layer decisions, the settings they were made under, and the end-to-end check and timing.

    ``max_abs_diff``: largest |sparse - dense| over the model's floating outputs; ``max_abs_output``: the
    largest |dense output|, its scale. ``dense_ms`` / ``sparse_ms``: end-to-end median latency (``None`` if
    not timed).
    """

    layers: list[LayerDecision]
    threads: int
    runs: int
    min_sparsity: float
    min_speedup: float
    max_abs_diff: float
    max_abs_output: float
    dense_ms: float | None = None
    sparse_ms: float | None = None
    batch_sizes: list[int] = field(default_factory=list)

    @property
    def swapped(self) -> list[str]:
        """Names of the layers now running a sparse kernel."""
        return [row.name for row in self.layers if row.chosen != "dense"]

    @property
    def speedup(self) -> float | None:
        """End-to-end dense / sparse median latency (``None`` if it was not timed)."""
        return None if not self.sparse_ms else self.dense_ms / self.sparse_ms

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "layers"}
        return {
            **out,
            "layers": [row.to_dict() for row in self.layers],
            "swapped": self.swapped,
            "speedup": self.speedup,
        }


@dataclass(frozen=True)
class _Rule:
    """How :func:`accelerate` decides a layer: tried from ``min_sparsity``, the ``formats`` built, ``runs``
    timed calls per kernel and batch size, chosen at ``min_speedup``, outputs within ``atol``/``rtol``."""

    min_sparsity: float
    formats: tuple[str, ...]
    runs: int
    min_speedup: float
    atol: float
    rtol: float


def _check_args(
    formats: Iterable[str], min_sparsity: float, min_speedup: float, atol: float, rtol: float
) -> tuple[str, ...]:
    formats = (formats,) if isinstance(formats, str) else tuple(formats)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ConfigError(f"formats must be a non-empty subset of {', '.join(FORMATS)}, got {formats!r}")
    if not 0.0 <= min_sparsity < 1.0:
        raise ConfigError(f"min_sparsity must be in [0, 1), got {min_sparsity}")
    if not min_speedup >= 1.0:
        raise ConfigError(f"min_speedup must be >= 1, got {min_speedup}")
    if not (atol >= 0 and rtol >= 0):
        raise ConfigError(f"atol and rtol must be >= 0, got {atol} and {rtol}")
    return formats


def _candidates(model: nn.Module, convs: bool) -> dict[str, nn.Module]:
    """Plain Linear layers (and Conv2d with ``convs``) by name; subclasses with their own forward are left."""
    found = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and type(module).forward is nn.Linear.forward:
            found[name] = module
        elif convs and isinstance(module, nn.Conv2d) and type(module).forward is nn.Conv2d.forward:
            found[name] = module
    return found


def _capture_inputs(
    model: nn.Module, example_inputs: ExampleInputs, modules: dict[str, nn.Module]
) -> tuple[Any, dict]:
    """Run the model once; return its output and, per module, ``[first input, number of calls]``."""
    seen: dict[str, list] = {}

    def hook(name: str) -> Callable:
        def record(_module: nn.Module, args: tuple, kwargs: dict) -> None:
            x = args[0] if args else kwargs.get("input")
            if name in seen:
                seen[name][1] += 1
            elif isinstance(x, Tensor):
                seen[name] = [x.detach(), 1]

        return record

    handles = [m.register_forward_pre_hook(hook(n), with_kwargs=True) for n, m in modules.items()]
    try:
        output = call_model(model, example_inputs)
    finally:
        for handle in handles:
            handle.remove()
    return output, seen


def _kernels(
    module: nn.Module, weight: Tensor, formats: tuple[str, ...], rows: int
) -> tuple[dict[str, nn.Module], list[str]]:
    """Sparse modules to try for ``module``, and notes on kernels that were not tried."""
    built, notes = {}, []
    if isinstance(module, nn.Conv2d):
        why = conv_unsupported(module)
        if "csr" not in formats:
            notes.append("conv runs only as csr-im2col")
        elif why is not None:
            notes.append(f"csr-im2col: {why}")
        else:
            built["csr-im2col"] = SparseConv2d(module)
        return built, notes
    block = block_size_for(weight) if "bsr" in formats else None
    if "bsr" in formats and block is None:
        notes.append("bsr: no block size with >= 50% fill (zeros not block-shaped)")
    for kernel in LINEAR_KERNELS:
        layout = kernel.partition("-")[0]
        if kernel.endswith("-tiled") and rows <= 2 * TILE_ROWS:
            continue  # the same as the untiled kernel for so few rows
        if layout in formats and (layout == "csr" or block is not None):
            built[kernel] = SparseLinear(weight, module.bias, kernel, block)
    return built, notes


def _dense_fn(module: nn.Module, weight: Tensor) -> Callable[[Tensor], Tensor]:
    bias = None if module.bias is None else module.bias.detach()
    if isinstance(module, nn.Conv2d):
        return lambda x: module._conv_forward(x, weight, bias)
    return lambda x: F.linear(x, weight, bias)


def _time_once(fn: Callable[[Tensor], Tensor], x: Tensor) -> float:
    start = time.perf_counter()
    fn(x)
    return (time.perf_counter() - start) * 1000.0


def _geomean(values: Iterable[float]) -> float:
    values = list(values)
    return math.exp(sum(math.log(max(v, 1e-9)) for v in values) / len(values))


def _usable(
    kernel: str, sparse: nn.Module, dense: Callable, inputs: Mapping[int, Tensor], atol: float, rtol: float
) -> str | None:
    """Why ``sparse`` is not timed further (``None`` if it is): it raises, differs, or is far slower."""
    for x in inputs.values():
        try:
            out, reference = sparse(x), dense(x)
            warm = min(_time_once(sparse, x) for _ in range(2))
        except RuntimeError as err:
            return f"{kernel}: {str(err).splitlines()[0]}"
        if not torch.allclose(out, reference, atol=atol, rtol=rtol):
            return f"{kernel}: output differs by {float((out - reference).abs().max()):.2e}"
        if warm > SLOW_FACTOR * min(_time_once(dense, x) for _ in range(2)):
            return f"{kernel}: over {SLOW_FACTOR:g}x slower on warm-up"
    return None


def _choose(row: LayerDecision, kernels: list[str], min_speedup: float) -> str | None:
    """Set ``row.chosen`` by the rule of the module docstring; return a note on why no kernel was chosen."""
    if not kernels:
        return None
    speedup = {k: row.dense_ms / row.kernel_ms[k] for k in kernels}
    slower = {k: [b for b, t in row.timings.items() if t[k] > t["dense"]] for k in kernels}
    fast = [k for k in kernels if not slower[k]]
    best = max(fast or kernels, key=speedup.__getitem__)
    if not fast and len(row.timings) > 1:
        return (
            f"best sparse kernel {best} is {speedup[best]:.2f}x dense (geometric mean) but slower at "
            f"batch {', '.join(map(str, slower[best]))}"
        )
    if speedup[best] >= min_speedup:
        row.chosen = best
        return None
    return f"best sparse kernel {best} is {speedup[best]:.2f}x dense, below min_speedup={min_speedup:g}"


def _decide(
    row: LayerDecision,
    module: nn.Module,
    weight: Tensor,
    inputs: Mapping[int, Tensor],
    calls: int,
    rule: _Rule,
) -> nn.Module | None:
    """Time dense and every usable kernel of one layer on its input at each batch size; choose.

    Fills ``row`` (times, choice, note) and returns the chosen sparse module (``None``: dense stays).
    """
    dense = _dense_fn(module, weight)
    notes = [f"called {calls} times; timed on the first call's input"] if calls > 1 else []
    try:
        built, skipped = _kernels(
            module, weight, rule.formats, min(x[..., 0].numel() for x in inputs.values())
        )
    except RuntimeError as err:
        built, skipped = {}, [f"sparse weight could not be built: {str(err).splitlines()[0]}"]
    notes += skipped
    fns: dict[str, Callable] = {"dense": dense}
    for kernel, sparse in built.items():
        why = _usable(kernel, sparse, dense, inputs, rule.atol, rule.rtol)
        if why is None:
            fns[kernel] = sparse
        else:
            row.kernel_ms[kernel] = None
            notes.append(why)
    for size, x in inputs.items():
        times: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(rule.runs):
            for kernel, fn in fns.items():
                times[kernel].append(_time_once(fn, x))
        row.timings[size] = {k: statistics.median(v) for k, v in times.items()}
    row.dense_ms = _geomean(t["dense"] for t in row.timings.values())
    timed = [k for k in fns if k != "dense"]
    row.kernel_ms.update({k: _geomean(t[k] for t in row.timings.values()) for k in timed})
    why = _choose(row, timed, rule.min_speedup)
    if why:
        notes.append(why)
    row.note = "; ".join(notes)
    return built.get(row.chosen)


def _leaves(out: Any) -> list[Any]:
    """The tensors (and other leaves) of a model output: tensor, tuple/list, dict (HF ModelOutput is one)."""
    if isinstance(out, dict):
        return [leaf for key in out for leaf in _leaves(out[key])]
    if isinstance(out, (tuple, list)):
        return [leaf for item in out for leaf in _leaves(item)]
    return [out]


def _compare(out: Any, ref: Any, atol: float, rtol: float) -> tuple[bool, float, float]:
    """(all close?, max |out - ref|, max |ref|) over the floating tensors of two outputs."""
    a, b = _leaves(out), _leaves(ref)
    if len(a) != len(b):
        return False, float("inf"), 0.0
    close, diff, peak = True, 0.0, 0.0
    for x, y in zip(a, b, strict=True):
        if not (isinstance(x, Tensor) and isinstance(y, Tensor)):
            close &= bool(x == y)
        elif x.shape != y.shape:
            return False, float("inf"), peak
        elif y.is_floating_point() and y.numel():
            close &= torch.allclose(x, y, atol=atol, rtol=rtol)
            diff = max(diff, float((x.double() - y.double()).abs().max()))
            peak = max(peak, float(y.abs().max()))
        else:
            close &= torch.equal(x, y)
    return close, diff, peak


def _time_end_to_end(
    model: nn.Module, example_inputs: ExampleInputs, states: dict[str, dict[str, nn.Module]], runs: int
) -> dict[str, float]:
    """Median latency (ms) of each set of modules, switching sets between calls."""
    times: dict[str, list[float]] = {k: [] for k in states}
    for i in range(runs + 2):  # two warm-up rounds
        for key, modules in states.items():
            for name, module in modules.items():
                set_module(model, name, module)
            start = time.perf_counter()
            call_model(model, example_inputs)
            if i >= 2:
                times[key].append((time.perf_counter() - start) * 1000.0)
    return {k: statistics.median(v) for k, v in times.items()}


def _check_batch_sizes(batch_sizes: Sequence[int] | None) -> tuple[int, ...]:
    if batch_sizes is None:
        return ()
    sizes = tuple(batch_sizes)
    if not sizes or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in sizes):
        raise ConfigError(f"batch_sizes must be a non-empty list of ints >= 1, got {batch_sizes!r}")
    return tuple(sorted(set(sizes)))


def _decide_layer(
    name: str,
    module: nn.Module,
    seen: dict[str, list],
    at_size: dict[int, dict[str, list]],
    rule: _Rule,
) -> tuple[LayerDecision, nn.Module | None]:
    """The decision row of one candidate layer and its sparse replacement (``None``: it stays dense).

    A layer the example inputs never call, one below ``min_sparsity`` and one whose weight is not on CPU are
    skipped with a note; every other layer is timed by :func:`_decide` on its captured inputs per batch size.
    """
    weight = module.weight.detach()
    sparsity = 1.0 - int(torch.count_nonzero(weight)) / weight.numel()
    row = LayerDecision(name, type(module).__name__, list(weight.shape), None, sparsity, None)
    sparse = None
    if name not in seen:
        row.note = "not called by the example inputs"
    elif sparsity < rule.min_sparsity:
        row.note = f"sparsity below min_sparsity={rule.min_sparsity:g}"
    elif weight.device.type != "cpu":
        row.note = f"weight on {weight.device}; sparse kernels here are for CPU"
    else:
        inputs = {size: got[name][0] for size, got in at_size.items() if name in got}
        sparse = _decide(row, module, weight, inputs, seen[name][1], rule)
    if name in seen:
        row.input_shape = list(seen[name][0].shape)
    return row, sparse


def _swap_checked(
    model: nn.Module,
    example_inputs: ExampleInputs,
    reference: Any,
    originals: dict[str, nn.Module],
    swaps: dict[str, nn.Module],
    atol: float,
    rtol: float,
) -> tuple[float, float]:
    """Put every module of ``swaps`` in ``model`` and check its output against ``reference``.

    Returns (max |out - ref|, max |ref|). Outputs not within ``atol``/``rtol`` raise :class:`ApplyError`; on
    that or any other exception (interrupts too) the ``originals`` are put back first, so the model is never
    left half-swapped.
    """
    try:
        for name, sparse in swaps.items():
            set_module(model, name, sparse)
        close, diff, peak = _compare(call_model(model, example_inputs), reference, atol, rtol)
        if not close:
            raise ApplyError(
                f"outputs changed by {diff:.2e} after swapping "
                f"{len(swaps)} layer(s), over atol={atol:g}, rtol={rtol:g}; the model was restored"
            )
    except BaseException:
        for name, module in originals.items():
            set_module(model, name, module)
        raise
    return diff, peak


def accelerate(
    model: nn.Module,
    example_inputs: ExampleInputs,
    *,
    min_sparsity: float = 0.5,
    formats: Iterable[str] = FORMATS,
    convs: bool = False,
    threads: int | None = None,
    runs: int = 20,
    min_speedup: float = 1.1,
    atol: float = 1e-4,
    rtol: float = 1e-4,
    end_to_end: bool = True,
    batch_sizes: Sequence[int] | None = None,
) -> AccelerateResult:
    """Swap each sparse Linear (and Conv2d with ``convs=True``) for the fastest sparse kernel, where it pays.

    In place; see the module docstring for how each layer is decided. ``threads`` sets
    ``torch.set_num_threads`` while measuring (restored after): decide with the thread count you will deploy
    with. ``runs`` timed calls per layer and kernel (and per side end to end). A layer is swapped only if
    dense time >= ``min_speedup`` x its best kernel's time. On CPU, unstructured CSR usually pays only above
    ~80-90 % sparsity. ``batch_sizes`` (e.g. ``(1, 8, 32)``): decide over these batch sizes, by the rule of
    the module docstring, instead of the example's own batch only.

    >>> model = nn.Sequential(nn.Linear(256, 256))
    >>> with torch.no_grad():
    ...     model[0].weight[torch.rand(256, 256) < 0.97] = 0
    >>> res = accelerate(model, torch.randn(16, 256), runs=5)
    >>> res.max_abs_diff < 1e-4, len(res.layers)
    (True, 1)
    """
    formats = _check_args(formats, min_sparsity, min_speedup, atol, rtol)
    check_timing_args(runs=runs, warmup=0, threads=threads)
    sizes = _check_batch_sizes(batch_sizes)
    candidates = _candidates(model, convs)
    rule = _Rule(min_sparsity, formats, runs, min_speedup, atol, rtol)
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        with eval_mode(model), torch.no_grad():
            reference, seen = _capture_inputs(model, example_inputs, candidates)
            at_size = {
                size: _capture_inputs(model, at_batch(example_inputs, size), candidates)[1] for size in sizes
            } or {batch_size_of(example_inputs): seen}
            layers, swaps = [], {}
            for name, module in candidates.items():
                row, sparse = _decide_layer(name, module, seen, at_size, rule)
                layers.append(row)
                if sparse is not None:
                    swaps[name] = sparse
            originals = {name: candidates[name] for name in swaps}
            diff, peak = _swap_checked(model, example_inputs, reference, originals, swaps, atol, rtol)
            result = AccelerateResult(
                layers,
                torch.get_num_threads(),
                runs,
                min_sparsity,
                min_speedup,
                diff,
                peak,
                batch_sizes=list(sizes),
            )
            if end_to_end:
                ms = _time_end_to_end(model, example_inputs, {"dense": originals, "sparse": swaps}, runs)
                result.dense_ms, result.sparse_ms = ms["dense"], ms["sparse"]
    finally:
        torch.set_num_threads(previous_threads)
    return result


@contextlib.contextmanager
def accelerated(
    model: nn.Module, example_inputs: ExampleInputs, **options: Any
) -> Iterator[AccelerateResult]:
    """:func:`accelerate` ``model`` for the ``with`` block, then swap every sparse kernel back to dense.

    >>> model = nn.Sequential(nn.Linear(64, 64))
    >>> with accelerated(model, torch.randn(4, 64), runs=2, end_to_end=False) as res:
    ...     _ = model(torch.randn(4, 64))
    >>> type(model[0]).__name__
    'Linear'
    """
    result = accelerate(model, example_inputs, **options)
    try:
        yield result
    finally:
        decelerate(model)
