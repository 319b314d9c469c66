"""Real Fashion-MNIST images written as PNG files in class folders, for `fsam train --dataset imagefolder`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from testkit import FASHION_DIR

from friendly_sam.data.classes import FASHION_MNIST_CLASSES
from friendly_sam.data.readers import read_idx

FOLDER_NAMES = tuple(name.lower().replace("/", "-").replace(" ", "_") for name in FASHION_MNIST_CLASSES)


def write_png_folder(
    root: Path, per_class: dict[str, int], classes: int = 10, split_of: str = "t10k"
) -> Path:
    """``root/<split>/<class>/<n>.png`` from Fashion-MNIST's ``split_of`` images (grey 28x28 PNGs), the first
    ``per_class[split]`` images of each of the first ``classes`` classes per split, without overlap."""
    images = read_idx(FASHION_DIR / f"{split_of}-images-idx3-ubyte.gz").numpy()
    labels = read_idx(FASHION_DIR / f"{split_of}-labels-idx1-ubyte.gz").numpy()
    offset = 0
    for split, n in per_class.items():
        for c in range(classes):
            d = root / split / FOLDER_NAMES[c]
            d.mkdir(parents=True, exist_ok=True)
            for i in np.flatnonzero(labels == c)[offset : offset + n]:
                Image.fromarray(images[i]).save(d / f"{int(i):05d}.png")
        offset += n
    return root


def tiny_args(data_dir: Path, *extra: str) -> list[str]:
    """A tiny image-folder run: cnn_small at 28x28, one thread."""
    return [
        "--dataset", "imagefolder", "--data-dir", str(data_dir), "--image-size", "28",
        "--model", "cnn_small", "--batch-size", "32", "--epochs", "1", "--threads", "1", "--quiet", *extra,
    ]  # fmt: skip
