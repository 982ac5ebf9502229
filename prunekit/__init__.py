"""prunekit: make trained PyTorch models smaller and faster by pruning, and measure what you got.

The public verbs live here::

    import prunekit as pk

    pk.analyze(model, x)                       # params, MACs, size, latency, per-layer rows
    pk.groups(model, x)                        # coupled channel groups, pinned parts and why
    pk.check(model, x, ratio=0.5)              # is a structural cut exact? (model untouched)
    pk.prune(model, x, ratio=0.5)              # structured: channels/neurons/heads physically removed
    pk.prune(model, x, pk.PruneConfig(ratio=0.5, scope="global"))   # the same options as one config
    pk.apply(model, plan)                      # replay a saved Plan on a fresh copy of the architecture
    pk.prune(model, x, target=pk.Target(macs=0.5))       # search the ratio that meets a target
    pk.sensitivity(model, x, eval_fn)          # per-group accuracy-vs-ratio curves (model untouched)
    pk.prune_layers(model, x, n=2)             # drop whole residual blocks / transformer layers
    pk.prune_vocab(emb, texts)                 # drop the token embeddings a corpus never uses
    pk.sparsify(model, sparsity=0.9)           # unstructured / N:M / block masks
    pk.sparsity_report(model)                  # per-layer and global sparsity
    pk.remove_masks(model)                     # make masks permanent, outputs unchanged
    pk.finetune(model, data, epochs=3, teacher=dense)   # recover accuracy (KD optional, DDP-ready)
    pk.export_onnx(model, x, "m.onnx")         # verified with onnxruntime (needs the onnx extra)
    pk.quantize_onnx("m.onnx", "m.int8.onnx")  # INT8 (dynamic or static)
    pk.save(model, "out/", spec=..., plan=...) # safetensors + JSON plan, no pickle; pk.load("out/")
    pk.save_pretrained(model, "hf/")           # a directory stock transformers loads (from_pretrained)
    pk.save_sentence_transformer(emb, "st/")   # a directory SentenceTransformer(...) loads
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from prunekit.config import PruneConfig, SparsifyConfig
from prunekit.deploy import SavedCheckpoint, load, save
from prunekit.deploy.pretrained import SavedPretrained, save_pretrained, save_sentence_transformer
from prunekit.errors import ApplyError, ConfigError, ExportError, ModelLoadError, PlanError, PruneError
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
from prunekit.models.vocab import VocabCut, prune_vocab
from prunekit.plan import Plan
from prunekit.recipe import Recipe, load_recipe, run_recipe
from prunekit.recover import DistillConfig, FinetuneResult, PruneCallbacks, TrainConfig, finetune
from prunekit.schedules import GradualPruner, cubic_sparsity, iterative_prune, lottery_ticket, one_shot, snip
from prunekit.schedules.structured_gradual import StructuredGradualPruner
from prunekit.sparse import (
    SparsifyResult,
    SparsityReport,
    is_masked,
    remove_masks,
    sparsify,
    sparsity_report,
)
from prunekit.sparse.accelerate import AccelerateResult, accelerate, accelerated
from prunekit.sparse.storage import load_sparse, save_sparse, sparse_size
from prunekit.sparse.swap import decelerate
from prunekit.structured import CheckReport, PruneResult, apply, check, groups, plan_prune, prune
from prunekit.structured.layers import LayerPruneResult, prune_layers
from prunekit.structured.sensitivity import SensitivityResult, sensitivity
from prunekit.structured.target import Target

_NEEDS_ONNX = ("export_onnx", "quantize_onnx", "ExportResult", "QuantizeResult")


def __getattr__(name: str) -> object:
    """``export_onnx`` and ``quantize_onnx`` are imported on first use: they need the ``onnx`` extra."""
    if name in _NEEDS_ONNX:
        import prunekit.deploy

        return getattr(prunekit.deploy, name)
    raise AttributeError(f"module 'prunekit' has no attribute {name!r}")


try:
    __version__ = version("prunekit")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "AccelerateResult",
    "ApplyError",
    "CheckReport",
    "ConfigError",
    "DistillConfig",
    "ExportError",
    "ExportResult",
    "FinetuneResult",
    "GradualPruner",
    "LatencyStats",
    "LayerPruneResult",
    "ModelLoadError",
    "ModelProfile",
    "ParamCount",
    "Plan",
    "PlanError",
    "PruneCallbacks",
    "PruneConfig",
    "PruneError",
    "PruneResult",
    "QuantizeResult",
    "Recipe",
    "SavedCheckpoint",
    "SavedPretrained",
    "SensitivityResult",
    "SizeInfo",
    "SparsifyConfig",
    "SparsifyResult",
    "SparsityReport",
    "StructuredGradualPruner",
    "Target",
    "TrainConfig",
    "VocabCut",
    "__version__",
    "accelerate",
    "accelerated",
    "analyze",
    "apply",
    "check",
    "count_macs",
    "count_params",
    "cubic_sparsity",
    "decelerate",
    "evaluate",
    "export_onnx",
    "finetune",
    "groups",
    "is_masked",
    "iterative_prune",
    "load",
    "load_recipe",
    "load_sparse",
    "lottery_ticket",
    "measure_latency",
    "model_size",
    "one_shot",
    "peak_memory_bytes",
    "plan_prune",
    "prune",
    "prune_layers",
    "prune_vocab",
    "quantize_onnx",
    "remove_masks",
    "run_recipe",
    "save",
    "save_pretrained",
    "save_sentence_transformer",
    "save_sparse",
    "sensitivity",
    "snip",
    "sparse_size",
    "sparsify",
    "sparsity_report",
]
