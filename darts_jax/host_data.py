"""Streaming data for sets that do not fit on the device (ImageNet), decoded on the host.

ImageNet's 1.28 M variable-size JPEGs cannot live on the device as CIFAR-10
does, so each batch is read from a prepared tensorflow-datasets folder
(``tfds.data_source``: random access, no TensorFlow), cropped and resized with
pillow in a thread pool, and handed over as uint8 NHWC; normalisation and the
colour jitter run on the device. Transforms follow the official DARTS ImageNet
script: RandomResizedCrop(224) and a horizontal flip for training, resize to
256 then a 224 centre crop for evaluation.
"""

from __future__ import annotations

import concurrent.futures
import math
from collections.abc import Iterator

import numpy as np

from darts_jax.data import DatasetInfo, open_tfds_source


def random_resized_crop_box(
    rng: np.random.Generator,
    height: int,
    width: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box (top, left, h, w): ten tries at a random
    area and aspect ratio, else the centre crop at the nearest allowed ratio."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def train_transform(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """RandomResizedCrop(size) (bilinear) and a horizontal flip with probability 0.5."""
    from PIL import Image

    top, left, h, w = random_resized_crop_box(rng, image.shape[0], image.shape[1])
    crop = Image.fromarray(image[top : top + h, left : left + w])
    out = np.asarray(crop.resize((size, size), Image.BILINEAR))
    return out[:, ::-1] if rng.random() < 0.5 else out


def eval_transform(image: np.ndarray, size: int, resize: int) -> np.ndarray:
    """Resize the shorter side to ``resize`` (bilinear), then a centre crop of ``size``."""
    from PIL import Image

    h, w = image.shape[:2]
    scale = resize / min(h, w)
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return resized[top : top + size, left : left + size]


def _rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, np.uint8)
    if image.ndim == 2:
        image = image[..., None]
    return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image[..., :3]


class HostSplit:
    """One split of a prepared tfds data set, read and transformed batch by batch."""

    def __init__(self, info: DatasetInfo, split: str, data_dir: str | None, workers: int = 4):
        self.info = info
        self.source = open_tfds_source(info, split, data_dir)
        self.workers = max(1, workers)

    def __len__(self) -> int:
        return len(self.source)

    def _example(self, index: int, train: bool, seed) -> tuple[np.ndarray, int]:
        example = self.source[int(index)]
        image = _rgb(example["image"])
        if train:
            image = train_transform(image, self.info.size, np.random.default_rng(seed))
        else:
            image = eval_transform(image, self.info.size, self.info.eval_resize)
        return image, int(example["label"])

    def batch(self, indices: np.ndarray, train: bool, seed: tuple = ()) -> dict:
        """uint8 images (B, size, size, 3) and int32 labels; train crops are drawn
        from ``(*seed, index)``, so a resumed epoch sees the same crops."""
        pairs = [self._example(i, train, (*seed, int(i))) for i in indices]
        return {
            "images": np.stack([p[0] for p in pairs]),
            "labels": np.asarray([p[1] for p in pairs], np.int32),
        }

    def batches(self, batch_indices: np.ndarray, train: bool, seed: tuple = ()) -> Iterator[dict]:
        """Batches in order, ``workers`` of them prepared ahead in threads
        (pillow releases the GIL while resizing)."""
        with concurrent.futures.ThreadPoolExecutor(self.workers) as pool:
            ahead = [pool.submit(self.batch, b, train, seed) for b in batch_indices[: self.workers]]
            for i in range(len(batch_indices)):
                if i + self.workers < len(batch_indices):
                    b = batch_indices[i + self.workers]
                    ahead.append(pool.submit(self.batch, b, train, seed))
                yield ahead[i].result()
                ahead[i] = None  # free the batch
