import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from darts_jax import augment, data


def test_digits_is_embedded_and_split():
    ds = data.load("digits")
    assert ds.train_images.shape == (1437, 8, 8, 1) and ds.train_images.dtype == np.uint8
    assert ds.test_images.shape == (360, 8, 8, 1)
    assert set(np.unique(ds.train_labels)) == set(range(10))
    x = ds.train_images / 255.0
    assert x.mean() == pytest.approx(ds.info.mean[0], abs=1e-6)
    assert x.std() == pytest.approx(ds.info.std[0], abs=1e-6)


def test_tfds_path_under_mock_data():
    with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
        ds = data.load("cifar10")
    assert ds.train_images.shape == (12, 32, 32, 3) and ds.train_images.dtype == np.uint8
    assert ds.test_labels.shape == (12,) and ds.info.num_classes == 10
    with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
        ds = data.load("fashion_mnist")
    assert ds.train_images.shape == (6, 28, 28, 1) and ds.info.name == "fashionmnist"


def test_missing_data_set_is_one_clear_error(tmp_path):
    with pytest.raises(data.DataMissingError) as info:
        data.load("cifar10", data_dir=str(tmp_path))
    msg = str(info.value)
    assert "tfds build cifar10 --file_format=array_record" in msg
    assert str(tmp_path) in msg and "digits" in msg


def test_unknown_dataset_name():
    with pytest.raises(ValueError, match="unknown dataset 'imagenet5'"):
        data.dataset_info("imagenet5")
    assert data.dataset_info("fashion_mnist").name == "fashionmnist"


def test_search_split_halves_and_epoch_batches():
    w, a = data.search_split(101)
    assert len(w) == 50 and len(a) == 51 and set(w).isdisjoint(a)
    b1 = data.epoch_batches(w, 8, seed=2, epoch=0, salt=0)
    assert b1.shape == (6, 8) and len(set(b1.ravel())) == 48 and set(b1.ravel()) <= set(w)
    np.testing.assert_array_equal(b1, data.epoch_batches(w, 8, seed=2, epoch=0, salt=0))
    assert not np.array_equal(b1, data.epoch_batches(w, 8, seed=2, epoch=1, salt=0))
    with pytest.raises(ValueError, match="exceeds"):
        data.epoch_batches(w, 64, 0, 0, 0)
    with pytest.raises(ValueError, match="portion"):
        data.search_split(10, 1.0)


def test_random_crop_keeps_shape_and_pixels_from_padded_image():
    x = jnp.arange(2 * 8 * 8, dtype=jnp.float32).reshape(2, 8, 8, 1) + 1
    y = augment.random_crop(jax.random.PRNGKey(0), x, padding=2)
    assert y.shape == x.shape
    assert set(np.unique(np.asarray(y))) <= set(np.unique(np.asarray(x))) | {0.0}


def test_flip_and_identity_affine():
    x = jax.random.uniform(jax.random.PRNGKey(1), (16, 6, 6, 1))
    flipped = augment.random_flip(jax.random.PRNGKey(2), x, axis=2)
    for i in range(16):
        assert np.allclose(flipped[i], x[i]) or np.allclose(flipped[i], x[i, :, ::-1])
    same = augment.random_affine(
        jax.random.PRNGKey(3), x, degrees=0, translate=0, scale=(1, 1), shear=0
    )
    np.testing.assert_allclose(same, x)
    moved = augment.random_affine(jax.random.PRNGKey(3), x)
    assert moved.shape == x.shape and not np.allclose(moved, x)


def test_cutout_zeroes_at_most_a_square():
    x = jnp.ones((8, 10, 10, 2))
    y = augment.cutout(jax.random.PRNGKey(0), x, 4)
    zeros = np.asarray((y == 0).sum(axis=(1, 2, 3)))
    assert (zeros <= 4 * 4 * 2).all() and (zeros > 0).all()


def test_cutout_blanks_whole_images_exactly_from_twice_the_size():
    """The bound train_final's --cutout_length check uses (length // 2 >= size)."""
    x = jnp.ones((64, 8, 8, 1))
    for length, always_blank in [(16, True), (17, True), (15, False), (14, False)]:
        y = augment.cutout(jax.random.PRNGKey(length), x, length)
        blank = np.asarray((y == 0).all(axis=(1, 2, 3)))
        assert blank.all() == always_blank, length


@pytest.mark.parametrize("name", sorted(data.DATASETS))
def test_train_augment_shapes_and_ranges(name):
    info = data.dataset_info(name)
    x = jnp.asarray(
        np.random.default_rng(0).integers(0, 256, (4, info.size, info.size, info.channels)),
        jnp.uint8,
    )
    y = augment.make_augment(info, train=True)(jax.random.PRNGKey(0), x)
    assert y.shape == x.shape and y.dtype == jnp.float32
    lo = min((0 - m) / s for m, s in zip(info.mean, info.std, strict=True))
    hi = max((1 - m) / s for m, s in zip(info.mean, info.std, strict=True))
    assert float(y.min()) >= lo - 1e-5 and float(y.max()) <= hi + 1e-5
    z = augment.make_augment(info, train=False)(jax.random.PRNGKey(0), x)
    np.testing.assert_allclose(z, augment.normalize(x, info.mean, info.std))


def test_color_jitter_hsv_round_trip_and_identity():
    import colorsys

    x = jax.random.uniform(jax.random.PRNGKey(0), (2, 3, 3, 3))
    hsv = augment._rgb_to_hsv(x)
    ref = np.array([colorsys.rgb_to_hsv(*p) for p in np.asarray(x).reshape(-1, 3)])
    np.testing.assert_allclose(np.asarray(hsv).reshape(-1, 3), ref, atol=1e-6)
    np.testing.assert_allclose(augment._hsv_to_rgb(hsv), x, atol=1e-6)
    same = augment.color_jitter(jax.random.PRNGKey(1), x, 0.0, 0.0, 0.0, 0.0)
    np.testing.assert_allclose(same, x, atol=1e-6)
    jittered = augment.color_jitter(jax.random.PRNGKey(1), x)
    assert jittered.shape == x.shape and float(jittered.min()) >= 0 and float(jittered.max()) <= 1
    assert float(jnp.abs(jittered - x).max()) > 0.01


def test_imagenet_train_augment_normalises_host_crops():
    info = data.dataset_info("imagenet")
    images = jnp.full((2, 8, 8, 3), 128, jnp.uint8)
    out = augment.make_augment(info, train=True)(jax.random.PRNGKey(0), images)
    assert out.shape == (2, 8, 8, 3) and out.dtype == jnp.float32
    evaluated = augment.make_augment(info, train=False)(None, images)
    expected = (128 / 255 - np.array(info.mean)) / np.array(info.std)
    np.testing.assert_allclose(evaluated[0, 0, 0], expected, rtol=1e-5)
