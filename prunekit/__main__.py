"""``python -m prunekit`` runs the command line, the same as the ``prunekit`` script."""

from __future__ import annotations

from prunekit.cli import app

app(prog_name="prunekit")
