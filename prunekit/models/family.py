"""Model families: one object per spec prefix (``torchvision:``, ``timm:``, ``hf:``, ``ultralytics:``, ...).

A :class:`Family` says everything prunekit needs to know about the specs ``PREFIX:TEXT``: how to build the
model, its default example-input shape and example inputs, which package it needs (and the extra that
installs it), whether ``TEXT`` may be a local path (stored absolute in checkpoints), how to recognise a model
built outside prunekit, and an optional file format of its own that ``prunekit prune --out FILE`` writes.
Each family registers itself once, in its own module, with :func:`register_family`; the built-in ones are
registered when :mod:`prunekit.models.spec` is imported. A family registered from any other package works
the same way through :func:`prunekit.models.spec.load_model`, checkpoints and the CLI:

>>> from torch import nn
>>> _ = register_family(Family("doc-linear", lambda text: nn.Linear(int(text), 2), form="doc-linear:IN"))
>>> from prunekit.models.spec import load_model
>>> load_model("doc-linear:5").in_features
5
>>> family_of("doc-linear:5").form, family_of("mypkg.models:build")
('doc-linear:IN', None)
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from prunekit._inputs import ExampleInputs
from prunekit.errors import ConfigError, ModelLoadError


@dataclass(frozen=True)
class FileFormat:
    """A family's own output file, written by ``prunekit prune MODEL --out NAME<suffix>``.

    ``accepts(spec)`` tells which MODEL specs it can be written for (not only ``PREFIX:`` ones: an
    ultralytics ``.pt`` or model ``.yaml`` too). ``prune(spec, out, config)`` loads the model, prunes it
    with the ``prunekit prune`` options as a :class:`prunekit.PruneConfig`, applying whatever step the format
    needs on the plan (a plan transform, :mod:`prunekit.structured.pipeline`), writes ``out`` and returns the
    :class:`~prunekit.structured.pipeline.PruneResult`.
    """

    suffix: str
    name: str
    accepts: Callable[[str], bool]
    prune: Callable[..., Any]


@dataclass(frozen=True)
class Family:
    """Everything about the specs ``prefix:TEXT``; only ``prefix`` and ``load`` are required.

    - ``load(TEXT)`` builds the unpruned model (any mode; it is put in eval mode).
    - ``form``: how the spec is written in messages (``torchvision:NAME``); default ``prefix:...``.
    - ``requires``/``extra``: the module the family imports and the prunekit extra that installs it; when it
      is missing every use is one :class:`~prunekit.errors.ModelLoadError` saying
      ``pip install "prunekit[extra]"``.
    - ``input_shape(TEXT)``: the default example-input shape, or None when the spec does not fix one.
    - ``example_inputs(model, shape)``: inputs other than a seeded random float tensor of ``shape``.
    - ``local_paths``: ``TEXT`` may name a local file or directory; checkpoints store it absolute.
    - ``infer_spec(model)``: a spec of this family that builds ``model``'s architecture, for models built
      outside prunekit (None when it cannot tell); :func:`prunekit.models.record.infer_spec` checks it.
    - ``file_format``: see :class:`FileFormat`.
    """

    prefix: str
    load: Callable[[str], nn.Module]
    form: str = ""
    requires: str | None = None
    extra: str | None = None
    input_shape: Callable[[str], tuple[int, ...] | None] | None = None
    example_inputs: Callable[[nn.Module, tuple[int, ...]], ExampleInputs] | None = None
    local_paths: bool = False
    infer_spec: Callable[[nn.Module], str | None] | None = None
    file_format: FileFormat | None = None

    def __post_init__(self) -> None:
        if not self.prefix.replace("-", "_").isidentifier():
            raise ConfigError(f"a family prefix is a plain name like 'timm', got {self.prefix!r}")
        if not self.form:
            object.__setattr__(self, "form", f"{self.prefix}:...")

    def available(self) -> None:
        """Raise a one-line ModelLoadError naming the extra to install if ``requires`` cannot be imported."""
        if self.requires is not None and importlib.util.find_spec(self.requires) is None:
            extra = f'"prunekit[{self.extra}]"' if self.extra else self.requires
            raise ModelLoadError(f"{self.form} specs need {self.requires}: pip install {extra}")


_FAMILIES: dict[str, Family] = {}


def register_family(family: Family, *, replace: bool = False) -> Family:
    """Make ``family.prefix:`` specs resolve to ``family``; return it. A taken prefix needs ``replace=True``.

    >>> register_family(Family("torchvision", lambda text: None))
    Traceback (most recent call last):
    ...
    prunekit.errors.ConfigError: the model family 'torchvision' is already registered; pass replace=True
    """
    if family.prefix in _FAMILIES and not replace:
        raise ConfigError(f"the model family {family.prefix!r} is already registered; pass replace=True")
    _FAMILIES[family.prefix] = family
    return family


def family_of(spec: str) -> Family | None:
    """The registered family of ``PREFIX:TEXT``, or None (a factory spec, a file, a checkpoint directory)."""
    prefix, sep, _ = spec.partition(":")
    return _FAMILIES.get(prefix) if sep else None


def families() -> dict[str, Family]:
    """The registered families by prefix (a copy)."""
    return dict(_FAMILIES)


def is_family_spec(spec: str) -> bool:
    """True for a spec a registered family builds; False for code (``module.path:factory``) and files.

    A family only runs its own loader on the text; ``module.path:factory`` imports and runs any code.

    >>> is_family_spec("torchvision:resnet18"), is_family_spec("mypkg.models:build")
    (True, False)
    """
    return family_of(spec) is not None


def is_code_spec(spec: str) -> bool:
    """True for ``module.path:factory`` (dotted names on both sides, not a family prefix): it runs code.

    >>> is_code_spec("mypkg.models:build"), is_code_spec("torchvision:resnet18"), is_code_spec("a.pt")
    (True, False, False)
    """
    module_path, sep, attr_path = spec.partition(":")
    dotted = module_path.split(".") + attr_path.split(".")
    return bool(sep) and not is_family_spec(spec) and all(part.isidentifier() for part in dotted)


def absolute_spec(spec: str) -> str:
    """``spec`` with a relative local path made absolute, for families with ``local_paths``; else unchanged.

    >>> import os; absolute_spec("hf:.") == "hf:" + os.getcwd(), absolute_spec("torchvision:resnet18")
    (True, 'torchvision:resnet18')
    """
    family = family_of(spec)
    text = spec.partition(":")[2]
    if family is None or not family.local_paths or not _exists(text) or Path(text).is_absolute():
        return spec
    return f"{family.prefix}:{Path(text).resolve()}"


def _exists(text: str) -> bool:
    try:
        return bool(text) and Path(text).exists()
    except OSError:  # inline text such as JSON, too long for a file name
        return False
