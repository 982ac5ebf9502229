"""Recover accuracy after pruning: a plain training loop and top-1 accuracy.

>>> from prunekit.recover import accuracy, train
"""

from __future__ import annotations

from prunekit.recover.train import accuracy, train

__all__ = ["accuracy", "train"]
