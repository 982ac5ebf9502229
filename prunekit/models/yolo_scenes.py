"""A harder offline detection benchmark in YOLO format: real digit scans on real photographs, with clutter.

Each image is a random crop of a real photograph (scikit-learn's ``load_sample_images`` and the images bundled
with ultralytics, ``ultralytics/assets/*.jpg``), flipped and colour-jittered, with 1..``max_objects`` of
scikit-learn's 1797 real 8x8 handwritten digit scans (``load_digits``) on it. What makes it harder than
:func:`prunekit.models.yolo_data.make_digits_dataset`:

- **textured backgrounds**: photographs (edges, text on the bus, faces), not a flat grey canvas;
- **scales** from 12 to 120 px at 320 px (scaled with ``imgsz``), log-uniform, so half are small objects; the
  aspect ratio varies by up to 25 %;
- **alpha-blended ink**: bicubic upscaling, a random soft threshold as alpha, a random ink colour that
  contrasts with the local background, 75-100 % opacity;
- **occlusion**: objects may overlap (later ones cover earlier ones), and background patches are pasted over
  parts of objects; an object with less than :data:`MIN_VISIBLE` of its ink left visible is taken out again
  (its remaining pixels restored to the background), so every digit in the image is labelled;
- **distractors**: strokes, arcs, ellipses and rectangles in random colours, under and over the digits.

Boxes are the digit's full (amodal) tight ink box. Train and val draw from disjoint digit scans. The set is
a pure function of its parameters and seed: it is written once into ``root`` (to a temporary directory first,
then renamed, so a half-written set never exists) with a ``scenes.json`` stamp; calling again with the same
parameters returns the cached ``data.yaml``.

>>> import tempfile, os
>>> data = make_scenes_dataset(os.path.join(tempfile.mkdtemp(), "s"), n_train=3, n_val=2, imgsz=96)
>>> sorted(p.name for p in (data.parent / "labels" / "val").iterdir())
['000000.txt', '000001.txt']
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from prunekit._atomic import atomic_dir
from prunekit.errors import ConfigError
from prunekit.models.yolo_data import digit_images, split_digits, write_data_yaml

MIN_VISIBLE = 0.4  # fraction of an object's ink that must stay visible for it to be kept
STAMP = "scenes.json"
VERSION = 1  # part of the stamp: a change to the generator invalidates cached sets


def background_photos() -> list:
    """The real photographs the backgrounds are cropped from (PIL RGB images): scikit-learn's two sample
    images and the ``.jpg`` files bundled with ultralytics, sorted by name (the same list everywhere)."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = [Image.fromarray(img) for img in load_sample_images().images]
    try:
        import ultralytics
    except ImportError as err:
        raise ConfigError("the scenes dataset needs ultralytics (for its bundled photos)") from err
    for path in sorted((Path(ultralytics.__file__).parent / "assets").glob("*.jpg")):
        with Image.open(path) as img:
            photos.append(img.convert("RGB"))
    return photos


def _background(rng: np.random.Generator, photos: list, side: int, out: int) -> np.ndarray:
    """A random ``side``-pixel square crop of a random photo, resized to ``out``, flipped, colour-jittered
    (float32 HxWx3 in [0, 1])."""
    from PIL import Image

    photo = photos[int(rng.integers(len(photos)))]
    w, h = photo.size
    side = min(side, h, w)
    y, x = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
    crop = photo.resize((out, out), Image.BILINEAR, box=(x, y, x + side, y + side), reducing_gap=2.0)
    img = np.asarray(crop, dtype=np.float32) * np.float32(1 / 255)
    if rng.random() < 0.5:
        img = img[:, ::-1]
    if rng.random() < 0.2:
        img = img[::-1]
    gain = rng.uniform(0.7, 1.3, 3).astype(np.float32)  # per-channel colour cast
    contrast = np.float32(rng.uniform(0.6, 1.3))
    mean = img.mean()
    img = (img - mean) * contrast + (mean * gain + np.float32(rng.uniform(-0.15, 0.15)))
    if rng.random() < 0.15:
        img = np.repeat(img.mean(axis=2, keepdims=True), 3, axis=2)
    return np.clip(img, 0, 1, out=img)


def _digit_alpha(rng: np.random.Generator, scan: np.ndarray, w: int, h: int) -> np.ndarray:
    """An 8x8 scan in [0, 1] upscaled bicubically to ``h`` x ``w`` and soft-thresholded into an alpha map."""
    from PIL import Image

    big = np.asarray(Image.fromarray(scan.astype(np.float32), mode="F").resize((w, h), Image.BICUBIC))
    threshold = rng.uniform(0.35, 0.6)
    return np.clip((big - threshold) / 0.15, 0, 1).astype(np.float32)


def _distractors(rng: np.random.Generator, imgsz: int, count: int) -> np.ndarray:
    """An alpha map (HxW in [0, 1]) with ``count`` non-digit shapes: lines, arcs, ellipses, rectangles."""
    from PIL import Image, ImageDraw

    mask = Image.new("L", (imgsz, imgsz), 0)
    draw = ImageDraw.Draw(mask)
    for _ in range(count):
        x0, y0 = (int(v) for v in rng.integers(0, imgsz, 2))
        size = int(rng.integers(max(4, imgsz // 40), max(5, imgsz // 4)))
        x1, y1 = x0 + int(rng.integers(-size, size + 1)), y0 + int(rng.integers(-size, size + 1))
        box = [min(x0, x1), min(y0, y1), max(x0, x1) + 1, max(y0, y1) + 1]
        width = int(rng.integers(1, max(2, imgsz // 60) + 1))
        kind = int(rng.integers(4))
        if kind == 0:
            draw.line([x0, y0, x1, y1], fill=255, width=width)
        elif kind == 1:
            start = float(rng.uniform(0, 360))
            draw.arc(box, start, start + float(rng.uniform(60, 300)), fill=255, width=width)
        elif kind == 2:
            draw.ellipse(box, outline=255, width=width)
        else:
            draw.rectangle(box, outline=255, width=width)
    return np.asarray(mask, dtype=np.float32) / 255.0


def _blend(canvas: np.ndarray, alpha: np.ndarray, rng: np.random.Generator) -> None:
    """Alpha-blend a random colour into ``canvas`` (in place, within ``alpha``'s bounding box)."""
    colour = rng.uniform(0, 1, 3).astype(np.float32)
    rows, cols = np.flatnonzero(alpha.any(axis=1)), np.flatnonzero(alpha.any(axis=0))
    if not len(rows):
        return
    box = np.s_[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    a = alpha[box][:, :, None]
    region = canvas[box]
    region *= 1 - a
    region += a * colour


def _ink_colour(rng: np.random.Generator, region: np.ndarray) -> np.ndarray:
    """A random colour whose luminance is at least 0.35 away from ``region``'s mean luminance."""
    lum = float(region.mean())
    target = rng.uniform(0, max(0.0, lum - 0.35)) if lum > 0.5 else rng.uniform(min(1.0, lum + 0.35), 1)
    tint = rng.uniform(-0.2, 0.2, 3)
    return np.clip(target + tint - tint.mean(), 0, 1).astype(np.float32)


def _place_digits(
    rng: np.random.Generator, canvas: np.ndarray, scans: np.ndarray, labels: np.ndarray, count: int
) -> tuple[np.ndarray, list[tuple[int, int, int, int, int, int]]]:
    """Draw ``count`` digits (overlaps allowed) and return the owner map (object index per pixel, -1 for
    none) and per object ``(class, x0, y0, x1, y1, ink pixels)`` with its tight ink box."""
    imgsz = canvas.shape[0]
    owner = np.full((imgsz, imgsz), -1, dtype=np.int16)
    objects = []
    lo, hi = np.log(max(8, 12 * imgsz / 320)), np.log(min(120 * imgsz / 320, 0.45 * imgsz))
    for _ in range(count):
        side = float(np.exp(rng.uniform(lo, hi)))
        aspect = float(np.sqrt(rng.uniform(0.75, 1.25)))
        w, h = max(6, round(side * aspect)), max(6, round(side / aspect))
        scan = int(rng.integers(len(scans)))
        alpha = _digit_alpha(rng, scans[scan], w, h) * np.float32(rng.uniform(0.75, 1.0))
        x, y = int(rng.integers(imgsz - w + 1)), int(rng.integers(imgsz - h + 1))
        region = canvas[y : y + h, x : x + w]
        a = alpha[:, :, None]
        region *= 1 - a
        region += a * _ink_colour(rng, region)
        ink = alpha > 0.5
        if not ink.any():
            continue
        owner[y : y + h, x : x + w][ink] = len(objects)
        rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
        box = (x + int(cols[0]), y + int(rows[0]), x + int(cols[-1]) + 1, y + int(rows[-1]) + 1)
        objects.append((int(labels[scan]), *box, int(ink.sum())))
    return owner, objects


def _render(
    rng: np.random.Generator,
    photos: list,
    scans: np.ndarray,
    labels: np.ndarray,
    imgsz: int,
    max_objects: int,
) -> tuple[np.ndarray, list[str]]:
    """One image (uint8 HxWx3) and its label lines."""
    side = int(rng.integers(imgsz // 2, 3 * imgsz + 1))  # zoomed-in to zoomed-out crops
    canvas = _background(rng, photos, side, imgsz)
    canvas += rng.standard_normal(canvas.shape, dtype=np.float32) * np.float32(0.02)
    _blend(canvas, _distractors(rng, imgsz, int(rng.integers(0, 5))), rng)  # under the digits
    clean = canvas.copy()
    owner, objects = _place_digits(rng, canvas, scans, labels, int(rng.integers(1, max_objects + 1)))
    over = _distractors(rng, imgsz, int(rng.integers(0, 4)))  # over the digits
    _blend(canvas, over, rng)
    owner[over > 0.5] = -1
    np.clip(canvas, 0, 1, out=canvas)
    for _ in range(int(rng.integers(0, 3))):  # background patches over parts of objects
        _occlude(rng, canvas, owner, objects, photos)
    visible = np.bincount(owner[owner >= 0].ravel(), minlength=len(objects))
    lines = []
    for k, (cls, x0, y0, x1, y1, ink) in enumerate(objects):
        if visible[k] >= MIN_VISIBLE * ink:
            cx, cy, bw, bh = (
                (x0 + x1) / 2 / imgsz,
                (y0 + y1) / 2 / imgsz,
                (x1 - x0) / imgsz,
                (y1 - y0) / imgsz,
            )
            lines.append(f"{cls} {cx:.6f} {cy:.6f} {bw:.6f} {bh:.6f}")
        else:  # mostly hidden: take what is left of it out, so nothing unlabelled looks like a digit
            leftover = owner == k
            canvas[leftover] = clean[leftover]
    return (canvas * 255).astype(np.uint8), lines


def _occlude(
    rng: np.random.Generator,
    canvas: np.ndarray,
    owner: np.ndarray,
    objects: list[tuple[int, int, int, int, int, int]],
    photos: list,
) -> None:
    """Paste a patch of another photo over a corner or side of a random object (in place)."""
    if not objects:
        return
    _cls, x0, y0, x1, y1, _ink = objects[int(rng.integers(len(objects)))]
    w = max(2, int((x1 - x0) * rng.uniform(0.2, 0.6)))
    h = max(2, int((y1 - y0) * rng.uniform(0.2, 0.6)))
    x = int(np.clip(rng.choice([x0 - w // 3, x1 - 2 * w // 3]), 0, canvas.shape[1] - w))
    y = int(np.clip(rng.choice([y0 - h // 3, y1 - 2 * h // 3]), 0, canvas.shape[0] - h))
    patch = _background(rng, photos, int(rng.integers(max(w, h), 4 * max(w, h) + 1)), max(w, h))
    canvas[y : y + h, x : x + w] = patch[:h, :w]
    owner[y : y + h, x : x + w] = -1


def _params(n_train: int, n_val: int, imgsz: int, max_objects: int, seed: int) -> dict:
    return {"version": VERSION, "n_train": n_train, "n_val": n_val, "imgsz": imgsz,
            "max_objects": max_objects, "seed": seed}  # fmt: skip


def make_scenes_dataset(
    root: str | os.PathLike,
    *,
    n_train: int = 2000,
    n_val: int = 400,
    imgsz: int = 320,
    max_objects: int = 8,
    seed: int = 0,
) -> Path:
    """Write the benchmark into the directory ``root`` (made; must not exist, or hold this very set) and
    return the path of its ``data.yaml``; see the module docstring.

    >>> import tempfile, os, yaml
    >>> root = os.path.join(tempfile.mkdtemp(), "scenes")
    >>> data = make_scenes_dataset(root, n_train=2, n_val=1, imgsz=64)
    >>> again = make_scenes_dataset(root, n_train=2, n_val=1, imgsz=64)  # cached: returned, not rewritten
    >>> yaml.safe_load(data.read_text())["names"][7], again == data
    ('7', True)
    """
    if n_train < 1 or n_val < 1:
        raise ConfigError(f"n_train and n_val must be at least 1, got {n_train} and {n_val}")
    if imgsz < 64 or imgsz % 32:
        raise ConfigError(f"imgsz must be a multiple of 32 and at least 64, got {imgsz}")
    if not 1 <= max_objects <= 32:
        raise ConfigError(f"max_objects must be between 1 and 32, got {max_objects}")
    root = Path(root)
    params = _params(n_train, n_val, imgsz, max_objects, seed)
    if root.exists():
        stamp = root / STAMP
        if stamp.is_file() and json.loads(stamp.read_text()) == params:
            return root / "data.yaml"
        raise ConfigError(
            f"{root} exists and does not hold this dataset ({STAMP} differs): pick a new directory"
        )
    final = root.resolve()
    atomic_dir(root, lambda tmp: _write(tmp, final, params), replaceable=lambda _path: False)
    return root / "data.yaml"


def _write(tmp: Path, final: Path, params: dict) -> None:
    from PIL import Image

    photos = background_photos()
    scans, labels = digit_images()
    pools = split_digits(len(scans), params["seed"])
    for split, count in (("train", params["n_train"]), ("val", params["n_val"])):
        (tmp / "images" / split).mkdir(parents=True)
        (tmp / "labels" / split).mkdir(parents=True)
        rng = np.random.default_rng([params["seed"], 11 if split == "train" else 12])
        pool = pools[split]
        for i in range(count):
            rgb, lines = _render(
                rng, photos, scans[pool], labels[pool], params["imgsz"], params["max_objects"]
            )
            Image.fromarray(rgb).save(tmp / "images" / split / f"{i:06d}.jpg", quality=92)
            (tmp / "labels" / split / f"{i:06d}.txt").write_text("".join(f"{line}\n" for line in lines))
    write_data_yaml(tmp, final)
    (tmp / STAMP).write_text(json.dumps(params, indent=1) + "\n")
