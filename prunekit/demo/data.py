"""The demo's data: scikit-learn's bundled handwritten digits (no download), split once, the same every run.

``sklearn.datasets.load_digits`` ships 1,797 real 8x8 grey-level images of the digits 0-9 (pixel values 0-16)
inside the scikit-learn package. :func:`load_splits` scales them to [0, 1], shapes them ``(N, 1, 8, 8)`` and
makes a stratified 75/25 train/test split with a fixed ``random_state``: 1,347 training and 450 test images.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, TensorDataset

from prunekit.errors import ConfigError

NUM_CLASSES = 10
IMAGE_SHAPE = (1, 8, 8)


@dataclass(frozen=True)
class DigitsSplits:
    """Train and test tensors: images ``(N, 1, 8, 8)`` float32 in [0, 1], labels ``(N,)`` int64."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_splits(*, test_size: float = 0.25, random_state: int = 0) -> DigitsSplits:
    """Load the bundled digits and split them, stratified by label, the same way for the same arguments.

    >>> s = load_splits()
    >>> tuple(s.x_train.shape), tuple(s.x_test.shape), float(s.x_train.max())
    ((1347, 1, 8, 8), (450, 1, 8, 8), 1.0)
    """
    if not 0.0 < test_size < 1.0:
        raise ConfigError(f"test_size must be in (0, 1), got {test_size}")
    digits = load_digits()
    x = torch.from_numpy(digits.images).to(torch.float32).div_(16.0).unsqueeze(1)
    y = torch.from_numpy(digits.target).to(torch.int64)
    idx_train, idx_test = train_test_split(
        torch.arange(len(y)).numpy(), test_size=test_size, random_state=random_state, stratify=y.numpy()
    )
    idx_train, idx_test = torch.from_numpy(idx_train), torch.from_numpy(idx_test)
    return DigitsSplits(x[idx_train], y[idx_train], x[idx_test], y[idx_test])


def make_loaders(
    splits: DigitsSplits, *, batch_size: int = 64, eval_batch_size: int = 512, seed: int = 0
) -> tuple[DataLoader, DataLoader]:
    """A shuffling training loader driven by its own seeded generator, and an in-order test loader.

    >>> train_loader, test_loader = make_loaders(load_splits(), batch_size=64)
    >>> len(train_loader), len(test_loader)
    (22, 1)
    """
    if batch_size < 1 or eval_batch_size < 1:
        raise ConfigError(f"batch sizes must be >= 1, got {batch_size} and {eval_batch_size}")
    generator = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(
        TensorDataset(splits.x_train, splits.y_train),
        batch_size=batch_size,
        shuffle=True,
        generator=generator,
    )
    test_loader = DataLoader(TensorDataset(splits.x_test, splits.y_test), batch_size=eval_batch_size)
    return train_loader, test_loader
