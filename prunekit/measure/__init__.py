"""Measure a model: parameters, MACs, size, latency, peak memory, accuracy; ``analyze`` does it all."""

from __future__ import annotations

from prunekit.measure.latency import LatencyStats, measure_latency
from prunekit.measure.macs import count_macs, macs_by_module
from prunekit.measure.memory import peak_memory_bytes
from prunekit.measure.params import (
    ParamCount,
    count_params,
    named_effective_parameters,
    params_by_module,
)
from prunekit.measure.profile import LayerRow, ModelProfile, analyze, evaluate, layer_rows
from prunekit.measure.size import SizeInfo, effective_state_dict, model_size

__all__ = [
    "LatencyStats",
    "LayerRow",
    "ModelProfile",
    "ParamCount",
    "SizeInfo",
    "analyze",
    "count_macs",
    "count_params",
    "effective_state_dict",
    "evaluate",
    "layer_rows",
    "macs_by_module",
    "measure_latency",
    "model_size",
    "named_effective_parameters",
    "params_by_module",
    "peak_memory_bytes",
]
