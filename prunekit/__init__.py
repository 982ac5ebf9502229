"""prunekit: make trained PyTorch models smaller and faster by pruning, and measure what you got.

The public verbs live here::

    import prunekit as pk

    pk.analyze(model, x)                       # params, MACs, size, latency, per-layer rows
    pk.sparsify(model, sparsity=0.9)           # unstructured / N:M / block masks
    pk.sparsity_report(model)                  # per-layer and global sparsity
    pk.remove_masks(model)                     # make masks permanent, outputs unchanged
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from prunekit.errors import ApplyError, ConfigError, ModelLoadError, PlanError, PruneError
from prunekit.measure import (
    LatencyStats,
    ModelProfile,
    ParamCount,
    SizeInfo,
    analyze,
    count_macs,
    count_params,
    evaluate,
    measure_latency,
    model_size,
    peak_memory_bytes,
)
from prunekit.sparse import (
    SparsifyResult,
    SparsityReport,
    is_masked,
    remove_masks,
    sparsify,
    sparsity_report,
)

try:
    __version__ = version("prunekit")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "ApplyError",
    "ConfigError",
    "LatencyStats",
    "ModelLoadError",
    "ModelProfile",
    "ParamCount",
    "PlanError",
    "PruneError",
    "SizeInfo",
    "SparsifyResult",
    "SparsityReport",
    "__version__",
    "analyze",
    "count_macs",
    "count_params",
    "evaluate",
    "is_masked",
    "measure_latency",
    "model_size",
    "peak_memory_bytes",
    "remove_masks",
    "sparsify",
    "sparsity_report",
]
