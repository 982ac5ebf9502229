"""Structured pruning: apply plans, prune, check exactness."""

from __future__ import annotations

import sys

from prunekit.structured import cut as _cut
from prunekit.structured.api import CheckReport, PruneResult, check, groups, plan_prune, prune
from prunekit.structured.cut import apply

# ``prunekit.structured.apply`` is the function; the module that defines it is ``prunekit.structured.cut``.
# Its former dotted path stays importable for one release (``from prunekit.structured.apply import apply``).
sys.modules.setdefault(f"{__name__}.apply", _cut)

__all__ = ["CheckReport", "PruneResult", "apply", "check", "groups", "plan_prune", "prune"]
