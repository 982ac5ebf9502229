"""Structured pruning: apply plans, prune, check exactness."""

from __future__ import annotations

from prunekit.structured.api import CheckReport, PruneResult, check, groups, plan_prune, prune
from prunekit.structured.apply import apply

__all__ = ["CheckReport", "PruneResult", "apply", "check", "groups", "plan_prune", "prune"]
