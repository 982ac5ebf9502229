"""The embedded demo: real handwritten digits (bundled with scikit-learn), a small CNN, pruning, a table.

>>> from prunekit.demo import run_demo
"""

from __future__ import annotations

from prunekit.demo.run import DemoResult, StageRow, run_demo
from prunekit.demo.stages import DemoConfig, DemoContext, Stage, default_stages

__all__ = ["DemoConfig", "DemoContext", "DemoResult", "Stage", "StageRow", "default_stages", "run_demo"]
