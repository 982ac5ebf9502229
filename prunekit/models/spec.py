"""Turn a model spec string into an ``nn.Module``, and make example inputs for it.

A spec is one of::

    PREFIX:TEXT               a registered model family                 torchvision:resnet18, timm:NAME,
                                                                        hf:CONFIG, ultralytics:NAME.yaml
    module.path:factory       a callable returning an nn.Module         mypkg.models:build_net
    path/to/file.pt           a state_dict (with arch=...) or, only with trust_pickle=True, a pickled module
    path/to/file.safetensors  a state_dict (with arch=...)
    path/to/file.pksparse     a state_dict in prunekit's compressed sparse format (with arch=...)
    path/to/checkpoint/       a directory written by prunekit.save (spec + plans + safetensors weights)

Prefixed forms are looked up by the text before the first ``:`` among the families registered with
:func:`prunekit.models.family.register_family` (the built-in ones in :mod:`~prunekit.models.torchvision`,
:mod:`~prunekit.models.timm`, :mod:`~prunekit.models.hf`, :mod:`~prunekit.models.sentence`,
:mod:`~prunekit.models.ultralytics`); a prefix that is no family is read as ``module.path:factory``.
Nothing is recognised by substrings. Every failure is a one-line :class:`~prunekit.errors.ModelLoadError`
(or :class:`~prunekit.errors.ConfigError` for a bad input shape).

Files are read with ``torch.load(weights_only=True)``, which cannot run code. A file that needs more
(a pickled whole module) is refused unless ``trust_pickle=True``: unpickling runs code from the file.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit._inputs import ExampleInputs, call_model
from prunekit.errors import ConfigError, ModelLoadError
from prunekit.models.family import Family, FileFormat, families, family_of, is_code_spec
from prunekit.models.files import STATE_DICT_SUFFIXES, is_file_spec, load_file, unsafe_globals  # noqa: F401
from prunekit.models.torchvision import bare_name_hint

# The forms every install has; messages list the registered families too.
SPEC_FORMS = (
    "torchvision:NAME, module.path:factory, a .pt/.pth/.bin/.safetensors/.pksparse file or a prunekit "
    "checkpoint dir"
)


def load_model(spec: str, *, arch: str | None = None, trust_pickle: bool = False) -> nn.Module:
    """Build the model that ``spec`` names, in eval mode, on the CPU.

    ``arch`` (a family spec such as ``torchvision:NAME``, or ``module.path:factory``) builds the module that
    a state_dict file is loaded into (``strict=True``). ``trust_pickle=True`` allows unpickling a whole
    module from a file.

    >>> load_model("torchvision:resnet18").fc.out_features
    1000
    >>> load_model("torchvision:alexnett")
    Traceback (most recent call last):
    ...
    prunekit.errors.ModelLoadError: unknown torchvision model 'alexnett'; close names: alexnet
    """
    family = family_of(spec)
    if family is not None:
        _reject_arch(spec, arch)
        family.available()
        model = family.load(spec.partition(":")[2])
    elif (Path(spec) / "prunekit.json").is_file():
        _reject_arch(spec, arch)
        from prunekit.deploy.checkpoint import load  # late: the checkpoint module builds models with this one

        model = load(spec)
    elif is_file_spec(spec):
        model = load_file(Path(spec), arch=arch, trust_pickle=trust_pickle)
    elif is_code_spec(spec):
        _reject_arch(spec, arch)
        model = _load_factory(spec)
    else:
        raise ModelLoadError(f"cannot tell what model {spec!r} is; use {_spec_forms()}{bare_name_hint(spec)}")
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"{spec!r} built a {type(model).__name__}, not an nn.Module")
    return model.eval()


def _spec_forms() -> str:
    forms = ", ".join(family.form for family in families().values())
    return f"{forms}, module.path:factory, a .pt/.pth/.bin/.safetensors file or a prunekit checkpoint dir"


def parse_input_shape(text: str) -> tuple[int, ...]:
    """Parse ``"1,3,224,224"`` into ``(1, 3, 224, 224)``.

    >>> parse_input_shape("1,3,224,224")
    (1, 3, 224, 224)
    """
    parts = [part.strip() for part in text.split(",")]
    if not all(part.isdigit() and int(part) > 0 for part in parts):
        raise ConfigError(
            f"input shape must be positive integers separated by commas like 1,3,224,224, got {text!r}"
        )
    return tuple(int(part) for part in parts)


def example_inputs_for(
    spec_or_model: str | nn.Module, input_shape: tuple[int, ...] | None = None, model: nn.Module | None = None
) -> ExampleInputs:
    """Seeded random inputs to run the model on: of ``input_shape`` if given, else the spec's default shape.

    A float tensor, except for families with their own ``example_inputs`` (and checkpoints of their models):
    ``hf:`` models get the dict of token ids (or pixel values) :func:`prunekit.models.hf.example_inputs`
    builds for ``model``; their shape is ``BATCH,SEQ`` (default 1,8). Defaults exist only where the shape
    is known for sure: torchvision classifiers (1x3x224x224; inception_v3 1x3x299x299), timm models,
    ultralytics models (each family's ``input_shape``). Anything else needs ``input_shape``; the error says
    so.

    >>> example_inputs_for("torchvision:resnet18").shape
    torch.Size([1, 3, 224, 224])
    >>> example_inputs_for("mypkg:build", (2, 16)).shape
    torch.Size([2, 16])
    """
    if input_shape is None:
        input_shape = _default_input_shape(spec_or_model)
    family = _family(spec_or_model)
    if family is not None and family.example_inputs is not None:
        if model is None:
            raise ConfigError(f"example inputs of a {family.form} model need the model")
        return family.example_inputs(model, input_shape)
    generator = torch.Generator().manual_seed(0)
    return torch.randn(input_shape, generator=generator)


def _family(spec_or_model: str | nn.Module) -> Family | None:
    """The registered family of a spec, looking inside checkpoint directories."""
    if not isinstance(spec_or_model, str):
        return None
    if (Path(spec_or_model) / "prunekit.json").is_file():
        from prunekit.deploy.checkpoint import read_info

        inner = read_info(spec_or_model)["spec"]
        return _family(inner) if inner else None
    return family_of(spec_or_model)


def check_forward(model: nn.Module, example_inputs: ExampleInputs) -> None:
    """Run ``model`` once on ``example_inputs``; a failure becomes a one-line ConfigError about the shape.

    >>> check_forward(nn.Linear(4, 2), torch.zeros(1, 4))
    """
    try:
        with torch.no_grad():
            call_model(model, example_inputs)
    except Exception as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
        if isinstance(example_inputs, torch.Tensor):
            what = "an input of shape " + ",".join(str(d) for d in example_inputs.shape)
        else:
            what = "its example inputs"
        raise ConfigError(
            f"the model fails on {what} ({type(err).__name__}: {first_line}); pass the right --input-shape"
        ) from err


# --- read-only views of the family registry, by prefix -----------------------------------------------------


class _RegistryView(Mapping):
    """``{prefix: family.<field>}`` for every registered family that has the field (live, read-only)."""

    def __init__(self, field: str) -> None:
        self._field = field

    def _items(self) -> dict[str, Any]:
        found = {p: getattr(f, self._field) for p, f in families().items()}
        return {p: v for p, v in found.items() if v is not None}

    def __getitem__(self, prefix: str) -> Any:
        return self._items()[prefix]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items())

    def __len__(self) -> int:
        return len(self._items())


LOADERS: Mapping[str, Callable[[str], nn.Module]] = _RegistryView("load")
"""The loader of every registered family by prefix; register new ones with
:func:`prunekit.models.family.register_family`."""


def _reject_arch(spec: str, arch: str | None) -> None:
    if arch is not None:
        raise ModelLoadError(f"--arch is only for state_dict files, but {spec!r} is not a file")


# --- module.path:factory ------------------------------------------------------------------------------------


def _load_factory(spec: str) -> nn.Module:
    """Import ``module.path``, follow ``factory`` (dotted attributes allowed), call it with no arguments."""
    model = call_factory(spec, what="an nn.Module")
    if not isinstance(model, nn.Module):
        raise ModelLoadError(f"{spec!r} returned {type(model).__name__}, not an nn.Module")
    return model


def call_factory(spec: str, *, what: str) -> object:
    """Import ``module.path`` of ``module.path:factory``, follow the attributes, call it with no arguments.

    ``what`` names what the factory should return, for the error messages.

    >>> call_factory("prunekit.demo.data:load_splits", what="data").x_test.shape[0]
    450
    """
    module_path, sep, attr_path = spec.partition(":")
    if not sep or not module_path or not attr_path:
        raise ModelLoadError(f"{spec!r} is not module.path:factory (a callable returning {what})")
    try:
        obj = importlib.import_module(module_path)
    except ImportError as err:
        raise ModelLoadError(f"cannot import {module_path!r} for {spec!r}: {err}") from err
    for attr in attr_path.split("."):
        if not hasattr(obj, attr):
            raise ModelLoadError(f"{module_path!r} has no attribute {attr_path!r} (from {spec!r})")
        obj = getattr(obj, attr)
    if isinstance(obj, nn.Module) or not callable(obj):
        kind = "an nn.Module instance" if isinstance(obj, nn.Module) else type(obj).__name__
        raise ModelLoadError(f"{spec!r} is {kind}, not a callable that returns {what}")
    try:
        return obj()
    except Exception as err:
        raise ModelLoadError(f"calling {spec!r} failed: {type(err).__name__}: {err}") from err


# --- default input shapes -----------------------------------------------------------------------------------


def default_input_shape(spec_or_model: str | nn.Module) -> tuple[int, ...]:
    """The example-input shape a spec implies (see :func:`example_inputs_for`); ConfigError if none.

    >>> default_input_shape("torchvision:inception_v3")
    (1, 3, 299, 299)
    """
    return _default_input_shape(spec_or_model)


def _default_input_shape(spec_or_model: str | nn.Module) -> tuple[int, ...]:
    if isinstance(spec_or_model, str) and (Path(spec_or_model) / "prunekit.json").is_file():
        from prunekit.deploy.checkpoint import read_info

        info = read_info(spec_or_model)
        shape = (info.get("metadata") or {}).get("input_shape")
        if shape:
            return tuple(int(d) for d in shape)
        if info["spec"]:
            return _default_input_shape(info["spec"])
    family = family_of(spec_or_model) if isinstance(spec_or_model, str) else None
    if family is not None and family.input_shape is not None:
        family.available()
        shape = family.input_shape(spec_or_model.partition(":")[2])
        if shape is not None:
            return tuple(shape)
    what = repr(spec_or_model) if isinstance(spec_or_model, str) else f"a {type(spec_or_model).__name__}"
    raise ConfigError(
        f"no default input shape for {what}; pass --input-shape, e.g. --input-shape 1,3,224,224"
    )


DEFAULT_SHAPES: Mapping[str, Callable[[str], tuple[int, ...] | None]] = _RegistryView("input_shape")
"""The default-input-shape function of every registered family that has one, by prefix."""


def file_format_for(spec: str, out: str | Path) -> FileFormat | None:
    """The family file format that writes ``out`` for the model ``spec`` (by ``out``'s suffix and the
    format's ``accepts``), or None: then ``out`` is a prunekit checkpoint directory.

    >>> file_format_for("torchvision:resnet18", "out.pt") is None
    True
    """
    suffix = Path(out).suffix
    for family in families().values():
        fmt = family.file_format
        if fmt is not None and fmt.suffix == suffix and fmt.accepts(spec):
            family.available()
            return fmt
    return None


def is_ultralytics_spec(spec: str) -> bool:
    """See :func:`prunekit.models.ultralytics.is_ultralytics_spec` (needs ultralytics installed to prune).

    >>> is_ultralytics_spec("ultralytics:yolov8n.yaml"), is_ultralytics_spec("torchvision:resnet18")
    (True, False)
    """
    from prunekit.models.ultralytics import is_ultralytics_spec as ultralytics_spec

    return ultralytics_spec(spec)


# The built-in families register themselves on import (each module is light: its package loads late).
from prunekit.models import hf, sentence, timm, torchvision, ultralytics  # noqa: E402, F401
