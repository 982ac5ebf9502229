"""Recover accuracy after pruning: fine-tuning with distillation, callbacks for your own loop, DDP.

>>> from prunekit.recover import DistillConfig, TrainConfig
>>> from prunekit.recover import FinetuneResult, PruneCallbacks, accuracy, finetune, kd_loss, train
"""

from __future__ import annotations

from prunekit.recover.callbacks import EvalPoint, PruneCallbacks
from prunekit.recover.config import DistillConfig, TrainConfig
from prunekit.recover.distill import FeatureKD, distill_loss, kd_loss
from prunekit.recover.finetune import FinetuneResult, finetune
from prunekit.recover.train import accuracy, train

__all__ = [
    "DistillConfig",
    "EvalPoint",
    "FeatureKD",
    "FinetuneResult",
    "PruneCallbacks",
    "TrainConfig",
    "accuracy",
    "distill_loss",
    "finetune",
    "kd_loss",
    "train",
]
