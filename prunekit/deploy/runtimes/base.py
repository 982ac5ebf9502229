"""What every edge runtime provides: export a torch model to the runtime's format, load it, run it.

A :class:`Runtime` is one file in this package (``onnxruntime.py``, ``openvino.py``, ...), registered by name
in ``prunekit.deploy.runtimes``. Its third-party packages are imported inside its methods only, so the core
never needs them; :meth:`Runtime.require` turns a missing package into one line naming the pip extra.

:meth:`Runtime.export` is the same for every runtime: check the INT8 arguments, import the packages, check the
output path, then call the runtime's :meth:`Runtime._write` on a temporary directory made next to the
target; its files are moved into place with ``os.replace`` only after the whole conversion succeeded
(:func:`prunekit._atomic.atomic_files`).

>>> from prunekit.deploy.runtimes import get_runtime
>>> rt = get_runtime("onnxruntime")
>>> rt.name, rt.extra, rt.available()
('onnxruntime', 'onnx', True)
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from prunekit._atomic import atomic_files
from prunekit._inputs import ExampleInputs
from prunekit._jsondata import JsonData
from prunekit.errors import ConfigError, ExportError

INT8_MODES = ("dynamic", "static")


@dataclass
class Artifact(JsonData):
    """What :meth:`Runtime.export` wrote: the file a runtime loads (``path``) and every file written."""

    runtime: str
    path: str
    files: list[str]
    int8: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def size_bytes(self) -> int:
        return sum(Path(f).stat().st_size for f in self.files)

    _derived = ("size_bytes",)


class Session(Protocol):
    """A loaded model: ``run(inputs)`` takes numpy arrays (one per model input) and returns every output."""

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]: ...


@dataclass(frozen=True)
class Tolerance:
    """How close a runtime must be to PyTorch: fp32 by max-abs error relative to the output's scale
    (max abs of the reference), INT8 by cosine similarity and top-1 agreement of the first output."""

    fp32_rel: float = 1e-3
    int8_cosine: float = 0.98
    int8_top1: float = 0.9


class Runtime(ABC):
    """One edge runtime. Subclasses set ``name``, ``extra``, ``modules`` (importable names it needs),
    ``suffix`` (of the file :meth:`export` writes) and ``int8_modes``, and implement :meth:`_write` and
    :meth:`load`."""

    name: str = ""
    extra: str = ""
    modules: tuple[str, ...] = ()
    suffix: str = ""
    int8_modes: tuple[str, ...] = ()
    tolerance: Tolerance = Tolerance()

    def available(self) -> bool:
        """Whether every package this runtime needs imports."""
        try:
            self.require()
        except ExportError:
            return False
        return True

    def require(self) -> None:
        """Import the runtime's packages; :class:`ExportError` naming the extra if one is missing."""
        for module in self.modules:
            try:
                importlib.import_module(module)
            except Exception as err:  # a broken install raises more than ImportError
                raise ExportError(
                    f"runtime {self.name} needs {module}, which does not import ({type(err).__name__}: "
                    f'{first_line(err)}): pip install "prunekit[{self.extra}]"'
                ) from err

    def version(self) -> str:
        """The versions of the packages this runtime runs on (``"onnx 1.17.0, onnxruntime 1.20.1, ..."``),
        for cache keys and reports; a package without a recorded version reads ``unknown``."""
        parts = []
        for module in self.modules:
            try:
                found = importlib.metadata.version(module)
            except importlib.metadata.PackageNotFoundError:
                found = str(getattr(importlib.import_module(module), "__version__", "unknown"))
            parts.append(f"{module} {found}")
        return ", ".join(parts)

    def check_export_args(self, int8: str | None, calibration: Any) -> None:
        """Refuse an INT8 mode the runtime lacks, and static INT8 without calibration data."""
        if int8 is not None and int8 not in INT8_MODES:
            raise ConfigError(f"int8 must be None, 'dynamic' or 'static', got {int8!r}")
        if int8 is not None and int8 not in self.int8_modes:
            offered = ", ".join(self.int8_modes) or "none"
            raise ConfigError(f"runtime {self.name} has no {int8} INT8 here (offered: {offered})")
        if int8 == "static" and not calibration:
            raise ConfigError(f"static INT8 for {self.name} needs calibration data (a list of input batches)")

    def export(
        self,
        model: nn.Module,
        example_inputs: ExampleInputs,
        out_path: str | os.PathLike,
        *,
        opset: int | None = None,
        int8: str | None = None,
        calibration: Sequence[ExampleInputs] | None = None,
    ) -> Artifact:
        """Convert ``model`` (traced on ``example_inputs``) to this runtime's format at ``out_path``.

        Refuses bad INT8 arguments, a missing package or a bad ``out_path`` before converting anything,
        then runs :meth:`_write` in a temporary directory next to ``out_path``; nothing is left there if it
        fails.
        """
        self.check_export_args(int8, calibration)
        self.require()
        path = check_out_path(out_path, self.suffix)
        options = {"opset": opset, "int8": int8, "calibration": calibration}
        return atomic_files(path, lambda tmp: self._write(model, example_inputs, tmp, path, **options))

    @abstractmethod
    def _write(
        self,
        model: nn.Module,
        example_inputs: ExampleInputs,
        tmp: Path,
        path: Path,
        *,
        opset: int | None,
        int8: str | None,
        calibration: Sequence[ExampleInputs] | None,
    ) -> Artifact:
        """Write the files for ``path`` under their final names directly in ``tmp`` (a sub-directory of
        ``tmp`` is scratch space); return the :class:`Artifact` naming them at their final place. The
        arguments are already checked."""

    @abstractmethod
    def load(self, artifact: Artifact, threads: int | None = None) -> Session:
        """A CPU session running ``artifact`` with ``threads`` threads (None: the runtime's default)."""


def arrays(inputs: ExampleInputs) -> list[np.ndarray]:
    """The tensors of ``inputs`` (a tensor, a tuple/list, or a dict in its order) as float numpy arrays.

    >>> [a.shape for a in arrays((torch.zeros(1, 3), 2, torch.ones(1)))]
    [(1, 3), (1,)]
    """
    values = list(inputs.values()) if isinstance(inputs, Mapping) else inputs
    seq = [values] if isinstance(values, torch.Tensor) else list(values)
    return [t.detach().cpu().contiguous().numpy() for t in seq if isinstance(t, torch.Tensor)]


def first_line(err: BaseException) -> str:
    """The first non-empty line of an exception's message (its class name if it has none).

    >>> first_line(ValueError("\\n  bad opset\\n  trace"))
    'bad opset'
    """
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def check_out_path(out_path: str | os.PathLike, suffix: str) -> Path:
    """``out_path`` as a Path, refused unless it ends in ``suffix`` and its directory exists.

    >>> check_out_path("/tmp/m.xml", ".xml").name
    'm.xml'
    """
    path = Path(out_path)
    if path.suffix != suffix:
        raise ConfigError(f"the output file must end in {suffix}, got {path.name}")
    if path.is_dir():
        raise ConfigError(f"{path} is a directory; give a file path such as {path / ('model' + suffix)}")
    if not path.parent.is_dir():
        raise ConfigError(f"directory {path.parent} does not exist")
    return path
