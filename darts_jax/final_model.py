"""The final (augment) network built from a genotype, as pt.darts's AugmentCNN.

The input is NHWC; after the stem, states and ops run features first,
(C, N, H, W) (see ``ops``); the auxiliary head runs NHWC.

Every BN is affine. Pooling ops keep pt.darts's affine BN after the pool (the
official code has none there). Drop path applies to every op but identity,
with a per-sample mask drawn from the 'drop_path' RNG stream, and only in
training with a positive probability. The auxiliary head sits after cell
2 * layers // 3 and runs only in training.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from darts_jax import ops
from darts_jax.genotypes import Genotype, validate
from darts_jax.search_model import Stem, classifier, reduction_indices


class DilConv(nn.Module):
    """ReLU, depthwise k x k (stride, dilation), pointwise to ``features``, affine BN.
    (C, N, H, W) in and out, as every op of the final cells."""

    features: int
    kernel_size: int
    stride: int
    dilation: int

    @nn.compact
    def __call__(self, x, train: bool):
        c, k = x.shape[0], self.kernel_size
        dw = self.param("dw", ops.torch_uniform_init(k * k), (k, k, c))
        pw = self.param("pw", ops.torch_uniform_init(c), (c, self.features))
        y = ops.depthwise_conv(nn.relu(x), dw, self.stride, self.dilation, features_first=True)
        y = ops.pointwise_conv(y, pw, features_first=True)
        return ops.BatchNorm(affine=True, features_first=True, name="bn")(y, train)


class SepConv(nn.Module):
    """Two DilConv blocks at dilation 1, the first with the stride."""

    features: int
    kernel_size: int
    stride: int

    @nn.compact
    def __call__(self, x, train: bool):
        k = self.kernel_size
        x = DilConv(x.shape[0], k, self.stride, 1, name="conv1")(x, train)
        return DilConv(self.features, k, 1, 1, name="conv2")(x, train)


class PoolBN(nn.Module):
    """3x3 max or average pool (padding excluded from the mean), then affine BN
    (pt.darts; ``bn=False``: the official network's bare pool)."""

    kind: str
    stride: int
    bn: bool = True

    @nn.compact
    def __call__(self, x, train: bool):
        pool = ops.max_pool_3x3 if self.kind == "max" else ops.avg_pool_3x3
        y = pool(x, self.stride, features_first=True)
        if not self.bn:
            return y
        return ops.BatchNorm(affine=True, features_first=True, name="bn")(y, train)


def make_op(
    name: str, features: int, stride: int, op_name: str, pool_bn: bool = True
) -> nn.Module | None:
    """The module for a genotype op other than `none`; None for identity."""
    if name == "max_pool_3x3":
        return PoolBN("max", stride, pool_bn, name=op_name)
    if name == "avg_pool_3x3":
        return PoolBN("avg", stride, pool_bn, name=op_name)
    if name == "skip_connect":
        if stride == 1:
            return None
        return ops.FactorizedReduce(features, True, features_first=True, name=op_name)
    if name in ("sep_conv_3x3", "sep_conv_5x5"):
        return SepConv(features, int(name[-1]), stride, name=op_name)
    if name in ("dil_conv_3x3", "dil_conv_5x5"):
        return DilConv(features, int(name[-1]), stride, 2, name=op_name)
    raise ValueError(f"no module for op {name!r}")


def drop_path(x: jax.Array, drop_prob: jax.Array, rng: jax.Array, batch_axis: int = 0) -> jax.Array:
    """Zeroes whole samples with probability ``drop_prob``, scales the rest by 1 / keep.

    ``batch_axis``: the sample axis of x (1 for (C, N, H, W)); the mask draws are
    the same whichever it is."""
    keep = 1.0 - drop_prob
    shape = [1] * x.ndim
    shape[batch_axis] = x.shape[batch_axis]
    mask = jax.random.bernoulli(rng, keep, tuple(shape))
    return jnp.where(mask, x / keep, 0.0)


class FinalCell(nn.Module):
    """A cell of the final network: preprocess both inputs, then the genotype's DAG.
    States are (C, N, H, W)."""

    nodes: tuple  # ((op, input), ...) per node
    concat: tuple
    features: int
    reduction: bool
    reduction_prev: bool
    pool_bn: bool = True

    @nn.compact
    def __call__(self, s0, s1, train: bool, drop_prob):
        c = self.features
        if self.reduction_prev:
            s0 = ops.FactorizedReduce(c, True, features_first=True, name="preproc0")(s0, train)
        else:
            s0 = ops.StdConv(c, True, features_first=True, name="preproc0")(s0, train)
        s1 = ops.StdConv(c, True, features_first=True, name="preproc1")(s1, train)
        states = [s0, s1]
        for i, edges in enumerate(self.nodes):
            total = None
            for e, (name, j) in enumerate(edges):
                stride = 2 if self.reduction and j < 2 else 1
                x = states[j]
                if name == "none":
                    total = (
                        total if total is not None else jnp.zeros_like(x[..., ::stride, ::stride])
                    )
                    continue
                op = make_op(name, c, stride, f"node{i}_edge{e}", self.pool_bn)
                if op is None:
                    y = x
                else:
                    y = op(x, train)
                    if train:
                        y = jnp.where(
                            drop_prob > 0,
                            drop_path(y, drop_prob, self.make_rng("drop_path"), batch_axis=1),
                            y,
                        )
                total = y if total is None else total + y
            states.append(total)
        return jnp.concatenate([states[k] for k in self.concat], axis=0)


def aux_head_min_size(imagenet: bool = False) -> int:
    """The smallest feature map the auxiliary head takes: its 5x5 pool, then its
    2x2 conv, need a pooled map of at least 2x2."""
    return 7 if imagenet else 6


def aux_head_input_size(image_size: int, layers: int, imagenet: bool = False) -> int:
    """Side of the feature map the auxiliary head reads (after cell 2 * layers // 3)
    for square inputs of ``image_size``: the ImageNet stem's three stride-2 convs,
    then every reduction cell up to the head's position."""
    size = image_size
    for _ in range(3 if imagenet else 0):
        size = ops.out_size(size, 2)
    for i in sorted(set(reduction_indices(layers))):
        if i <= 2 * layers // 3:
            size = ops.out_size(size, 2)
    return size


class AuxiliaryHead(nn.Module):
    """ReLU, AvgPool 5 (stride input_size - 5), 1x1 conv 128, BN, ReLU, 2x2 conv 768, BN, ReLU, linear.

    ``imagenet``: the official ImageNet head instead: pool stride 2 and no BN
    after the 2x2 conv (the official code comments that BN out, "for
    consistency with the experiments in the paper").
    """

    num_classes: int
    imagenet: bool = False

    @nn.compact
    def __call__(self, x, train: bool):
        """x: NHWC."""
        size = x.shape[1]
        smallest = aux_head_min_size(self.imagenet)
        if size < smallest:
            raise ValueError(
                f"the auxiliary head needs >= {smallest}x{smallest} features, got {size}x{size}: "
                "the input is too small for it; train without it (--aux_weight 0)"
            )
        stride = 2 if self.imagenet else size - 5
        x = nn.avg_pool(nn.relu(x), (5, 5), strides=(stride, stride), padding="VALID")
        c = x.shape[-1]
        k1 = self.param("conv1", ops.torch_uniform_init(c), (c, 128))
        x = nn.relu(ops.BatchNorm(affine=True, name="bn1")(ops.pointwise_conv(x, k1), train))
        k2 = self.param("conv2", ops.torch_uniform_init(128 * 4), (2, 2, 128, 768))
        x = jax.lax.conv_general_dilated(
            x, k2, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        if not self.imagenet:
            x = ops.BatchNorm(affine=True, name="bn2")(x, train)
        x = nn.relu(x).reshape(x.shape[0], -1)
        return classifier(x.shape[-1], self.num_classes, name="linear")(x)


def _frozen(nodes) -> tuple:
    return tuple(tuple((op, int(j)) for op, j in node) for node in nodes)


class FinalNetwork(nn.Module):
    """pt.darts's AugmentCNN: stem, ``layers`` genotype cells, optional aux head, classifier.

    ``__call__(x_nhwc, train, drop_prob=0.0)`` returns logits, or (logits, aux_logits)
    in training with ``auxiliary``. Pass ``rngs={'drop_path': key}`` when training
    with a positive ``drop_prob``.

    ``pool_bn=False``: no BN after max/avg pooling, as the official networks
    have it (for their imported checkpoints).

    ``imagenet``: the official NetworkImageNet instead: stem0 (conv 3x3 stride 2
    to C/2, BN, ReLU, conv 3x3 stride 2 to C, BN), stem1 (ReLU, conv 3x3 stride
    2, BN) feeding s0 and s1 (so the first cell reduces s0), the ImageNet aux
    head, and global average pooling (the official AvgPool(7) on the 7x7 maps
    of 224x224 inputs).
    """

    genotype: Genotype
    C: int = 36
    num_classes: int = 10
    layers: int = 20
    auxiliary: bool = True
    stem_multiplier: int = 3
    imagenet: bool = False
    pool_bn: bool = True

    @nn.compact
    def __call__(self, x_nhwc, train: bool, drop_prob=0.0):
        g = validate(self.genotype)
        if self.imagenet:
            s0 = Stem(self.C // 2, stride=2, name="stem0_conv1")(x_nhwc, train)
            s0 = Stem(self.C, stride=2, name="stem0_conv2")(nn.relu(s0), train)
            s1 = Stem(self.C, stride=2, name="stem1")(nn.relu(s0), train)
            reduction_prev = True
        else:
            s0 = s1 = Stem(self.stem_multiplier * self.C, name="stem")(x_nhwc, train)
            reduction_prev = False
        # Cells run features first (see ``ops``): states are (C, N, H, W).
        s0, s1 = (jnp.transpose(s, (3, 0, 1, 2)) for s in (s0, s1))
        c, aux_logits = self.C, None
        aux_pos = 2 * self.layers // 3
        for i in range(self.layers):
            reduction = i in reduction_indices(self.layers)
            c = c * 2 if reduction else c
            nodes, concat = (
                (g.reduce, g.reduce_concat) if reduction else (g.normal, g.normal_concat)
            )
            cell = FinalCell(
                _frozen(nodes),
                tuple(concat),
                c,
                reduction,
                reduction_prev,
                self.pool_bn,
                name=f"cell{i}",
            )
            s0, s1 = s1, cell(s0, s1, train, jnp.asarray(drop_prob, x_nhwc.dtype))
            reduction_prev = reduction
            if i == aux_pos and self.auxiliary and (train or self.is_initializing()):
                aux_logits = AuxiliaryHead(self.num_classes, self.imagenet, name="aux_head")(
                    jnp.transpose(s1, (1, 2, 3, 0)), train
                )
        features = s1.mean(axis=(2, 3)).T  # (N, C)
        logits = classifier(features.shape[-1], self.num_classes)(features)
        if self.auxiliary and train:
            return logits, aux_logits
        return logits


def count_params_excluding_aux(params) -> int:
    """Parameter count as pt.darts's "Model size" reports it: aux head excluded."""
    return sum(
        math.prod(p.shape)
        for path, p in jax.tree_util.tree_leaves_with_path(params)
        if "aux_head" not in jax.tree_util.keystr(path)
    )
