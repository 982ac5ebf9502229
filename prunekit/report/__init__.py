"""Render measurement results for people: rich tables and number formatting."""

from __future__ import annotations

from prunekit.report.tables import (
    STAGE_COLUMNS,
    comparison_table,
    format_accuracy,
    format_bytes,
    format_count,
    format_ms,
    format_percent,
    profile_table,
    stages_table,
    summary_table,
)

__all__ = [
    "STAGE_COLUMNS",
    "comparison_table",
    "format_accuracy",
    "format_bytes",
    "format_count",
    "format_ms",
    "format_percent",
    "profile_table",
    "stages_table",
    "summary_table",
]
