"""Edge runtimes behind one interface: export a (pruned) torch model, load it, run it, time it.

Each runtime is one module here with one :class:`~prunekit.deploy.runtimes.base.Runtime` subclass, listed in
``RUNTIMES`` (name -> ``module:class`` here, or a class registered from elsewhere with
:func:`register_runtime`); adding a runtime is one new file and one line. Nothing is
imported until a runtime is asked for, and a runtime's own packages only when it is used, so a missing one
is one line naming the pip extra (``pip install "prunekit[openvino]"``).

Agreement with PyTorch (:func:`compare`) and timing (:func:`time_session`) are shared by every runtime.

>>> sorted(RUNTIMES)
['litert', 'ncnn', 'onnxruntime', 'openvino']
>>> get_runtime("coreml")
Traceback (most recent call last):
    ...
prunekit.errors.ConfigError: unknown runtime 'coreml'; choose from litert, ncnn, onnxruntime, openvino
"""

from __future__ import annotations

import importlib

from prunekit.deploy.runtimes.agreement import Agreement, compare
from prunekit.deploy.runtimes.base import Artifact, Runtime, Session, Tolerance, arrays
from prunekit.deploy.runtimes.timing import time_session
from prunekit.errors import ConfigError

RUNTIMES: dict[str, str | type[Runtime]] = {
    "onnxruntime": "onnxruntime:OnnxRuntime",
    "openvino": "openvino:OpenVINO",
    "litert": "litert:LiteRT",
    "ncnn": "ncnn:NCNN",
}
FORMATS = {"onnx": "onnxruntime", "openvino": "openvino", "tflite": "litert", "ncnn": "ncnn"}


def register_runtime(
    cls: type[Runtime], *, file_format: str | None = None, replace: bool = False
) -> type[Runtime]:
    """Make ``cls`` (a :class:`Runtime` subclass, from any package) the runtime ``cls.name``; return it.

    ``file_format`` also makes it the writer of ``prunekit export --format FILE_FORMAT``. A taken name
    needs ``replace=True``. Usable as a decorator.
    """
    if not (isinstance(cls, type) and issubclass(cls, Runtime)) or not cls.name:
        raise ConfigError(f"register_runtime needs a Runtime subclass with a name, got {cls!r}")
    if cls.name in RUNTIMES and not replace:
        raise ConfigError(f"runtime {cls.name!r} is already registered (pass replace=True to override)")
    RUNTIMES[cls.name] = cls
    if file_format is not None:
        FORMATS[file_format] = cls.name
    return cls


def get_runtime(name: str) -> Runtime:
    """The runtime registered as ``name`` (:class:`ConfigError` naming the choices for an unknown one)."""
    if name not in RUNTIMES:
        raise ConfigError(f"unknown runtime {name!r}; choose from {', '.join(sorted(RUNTIMES))}")
    entry = RUNTIMES[name]
    if not isinstance(entry, str):
        return entry()
    module, cls = entry.split(":")
    return getattr(importlib.import_module(f"prunekit.deploy.runtimes.{module}"), cls)()


def runtime_for_format(fmt: str) -> Runtime:
    """The runtime that writes files of format ``fmt`` (``onnx``, ``openvino``, ``tflite``, ``ncnn``).

    >>> runtime_for_format("tflite").name
    'litert'
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    return get_runtime(FORMATS[fmt])


__all__ = [
    "FORMATS",
    "RUNTIMES",
    "Agreement",
    "Artifact",
    "Runtime",
    "Session",
    "Tolerance",
    "arrays",
    "compare",
    "get_runtime",
    "register_runtime",
    "runtime_for_format",
    "time_session",
]
