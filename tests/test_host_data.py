"""Host-side streaming (ImageNet): crop boxes, transforms, batches from a mocked tfds split."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from darts_jax import data, host_data


@pytest.mark.parametrize("shape", [(40, 60), (300, 20), (20, 300), (7, 7)])
def test_random_resized_crop_box_stays_inside(shape):
    rng = np.random.default_rng(0)
    for _ in range(200):
        top, left, h, w = host_data.random_resized_crop_box(rng, *shape)
        assert 0 <= top and top + h <= shape[0] and 0 <= left and left + w <= shape[1]
        assert h >= 1 and w >= 1


def test_random_resized_crop_box_area_and_ratio_when_it_fits():
    rng = np.random.default_rng(1)
    boxes = [host_data.random_resized_crop_box(rng, 500, 500) for _ in range(500)]
    areas = np.array([h * w for _, _, h, w in boxes]) / 500**2
    ratios = np.array([w / h for _, _, h, w in boxes])
    assert areas.min() >= 0.07 and areas.max() <= 1.0
    assert ratios.min() >= 0.74 and ratios.max() <= 1.35


def test_transforms_give_the_crop_size():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (37, 91, 3), dtype=np.uint8)
    assert host_data.train_transform(image, 32, rng).shape == (32, 32, 3)
    assert host_data.eval_transform(image, 32, 36).shape == (32, 32, 3)
    # The centre crop of an image already at the size is the image itself.
    square = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(host_data.eval_transform(square, 32, 32), square)


def test_host_split_batches_from_mocked_imagenet():
    info = data.dataset_info("imagenet2012")
    with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
        split = host_data.HostSplit(info, "train", None, workers=2)
        order = np.arange(6).reshape(3, 2)
        batches = list(split.batches(order, train=True, seed=(0, 1)))
        again = split.batch(order[1], train=True, seed=(0, 1))
        val = host_data.HostSplit(info, "validation", None).batch(np.arange(3), train=False)
    assert len(batches) == 3
    assert batches[0]["images"].shape == (2, 224, 224, 3) and batches[0]["images"].dtype == np.uint8
    assert batches[0]["labels"].dtype == np.int32 and batches[0]["labels"].max() < 1000
    np.testing.assert_array_equal(batches[1]["images"], again["images"])  # seeded crops
    assert val["images"].shape == (3, 224, 224, 3)


def test_streamed_set_is_not_loaded_whole_and_missing_imagenet_says_how(tmp_path):
    with pytest.raises(ValueError, match="streamed"):
        data.load("imagenet")
    with pytest.raises(data.DataMissingError, match="downloads/manual"):
        host_data.HostSplit(data.dataset_info("imagenet"), "train", str(tmp_path))
