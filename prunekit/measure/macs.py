"""Multiply-accumulates (MACs) of one forward, counted by ``torch.utils.flop_counter.FlopCounterMode``.

MACs are ``FLOPs // 2`` as the flop counter reports them: it counts matrix products and convolutions
(``mm``, ``addmm``, ``bmm``, ``convolution``, attention…) and ignores element-wise ops (activations, norms,
additions). It counts *dense* work: a model whose weights are masked to 90 % zeros still reports its dense
MACs, because the kernels it runs are dense. Structural pruning (fewer channels) is what lowers this number.

Ops without a flop formula would silently count as zero, so while counting: PyTorch's fused attention fast
path (``torch.backends.mha``, op ``_native_multi_head_attention``) and, for models with a recurrent layer,
oneDNN (``torch.backends.mkldnn``: ``mkldnn_rnn_layer`` for LSTM on CPU) are switched off and restored
afterwards (the unfused paths do the same arithmetic with ops the counter knows; oneDNN stays on otherwise,
as switching it off makes depthwise and other convolutions ~3x slower to run), and the CPU kernel of
``scaled_dot_product_attention`` (``_scaled_dot_product_flash_attention_for_cpu``) gets torch's own
``sdpa_flop_count``, as its CUDA variants have. Any other op with no formula in ``torch.utils.flop_counter``
still counts as zero.

The counter is torch's own (its formulas, decompositions and higher-order-op handling), without its
per-module attribution: ``FlopCounterMode`` tracks the module hierarchy with hooks that walk
``named_modules`` and flatten every module's inputs (~20 % of a count on DenseNet-121). We only read the
total, and :func:`macs_by_module` attributes work with its own hooks, so the tracker is replaced by a fixed
"Global" parent (:func:`_flop_counter`); the totals are the same.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from prunekit._inputs import ExampleInputs, call_model, eval_mode


def _sdpa_cpu_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """Flops of the CPU flash-attention kernel: the same formula torch uses for the CUDA kernels."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


class _GlobalOnly:
    """Stands in for ``FlopCounterMode``'s module tracker: every op counts towards "Global" only."""

    parents = ("Global",)

    def __enter__(self) -> _GlobalOnly:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def _flop_counter() -> FlopCounterMode:
    """A silent ``FlopCounterMode`` that also knows the CPU attention kernel and skips module attribution.

    On a torch whose counter has no ``mod_tracker`` (a different internal layout) the tracker is kept: the
    count is the same, only slower.
    """
    extra = {}
    cpu_sdpa = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if cpu_sdpa is not None:
        extra[cpu_sdpa] = _sdpa_cpu_flop
    counter = FlopCounterMode(display=False, custom_mapping=extra)
    if hasattr(counter, "mod_tracker"):
        counter.mod_tracker = _GlobalOnly()
    return counter


def _count(model: nn.Module, example_inputs: ExampleInputs, counter: FlopCounterMode) -> None:
    """One forward under ``counter``: eval mode, no_grad, attention fast path off (and oneDNN, for RNNs).

    Where the counter kept torch's module tracker, parameters stop requiring grad meanwhile: that tracker
    hooks the autograd graph of every module input that requires grad, and asserts on a leaf one (a class
    token passed straight into a block, as in CaiT and PiT); the flags are restored afterwards.
    """
    fastpath = torch.backends.mha.get_fastpath_enabled()
    mkldnn = torch.backends.mkldnn.enabled
    tracked = not isinstance(getattr(counter, "mod_tracker", None), _GlobalOnly)
    needs_grad = [p for p in model.parameters() if p.requires_grad] if tracked else []
    torch.backends.mha.set_fastpath_enabled(False)
    if any(isinstance(module, nn.RNNBase) for module in model.modules()):
        torch.backends.mkldnn.enabled = False
    try:
        for p in needs_grad:
            p.requires_grad_(False)
        with eval_mode(model), torch.no_grad(), counter:
            call_model(model, example_inputs)
    finally:
        for p in needs_grad:
            p.requires_grad_(True)
        torch.backends.mha.set_fastpath_enabled(fastpath)
        torch.backends.mkldnn.enabled = mkldnn


def count_macs(model: nn.Module, example_inputs: ExampleInputs) -> int:
    """MACs of one forward of ``model`` on ``example_inputs`` (in eval mode, under ``torch.no_grad``).

    >>> count_macs(nn.Linear(10, 5), torch.zeros(3, 10))
    150
    """
    counter = _flop_counter()
    _count(model, example_inputs, counter)
    return counter.get_total_flops() // 2


def macs_by_module(model: nn.Module, example_inputs: ExampleInputs) -> dict[str, int]:
    """MACs each module performs *itself* during one forward (its children's work excluded), by module name.

    Work is attributed to the innermost module running when the op is counted, so for a model made of
    standard layers the MACs sit on the leaf modules (``Conv2d``, ``Linear``...), and a module that computes
    directly (e.g. ``nn.MultiheadAttention``, or the root model calling ``torch.matmul``) keeps its own share.
    The root module is named ``""``. A module called several times sums its calls. Only modules with
    non-zero MACs appear, and the values add up to :func:`count_macs`.

    >>> macs_by_module(nn.Sequential(nn.Linear(10, 5), nn.ReLU(), nn.Linear(5, 2)), torch.zeros(3, 10))
    {'0': 150, '2': 30}
    """
    counter = _flop_counter()
    names = {module: name for name, module in model.named_modules()}
    own = dict.fromkeys(names.values(), 0)
    stack: list[list[int]] = []  # per active call: [global flops at entry, flops of its child calls]

    def enter(module: nn.Module, args: object) -> None:
        stack.append([counter.get_total_flops(), 0])

    def leave(module: nn.Module, args: object, output: object) -> None:
        start, children = stack.pop()
        inclusive = counter.get_total_flops() - start
        own[names[module]] += inclusive - children
        if stack:
            stack[-1][1] += inclusive

    handles = []
    for module in names:
        handles.append(module.register_forward_pre_hook(enter))
        handles.append(module.register_forward_hook(leave))
    try:
        _count(model, example_inputs, counter)
    finally:
        for handle in handles:
            handle.remove()
    return {name: flops // 2 for name, flops in own.items() if flops}
