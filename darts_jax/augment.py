"""Augmentation and normalisation on the device, batched, from explicit RNG keys.

Each function maps (rng, uint8 or float images (B, H, W, C)) to float images.
Semantics follow the torchvision transforms pt.darts uses: RandomCrop with zero
padding, RandomHorizontalFlip, RandomAffine (nearest, zero fill),
RandomVerticalFlip, Normalize, and Cutout after normalisation.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.scipy import ndimage

from darts_jax.data import DatasetInfo

Augment = Callable[[jax.Array, jax.Array], jax.Array]


def normalize(images: jax.Array, mean, std) -> jax.Array:
    """uint8 [0, 255] -> (x / 255 - mean) / std, float32."""
    x = images.astype(jnp.float32) / 255.0
    return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def random_crop(rng: jax.Array, images: jax.Array, padding: int) -> jax.Array:
    """RandomCrop(size, padding): zero-pad, then crop the original size at a random offset."""
    b, h, w, c = images.shape
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    offsets = jax.random.randint(rng, (b, 2), 0, 2 * padding + 1)

    def crop(image, offset):
        return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, c))

    return jax.vmap(crop)(padded, offsets)


def random_flip(rng: jax.Array, images: jax.Array, axis: int) -> jax.Array:
    """Flips each image along ``axis`` (1: vertical, 2: horizontal) with probability 0.5."""
    flip = jax.random.bernoulli(rng, 0.5, (images.shape[0],) + (1,) * (images.ndim - 1))
    return jnp.where(flip, jnp.flip(images, axis=axis), images)


def _inverse_affine(angle, tx, ty, scale, shear_x, cx, cy):
    """torchvision's inverse affine matrix: output pixel (x, y) -> input pixel."""
    rot, sx = jnp.deg2rad(angle), jnp.deg2rad(shear_x)
    a, b = jnp.cos(rot), -jnp.cos(rot) * jnp.tan(sx) - jnp.sin(rot)
    c, d = jnp.sin(rot), -jnp.sin(rot) * jnp.tan(sx) + jnp.cos(rot)
    m = jnp.array([d, -b, -c, a]) / scale
    m2 = m[0] * (-cx - tx) + m[1] * (-cy - ty) + cx
    m5 = m[2] * (-cx - tx) + m[3] * (-cy - ty) + cy
    return m[0], m[1], m2, m[2], m[3], m5


def random_affine(
    rng: jax.Array,
    images: jax.Array,
    degrees: float = 15.0,
    translate: float = 0.1,
    scale: tuple[float, float] = (0.9, 1.1),
    shear: float = 0.1,
) -> jax.Array:
    """RandomAffine(degrees, translate, scale, shear) with nearest sampling, zero fill."""
    b, h, w, _ = images.shape
    k = jax.random.split(rng, 5)
    angle = jax.random.uniform(k[0], (b,), minval=-degrees, maxval=degrees)
    tx = jnp.round(jax.random.uniform(k[1], (b,), minval=-translate * w, maxval=translate * w))
    ty = jnp.round(jax.random.uniform(k[2], (b,), minval=-translate * h, maxval=translate * h))
    zoom = jax.random.uniform(k[3], (b,), minval=scale[0], maxval=scale[1])
    shear_x = jax.random.uniform(k[4], (b,), minval=-shear, maxval=shear)
    ys, xs = jnp.meshgrid(
        jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij"
    )

    def warp(image, angle, tx, ty, zoom, shear_x):
        m0, m1, m2, m3, m4, m5 = _inverse_affine(
            angle, tx, ty, zoom, shear_x, (w - 1) * 0.5, (h - 1) * 0.5
        )
        x_in, y_in = m0 * xs + m1 * ys + m2, m3 * xs + m4 * ys + m5

        def sample(channel):
            return ndimage.map_coordinates(channel, [y_in, x_in], order=0, mode="constant")

        return jax.vmap(sample, in_axes=2, out_axes=2)(image)

    return jax.vmap(warp)(images.astype(jnp.float32), angle, tx, ty, zoom, shear_x)


def cutout(rng: jax.Array, images: jax.Array, length: int) -> jax.Array:
    """Zeroes one length x length square per image, centred anywhere, clipped at the border."""
    b, h, w, _ = images.shape
    k_y, k_x = jax.random.split(rng)
    cy = jax.random.randint(k_y, (b, 1, 1, 1), 0, h)
    cx = jax.random.randint(k_x, (b, 1, 1, 1), 0, w)
    ys = jnp.arange(h)[None, :, None, None]
    xs = jnp.arange(w)[None, None, :, None]
    inside = (
        (ys >= cy - length // 2)
        & (ys < cy + length // 2)
        & (xs >= cx - length // 2)
        & (xs < cx + length // 2)
    )
    return jnp.where(inside, 0.0, images)


def _rgb_to_hsv(rgb: jax.Array) -> jax.Array:
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    maxc, minc = rgb.max(-1), rgb.min(-1)
    delta = maxc - minc
    safe = jnp.where(delta > 0, delta, 1.0)
    h = jnp.where(
        maxc == r, (g - b) / safe, jnp.where(maxc == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe)
    )
    h = jnp.where(delta > 0, (h / 6.0) % 1.0, 0.0)
    s = jnp.where(maxc > 0, delta / jnp.where(maxc > 0, maxc, 1.0), 0.0)
    return jnp.stack([h, s, maxc], -1)


def _hsv_to_rgb(hsv: jax.Array) -> jax.Array:
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    k = (jnp.array([5.0, 3.0, 1.0]) + h[..., None] * 6.0) % 6.0
    return v[..., None] - v[..., None] * s[..., None] * jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0)


def color_jitter(
    rng: jax.Array,
    images: jax.Array,
    brightness: float = 0.4,
    contrast: float = 0.4,
    saturation: float = 0.4,
    hue: float = 0.2,
) -> jax.Array:
    """ColorJitter on float RGB in [0, 1], per image: brightness, contrast, saturation
    factors in [1 - x, 1 + x] and a hue shift in [-hue, hue] turns, in that fixed
    order (torchvision draws the order at random)."""
    b = images.shape[0]
    k = jax.random.split(rng, 4)

    def factor(key, x):
        return jax.random.uniform(key, (b, 1, 1, 1), minval=1 - x, maxval=1 + x)

    x = jnp.clip(images * factor(k[0], brightness), 0.0, 1.0)
    gray = (x @ jnp.array([0.299, 0.587, 0.114]))[..., None]
    x = jnp.clip(
        gray.mean(axis=(1, 2), keepdims=True) * (1 - factor(k[1], contrast))
        + x * factor(k[1], contrast),
        0.0,
        1.0,
    )
    gray = (x @ jnp.array([0.299, 0.587, 0.114]))[..., None]
    s = factor(k[2], saturation)
    x = jnp.clip(gray * (1 - s) + x * s, 0.0, 1.0)
    shift = jax.random.uniform(k[3], (b, 1, 1), minval=-hue, maxval=hue)
    hsv = _rgb_to_hsv(x)
    hsv = hsv.at[..., 0].set((hsv[..., 0] + shift) % 1.0)
    return _hsv_to_rgb(hsv)


def train_augment(
    info: DatasetInfo, rng: jax.Array, images: jax.Array, cutout_length: int = 0
) -> jax.Array:
    """The data set's training transform, then normalisation (and cutout if > 0)."""
    k_geo, k_flip, k_cut = jax.random.split(rng, 3)
    if info.augmentation == "imagenet":
        # Crops and flips were done on the host (darts_jax.host_data).
        x = color_jitter(k_geo, images.astype(jnp.float32) / 255.0)
        x = (x - jnp.asarray(info.mean, jnp.float32)) / jnp.asarray(info.std, jnp.float32)
        return cutout(k_cut, x, cutout_length) if cutout_length > 0 else x
    if info.augmentation in ("crop_flip", "crop"):
        images = random_crop(k_geo, images, info.crop_padding)
        if info.augmentation == "crop_flip":
            images = random_flip(k_flip, images, axis=2)
    elif info.augmentation in ("affine", "affine_vflip"):
        images = random_affine(k_geo, images)
        if info.augmentation == "affine_vflip":
            images = random_flip(k_flip, images, axis=1)
    else:
        raise ValueError(f"unknown augmentation {info.augmentation!r}")
    x = normalize(images, info.mean, info.std)
    return cutout(k_cut, x, cutout_length) if cutout_length > 0 else x


def eval_transform(info: DatasetInfo, rng: jax.Array, images: jax.Array) -> jax.Array:
    """Test-time transform: normalisation only (``rng`` unused, same signature)."""
    del rng
    return normalize(images, info.mean, info.std)


def make_augment(info: DatasetInfo, train: bool, cutout_length: int = 0) -> Augment:
    if train:
        return functools.partial(train_augment, info, cutout_length=cutout_length)
    return functools.partial(eval_transform, info)
