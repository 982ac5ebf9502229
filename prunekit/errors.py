"""Errors raised by prunekit.

Every error is a :class:`PruneError`; its message is one actionable line. The CLI prints that line and exits
with code 2. Library functions raise before changing the user's model or files.
"""

from __future__ import annotations


class PruneError(Exception):
    """Base class of every error prunekit raises on purpose."""


class ConfigError(PruneError, ValueError):
    """An argument is out of range, unknown or inconsistent (e.g. ``sparsity=1.5``, ``pattern="3:x"``)."""


class ModelLoadError(PruneError):
    """A model spec or file could not be turned into a module (missing file, unknown name, pickle refused)."""


class PlanError(PruneError):
    """A pruning plan does not fit the model it is applied to."""


class ApplyError(PruneError):
    """Cutting failed; the model was restored to its state before the call."""


class ExportError(PruneError):
    """Exporting, verifying or quantizing a deployable model failed; no output file was left behind."""
