"""Image-folder scanning and decoding against hostile folders: non-regular files, symlink loops and
duplicates, EXIF orientation, one colour image among grey ones, empty or all-bad splits, the default
image size; and the data fingerprint that names what changed."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from friendly_sam.data import DatasetNotFoundError, ImageFileError, InMemorySamples, load_image_folder
from friendly_sam.data.identity import (
    DataChangedError,
    builtin_fingerprint,
    check_same_data,
    data_changes,
    folder_fingerprint,
)
from friendly_sam.data.image_decode import decode_image, open_regular

CLASSES = ("bag", "coat", "shirt")


def write_folder(root: Path, per_class: int = 4, size: tuple[int, int] = (8, 8), splits=("train",)) -> Path:
    """``root/<split>/<class>/<i>.png``: grey images of ``size`` (width, height), distinct per file."""
    rng = np.random.default_rng(0)
    for split in splits:
        for c in CLASSES:
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, size[::-1], dtype=np.uint8)).save(d / f"{i}.png")
    return root


def load(root: Path, **kw):
    return load_image_folder(root, num_workers=0, storage="memory", **kw)


def test_a_fifo_named_like_an_image_is_never_opened(tmp_path):
    root = write_folder(tmp_path)
    fifo = root / "train" / "coat" / "x.png"
    os.mkfifo(fifo)  # opening it for reading would block for ever
    with pytest.raises(ImageFileError, match=r"coat/x\.png: a FIFO, not an image file"):
        load(root)
    data = load(root, skip_bad_images=True)
    assert data.record()["counts"]["train"] == 12
    assert any("x.png: a FIFO" in m for m in data.record()["skipped"]["train"])


def test_symlink_loops_and_duplicate_links_count_each_file_once(tmp_path):
    root = write_folder(tmp_path)
    coat = root / "train" / "coat"
    (coat / "loop").symlink_to(coat)  # a loop: the folder inside itself
    (coat / "up").symlink_to(root / "train")  # a link to the parent of every class
    (coat / "again.png").symlink_to(coat / "0.png")  # a second name for one file
    outside = tmp_path.parent / f"{tmp_path.name}_store"
    write_folder(outside, per_class=2)
    (root / "train" / "bag" / "more").symlink_to(outside / "train" / "bag")  # a link out of the folder: followed
    data = load(root)
    assert data.record()["counts"]["train"] == 12 + 2
    assert int((data.splits["train"].labels == CLASSES.index("bag")).sum()) == 6
    shutil.rmtree(outside)


def test_a_broken_link_is_a_bad_file(tmp_path):
    root = write_folder(tmp_path)
    (root / "train" / "coat" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    with pytest.raises(ImageFileError, match="gone.png: a broken link"):
        load(root)
    assert load(root, skip_bad_images=True).record()["counts"]["train"] == 12


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.arange(6 * 4, dtype=np.uint8).reshape(4, 6) * 10  # 6 wide, 4 high
    img = Image.fromarray(pixels)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    path = tmp_path / "photo.png"
    img.save(path, exif=exif)
    shown = np.rot90(pixels, k=-1)  # what a viewer shows: 4 wide, 6 high
    out = decode_image(path, 1, 4)  # shorter side 4: the centre 4x4 square of the upright image
    assert torch.equal(out[0], torch.from_numpy(shown[1:5].copy()))


def test_one_colour_image_among_many_grey_ones_makes_the_folder_rgb(tmp_path):
    root = write_folder(tmp_path, per_class=30)
    colour = np.zeros((8, 8, 3), dtype=np.uint8)
    colour[..., 0] = 255
    Image.fromarray(colour).save(root / "train" / "shirt" / "zz_red.png")  # the last file, unsampled before
    assert load(root).in_channels == 3
    (root / "train" / "shirt" / "zz_red.png").unlink()
    assert load(root).in_channels == 1


def test_a_split_with_class_folders_but_no_images_is_named(tmp_path):
    root = write_folder(tmp_path)
    (root / "test" / "coat").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match=r"test has class folders but no images"):
        load(root)


def test_a_split_whose_images_are_all_bad_is_named(tmp_path):
    root = write_folder(tmp_path)
    (root / "test" / "coat").mkdir(parents=True)
    (root / "test" / "coat" / "1.png").write_text("not an image")
    (root / "test" / "coat" / "2.png").write_bytes(b"")
    with pytest.raises(ImageFileError, match="none of the test images is readable"):
        load(root, skip_bad_images=True)


def test_image_size_follows_the_data_unless_given(tmp_path):
    small = write_folder(tmp_path / "small", size=(28, 28))
    assert load(small).image_size == 28
    assert load(small, image_size=16).image_size == 16
    wide = write_folder(tmp_path / "wide", per_class=1, size=(300, 260))
    assert load(wide).image_size == 224  # large images: at most 224 by default


def test_fingerprint_names_renamed_added_removed_and_changed(tmp_path):
    root = write_folder(tmp_path, splits=("train", "test"))
    before = load(root).fingerprint
    assert data_changes(before, load(root).fingerprint) == []
    (root / "train" / "coat").rename(root / "train" / "zcoat")
    (root / "test" / "coat").rename(root / "test" / "zcoat")
    changes = data_changes(before, load(root).fingerprint)
    assert "class 'coat' renamed to 'zcoat'" in changes[0] and "labels" in changes[1]
    shutil.copy(root / "train" / "bag" / "0.png", root / "train" / "bag" / "new.png")
    (root / "train" / "shirt" / "1.png").unlink()
    Image.fromarray(np.zeros((9, 9), dtype=np.uint8)).save(root / "train" / "bag" / "2.png")
    text = " ".join(data_changes(before, load(root).fingerprint))
    assert "1 file(s) added: bag/new.png" in text and "1 file(s) removed: shirt/1.png" in text
    assert "changed (other size): bag/2.png" in text
    with pytest.raises(DataChangedError, match="--accept-data-change"):
        check_same_data(before, load(root).fingerprint, accept=False, where="checkpoint X")
    assert check_same_data(before, load(root).fingerprint, accept=True, where="checkpoint X")
    assert check_same_data(None, before, accept=False, where="an old checkpoint") == []


def test_builtin_fingerprint_is_name_sizes_and_content():
    x = torch.randint(0, 256, (6, 1, 4, 4), dtype=torch.uint8)
    y = torch.arange(6) % 3
    base = builtin_fingerprint("mnist", {"train": InMemorySamples(x, y), "test": InMemorySamples(x[:2], y[:2])})
    assert base["sizes"] == {"test": 2, "train": 6}
    relabelled = builtin_fingerprint("mnist", {"train": InMemorySamples(x, (y + 1) % 3), "test": InMemorySamples(x[:2], y[:2])})
    assert [c.split(":")[0] for c in data_changes(base, relabelled)] == ["content"]
    other = builtin_fingerprint("fashion-mnist", {"train": InMemorySamples(x, y)})
    assert {c.split(":")[0] for c in data_changes(base, other)} == {"name", "sizes", "content"}
    folder = folder_fingerprint(CLASSES, {"train": [("bag/0.png", 10)]})
    assert data_changes(base, folder) == ["the data set changed from mnist to imagefolder"]


def test_a_fifo_put_in_place_of_an_image_after_the_scan_does_not_block(tmp_path):
    fifo = tmp_path / "late.png"
    os.mkfifo(fifo)  # no writer: a plain open() for reading would block for ever
    with pytest.raises(OSError, match="not a regular file"):
        open_regular(fifo)
    with pytest.raises(ImageFileError, match="late.png"):
        decode_image(fifo, 1, 8)
