"""Real Fashion-MNIST images written as an image folder (PNG mostly, plus JPEG/BMP/WebP, upper-case
extensions, an RGBA and a palette image), for the image-folder tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from testkit import FASHION_DIR

from friendly_sam.data.readers import read_idx

# Folder names whose sorted order differs from Fashion-MNIST's label order, so the tests see the
# labels come from the folder names.
FOLDERS = ("tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")
PER_CLASS = {"train": 24, "val": 6, "test": 4}


def fashion_images() -> tuple[np.ndarray, np.ndarray]:
    """The 10,000 Fashion-MNIST test images (uint8 (N, 28, 28)) and labels, read with the IDX reader."""
    images = FASHION_DIR / "t10k-images-idx3-ubyte.gz"
    if not images.is_file():
        pytest.skip(
            f"real Fashion-MNIST not installed at {FASHION_DIR} (apt-get install dataset-fashion-mnist)"
        )
    return read_idx(images).numpy(), read_idx(FASHION_DIR / "t10k-labels-idx1-ubyte.gz").numpy()


def _save(img: Image.Image, path: Path, k: int) -> str:
    # Mostly PNG; every 7th image (k counts over the whole folder) another format, some with
    # upper-case extensions.
    kinds = [("JPG", "JPEG"), ("bmp", "BMP"), ("WebP", "WEBP"), ("PNG", "PNG"), ("jpeg", "JPEG")]
    ext, fmt = kinds[(k // 7) % len(kinds)] if k % 7 == 3 else ("png", "PNG")
    target = path.with_suffix("." + ext)
    img.save(target, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    return target.name


def write_fashion_folder(root: Path, per_class: dict[str, int] | None = None) -> dict[str, list]:
    """Write Fashion-MNIST images into ``root/<split>/<class folder>/``; returns, per split, the
    ``(relative path, original label, original pixels)`` written, in no particular order."""
    images, labels = fashion_images()
    counts = per_class or PER_CLASS
    written: dict[str, list] = {s: [] for s in counts}
    offset = k = 0
    for split, n in counts.items():
        for c, folder in enumerate(FOLDERS):
            idx = np.flatnonzero(labels == c)[offset : offset + n]
            d = root / split / folder
            d.mkdir(parents=True, exist_ok=True)
            for i in idx:
                name = _save(Image.fromarray(images[i]), d / f"img{int(i):05d}", k)
                k += 1
                written[split].append((f"{split}/{folder}/{name}", c, images[i]))
        offset += n
    (root / "train" / FOLDERS[0] / "notes.txt").write_text("not an image")
    (root / "train" / FOLDERS[0] / "README").write_text("not an image")
    return written


def add_colour_images(root: Path) -> tuple[Path, Path]:
    """An RGBA PNG and a palette PNG (with transparency) in ``train/bag``."""
    images, _ = fashion_images()
    grey = images[0]
    rgba = np.stack([grey, grey // 2, 255 - grey, np.full_like(grey, 200)], axis=-1)
    p_rgba = root / "train" / "bag" / "zz_rgba.png"
    Image.fromarray(rgba).save(p_rgba)
    pal = Image.fromarray(grey).convert("P")
    pal.info["transparency"] = 0
    p_pal = root / "train" / "bag" / "zz_palette.PNG"
    pal.save(p_pal, transparency=0)
    return p_rgba, p_pal
