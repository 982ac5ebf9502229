"""Checkpoints without pickle: safetensors weights + a JSON file saying how to rebuild the architecture.

A checkpoint is a directory with two files::

    weights.safetensors   the effective weights and persistent buffers (masks baked in, tied tensors once);
                          with ``sparse=True`` it is ``weights.pksparse`` instead: bitmask + values + zstd
                          (see :mod:`prunekit.sparse.storage`), for models with many zeros
    prunekit.json         format version, model spec, structural plans, tensor shapes/dtypes, sha256 of the
                          weights file, torch/prunekit versions, user metadata

:func:`load` rebuilds the model from its spec (``torchvision:NAME`` or ``module.path:factory``, see
:func:`prunekit.models.spec.load_model`), re-applies the plans in order (:func:`prunekit.structured.apply`),
and loads the weights strictly: the outputs are bit-identical to the saved model's. Nothing is unpickled and
``torch.load`` is never called. :func:`save` rebuilds the architecture the same way before writing, so a
checkpoint that could not be loaded back is refused at save time, not discovered later.

The directory is written atomically (:func:`prunekit._atomic.atomic_dir`): into a temporary directory next to
it, then renamed into place; an existing checkpoint stays reachable until the new one is complete, and a
crash between the two renames of a replacement is undone by the next save or load. Any other non-empty
directory is refused.

``prunekit.json`` carries an integrity hash over everything else in it (spec, plans, tensor list, weights
hash): a hand-edited file is refused. The hash detects edits, not malice (anyone can recompute it), so what a
file may ask for is limited too: a spec of a registered family (``torchvision:``, ``timm:``, ``hf:``,
``ultralytics:``) is always built, a ``module.path:factory`` spec runs code the file chose and is built only
with ``trust_code=True``; plans are validated in full (cuts and attribute changes,
:mod:`prunekit.structured.plan_attrs`) before anything is cut.

>>> from prunekit.demo.model import build_model
>>> _ = save(build_model(1), "/tmp/ckpt", spec="prunekit.demo.model:build_model")
>>> import torch; x = torch.randn(2, 1, 8, 8)
>>> torch.equal(load("/tmp/ckpt", trust_code=True)(x), build_model(1).eval()(x))
True
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from safetensors import SafetensorError
from torch import nn

from prunekit._atomic import atomic_dir, recover_dir
from prunekit._jsondata import JsonData
from prunekit.errors import ConfigError, ModelLoadError, PlanError, PruneError
from prunekit.measure.params import count_params
from prunekit.measure.size import effective_state_dict
from prunekit.models.record import recorded_spec
from prunekit.models.spec import LOADERS, load_model
from prunekit.models.vocab import replay_vocab
from prunekit.plan import Plan
from prunekit.sparse.storage import (
    DEFAULT_ZSTD_LEVEL,
    check_storage_options,
    decode_sparse_state_dict,
    encode_sparse_state_dict,
)
from prunekit.sparse.swap import dense_form, kernel_choices, swap_kernels
from prunekit.structured.cut import apply
from prunekit.structured.layer_stack import removed_layers
from prunekit.structured.layers import SkipBlock, skip_blocks
from prunekit.structured.plan_attrs import complete_size_attrs

FORMAT = "prunekit-checkpoint"
FORMAT_VERSION = 2  # 2 adds the integrity hash; version 1 (without it) is still read
READ_VERSIONS = (1, 2)
WEIGHTS_FILE = "weights.safetensors"
SPARSE_FILE = "weights.pksparse"
META_FILE = "prunekit.json"


@dataclass
class SavedCheckpoint(JsonData):
    """What :func:`save` wrote."""

    path: str
    spec: str | None
    plans: int
    tensors: int
    params: int
    weights_bytes: int
    sha256: str
    metadata: dict[str, Any] = field(default_factory=dict)


def _prunekit_version() -> str:
    try:
        return version("prunekit")
    except PackageNotFoundError:
        return "0+unknown"


def _check_spec(spec: str | None) -> None:
    if spec is None:
        return
    module_path, sep, attr = spec.partition(":")
    dotted = module_path.split(".") + attr.split(".")
    if not (module_path in LOADERS or (sep and all(part.isidentifier() for part in dotted))):
        raise ConfigError(
            f"spec must be torchvision:NAME or module.path:factory (a file cannot rebuild a model), "
            f"got {spec!r}"
        )


def spec_runs_code(spec: str) -> bool:
    """True if building ``spec`` imports and calls a ``module.path:factory`` (code the spec chose).

    Registered families (``LOADERS``: ``torchvision:NAME``, ``timm:NAME``, ...) build from their own code.

    >>> spec_runs_code("torchvision:resnet18"), spec_runs_code("os:abort")
    (False, True)
    """
    return spec.partition(":")[0] not in LOADERS


def _check_trust(spec: str, directory: Path, trust_code: bool) -> None:
    if trust_code or not spec_runs_code(spec):
        return
    raise ModelLoadError(
        f"{directory} names its architecture {spec!r}, a module.path:factory: building it imports and calls "
        "code the checkpoint file chose; call prunekit.load(dir, trust_code=True) (CLI: --trust-code) only "
        "if you trust where the checkpoint came from, or build the unpruned model, load(dir, model=...)"
    )


def integrity_hash(info: Mapping[str, Any]) -> str:
    """The sha256 over a checkpoint description's entries other than ``integrity`` (canonical JSON)."""
    body = {k: v for k, v in info.items() if k != "integrity"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _plans(plan: Plan | Sequence[Plan] | None) -> list[Plan]:
    plans = [] if plan is None else [plan] if isinstance(plan, Plan) else list(plan)
    bad = [type(p).__name__ for p in plans if not isinstance(p, Plan)]
    if bad:
        raise ConfigError(f"plan must be a prunekit Plan or a list of Plans, got {bad[0]}")
    return plans


def _is_checkpoint(directory: Path) -> bool:
    """True if ``directory`` holds only a prunekit checkpoint's files (at least prunekit.json, ours)."""
    names = {p.name for p in directory.iterdir()}
    if META_FILE not in names or not names <= {META_FILE, WEIGHTS_FILE}:
        return False
    try:
        return json.loads((directory / META_FILE).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _check_target(directory: Path) -> None:
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"{directory} is a file; give a directory for the checkpoint")
    if directory.is_dir() and any(directory.iterdir()) and not _is_checkpoint(directory):
        raise ConfigError(
            f"{directory} is not empty and is not a prunekit checkpoint; choose a new or empty directory"
        )


def _aliases(model: nn.Module) -> list[list[str]]:
    """State-dict names grouped by the tensor they hold (tied weights share a group), in state-dict order."""
    groups: dict[int, list[str]] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        groups.setdefault(id(tensor), []).append(name)
    return list(groups.values())


def _fit(weights: Mapping[str, torch.Tensor], model: nn.Module, what: str) -> dict[str, torch.Tensor]:
    """The full state dict for ``model`` (tied names filled in); raise if names or shapes do not fit."""
    full: dict[str, torch.Tensor] = {}
    missing = []
    target = model.state_dict()
    for names in _aliases(model):
        saved = [n for n in names if n in weights]
        if not saved:
            missing.append(names[0])
            continue
        if any(not torch.equal(weights[n], weights[saved[0]]) for n in saved[1:]):
            raise ModelLoadError(
                f"{what}: {', '.join(saved)} are tied in the rebuilt model but differ in the weights"
            )
        for name in names:
            full[name] = weights[saved[0]]
    unexpected = sorted(set(weights) - set(full))
    if missing or unexpected:
        parts = [f"missing {', '.join(missing[:3])}"] if missing else []
        parts += [f"unexpected {', '.join(unexpected[:3])}"] if unexpected else []
        raise ModelLoadError(f"{what}: the tensor names differ ({'; '.join(parts)})")
    for name, tensor in full.items():
        if tuple(tensor.shape) != tuple(target[name].shape):
            raise ModelLoadError(
                f"{what}: the plan does not fit the architecture: {name} is {tuple(tensor.shape)} in the "
                f"weights, {tuple(target[name].shape)} in the rebuilt model"
            )
    return full


def _apply_plans(
    model: nn.Module, plans: list[Plan], source: str, built_by: str, start: int = 0
) -> nn.Module:
    for i, plan in enumerate(plans, start):
        try:
            apply(model, complete_size_attrs(plan, model))
        except PruneError as err:
            raise PlanError(f"plan {i + 1} of {source} does not fit {built_by}: {err}") from err
    return model


def _skipped_blocks(model: nn.Module) -> dict[str, str]:
    """Blocks removed by layer pruning, by name, with the kind they replaced: :class:`SkipBlock` stand-ins
    and the layers deleted from a Hugging Face layer stack (by their original names)."""
    skipped = {name: m.replaced for name, m in model.named_modules() if isinstance(m, SkipBlock)}
    return removed_layers(model) | skipped


def _skip(model: nn.Module, blocks: Mapping[str, str], built_by: str) -> None:
    modules = dict(model.named_modules())
    for name in blocks:
        if not name or name not in modules:
            raise PlanError(f"{built_by} has no block {name!r} to skip")
    skip_blocks(model, blocks)


def _rebuild(
    make: Callable[[], nn.Module],
    plans: list[Plan],
    blocks: Mapping[str, str],
    weights: Mapping[str, torch.Tensor],
    source: str,
    built_by: str,
    what: str,
) -> tuple[nn.Module, dict[str, torch.Tensor], int]:
    """Build the architecture: plans, with the skipped blocks swapped in where the weights fit.

    Layer pruning and structural plans may have been done in any order; the blocks are skipped before plan
    ``k`` for the first ``k`` whose result holds exactly the saved tensors (any fitting order gives the same
    modules and shapes, hence the same outputs). Returns the model, its full state dict and ``k``.
    """
    error: PruneError | None = None
    for k in range(len(plans) + 1) if blocks else [len(plans)]:
        model = make()
        try:
            _apply_plans(model, plans[:k], source, built_by)
            _skip(model, blocks, built_by)
            _apply_plans(model, plans[k:], source, built_by, start=k)
            return model, _fit(weights, model, what), k
        except (ModelLoadError, PlanError) as err:
            error = err
    assert error is not None
    raise error


def _write_files(
    tmp: Path,
    model: nn.Module,
    weights: dict[str, torch.Tensor],
    spec: str | None,
    plans: list[Plan],
    blocks: dict[str, str],
    meta_json: dict[str, Any],
    sparse: bool,
    sparse_values: str,
) -> dict[str, Any]:
    """Write the weights file and ``prunekit.json`` into ``tmp``; the metadata written."""
    if sparse:
        file, encoding = SPARSE_FILE, f"sparse-{sparse_values}"
        (tmp / file).write_bytes(encode_sparse_state_dict(weights, values=sparse_values))
    else:
        file, encoding = WEIGHTS_FILE, "dense"
        safetensors.torch.save_file(weights, str(tmp / file), metadata={"format": "pt"})
    data = (tmp / file).read_bytes()
    info = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "spec": spec,
        "plans": [p.to_dict() for p in plans],
        "skipped_blocks": blocks,
        "weights": {
            "file": file,
            "encoding": encoding,
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        },
        "tensors": {
            n: {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
            for n, t in weights.items()
        },
        "params": count_params(dense_form(model)).to_dict(),
        "torch_version": torch.__version__,
        "prunekit_version": _prunekit_version(),
        "metadata": meta_json,
        "accelerated": kernel_choices(model),
    }
    info["integrity"] = integrity_hash(info)
    (tmp / META_FILE).write_text(json.dumps(info, indent=1) + "\n")
    return info


def save(
    model: nn.Module,
    directory: str | os.PathLike,
    *,
    spec: str | None = None,
    plan: Plan | Sequence[Plan] | None = None,
    metadata: Mapping[str, Any] | None = None,
    sparse: bool = False,
    sparse_values: str = "fp32",
) -> SavedCheckpoint:
    """Save ``model`` as ``weights.safetensors`` + ``prunekit.json`` in ``directory``.

    ``spec`` names the *unpruned* architecture (``torchvision:resnet50``, ``mypkg.models:build``); ``plan`` is
    the structural plan (or list of plans, in the order they were applied) that turned it into ``model``,
    e.g. ``prunekit.prune(...).plan``. Masks are baked in; the model itself is not changed. Without ``spec``
    the checkpoint can only be loaded into a model you build: ``load(dir, model=...)``. ``metadata`` must be
    JSON-serialisable. ``sparse=True`` stores the weights in the compressed sparse encoding (exact with
    ``sparse_values="fp32"``; ``"fp16"`` or ``"int8"`` trade exactness for size) — the file is then typically
    5–10× smaller for a 90%-sparse model. A model run on sparse kernels (:func:`prunekit.accelerate`) is
    saved with its dense weights and, under ``"accelerated"``, which layer ran which kernel.

    A local path in ``spec`` is stored absolute. Without ``spec``, a model built outside prunekit gets the
    spec its family infers for its architecture before ``plan`` (:func:`prunekit.models.record.recorded_spec`:
    torchvision, timm, transformers); otherwise a warning says that loading needs ``model=``.

    >>> import torch
    >>> info = save(torch.nn.Linear(3, 2), "/tmp/lin-ckpt")
    >>> info.tensors, info.params
    (2, 8)
    """
    directory = Path(directory)
    _check_spec(spec)
    plans = _plans(plan)
    try:
        meta_json = json.loads(json.dumps(dict(metadata or {})))
    except (TypeError, ValueError) as err:
        raise ConfigError(f"metadata must be JSON-serialisable: {err}") from err
    if sparse:
        check_storage_options(
            values=sparse_values, scale="tensor", dense="keep", zstd_level=DEFAULT_ZSTD_LEVEL
        )
    _check_target(directory)
    weights = effective_state_dict(model)
    blocks = _skipped_blocks(model)
    spec = recorded_spec(model, spec, pruned=bool(blocks), plans=plans)
    if spec is not None:  # rebuild now: a checkpoint that cannot be loaded back is never written
        try:
            _rebuild(
                lambda: load_model(spec),
                plans,
                blocks,
                weights,
                "the checkpoint",
                f"the model built by {spec!r}",
                f"cannot save to {directory}",
            )
        except (ModelLoadError, PlanError) as err:
            raise ConfigError(f"{err}; pass the plan(s) that pruned the model built by spec") from err

    def fill(tmp: Path) -> dict[str, Any]:
        return _write_files(tmp, model, weights, spec, plans, blocks, meta_json, sparse, sparse_values)

    info = atomic_dir(directory, fill, replaceable=lambda d: not any(d.iterdir()) or _is_checkpoint(d))
    w = info["weights"]
    return SavedCheckpoint(
        str(directory),
        spec,
        len(plans),
        len(weights),
        info["params"]["total"],
        w["bytes"],
        w["sha256"],
        meta_json,
    )


def read_info(directory: str | os.PathLike) -> dict[str, Any]:
    """The parsed ``prunekit.json`` of a checkpoint, checked for format and version.

    >>> _ = save(torch.nn.Linear(3, 2), "/tmp/lin-ckpt")
    >>> read_info("/tmp/lin-ckpt")["format"]
    'prunekit-checkpoint'
    """
    directory = Path(directory)
    recover_dir(directory)  # a replacement interrupted between its two renames leaves the old one aside
    if not directory.is_dir():
        raise ModelLoadError(f"no checkpoint directory {directory}")
    meta = directory / META_FILE
    if not meta.is_file():
        raise ModelLoadError(f"{directory} is not a prunekit checkpoint: {META_FILE} is missing")
    try:
        info = json.loads(meta.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelLoadError(f"{meta} is corrupt: {err}") from err
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise ModelLoadError(f"{meta} is not a prunekit checkpoint description (no format {FORMAT!r})")
    if info.get("version") not in READ_VERSIONS:
        raise ModelLoadError(
            f"{meta} has checkpoint format version {info.get('version')!r}; "
            f"this prunekit reads versions {', '.join(map(str, READ_VERSIONS))}"
        )
    for key in ("spec", "plans", "weights", "tensors", *(("integrity",) if info["version"] >= 2 else ())):
        if key not in info:
            raise ModelLoadError(f"{meta} is corrupt: the {key!r} entry is missing")
    if "integrity" in info and info["integrity"] != integrity_hash(info):
        raise ModelLoadError(f"{meta} does not match its integrity hash: the file is corrupt or was edited")
    if info["spec"] is not None and not isinstance(info["spec"], str):
        raise ModelLoadError(f"{meta} is corrupt: 'spec' is not a string")
    return info


def _read_weights(directory: Path, info: dict[str, Any]) -> dict[str, torch.Tensor]:
    file = info["weights"].get("file", WEIGHTS_FILE) if isinstance(info["weights"], dict) else None
    if file not in (WEIGHTS_FILE, SPARSE_FILE):
        raise ModelLoadError(f"{directory / META_FILE} is corrupt: unknown weights file {file!r}")
    path = directory / file
    if not path.is_file():
        raise ModelLoadError(f"{directory} is incomplete: {file} is missing")
    data = path.read_bytes()
    try:
        expected = info["weights"]["sha256"]
        listed = {n: (list(t["shape"]), t["dtype"]) for n, t in info["tensors"].items()}
    except (KeyError, TypeError, AttributeError) as err:
        raise ModelLoadError(f"{directory / META_FILE} is corrupt: bad 'weights' or 'tensors' entry") from err
    if hashlib.sha256(data).hexdigest() != expected:
        raise ModelLoadError(
            f"{path} does not match the sha256 in {META_FILE}: the file is corrupt or was changed"
        )
    if file == SPARSE_FILE:
        weights = decode_sparse_state_dict(data, source=str(path))  # raises ModelLoadError when corrupt
    else:
        weights = _read_safetensors(data, path)
    stored = {n: (list(t.shape), str(t.dtype).removeprefix("torch.")) for n, t in weights.items()}
    if listed != stored:
        raise ModelLoadError(f"{path} does not hold the tensors {META_FILE} lists (names, shapes or dtypes)")
    return weights


def _read_safetensors(data: bytes, path: Path) -> dict[str, torch.Tensor]:
    try:
        return safetensors.torch.load(data)
    except (SafetensorError, ValueError) as err:
        raise ModelLoadError(f"cannot read {path}: {err}") from err


def _shadow(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose parameters and buffers are meta tensors: plans are tried on it for free."""
    memo: dict[int, Any] = {}
    for t in [*model.parameters(), *model.buffers()]:
        meta = t.detach().to("meta")
        memo[id(t)] = (
            nn.Parameter(meta, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else meta
        )
    return copy.deepcopy(model, memo)


def load(
    directory: str | os.PathLike, *, model: nn.Module | None = None, trust_code: bool = False
) -> nn.Module:
    """Rebuild a model saved with :func:`save`; it is returned in eval mode, on the CPU.

    The architecture comes from the saved spec, or from ``model`` (the *unpruned* architecture, built by you;
    required when the checkpoint has no spec, and changed in place unless blocks were removed by layer
    pruning, in which case a copy is returned). A spec of a registered family (``torchvision:NAME``, ...) is
    always built; a ``module.path:factory`` spec imports and calls code named by the file, so it is built only
    with ``trust_code=True``. The saved plans are applied to it, removed blocks are replaced by
    :class:`~prunekit.structured.layers.SkipBlock`, then the weights are loaded strictly (dtypes included)
    after their sha256 is checked. A given ``model`` is changed only once every plan is known to fit it.
    Layers saved on sparse kernels run on the same kernels again
    (:func:`~prunekit.sparse.swap.swap_kernels`, not re-timed: :func:`~prunekit.sparse.swap.decelerate`
    gives the dense form, :func:`~prunekit.accelerate` decides afresh on this machine).

    >>> _ = save(torch.nn.Linear(3, 2), "/tmp/lin-ckpt")
    >>> load("/tmp/lin-ckpt", model=torch.nn.Linear(3, 2)).weight.shape
    torch.Size([2, 3])
    """
    directory = Path(directory)
    info = read_info(directory)
    try:
        plans = [Plan.from_dict(p) for p in info["plans"]]
    except PlanError as err:
        raise ModelLoadError(f"{directory / META_FILE} is corrupt: {err}") from err
    weights = _read_weights(directory, info)
    spec = info["spec"]
    if model is None and spec is None:
        raise ModelLoadError(
            f"{directory} was saved without a model spec; build the unpruned model yourself and call "
            "load(dir, model=...)"
        )
    if model is None:
        _check_trust(spec, directory, trust_code)
    built_by = "the given model" if model is not None else f"the model built by {spec!r}"
    blocks = info.get("skipped_blocks") or {}
    if not isinstance(blocks, dict) or not all(isinstance(v, str) for v in blocks.values()):
        raise ModelLoadError(f"{directory / META_FILE} is corrupt: bad 'skipped_blocks' entry")
    what = f"cannot load {directory}"
    if model is None:
        model, full, _ = _rebuild(
            lambda: load_model(spec), plans, blocks, weights, str(directory), built_by, what
        )
    else:  # find the order on meta-tensor copies; the given model is cut only once it is known to fit
        given = model
        _, _, k = _rebuild(lambda: _shadow(given), plans, blocks, weights, str(directory), built_by, what)
        model = copy.deepcopy(given) if blocks else given
        _apply_plans(model, plans[:k], str(directory), built_by)
        if blocks:
            _skip(model, blocks, built_by)
        _apply_plans(model, plans[k:], str(directory), built_by, start=k)
        full = _fit(weights, model, what)
    state = model.state_dict(keep_vars=True)
    with torch.no_grad():
        for name, tensor in full.items():
            if state[name].dtype != tensor.dtype:  # keep the saved dtype (and the Parameter object, for ties)
                state[name].data = state[name].data.to(tensor.dtype)
    model.load_state_dict(full, strict=True)
    replay_vocab(model, plans)  # a sentence model's tokenizer follows a vocabulary cut
    accelerated = info.get("accelerated") or {}
    if not isinstance(accelerated, dict):
        raise ModelLoadError(f"{directory / META_FILE} is corrupt: bad 'accelerated' entry")
    try:
        swap_kernels(model, accelerated)
    except ConfigError as err:
        raise ModelLoadError(f"cannot load {directory}: {err}") from err
    return model.eval()
