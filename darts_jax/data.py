"""Data sets as uint8 NHWC arrays: tensorflow-datasets, plus one embedded set.

Images stay uint8 until augmentation on the device (``augment.py``), so the
whole of CIFAR-10 (150 MB) fits on an accelerator and the step never waits
for the host. tensorflow-datasets reads prepared data through
``tfds.data_source`` (array_record files, decoded with pillow): TensorFlow is
not needed at run time, only once to prepare a data set.

``digits`` is scikit-learn's 8x8 handwritten digits (1,797 images), shipped
inside the scikit-learn wheel: a real data set that needs no download, used by
the quick start and the tests.
"""

from __future__ import annotations

import dataclasses
import os
from typing import NamedTuple

import numpy as np


class DataMissingError(RuntimeError):
    """A data set is not available offline; the message says how to prepare it."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    name: str
    tfds_name: str | None  # None: embedded, no tfds
    size: int
    channels: int
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augmentation: str  # 'crop_flip', 'affine', 'affine_vflip', 'crop', 'imagenet'
    crop_padding: int = 4
    test_split: str = "test"
    # Streaming sets are read batch by batch on the host (darts_jax.host_data);
    # eval_resize: their evaluation resize before the centre crop.
    streaming: bool = False
    eval_resize: int = 0


DATASETS = {
    "cifar10": DatasetInfo(
        "cifar10",
        "cifar10",
        32,
        3,
        10,
        (0.49139968, 0.48215827, 0.44653124),
        (0.24703233, 0.24348505, 0.26158768),
        "crop_flip",
    ),
    "mnist": DatasetInfo(
        "mnist", "mnist", 28, 1, 10, (0.13066051707548254,), (0.30810780244715075,), "affine"
    ),
    "fashionmnist": DatasetInfo(
        "fashionmnist",
        "fashion_mnist",
        28,
        1,
        10,
        (0.28604063146254594,),
        (0.35302426207299326,),
        "affine_vflip",
    ),
    # Mean/std of the embedded digits' training split (pixel values / 255).
    "digits": DatasetInfo(
        "digits", None, 8, 1, 10, (0.30549565,), (0.37587373,), "crop", crop_padding=1
    ),
    # ILSVRC 2012 as the official DARTS ImageNet script reads it (final training only).
    "imagenet": DatasetInfo(
        "imagenet",
        "imagenet2012",
        224,
        3,
        1000,
        (0.485, 0.456, 0.406),
        (0.229, 0.224, 0.225),
        "imagenet",
        test_split="validation",
        streaming=True,
        eval_resize=256,
    ),
}
ALIASES = {"fashion_mnist": "fashionmnist", "cifar-10": "cifar10", "imagenet2012": "imagenet"}


class Dataset(NamedTuple):
    train_images: np.ndarray  # (N, H, W, C) uint8
    train_labels: np.ndarray  # (N,) int32
    test_images: np.ndarray
    test_labels: np.ndarray
    info: DatasetInfo


def dataset_info(name: str) -> DatasetInfo:
    key = ALIASES.get(name.lower(), name.lower())
    if key not in DATASETS:
        known = ", ".join(sorted(DATASETS) + sorted(ALIASES))
        raise ValueError(f"unknown dataset {name!r}; known: {known}")
    return DATASETS[key]


def _prepare_hint(info: DatasetInfo, data_dir: str | None) -> str:
    where = data_dir or os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")
    return (
        f"data set {info.name!r} (tfds name {info.tfds_name!r}) is not prepared under {where}.\n"
        "Prepare it once, on a machine with internet (TensorFlow is needed only for this):\n"
        "  pip install tensorflow tensorflow-datasets\n"
        f"  tfds build {info.tfds_name} --file_format=array_record --data_dir={where}\n"
        + (
            "  (ImageNet: first put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in\n"
            f"   {where}/downloads/manual, as tfds's imagenet2012 manual download asks)\n"
            if info.name == "imagenet"
            else ""
        )
        + "then copy that folder here and pass --data_dir (or set TFDS_DATA_DIR).\n"
        "The embedded data set 'digits' needs no download."
    )


def open_tfds_source(info: DatasetInfo, split: str, data_dir: str | None):
    """Random access to a prepared split (``tfds.data_source``, no TensorFlow).

    Raises DataMissingError, saying how to prepare it, if it is not there.
    """
    import tensorflow_datasets as tfds  # heavy import, only when needed

    try:
        source = tfds.data_source(info.tfds_name, split=split, data_dir=data_dir, download=False)
        n = len(source)
        if n:
            source[0]
    except Exception as e:  # tfds raises several types for "not prepared"
        raise DataMissingError(f"{_prepare_hint(info, data_dir)}\n(tfds said: {e})") from e
    if not n:
        raise DataMissingError(f"{info.name} split {split!r} is empty under {data_dir}")
    return source


def _load_tfds_split(info: DatasetInfo, split: str, data_dir: str | None):
    source = open_tfds_source(info, split, data_dir)
    n = len(source)
    first = source[0]
    images = np.empty((n, *np.asarray(first["image"]).shape), np.uint8)
    labels = np.empty((n,), np.int32)
    for i in range(n):
        example = first if i == 0 else source[i]
        images[i] = example["image"]
        labels[i] = example["label"]
    if images.ndim == 3:
        images = images[..., None]
    return images, labels


def _load_digits() -> Dataset:
    from sklearn.datasets import load_digits  # ships with the scikit-learn wheel

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = digits.target.astype(np.int32)
    order = np.random.default_rng(0).permutation(len(labels))  # fixed 80/20 split
    n_train = int(0.8 * len(labels))
    train, test = order[:n_train], order[n_train:]
    return Dataset(images[train], labels[train], images[test], labels[test], DATASETS["digits"])


def load(name: str, data_dir: str | None = None) -> Dataset:
    """Loads a data set's train and test splits as uint8 NHWC arrays.

    Raises DataMissingError (with how to prepare it) if it is not available offline.
    """
    info = dataset_info(name)
    if info.streaming:
        raise ValueError(
            f"{info.name} is streamed from the host: use darts_jax.host_data.HostSplit"
        )
    if info.tfds_name is None:
        return _load_digits()
    train_images, train_labels = _load_tfds_split(info, "train", data_dir)
    test_images, test_labels = _load_tfds_split(info, info.test_split, data_dir)
    if train_images.shape[1:] != (info.size, info.size, info.channels):
        raise ValueError(
            f"{info.name} images have shape {train_images.shape[1:]}, "
            f"expected {(info.size, info.size, info.channels)}"
        )
    return Dataset(train_images, train_labels, test_images, test_labels, info)


def search_split(num_train: int, portion: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """pt.darts's split of the train split: first half trains weights, second alphas."""
    if not 0.0 < portion < 1.0:
        raise ValueError(f"train portion must be in (0, 1), got {portion}")
    split = int(num_train * portion)
    if split < 1 or split >= num_train:
        raise ValueError(f"cannot split {num_train} training images with portion {portion}")
    indices = np.arange(num_train)
    return indices[:split], indices[split:]


def epoch_batches(
    indices: np.ndarray, batch_size: int, seed: int, epoch: int, salt: int
) -> np.ndarray:
    """A fresh random order of ``indices`` for one epoch, as (steps, batch_size).

    The last partial batch is dropped so every step has the same shape (one
    compiled program). Deterministic in (seed, epoch, salt): resumable.
    """
    if batch_size > len(indices):
        raise ValueError(f"batch size {batch_size} exceeds the {len(indices)} images available")
    rng = np.random.default_rng([seed, epoch, salt])
    order = rng.permutation(indices)
    steps = len(order) // batch_size
    return order[: steps * batch_size].reshape(steps, batch_size).astype(np.int32)
