"""Image folders on real Fashion-MNIST images: scanning, decoding, and the in-memory and streaming
loaders giving identical batches (order, pixels, labels), shards, resume, damaged files."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from imagefolder_testutils import FOLDERS, PER_CLASS, add_colour_images, write_fashion_folder
from PIL import Image

from friendly_sam.data import (
    BatchAugment,
    DatasetFormatError,
    DatasetNotFoundError,
    ImageFileError,
    ResizedCropAugment,
    StreamingBatchLoader,
    TensorBatchLoader,
    load_image_folder,
    train_val_split,
)
from friendly_sam.data.augment import augment_rows
from friendly_sam.data.datasets import channel_stats
from friendly_sam.data.folder_scan import scan_split
from friendly_sam.data.image_decode import colour_channels, decode_image, probe_images
from friendly_sam.models import build_model


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> tuple[Path, dict[str, list]]:
    root = tmp_path_factory.mktemp("fashion_folder")
    written = write_fashion_folder(root)
    return root, written


def _load(root: Path, storage: str, workers: int = 0, **kw):
    opts = dict(image_size=24, resize_size=28, channels=1, crop_scale=(0.35, 1.0), num_workers=workers)
    opts.update(kw)
    return load_image_folder(root, storage=storage, **opts)


def _batches(loader, epochs=(0, 1)):
    out = []
    for e in epochs:
        loader.set_epoch(e)
        out.extend((x.clone(), y.clone()) for x, y in loader)
    return out


def _assert_same(a, b):
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(ya, yb)
        assert torch.equal(xa, xb)


def test_scan_sorted_classes_counts_and_extensions(folder):
    root, written = folder
    split = scan_split(root / "train").split
    assert split.classes == tuple(sorted(FOLDERS))
    assert len(split) == PER_CLASS["train"] * len(FOLDERS)  # notes.txt and README are not images
    exts = {Path(p).suffix for p in split.paths}
    assert {".png", ".JPG", ".bmp", ".WebP", ".PNG", ".jpeg"} <= exts
    # Labels index the sorted folder names; files sorted within each class.
    for path, label in zip(split.paths, split.labels.tolist()):
        assert Path(path).parent.name == split.classes[label]
    assert list(split.paths) == sorted(split.paths)
    val = scan_split(root / "val", split.classes).split
    assert val.classes == split.classes and len(val) == PER_CLASS["val"] * len(FOLDERS)


def test_decode_is_exact_for_png_and_converts_channels(folder, tmp_path):
    root, written = folder
    rel, _, pixels = next(w for w in written["train"] if w[0].endswith(".png"))
    grey = decode_image(root / rel, 1, 28)
    assert grey.dtype == torch.uint8 and grey.shape == (1, 28, 28)
    assert np.array_equal(grey[0].numpy(), pixels)  # lossless: the original Fashion-MNIST pixels
    rgb = decode_image(root / rel, 3, 28)
    assert rgb.shape == (3, 28, 28) and torch.equal(rgb[0], rgb[1]) and torch.equal(rgb[0], grey[0])
    small = decode_image(root / rel, 1, 14)  # shorter side resized, centre square
    assert small.shape == (1, 14, 14)
    shutil.copytree(root / "train", tmp_path / "train")
    p_rgba, p_pal = add_colour_images(tmp_path)
    assert decode_image(p_rgba, 3, 28).shape == (3, 28, 28)
    assert decode_image(p_rgba, 1, 28).shape == (1, 28, 28)
    assert decode_image(p_pal, 3, 28).shape == (3, 28, 28)
    grey_only = [str(root / rel)]
    assert colour_channels(grey_only, probe_images(grey_only)) == 1
    with_colour = [str(root / rel), str(p_rgba)]
    assert colour_channels(with_colour, probe_images(with_colour)) == 3
    # A non-square image: shorter side to the size, centre crop.
    wide = tmp_path / "wide.png"
    Image.fromarray(np.tile(np.arange(60, dtype=np.uint8), (20, 1))).save(wide)
    out = decode_image(wide, 1, 10)
    assert out.shape == (1, 10, 10) and out[0, 0, 0] > 0  # centre, not the left edge


def test_auto_channels_and_class_record(folder):
    root, _ = folder
    data = load_image_folder(root, image_size=28, channels=None, num_workers=0, storage="memory")
    assert data.in_channels == 1 and data.num_classes == 10
    rec = data.record()
    assert rec["classes"] == sorted(FOLDERS)
    assert rec["counts"] == {"train": 240, "val": 60, "test": 40}
    assert rec["storage"] == "memory" and rec["skipped"] == {}
    # Statistics: computed on the training images (all of them here: fewer than stats_images).
    mean, std = channel_stats(data.splits["train"].images)
    assert data.mean == pytest.approx(mean) and data.std == pytest.approx(std)


@pytest.mark.parametrize("workers", [0, 2])
def test_memory_and_streaming_give_identical_batches(folder, workers):
    root, _ = folder
    mem = _load(root, "memory", workers)
    stream = _load(root, "streaming", workers)
    assert (mem.storage, stream.storage) == ("memory", "streaming")
    assert mem.mean == pytest.approx(stream.mean, abs=0) and mem.std == pytest.approx(stream.std, abs=0)
    a = mem.loader("train", 32, train=True, seed=5)
    b = stream.loader("train", 32, train=True, seed=5)
    assert isinstance(a, TensorBatchLoader) and isinstance(b, StreamingBatchLoader)
    batches_a, batches_b = _batches(a), _batches(b)
    _assert_same(batches_a, batches_b)
    assert batches_a[0][0].shape == (32, 1, 24, 24) and batches_a[0][0].dtype == torch.float32
    # Different epochs, different orders; every training image once per epoch.
    assert not torch.equal(batches_a[0][1], batches_a[len(a)][1])
    assert sorted(torch.cat([y for _, y in batches_a[: len(a)]]).tolist()) == sorted(
        mem.splits["train"].labels.tolist()
    )
    for split in ("val", "test"):
        _assert_same(_batches(mem.loader(split, 25), (0,)), _batches(stream.loader(split, 25), (0,)))


def test_one_epoch_of_training_is_identical_in_memory_and_streaming(folder):
    root, _ = folder
    results = []
    for storage in ("memory", "streaming"):
        data = _load(root, storage, 0)
        torch.manual_seed(0)
        model = build_model("cnn_small", data.num_classes, data.in_channels)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        train = data.loader("train", 24, train=True, seed=1)
        train.set_epoch(0)
        order = []
        for x, y in train:
            order.append(y)
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in data.loader("test", 20))
        results.append((torch.cat(order), correct, [p.detach().clone() for p in model.parameters()]))
    (order_m, acc_m, params_m), (order_s, acc_s, params_s) = results
    assert torch.equal(order_m, order_s) and acc_m == acc_s
    assert all(torch.equal(p, q) for p, q in zip(params_m, params_s))


@pytest.mark.parametrize("count", [2, 3])
def test_streaming_shards_equal_tensor_loader_shards(folder, count):
    root, _ = folder
    mem = _load(root, "memory")
    stream = _load(root, "streaming")
    for rank in range(count):
        ref = TensorBatchLoader(
            mem.splits["train"].images, mem.splits["train"].labels, 30, shuffle=True,
            augment=mem.train_augment, seed=2, shard=(rank, count),
        )  # fmt: skip
        got = stream.loader("train", 30, train=True, seed=2, shard=(rank, count))
        _assert_same(_batches(ref), _batches(got))


def test_streaming_resume_mid_epoch_is_exact(folder):
    root, _ = folder
    stream = _load(root, "streaming", 2)
    full = _batches(stream.loader("train", 32, train=True, seed=9), (1,))
    resumed = stream.loader("train", 32, train=True, seed=9)
    resumed.set_epoch(1, start_batch=3)
    _assert_same(full[3:], [(x.clone(), y.clone()) for x, y in resumed])
    assert resumed.epoch == 2  # a completed pass moves on, as TensorBatchLoader
    x, y = resumed.batch(4, epoch=1)
    _assert_same([full[4]], [(x, y)])


def test_memory_budget_chooses_the_path(folder):
    root, _ = folder
    needed = 340 * 1 * 28 * 28
    small = _load(root, "auto", memory_budget=needed - 1)
    big = _load(root, "auto", memory_budget=needed)
    assert small.storage == "streaming" and "exceed the memory budget" in small.reason
    assert big.storage == "memory" and "fit the memory budget" in big.reason
    given = _load(root, "auto", mean=(0.5,), std=(0.25,))
    assert given.mean == (0.5,) and given.std == (0.25,)


@pytest.fixture()
def damaged(folder, tmp_path) -> tuple[Path, list[Path]]:
    root, _ = folder
    for split in ("train", "val"):
        shutil.copytree(root / split, tmp_path / split)
    good = sorted((tmp_path / "train" / "coat").glob("*.png"))[0]
    truncated = tmp_path / "train" / "coat" / "a_truncated.png"
    truncated.write_bytes(good.read_bytes()[:120])
    text = tmp_path / "train" / "dress" / "x.png"
    text.write_text("this is not an image\n")
    empty = tmp_path / "val" / "bag" / "empty.JPG"
    empty.write_bytes(b"")
    return tmp_path, [truncated, text, empty]


def test_damaged_file_is_named_in_one_clean_error(damaged):
    root, bad = damaged
    with pytest.raises(ImageFileError) as info:
        _load(root, "memory", 2)
    msg = str(info.value)
    assert isinstance(info.value, DatasetFormatError)  # the CLI prints such errors as one line
    assert str(bad[1]) in msg and "--skip-bad-images" in msg and "Traceback" not in msg
    # Streaming: a file whose header cannot be read is named before training starts...
    with pytest.raises(ImageFileError, match=str(bad[1])):
        _load(root, "streaming", 2)
    # ... one that fails only when decoded, when it is reached, from a worker process: one clean error.
    bad[1].unlink()
    bad[2].unlink()
    stream = _load(root, "streaming", 2)
    with pytest.raises(ImageFileError) as info:
        _batches(stream.loader("train", 500, train=True))
    assert str(bad[0]) in str(info.value) and "Traceback" not in str(info.value)


@pytest.mark.parametrize("storage", ["memory", "streaming"])
def test_skip_bad_images_skips_and_counts(damaged, storage):
    root, bad = damaged
    logs: list[str] = []
    data = _load(root, storage, 2, skip_bad_images=True, log=logs.append)
    assert len(data.splits["train"]) == 240 and len(data.splits["val"]) == 60
    rec = data.record()
    assert len(rec["skipped"]["train"]) == 2 and len(rec["skipped"]["val"]) == 1
    assert any(str(bad[0]) in m for m in rec["skipped"]["train"])
    assert any(str(bad[2]) in m for m in rec["skipped"]["val"])
    assert sum(int(line.split()[1]) for line in logs if "unreadable train" in line) == 2
    listed = data.fingerprint["files"]["train"]  # the data identity lists the files trained on
    assert "coat/a_truncated.png" not in listed and "dress/x.png" not in listed and "coat/" in listed
    n = sum(len(y) for _, y in _batches(data.loader("train", 64, train=True), (0,)))
    assert n == 240


def test_layout_errors(tmp_path, folder):
    with pytest.raises(DatasetNotFoundError, match="ImageNet layout"):
        load_image_folder(tmp_path / "nowhere", image_size=8)
    root, _ = folder
    (tmp_path / "train" / "a").mkdir(parents=True)
    shutil.copy(next((root / "train" / "bag").glob("*.png")), tmp_path / "train" / "a" / "1.png")
    (tmp_path / "train" / "empty").mkdir()
    with pytest.raises(DatasetNotFoundError, match="without images"):
        load_image_folder(tmp_path, image_size=8)
    (tmp_path / "train" / "empty").rmdir()
    (tmp_path / "val" / "zebra").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match="zebra"):
        load_image_folder(tmp_path, image_size=8)


def test_resized_crop_augment():
    x = torch.randint(0, 256, (6, 3, 12, 12), dtype=torch.uint8)
    centre = ResizedCropAugment(8)(x)
    assert torch.equal(centre, x[:, :, 2:10, 2:10].float() / 255)  # exact pixels, no resampling
    whole = ResizedCropAugment(12, random_crop=True, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert torch.allclose(whole(x, torch.Generator().manual_seed(0)), x.float() / 255, atol=1e-5)
    flip = ResizedCropAugment(12, flip=True)
    params = flip.sample(6, 12, 12, torch.Generator().manual_seed(1))
    out = flip.apply(x, params)
    for i in range(6):
        ref = x[i].flip(2) if params.flip[i] else x[i]
        assert torch.equal(out[i], ref.float() / 255)
    rrc = ResizedCropAugment(8, random_crop=True, flip=True, mean=(0.5,) * 3, std=(0.2,) * 3)
    a = rrc(x, torch.Generator().manual_seed(3))
    b = rrc(x, torch.Generator().manual_seed(3))
    assert a.shape == (6, 3, 8, 8) and torch.equal(a, b)
    p = rrc.sample(1000, 12, 12, torch.Generator().manual_seed(4))
    area = p.height * p.width / 144
    assert float(area.min()) >= 0.08 - 0.05 and float(area.max()) <= 1.0
    assert bool((p.top + p.height <= 12).all()) and bool((p.left + p.width <= 12).all())


def test_augment_rows_equals_rows_of_the_whole_batch():
    x = torch.randint(0, 256, (11, 3, 12, 12), dtype=torch.uint8)
    augments = [
        BatchAugment(crop_padding=2, flip=True, cutout_size=4, mean=(0.4,) * 3, std=(0.3,) * 3),
        BatchAugment(),
        ResizedCropAugment(8, random_crop=True, flip=True),
        ResizedCropAugment(8),
        None,
    ]
    for aug in augments:
        whole = aug(x, torch.Generator().manual_seed(6)) if aug is not None else x.float() / 255
        for lo, hi in ((0, 4), (4, 8), (8, 11), (3, 3)):
            part = augment_rows(aug, x[lo:hi], torch.Generator().manual_seed(6), 11, lo)
            assert torch.equal(part, whole[lo:hi])


def test_loaders_take_only_the_augmentation_protocol(folder):
    root, _ = folder
    stream = _load(root, "streaming")

    def augment(x, g):  # a bare callable: no sample/apply, so its rows cannot be computed on their own
        return x.float() / 255

    with pytest.raises(TypeError, match="Augmentation"):
        StreamingBatchLoader(stream.splits["train"].files, 50, channels=1, base_size=28, augment=augment)
    with pytest.raises(TypeError, match="Augmentation"):
        TensorBatchLoader(torch.zeros(4, 1, 2, 2, dtype=torch.uint8), torch.zeros(4, dtype=torch.int64), 2, augment=augment)


def test_take_subsets_validation_and_labels_alike_on_both_paths(folder):
    root, _ = folder
    out = []
    for storage in ("memory", "streaming"):
        data = _load(root, storage)
        labels = data.splits["train"].labels
        s = train_val_split(torch.arange(len(labels)), labels, 40, seed=3)
        noisy = (labels[s.train_images] + 1) % 10
        data = data.take("train", s.val_images, into="val").take("train", s.train_images, labels=noisy)
        assert len(data.splits["train"]) == 200 and len(data.splits["val"]) == 40
        assert torch.equal(data.splits["train"].labels, noisy)
        out.append(
            _batches(data.loader("train", 32, train=True, seed=1)) + _batches(data.loader("val", 16), (0,))
        )
    _assert_same(*out)


def test_pillow_is_needed_only_to_read_images(folder):
    root, written = folder
    code = (
        "import sys; sys.modules['PIL'] = None\n"  # as if Pillow were not installed
        "import friendly_sam.data.image_decode as d, friendly_sam.models\n"
        "try:\n"
        f"    d.decode_image({str(root / written['train'][0][0])!r}, 1, 28)\n"
        "except ModuleNotFoundError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "pip install pillow" in out.stdout
