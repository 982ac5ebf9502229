"""The structural engine's graph side: trace, label propagation rules, union-find groups.

Importing the rule modules registers their rules in ``prunekit.graph.rules.RULES``.
"""

from __future__ import annotations

from prunekit.graph import rules_attn, rules_nn, rules_shape  # noqa: F401  (registers the rules)
from prunekit.graph.groups import Group, GroupReport, Member, build_groups
from prunekit.graph.trace import Tracer, trace

__all__ = ["Group", "GroupReport", "Member", "Tracer", "build_groups", "trace"]
