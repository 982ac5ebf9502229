"""The structural engine's graph side: trace, label propagation rules, union-find groups."""

from __future__ import annotations

from prunekit.graph.groups import Group, GroupReport, Member, build_groups
from prunekit.graph.trace import Tracer, trace

__all__ = ["Group", "GroupReport", "Member", "Tracer", "build_groups", "trace"]
