"""Data of the demo and the effect study: embedded shapes, patches of real photos, a user folder.

Nothing is downloaded: the shapes are generated deterministically, the photos are scikit-image's
bundled sample images. Every loader returns uint8 images ``[n, size, size, 3]`` and labels ``[n]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

CLASSES = ["disc", "square", "triangle", "cross", "ring", "h-stripes", "v-stripes", "checker", "diagonal", "dots"]


# ----------------------------------------------------------------------------- embedded shapes
def _luminance(c: np.ndarray) -> float:
    return float(0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2])


def _shape_mask(cls: int, s: int, rng: np.random.Generator) -> np.ndarray:
    """Mask [s, s] (float 0..1) of one object of class ``cls`` drawn at a random place and scale."""
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    r = rng.uniform(0.30, 0.46) * s
    cy, cx = rng.uniform(r * 0.85, s - r * 0.85, size=2)
    dy, dx = yy - cy, xx - cx
    inside = (np.abs(dy) <= r) & (np.abs(dx) <= r)
    period = rng.uniform(5.0, 7.0) * s / 32  # coarse enough to survive crops and resizing
    ph = rng.uniform(0, period)  # random phase of the textures
    if cls == 0:
        m = dy**2 + dx**2 <= r**2
    elif cls == 1:
        m = inside
    elif cls == 2:
        m = (dy <= r) & (dy >= -r) & (np.abs(dx) <= (dy + r) / 2)
    elif cls == 3:
        w = r * 0.3
        m = inside & ((np.abs(dy) <= w) | (np.abs(dx) <= w))
    elif cls == 4:
        d = np.sqrt(dy**2 + dx**2)
        m = (d <= r) & (d >= r * 0.55)
    elif cls == 5:
        m = inside & (((yy + ph) % period) < period / 2)
    elif cls == 6:
        m = inside & (((xx + ph) % period) < period / 2)
    elif cls == 7:
        m = inside & ((np.floor((yy + ph) / period) + np.floor((xx + ph) / period)) % 2 == 0)
    elif cls == 8:
        m = inside & (np.abs(dy - dx) <= r * 0.3)
    else:
        m = inside & (((yy + ph) % period) < period / 2) & (((xx + ph) % period) < period / 2)
    return m.astype(np.float32)


def _colour(rng: np.random.Generator, muted: bool) -> np.ndarray:
    """A random RGB colour; ``muted``: a gray level with a faint tint (colour jitter scrambles it)."""
    if muted:
        return np.clip(rng.uniform(0, 1) + rng.uniform(-0.06, 0.06, 3), 0, 1)
    return rng.uniform(0, 1, 3)


def make_shapes(n: int, size: int = 32, seed: int = 0, muted: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images ``[n, size, size, 3]`` uint8 and labels ``[n]`` (balanced 10 classes).

    The class is the object's shape or texture; everything else is nuisance: random foreground
    colour (only its luminance differs from the background's, so the shape survives grayscale),
    position and scale, a two-colour gradient background in a random direction, small clutter
    rectangles and pixel noise. Raw pixels are dominated by the colours (kNN far below a feature
    that is invariant to colour and position). ``muted``: every colour is a gray level with a
    faint tint, so that colour is no shortcut for an SSL method with standard colour jitter."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(CLASSES)
    rng.shuffle(labels)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for i, cls in enumerate(labels):
        b1, b2 = _colour(rng, muted), _colour(rng, muted)
        a = rng.uniform(0, 2 * np.pi)
        t = np.clip(0.5 + np.cos(a) * (xx - 0.5) + np.sin(a) * (yy - 0.5), 0, 1)[..., None]
        img = b1 * (1 - t) + b2 * t
        for _ in range(rng.integers(1, 4)):  # clutter
            y0, x0 = rng.integers(0, size, 2)
            h, w = rng.integers(1, max(2, size // 6), 2)
            img[y0 : y0 + h, x0 : x0 + w] = _colour(rng, muted)
        bg_lum = _luminance(img.reshape(-1, 3).mean(0))
        for _ in range(20):  # a foreground colour with some luminance contrast
            fg = _colour(rng, muted)
            if abs(_luminance(fg) - bg_lum) > 0.3:
                break
        m = _shape_mask(int(cls), size, rng)[..., None]
        img = img * (1 - m) + fg * m
        img = img + rng.normal(0, 0.05, img.shape)
        images[i] = (np.clip(img, 0, 1) * 255).astype(np.uint8)
    return images, labels


# ----------------------------------------------------------------------------- real photos
# scikit-image's bundled sample photos (no download); chelsea and cat are the same photo, so cat is out
PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "camera", "brick", "grass", "gravel"]


def make_photo_patches(n_train: int, n_test: int, size: int = 24, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Patches of 10 real photos, labelled by their source photo: ``(train, y_train, test, y_test)``.

    A patch is a random square of a quarter of the photo's short side, resized to ``size``. Train
    patches come from the left 70% of each photo, test patches from the rest (no overlap between the
    two sets). Grayscale photos are repeated to 3 channels."""
    try:
        import skimage.data
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("the photo data set needs scikit-image: pip install 'hvs-plugins[lightly]'") from err
    from PIL import Image

    photos = [getattr(skimage.data, name)() for name in PHOTOS]
    photos = [np.repeat(p[..., None], 3, axis=2) if p.ndim == 2 else p[..., :3] for p in photos]
    rng = np.random.default_rng(seed)
    out: dict[str, list] = {"train": [], "test": []}
    for n, part in ((n_train, "train"), (n_test, "test")):
        labels = np.arange(n) % len(PHOTOS)
        rng.shuffle(labels)
        for c in labels:
            photo = photos[c]
            h, w = photo.shape[:2]
            side = min(h, w) // 4
            cut = int(0.7 * w)
            x_lo, x_hi = (0, cut - side) if part == "train" else (cut, w - side)
            y, x = rng.integers(0, h - side + 1), rng.integers(x_lo, x_hi + 1)
            patch = Image.fromarray(photo[y : y + side, x : x + side]).resize((size, size), Image.BILINEAR)
            out[part].append((np.asarray(patch, dtype=np.uint8), c))
    tr, te = out["train"], out["test"]
    return (np.stack([a for a, _ in tr]), np.array([c for _, c in tr]), np.stack([a for a, _ in te]), np.array([c for _, c in te]))


def make_data(name: str, n_train: int, n_test: int, size: int, n_bank: int = 0) -> dict[str, np.ndarray]:
    """An embedded data set, ``shapes`` or ``photos``: ``{"train", "y_train", "bank", "y_bank",
    "test", "y_test"}``. ``bank``: the kNN memory, the training images followed by more images of
    the same distribution up to ``n_bank`` (a larger memory and test set make the kNN accuracy a
    less noisy read-out of the features)."""
    n_bank = max(n_bank, n_train)
    if name in ("shapes", "shapes-muted"):
        images, labels = make_shapes(n_bank + n_test, size, seed=12345, muted=name == "shapes-muted")
        bank, y_bank, test, y_test = images[:n_bank], labels[:n_bank], images[n_bank:], labels[n_bank:]
    elif name == "photos":
        bank, y_bank, test, y_test = make_photo_patches(n_bank, n_test, size, seed=12345)
    else:
        raise ValueError(f"unknown data set {name!r}: 'shapes', 'shapes-muted' or 'photos' (or --data FOLDER)")
    return {"train": bank[:n_train], "y_train": y_bank[:n_train], "bank": bank, "y_bank": y_bank, "test": test, "y_test": y_test}


# ----------------------------------------------------------------------------- a user folder
def load_folder(path: str, size: int, limit: Optional[int]) -> tuple[np.ndarray, Optional[np.ndarray], list[str]]:
    """Images of a folder (ImageFolder-like: one subfolder per class, or flat), resized to
    ``size`` (center crop). Labels are None for a flat folder."""
    from PIL import Image

    exts = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
    root = Path(path).expanduser()
    if not root.is_dir():
        raise SystemExit(f"--data {path}: not a folder")
    subdirs = sorted(d for d in root.iterdir() if d.is_dir())
    files: list[tuple[Path, int]] = []
    if subdirs:
        for c, d in enumerate(subdirs):
            files += [(f, c) for f in sorted(d.rglob("*")) if f.suffix.lower() in exts]
    files += [(f, -1) for f in sorted(root.iterdir()) if f.is_file() and f.suffix.lower() in exts]
    if not files:
        raise SystemExit(f"--data {path}: no images found ({', '.join(sorted(exts))})")
    rng = np.random.default_rng(0)
    order = rng.permutation(len(files))
    if limit:
        order = order[:limit]
    images = []
    for j in order:
        im = Image.open(files[j][0]).convert("RGB")
        w, h = im.size
        s = min(w, h)
        im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)).resize((size, size))
        images.append(np.asarray(im, dtype=np.uint8))
    labels = np.array([files[j][1] for j in order])
    names = [d.name for d in subdirs]
    if (labels < 0).any() or len(set(labels.tolist())) < 2:
        return np.stack(images), None, names
    return np.stack(images), labels, names


class Images(torch.utils.data.Dataset):
    def __init__(self, images: np.ndarray, transform: Any) -> None:
        from PIL import Image

        self.pil = [Image.fromarray(a) for a in images]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.pil)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        return self.transform(self.pil[i]), i
