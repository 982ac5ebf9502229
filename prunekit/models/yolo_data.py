"""A small, real, offline detection dataset in YOLO format: scikit-learn's 8x8 digit scans pasted on canvases.

Each image is a grey canvas with a little noise and 1..``max_digits`` non-overlapping digits, each one of the
1797 real 8x8 handwritten digit scans bundled with scikit-learn (``sklearn.datasets.load_digits``), upscaled
to 14..40 pixels and drawn dark-on-light or light-on-dark. The class is the digit (10 classes). Train and
val images use disjoint digit scans, so validation measures generalisation to unseen handwriting.

Layout (what ultralytics expects)::

    root/images/train/000000.png   root/labels/train/000000.txt   (class cx cy w h, normalised)
    root/images/val/...            root/labels/val/...
    root/data.yaml                 path, train, val, names

>>> import tempfile
>>> data = make_digits_dataset(tempfile.mkdtemp(), n_train=4, n_val=2, imgsz=64)
>>> data.name, len(list((data.parent / "images" / "train").iterdir()))
('data.yaml', 4)
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from prunekit.errors import ConfigError

DIGIT_NAMES = [str(d) for d in range(10)]


def digit_images() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1797 real 8x8 digit scans as floats in [0, 1], and their digits."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images.astype(np.float32) / 16.0, digits.target.astype(np.int64)


def _upscale(img: np.ndarray, side: int) -> np.ndarray:
    """Bilinear upscaling of an 8x8 image in [0, 1] to ``side`` x ``side`` (numpy only)."""
    src = np.linspace(0, img.shape[0] - 1, side)
    i0 = np.floor(src).astype(int)
    i1 = np.minimum(i0 + 1, img.shape[0] - 1)
    f = (src - i0)[:, None]
    rows = img[i0] * (1 - f) + img[i1] * f
    cols = rows[:, i0] * (1 - f.T) + rows[:, i1] * f.T
    return cols


def _place(
    rng: np.random.Generator, boxes: list[tuple[int, int, int]], imgsz: int, side: int
) -> tuple[int, int]:
    """Top-left corner for a ``side`` square that overlaps no box in ``boxes``; (-1, -1) if none found."""
    for _ in range(30):
        x, y = (int(v) for v in rng.integers(0, imgsz - side + 1, size=2))
        if all(x + side <= bx or bx + bs <= x or y + side <= by or by + bs <= y for bx, by, bs in boxes):
            return x, y
    return -1, -1


def _render(
    rng: np.random.Generator, images: np.ndarray, labels: np.ndarray, imgsz: int, max_digits: int
) -> tuple[np.ndarray, list[str]]:
    background = rng.uniform(0.25, 0.75)
    canvas = np.clip(background + rng.normal(0, 0.04, (imgsz, imgsz)), 0, 1)
    boxes: list[tuple[int, int, int]] = []
    lines = []
    for _ in range(int(rng.integers(1, max_digits + 1))):
        side = int(rng.integers(max(14, imgsz // 10), max(15, min(40, imgsz // 3)) + 1))
        x, y = _place(rng, boxes, imgsz, side)
        if x < 0:
            continue
        k = int(rng.integers(len(images)))
        ink = _upscale(images[k], side)
        sign = 1.0 if background < 0.5 else -1.0  # light ink on dark paper, dark ink on light paper
        patch = canvas[y : y + side, x : x + side]
        canvas[y : y + side, x : x + side] = np.clip(patch + sign * ink * 0.7, 0, 1)
        boxes.append((x, y, side))
        lines.append(
            f"{labels[k]} {(x + side / 2) / imgsz:.6f} {(y + side / 2) / imgsz:.6f} "
            f"{side / imgsz:.6f} {side / imgsz:.6f}"
        )
    rgb = np.repeat((canvas * 255).astype(np.uint8)[:, :, None], 3, axis=2)
    return rgb, lines


def make_digits_dataset(
    root: str | os.PathLike,
    *,
    n_train: int = 400,
    n_val: int = 100,
    imgsz: int = 160,
    max_digits: int = 4,
    seed: int = 0,
) -> Path:
    """Write the dataset under ``root`` and return the path of its ``data.yaml`` (see the module docstring).

    >>> import tempfile, yaml
    >>> data = make_digits_dataset(tempfile.mkdtemp(), n_train=2, n_val=1, imgsz=64)
    >>> cfg = yaml.safe_load(data.read_text())
    >>> cfg["nc"], cfg["train"]
    (10, 'images/train')
    """
    if n_train < 1 or n_val < 1:
        raise ConfigError(f"n_train and n_val must be at least 1, got {n_train} and {n_val}")
    if imgsz < 48:
        raise ConfigError(f"imgsz must be at least 48 pixels, got {imgsz}")
    if max_digits < 1:
        raise ConfigError(f"max_digits must be at least 1, got {max_digits}")
    from PIL import Image

    root = Path(root)
    images, labels = digit_images()
    pools = split_digits(len(images), seed)
    for split, count in (("train", n_train), ("val", n_val)):
        pool = pools[split]
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng([seed, 1 if split == "train" else 2])
        for i in range(count):
            rgb, lines = _render(rng, images[pool], labels[pool], imgsz, max_digits)
            Image.fromarray(rgb).save(root / "images" / split / f"{i:06d}.png")
            (root / "labels" / split / f"{i:06d}.txt").write_text("\n".join(lines) + "\n")
    return write_data_yaml(root, root.resolve())


def split_digits(count: int, seed: int) -> dict[str, np.ndarray]:
    """Indices of the digit scans each split draws from: 80 % train, 20 % val, disjoint."""
    order = np.random.default_rng(seed).permutation(count)
    cut = int(count * 0.8)
    return {"train": order[:cut], "val": order[cut:]}


def write_data_yaml(root: Path, path: Path) -> Path:
    """Write ``root/data.yaml`` (ultralytics' dataset file; ``path`` is the dataset root it names)."""
    names = "\n".join(f"  {i}: '{n}'" for i, n in enumerate(DIGIT_NAMES))
    data = root / "data.yaml"
    data.write_text(
        f"path: {path}\ntrain: images/train\nval: images/val\nnc: {len(DIGIT_NAMES)}\nnames:\n{names}\n"
    )
    return data
