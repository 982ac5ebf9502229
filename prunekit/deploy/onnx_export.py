"""Export a (pruned) model to ONNX, check it, and prove onnxruntime computes what PyTorch computes.

:func:`export_onnx` uses the exporter PyTorch 2.14 runs by default, ``torch.onnx.export(..., dynamo=True)``
(``torch.export`` capture, then onnxscript translation and graph optimisation). The older TorchScript
exporter (``dynamo=False``) still works and is faster (~0.2 s vs 2-4 s for a small CNN on 2 cores), but it
warns that it is deprecated and will be removed; both exporters were checked on CNNs, attention
(``nn.TransformerEncoderLayer``, torchvision ViT) and masked models, with matching outputs.

What the file holds: the *effective* weights. A model with masks (``prunekit.sparse``, any
``torch.nn.utils.parametrize`` parametrization, or ``torch.nn.utils.prune``) is exported from a deep copy in
which the masks are baked in, so the file holds one tensor per weight, never weight + mask. The model is
exported in eval mode (its training flags are put back afterwards); the user's model is never modified.

``initializer_params`` counts every floating-point element the file stores as an initializer. The exporter's
optimiser changes that number in documented ways, reported as they are rather than hidden:

- BatchNorm after a conv is folded into the conv in eval mode, so a conv+BN model stores
  ``model_params - 2 * bn_channels`` (DigitsCNN: 160,074 - 448 = 159,626);
- initializers with identical values are stored once (freshly initialised LayerNorms are all ones);
- small constants of the graph (an attention scale, a reshape target) are initializers too.

For plain Linear/Conv models ``initializer_params == model_params`` exactly, and a structurally pruned model's
file shrinks with its parameter count.

>>> import torch
>>> res = export_onnx(torch.nn.Linear(8, 4), torch.randn(2, 8), "/tmp/linear.onnx")
>>> res.initializer_params, res.model_params
(36, 36)
"""

from __future__ import annotations

import copy
import os
import re
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn
from torch.nn.utils import parametrize, prune

from prunekit._atomic import atomic_write
from prunekit._inputs import ExampleInputs, batch_size_of, call_model, eval_mode, flatten_tensors
from prunekit._jsondata import JsonData
from prunekit.deploy.runtime import CPU, first_line, onnx_session, run_onnx
from prunekit.errors import ConfigError, ExportError
from prunekit.measure.params import count_params
from prunekit.progress import progress_bar
from prunekit.sparse.masks import own_parametrized_class
from prunekit.sparse.swap import dense_form

MIN_OPSET = 11  # the oldest opset edge converters still ask for
DYNAMO_MIN_OPSET = 18  # the torch.export-based exporter emits opset 18 or newer; older ones use TorchScript
MAX_OPSET = torch.onnx._constants.ONNX_MAX_OPSET
EXPORTER = "torch.onnx.export(dynamo=True)"
LEGACY_EXPORTER = "torch.onnx.export(dynamo=False)"
FLOAT_TYPES = {
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.BFLOAT16,
    onnx.TensorProto.DOUBLE,
}


@dataclass
class ExportResult(JsonData):
    """What :func:`export_onnx` wrote and how well onnxruntime reproduced PyTorch on it."""

    path: str
    size_bytes: int
    initializer_params: int
    model_params: int
    opset: int
    exporter: str
    dynamic_batch: bool
    verified: bool
    max_abs_err: float | None
    verified_batch_sizes: list[int] = field(default_factory=list)
    providers: list[str] = field(default_factory=list)
    seconds: float = 0.0


def deployable(model: nn.Module) -> nn.Module:
    """``model`` itself if it has no masks; else a deep copy with every mask/parametrization baked in.

    Sparse kernel modules (:func:`prunekit.accelerate`) are exported in their dense form.

    >>> layer = torch.nn.Linear(2, 2)
    >>> deployable(layer) is layer
    True
    """
    model = dense_form(model)
    needs_copy = any(parametrize.is_parametrized(m) or _prune_hooks(m) for m in model.modules())
    if not needs_copy:
        return model
    try:
        baked = copy.deepcopy(model)
    except Exception as err:
        raise ExportError(
            f"cannot copy the model to bake its masks in ({type(err).__name__}: {first_line(err)}); "
            "call prunekit.remove_masks(model) first"
        ) from err
    for module in list(baked.modules()):
        for hook in _prune_hooks(module):
            prune.remove(module, hook._tensor_name)
        if parametrize.is_parametrized(module):
            own_parametrized_class(module)
            for name in list(module.parametrizations):
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    return baked


def _prune_hooks(module: nn.Module) -> list[prune.BasePruningMethod]:
    return [h for h in module._forward_pre_hooks.values() if isinstance(h, prune.BasePruningMethod)]


def _check_inputs(example_inputs: ExampleInputs) -> None:
    """Tensors, or a flat tuple/list/dict whose entries are tensors or constants (not nested containers)."""
    if isinstance(example_inputs, torch.Tensor):
        return
    if not isinstance(example_inputs, (tuple, list, Mapping)):
        raise ConfigError(
            f"example inputs must be a tensor, a tuple or a dict, got {type(example_inputs).__name__}"
        )
    values = example_inputs.values() if isinstance(example_inputs, Mapping) else example_inputs
    nested = [type(v).__name__ for v in values if isinstance(v, (tuple, list, Mapping))]
    if nested:
        raise ConfigError(
            f"export_onnx takes flat inputs (tensors or constants); got a nested {nested[0]}: "
            "wrap the model so that forward takes tensors"
        )
    if not any(isinstance(v, torch.Tensor) for v in values):
        raise ConfigError("example inputs hold no tensor; export_onnx needs at least one input tensor")


def _args_kwargs(example_inputs: ExampleInputs) -> tuple[tuple, dict]:
    if isinstance(example_inputs, Mapping):
        return (), dict(example_inputs)
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,), {}
    return tuple(example_inputs), {}


def _dynamic_shapes(example_inputs: ExampleInputs) -> tuple | dict:
    """Mark dim 0 of every tensor whose leading size is the batch size as one shared ``batch`` dim."""
    batch = torch.export.Dim("batch")
    size = batch_size_of(example_inputs)

    def spec(v: Any) -> dict | None:
        ok = isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == size
        return {0: batch} if ok else None

    args, kwargs = _args_kwargs(example_inputs)
    return {k: spec(v) for k, v in kwargs.items()} if kwargs else tuple(spec(v) for v in args)


def _other_batch(example_inputs: ExampleInputs) -> ExampleInputs:
    """The same inputs with one more sample (the first repeated) in every batched tensor."""
    size = batch_size_of(example_inputs)

    def grow(v: Any) -> Any:
        if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == size:
            return torch.cat([v, v[:1]])
        return v

    if isinstance(example_inputs, Mapping):
        return {k: grow(v) for k, v in example_inputs.items()}
    if isinstance(example_inputs, torch.Tensor):
        return grow(example_inputs)
    return type(example_inputs)(grow(v) for v in example_inputs)


def _explain(err: BaseException) -> str:
    """One line naming the op the exporter could not translate, or the innermost cause of the failure."""
    chain, seen = [], set()
    cur: BaseException | None = err
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    text = "\n".join(str(e) for e in chain)
    found = re.search(r"No ONNX function found for <OpOverload\(op='([\w.]+)', overload='(\w+)'\)>", text)
    if found:
        return f"no ONNX translation for op {found.group(1)}.{found.group(2)}; rewrite that part of the model"
    found = re.search(r"Error when translating node %\S+ .*?target=(?:torch\.ops\.)?([\w.]+)", text)
    if found:
        root = first_line(chain[-1])
        return f"cannot translate op {found.group(1)} ({type(chain[-1]).__name__}: {root})"
    stage = re.sub(r"\x1b\[[0-9;]*m", "", first_line(err)).split(". ")[0].rstrip(".")
    root = chain[-1]
    return f"{stage}: {type(root).__name__}: {first_line(root)}"


def _initializer_params(model: onnx.ModelProto) -> int:
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer if t.data_type in FLOAT_TYPES)


def _compare(name: str, ours: list[np.ndarray], ref: list[torch.Tensor], rtol: float, atol: float) -> float:
    if len(ours) != len(ref):
        raise ExportError(f"onnxruntime gives {len(ours)} outputs, PyTorch {len(ref)} ({name})")
    worst = 0.0
    for i, (got, want) in enumerate(zip(ours, ref, strict=True)):
        want_np = want.detach().cpu().numpy()
        if got.shape != want_np.shape:
            raise ExportError(
                f"output {i} has shape {got.shape} in onnxruntime, {want_np.shape} in PyTorch ({name})"
            )
        if got.size == 0:
            continue
        err = float(np.max(np.abs(got.astype(np.float64) - want_np.astype(np.float64))))
        worst = max(worst, err)
        if not np.allclose(got, want_np, rtol=rtol, atol=atol, equal_nan=True):
            raise ExportError(
                f"onnxruntime output {i} differs from PyTorch by up to {err:.3g} "
                f"(rtol={rtol}, atol={atol}; {name})"
            )
    return worst


def _verify(
    path: Path,
    module: nn.Module,
    example_inputs: ExampleInputs,
    dynamic_batch: bool,
    rtol: float,
    atol: float,
) -> tuple[float, list[int]]:
    session = onnx_session(path)
    cases = [example_inputs] + ([_other_batch(example_inputs)] if dynamic_batch else [])
    worst, sizes = 0.0, []
    for inputs in cases:
        size = batch_size_of(inputs)
        try:
            with torch.no_grad():
                ref = flatten_tensors(call_model(module, inputs))
        except Exception as err:
            if not sizes:
                raise
            raise ExportError(
                f"the model itself fails on batch size {size} ({type(err).__name__}: {first_line(err)}); "
                "it fixes its batch size: pass dynamic_batch=False"
            ) from err
        try:
            ours = run_onnx(session, inputs)
        except Exception as err:
            hint = "; the exported graph has a fixed batch size: pass dynamic_batch=False" if sizes else ""
            raise ExportError(f"onnxruntime fails on batch size {size}: {first_line(err)}{hint}") from err
        worst = max(worst, _compare(f"batch size {size}", ours, ref, rtol, atol))
        sizes.append(size)
    return worst, sizes


def _export_legacy(
    module: nn.Module, example_inputs: ExampleInputs, path: Path, opset: int, dynamic_batch: bool
) -> None:
    """The TorchScript exporter, for opsets the torch.export-based one cannot emit (< 18).

    Inputs are named after the dict keys (or ``input``, ``input_1``, ...); with ``dynamic_batch`` dim 0 of
    every batched input and output is the ``batch`` axis.
    """
    args, kwargs = _args_kwargs(example_inputs)
    size = batch_size_of(example_inputs)
    named = list(kwargs.items()) or [(f"input_{i}" if i else "input", v) for i, v in enumerate(args)]
    names = [n for n, v in named if isinstance(v, torch.Tensor)]
    with torch.no_grad():
        outputs = flatten_tensors(call_model(module, example_inputs))
    out_names = [f"output_{i}" if i else "output" for i in range(len(outputs))]
    tensors = [v for _, v in named if isinstance(v, torch.Tensor)] + list(outputs)
    batched = dict(zip(names + out_names, tensors, strict=True))
    axes = {n: {0: "batch"} for n, t in batched.items() if t.dim() > 0 and t.shape[0] == size}
    torch.onnx.export(
        module,
        args,
        str(path),
        kwargs=kwargs or None,
        dynamo=False,
        opset_version=opset,
        input_names=names,
        output_names=out_names,
        dynamic_axes=axes if dynamic_batch else None,
    )


def _export_path(path: str | os.PathLike, opset: int | None, rtol: float, atol: float) -> Path:
    """Check the export options; ``path`` as a :class:`~pathlib.Path` to a file in an existing folder."""
    if opset is not None and not MIN_OPSET <= opset <= MAX_OPSET:
        raise ConfigError(f"opset must be in {MIN_OPSET}..{MAX_OPSET}, got {opset}")
    if rtol < 0 or atol < 0:
        raise ConfigError(f"rtol and atol must be >= 0, got rtol={rtol}, atol={atol}")
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path} is a directory; give a file path such as {path / 'model.onnx'}")
    if not path.parent.is_dir():
        raise ConfigError(f"directory {path.parent} does not exist")
    return path


def _export_file(
    module: nn.Module, example_inputs: ExampleInputs, path: Path, opset: int | None, dynamic_batch: bool
) -> None:
    """Write ``module`` to ``path`` with the exporter ``opset`` asks for; any failure as :class:`ExportError`.

    The torch.export-based exporter specialises dims of size 1, so with ``dynamic_batch`` a batch-1 example
    is exported repeated twice (verification still runs on the user's inputs).
    """
    export_inputs = example_inputs
    if dynamic_batch and batch_size_of(example_inputs) == 1:
        export_inputs = _other_batch(example_inputs)
    args, kwargs = _args_kwargs(export_inputs)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if opset is not None and opset < DYNAMO_MIN_OPSET:
                _export_legacy(module, example_inputs, path, opset, dynamic_batch)
                return
            torch.onnx.export(
                module,
                args,
                str(path),
                kwargs=kwargs or None,
                dynamo=True,
                external_data=False,
                verbose=False,
                opset_version=opset,
                dynamic_shapes=_dynamic_shapes(export_inputs) if dynamic_batch else None,
            )
    except Exception as err:
        raise ExportError(f"cannot export to ONNX: {_explain(err)}") from err


def _check_file(path: Path) -> None:
    """Run ``onnx.checker`` (full check) on the file at ``path``; a failure as :class:`ExportError`."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as err:
        raise ExportError(f"the exported ONNX model fails onnx.checker: {first_line(err)}") from err


def export_onnx(
    model: nn.Module,
    example_inputs: ExampleInputs,
    path: str | os.PathLike,
    *,
    verify: bool = True,
    dynamic_batch: bool = True,
    opset: int | None = None,
    rtol: float = 1e-3,
    atol: float = 1e-4,
) -> ExportResult:
    """Export ``model`` to a single ONNX file at ``path``, check it, and compare onnxruntime with PyTorch.

    With ``verify`` every output of onnxruntime (CPU) must match PyTorch within ``rtol``/``atol`` on
    ``example_inputs`` and, with ``dynamic_batch``, on a batch one larger; otherwise :class:`ExportError`.
    The file is written atomically: on any failure no file is left at ``path``. ``opset=None`` lets the
    exporter choose (opset 20 with torch 2.14). Opsets 18 and newer use the torch.export-based exporter;
    11..17, which edge converters still ask for, use the TorchScript exporter (``dynamo=False``), which
    torch marks deprecated; ``ExportResult.exporter`` says which one wrote the file.

    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten())
    >>> res = export_onnx(net, torch.randn(2, 3, 8, 8), "/tmp/net.onnx")
    >>> res.verified_batch_sizes, res.max_abs_err < 1e-4
    ([2, 3], True)
    """
    start = time.perf_counter()
    _check_inputs(example_inputs)
    path = _export_path(path, opset, rtol, atol)
    legacy = opset is not None and opset < DYNAMO_MIN_OPSET
    module = deployable(model)

    def write(tmp: Path) -> tuple[Any, float | None, list]:
        _export_file(module, example_inputs, tmp, opset, dynamic_batch)
        bar.advance()
        _check_file(tmp)
        bar.advance()
        if not verify:
            return onnx.load(str(tmp)), None, []
        checked = _verify(tmp, module, example_inputs, dynamic_batch, rtol, atol)
        bar.advance()
        return onnx.load(str(tmp)), *checked

    with eval_mode(module):
        with progress_bar(
            "onnx export, check, verify" if verify else "onnx export, check", 2 + verify
        ) as bar:
            proto, max_err, sizes = atomic_write(path, write)
    opset_used = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    return ExportResult(
        path=str(path),
        size_bytes=path.stat().st_size,
        initializer_params=_initializer_params(proto),
        model_params=count_params(model).total,
        opset=int(opset_used),
        exporter=LEGACY_EXPORTER if legacy else EXPORTER,
        dynamic_batch=dynamic_batch,
        verified=verify,
        max_abs_err=max_err,
        verified_batch_sizes=sizes,
        providers=list(CPU) if verify else [],
        seconds=time.perf_counter() - start,
    )
