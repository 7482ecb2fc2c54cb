"""The DARTS search network (supernet), with alphas as a separate argument.

The input is NHWC; after the stem, states run features first, (C, N, H, W),
and the cells' mixed ops (*features, N, H, W) (see ``ops``).

Every edge of a search cell is a MixedOp: the softmax(alpha)-weighted sum of
all PRIMITIVES. To keep the XLA program small and the step fast, edges are not
built one module each: a cell computes the edges leaving the two cell inputs
in one batched call (``MixedEdges`` over an (M targets, S sources) edge grid),
then the edges between its nodes in one ``lax.scan`` over source nodes
(``NodeEdges``), so each cell is two mixed-op programs whatever its node count.
Parameter-free ops (pools, identity) of edges sharing a source are computed
once per source: with affine-free BN their outputs are identical for all those
edges, as in pt.darts. The normal cells of one stage have the same shapes, so
in training and evaluation (not while initialising) they run as one
``lax.scan`` (``scanned_cells``): one compiled cell per stage.

Alphas: ``{'normal': (n_edges, 8), 'reduce': (n_edges, 8)}``, rows in pt.darts
edge order (node 0's inputs, then node 1's, ...), columns in PRIMITIVES order.
"""

from __future__ import annotations

import contextlib
import functools
import operator
from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from darts_jax import ops, remat
from darts_jax.genotypes import PRIMITIVES, edge_offsets, num_edges

# NodeEdges runs its scan as a loop on cells whose node states have fewer
# elements than this, and as one call per source node (real edges only) on
# larger ones. A loop compiles one body (the test-size second-order step
# compiles in 52 s instead of 77 s). At full size, unrolled runs faster: with
# the CPU's matrix-product depthwise convs (measured in session 4, NHWC) the
# default first-order step took 51-58 s unrolled against 58 s as loops, and XLA
# planned 34 GB instead of 39 GB for the second-order step; with grouped
# convolutions XLA:CPU ran a kernel gradient inside a loop body 9-14x slower.
# Dropping the loop's padding slots when unrolled (session 7): one full-size
# normal cell, forward + backward, 4.18 -> 3.53 s and 3.58 -> 2.92 GB planned,
# but a slower compile (three step shapes instead of one: 4.4 -> 6.4 s).
ROLLED_MAX_ELEMENTS = 2**16


# Conv pair -> (dilation, runs at the cell's stride, ((parameter prefix, kernel size), ...)),
# the 3x3 member first. Each pair runs as one 5x5 depthwise conv (see MixedEdges).
CONV_PAIRS = {
    "sep_convs_1": (1, True, (("sep_conv_3x3_1", 3), ("sep_conv_5x5_1", 5))),
    "sep_convs_2": (1, False, (("sep_conv_3x3_2", 3), ("sep_conv_5x5_2", 5))),
    "dil_convs": (2, True, (("dil_conv_3x3", 3), ("dil_conv_5x5", 5))),
}


def edge_param_shapes(grid: tuple[int, ...], c: int, stride: int) -> dict[str, tuple]:
    """Parameter name -> (shape, fan_in) of the MixedOps on an edge ``grid`` of C channels."""
    shapes = {}
    for _, _, members in CONV_PAIRS.values():
        for prefix, k in members:
            shapes[f"{prefix}_dw"] = ((k, k, *grid, c), k * k)
            shapes[f"{prefix}_pw"] = ((*grid, c, c), c)
    if stride == 2:  # skip_connect is a FactorizedReduce per edge
        shapes["skip_connect_fr1"] = shapes["skip_connect_fr2"] = ((*grid, c, c // 2), c)
    return shapes


def edge_bn_shapes(grid: tuple[int, ...], n_src: int, c: int, stride: int) -> dict[str, tuple]:
    """BN name -> statistics shape. Pool BNs are per source state (their input is shared);
    a conv pair's BN is one (2, *grid, C) entry, pair member first."""
    shapes = {"max_pool_3x3_bn": (n_src, c), "avg_pool_3x3_bn": (n_src, c)}
    shapes.update({f"{pair}_bn": (2, *grid, c) for pair in CONV_PAIRS})
    if stride == 2:
        shapes["skip_connect_bn"] = (*grid, c)
    return shapes


def mixed_edges(params, x_scnhw: jax.Array, weights_mso: jax.Array, stride: int, norm):
    """The weighted sum of all PRIMITIVES on an (M targets, S sources) edge grid.

    Features first (see ``ops``): ``x_scnhw``: (S, C, N, H, W); ``params``:
    ``edge_param_shapes`` with grid (M, S); ``weights_mso``: (M, S, n_ops);
    ``norm(bn_name, y)`` normalises a BN's input. Returns (M, S, C, N, H', W').
    A pure function, so it can run inside ``lax.scan``.
    """
    x_relu = nn.relu(x_scnhw)[None, None]  # (1 pair member, 1 target, S, C, N, H, W)

    def conv_pair(pair, y):
        """Depthwise 5x5 -> pointwise -> BN for both members of a pair at once. A 3x3
        kernel is zero-padded to 5x5: at the same dilation and 'same' padding that
        is the same convolution, and only its real taps are parameters."""
        dilation, strided, members = CONV_PAIRS[pair]
        dws, pws = [], []
        for prefix, k in members:
            pad = (5 - k) // 2
            dws.append(jnp.pad(params[f"{prefix}_dw"], ((pad, pad), (pad, pad)) + ((0, 0),) * 3))
            pws.append(params[f"{prefix}_pw"])
        dw, pw = jnp.stack(dws, axis=2), jnp.stack(pws)  # (5, 5, 2, M, S, C), (2, M, S, C, C)
        y = ops.depthwise_conv(y, dw, stride if strided else 1, dilation, features_first=True)
        return norm(f"{pair}_bn", ops.pointwise_conv(y, pw, features_first=True))

    terms = {
        "max_pool_3x3": norm("max_pool_3x3_bn", ops.max_pool_3x3(x_scnhw, stride, True))[None],
        "avg_pool_3x3": norm("avg_pool_3x3_bn", ops.avg_pool_3x3(x_scnhw, stride, True))[None],
    }
    if stride == 1:
        terms["skip_connect"] = x_scnhw[None]
    else:
        even, odd = ops.factorized_reduce_inputs(x_relu[0], features_first=True)
        fr1, fr2 = params["skip_connect_fr1"], params["skip_connect_fr2"]
        y = jnp.concatenate(
            [ops.pointwise_conv(even, fr1, True), ops.pointwise_conv(odd, fr2, True)], axis=-4
        )
        terms["skip_connect"] = norm("skip_connect_bn", y)
    sep = conv_pair("sep_convs_2", nn.relu(conv_pair("sep_convs_1", x_relu)))
    dil = conv_pair("dil_convs", x_relu)
    terms["sep_conv_3x3"], terms["sep_conv_5x5"] = sep[0], sep[1]
    terms["dil_conv_3x3"], terms["dil_conv_5x5"] = dil[0], dil[1]

    # `none` contributes exactly zero and is left out of the sum; its alpha
    # still matters through the softmax normalisation. The weights are split
    # per op (and per target below) by one `unstack` each, whose transpose is
    # one stack of the alpha cotangents; indexing per term would transpose to
    # one zero-padded copy of the whole weight array per term, all added up.
    weights_op_ms = dict(zip(PRIMITIVES, jnp.unstack(weights_mso, axis=-1), strict=True))

    def weighted(term, weights):
        return term * weights[..., None, None, None, None]

    n_targets = weights_mso.shape[0]
    shared = {n: t[0] for n, t in terms.items() if t.shape[0] == 1 and n_targets > 1}
    out = sum_terms(
        weighted(term, weights_op_ms[name]) for name, term in terms.items() if name not in shared
    )
    if shared:
        # A term shared by the M targets is weighted per target in a loop rather
        # than broadcast over M: its gradient is then a sum of M products, which
        # XLA:CPU fuses elementwise, where a broadcast's gradient is a reduction
        # over the leading M axis that YNNPACK runs several times slower.
        per_target = {n: jnp.unstack(weights_op_ms[n]) for n in shared}  # M x (S,)
        out = out + jnp.stack(
            [
                sum_terms(weighted(t, per_target[n][m]) for n, t in shared.items())
                for m in range(n_targets)
            ]
        )
    return out


def sum_terms(terms) -> jax.Array:
    """The sum of an iterable of arrays, as a chain of adds (no reduction)."""
    return functools.reduce(operator.add, terms)


def batch_norm_fn(train: bool, running, record):
    """``norm(bn_name, y)`` for ``mixed_edges``, features first. Training: batch
    statistics, passed to ``record(bn_name, mean, var)``; else ``running(bn_name)``."""

    def norm(name, y):
        if train:
            y, mean, var = ops.normalize_batch(y, 1e-5, True)
            record(name, mean, var)
            return y
        return ops.normalize(y, *running(name), features_first=True)

    return norm


def _declare_params(module: nn.Module, shapes: dict[str, tuple]) -> dict[str, jax.Array]:
    return {
        name: module.param(name, ops.torch_uniform_init(fan_in), shape)
        for name, (shape, fan_in) in shapes.items()
    }


class MixedEdges(nn.Module):
    """MixedOps of the edges from S source states to M target nodes, in one call.

    ``x_scnhw``: (S, C, N, H, W) source states, features first; ``weights_mso``:
    (M, S, n_ops) softmaxed alphas. Returns (M, S, C, N, H', W'), the mixed output
    per edge. Parameters carry a leading (M, S) edge grid.

    The four conv ops run as three conv blocks over a leading pair axis, so XLA
    sees half the convolutions: (sep_conv_3x3, sep_conv_5x5) first halves and
    second halves at dilation 1, (dil_conv_3x3, dil_conv_5x5) at dilation 2.
    Parameter-free ops (pools, identity) are computed once per source: with
    affine-free BN their outputs are identical for all edges of a source.
    """

    n_targets: int
    stride: int

    @nn.compact
    def __call__(self, x_scnhw: jax.Array, weights_mso: jax.Array, train: bool) -> jax.Array:
        n_src, c, n, h, w = x_scnhw.shape
        grid = (self.n_targets, n_src)
        params = _declare_params(self, edge_param_shapes(grid, c, self.stride))
        stats = {
            b: ops.RunningStats(shape, x_scnhw.dtype, name=b)
            for b, shape in edge_bn_shapes(grid, n_src, c, self.stride).items()
        }
        if self.is_initializing():
            for running_stats in stats.values():
                running_stats()  # declares its variables
            out_size = (ops.out_size(h, self.stride), ops.out_size(w, self.stride))
            return jnp.zeros((*grid, c, n, *out_size), x_scnhw.dtype)
        count = n * ops.out_size(h, self.stride) * ops.out_size(w, self.stride)
        update = train and self.is_mutable_collection("batch_stats")

        def record(name, mean, var):
            if update:
                stats[name]((mean, var), count)

        norm = batch_norm_fn(train, lambda name: stats[name](), record)
        return mixed_edges(params, x_scnhw, weights_mso, self.stride, norm)


def node_edge_rows(n_nodes: int) -> dict[tuple[int, int], int]:
    """(source node j, target node i) -> row of that edge in ``NodeEdges``'s parameters.

    Rows are ordered by source, then target: the order the scan visits them.
    """
    pairs = [(j, i) for j in range(n_nodes - 1) for i in range(j + 1, n_nodes)]
    return {pair: row for row, pair in enumerate(pairs)}


def _take_steps(a: jax.Array, index_js: np.ndarray, axis: int, fill: float) -> jax.Array:
    """Gathers edge rows of ``a`` (edge axis ``axis``) into a (J steps, M slots) grid.

    Index ``a.shape[axis]`` is the padding slot, filled with ``fill``. Returns the
    step axis first, then ``a``'s axes with the edge axis replaced by (M, 1): the
    (M targets, S = 1 source) grid of one scan step.
    """
    widths = [(0, 0)] * a.ndim
    widths[axis] = (0, 1)
    padded = jnp.pad(a, widths, constant_values=fill)
    stepped = jnp.moveaxis(jnp.take(padded, index_js, axis=axis), axis, 0)
    return jnp.expand_dims(stepped, axis + 2)


class NodeEdges(nn.Module):
    """MixedOps of the edges between a cell's intermediate nodes, as one ``lax.scan``.

    Step j takes node j, complete once steps < j have run, and computes its
    edges to the M = n_nodes - 1 next nodes j+1, ..., j+M in one ``mixed_edges``
    call. Slots past the last node are padding: zero weights, zero kernels, so
    they add nothing. One scanned body per cell, instead of one program per
    source node, keeps the XLA program (and its compile time) small. Large
    cells (``ROLLED_MAX_ELEMENTS``) make one call per source node instead, each
    with that node's real edges only.

    ``sums_ncnhw``: (n_nodes, C, N, H, W), each node's sum over the cell-input
    edges, features first; ``weights_edge_op``: the cell's (n_edges, n_ops)
    softmaxed alphas. Returns the finished nodes, (n_nodes, C, N, H, W).
    Parameters and BN statistics are stored per real edge (``node_edge_rows``
    order): an edge axis of size n_nodes (n_nodes - 1) / 2; pool statistics
    per source node.
    """

    n_nodes: int

    @nn.compact
    def __call__(self, sums_ncnhw: jax.Array, weights_edge_op: jax.Array, train: bool):
        n_nodes, n_steps = self.n_nodes, self.n_nodes - 1
        if n_steps == 0:
            return sums_ncnhw
        c, n_rows = sums_ncnhw.shape[1], len(node_edge_rows(n_nodes))
        params = _declare_params(self, edge_param_shapes((n_rows,), c, 1))
        stats = {
            b: ops.RunningStats(shape, sums_ncnhw.dtype, name=b)
            for b, shape in edge_bn_shapes((n_rows,), n_steps, c, 1).items()
        }
        if self.is_initializing():
            for running_stats in stats.values():
                running_stats()  # declares its variables
            return sums_ncnhw

        if sums_ncnhw[0].size >= ROLLED_MAX_ELEMENTS:
            return self._unrolled(sums_ncnhw, weights_edge_op, params, stats, train)
        return self._rolled(sums_ncnhw, weights_edge_op, params, stats, train)

    def _unrolled(self, sums_ncnhw, weights_edge_op, params, stats, train):
        """Large cells: one ``mixed_edges`` call per source node, real edges only.

        Node j has n_nodes - 1 - j outgoing edges; the loop form pads every step
        to n_nodes - 1 slots (one shared body), which at full size is half as
        much work again on the node edges (9 slots for 6 edges at 4 nodes).
        """
        n_nodes, (batch, h, w) = self.n_nodes, sums_ncnhw.shape[2:]
        rows, offsets = node_edge_rows(n_nodes), edge_offsets(n_nodes)
        nodes = list(sums_ncnhw)
        moments = {}
        for j in range(n_nodes - 1):
            targets = range(j + 1, n_nodes)
            # Rows run by source, then target: node j's edges are one static slice
            # (a slice's transpose is a pad; a gather's would be a scatter-add).
            first = rows[(j, j + 1)]
            rows_j = slice(first, first + len(targets))
            params_j = {
                name: jnp.expand_dims(lax.slice_in_dim(p, first, rows_j.stop, axis=axis), axis + 1)
                for name, p in params.items()
                for axis in [2 if name.endswith("_dw") else 0]
            }
            weights_j = weights_edge_op[np.array([offsets[i] + j + 2 for i in targets])][:, None]

            def running(b, rows_j=rows_j, j=j):
                mean, var = stats[b]()
                if b.endswith("pool_3x3_bn"):  # per source node: (J, C) -> (1, C)
                    return mean[j : j + 1], var[j : j + 1]
                # (2, E, C) -> (2, M_j, 1, C)
                return tuple(v[:, rows_j, None] for v in (mean, var))

            def record(b, mean, var):
                moments.setdefault(b, []).append((mean, var))

            norm = batch_norm_fn(train, running, record)
            out = mixed_edges(params_j, nodes[j][None], weights_j, 1, norm)[:, 0]
            for m, i in enumerate(targets):
                nodes[i] = nodes[i] + out[m]
        if train and self.is_mutable_collection("batch_stats"):
            for b, per_step in moments.items():
                means, variances = zip(*per_step, strict=True)
                if b.endswith("pool_3x3_bn"):  # (1, C) per step -> (J, C)
                    mean, var = jnp.concatenate(means), jnp.concatenate(variances)
                else:  # (2, M_j, 1, C) per step -> (2, E, C): steps visit rows in order
                    mean, var = (jnp.concatenate(v, axis=1)[:, :, 0] for v in (means, variances))
                stats[b]((mean, var), batch * h * w)
        return jnp.stack(nodes)

    def _rolled(self, sums_ncnhw, weights_edge_op, params, stats, train):
        """Small cells: one ``lax.scan`` over source nodes, every step padded to
        n_nodes - 1 target slots (zero weights and kernels)."""
        n_nodes, n_steps = self.n_nodes, self.n_nodes - 1
        _, c, batch, h, w = sums_ncnhw.shape
        rows = node_edge_rows(n_nodes)
        n_rows, n_slots = len(rows), n_steps
        # Host index tables: edge row, alpha row and scan position of each (step, slot).
        offsets = edge_offsets(n_nodes)
        row_js = np.full((n_steps, n_slots), n_rows)
        alpha_js = np.full((n_steps, n_slots), weights_edge_op.shape[0])
        position = np.zeros(n_rows, np.int32)
        for (j, i), row in rows.items():
            row_js[j, i - j - 1], alpha_js[j, i - j - 1] = row, offsets[i] + j + 2
            position[row] = j * n_slots + i - j - 1
        step_params = {
            name: _take_steps(p, row_js, 2 if name.endswith("_dw") else 0, 0.0)
            for name, p in params.items()
        }
        step_weights = _take_steps(weights_edge_op, alpha_js, 0, 0.0)  # (J, M, 1, n_ops)
        step_running = {}  # eval mode: each step's slice of the running statistics
        if not train:
            for b, running_stats in stats.items():
                mean, var = running_stats()
                if b.endswith("pool_3x3_bn"):  # per source: (J, C) -> (J, 1, C)
                    step_running[b] = (mean[:, None], var[:, None])
                else:  # (2, E, C) -> (J, 2, M, 1, C)
                    step_running[b] = tuple(
                        _take_steps(v, row_js, 1, fill) for v, fill in ((mean, 0.0), (var, 1.0))
                    )

        def step(carry, xs):
            j, params_j, weights_j, running_j = xs
            moments = {}
            norm = batch_norm_fn(
                train, running_j.__getitem__, lambda b, mean, var: moments.update({b: (mean, var)})
            )
            source = lax.dynamic_slice_in_dim(carry, j, 1, axis=0)  # (1, C, N, H, W)
            out = mixed_edges(params_j, source, weights_j, 1, norm)[:, 0]
            targets = lax.dynamic_slice_in_dim(carry, j + 1, n_slots, axis=0) + out
            return lax.dynamic_update_slice_in_dim(carry, targets, j + 1, axis=0), moments

        # Room for the padding slots of the last steps: node j + M for j up to n - 2.
        carry = jnp.pad(sums_ncnhw, ((0, n_slots - 1),) + ((0, 0),) * 4)
        xs = (jnp.arange(n_steps), step_params, step_weights, step_running)
        carry, moments = lax.scan(step, carry, xs)
        if train and self.is_mutable_collection("batch_stats"):
            for b, (mean, var) in moments.items():
                if b.endswith("pool_3x3_bn"):  # (J, 1, C) -> (J, C)
                    mean, var = mean[:, 0], var[:, 0]
                else:  # (J, 2, M, 1, C) -> (2, E, C) in row order
                    mean, var = (
                        jnp.take(jnp.moveaxis(v, 0, 1).reshape(2, -1, c), position, axis=1)
                        for v in (mean, var)
                    )
                stats[b]((mean, var), batch * h * w)
        return carry[:n_nodes]


def preproc0_module(c: int, reduction_prev: bool, **kwargs) -> nn.Module:
    """A cell's preproc0: FactorizedReduce after a reduction cell, else StdConv."""
    if reduction_prev:
        return ops.FactorizedReduce(c, features_first=True, **kwargs)
    return ops.StdConv(c, features_first=True, **kwargs)


class SearchCell(nn.Module):
    """A search cell: preprocess both inputs, then the DAG of n_nodes MixedOp nodes.

    States are features first: s0, s1 (C', N, H, W) in, (n_nodes * C, N, H, W) out.
    ``edges`` is the cell after ``preproc0``: what ``scanned_cells`` runs in a loop.
    """

    features: int
    reduction: bool
    reduction_prev: bool
    n_nodes: int = 4

    def setup(self):
        c, n = self.features, self.n_nodes
        self.preproc0 = preproc0_module(c, self.reduction_prev)
        self.preproc1 = ops.StdConv(c, features_first=True)
        self.input_edges = MixedEdges(n, 2 if self.reduction else 1)
        self.node_edges = NodeEdges(n)

    def __call__(self, s0, s1, weights_edge_op: jax.Array, train: bool) -> jax.Array:
        return self.edges(self.preproc0(s0, train), s1, weights_edge_op, train)

    def edges(self, p0, s1, weights_edge_op: jax.Array, train: bool) -> jax.Array:
        """The cell on s0 already preprocessed (``p0``, (C, N, H, W)) and raw s1."""
        n = self.n_nodes
        p1 = self.preproc1(s1, train)
        offsets = edge_offsets(n)
        # Edges from the two cell inputs, to every node: rows offset(i) + s.
        rows = np.array([[offsets[i] + s for s in range(2)] for i in range(n)])
        mixed = self.input_edges(jnp.stack([p0, p1]), weights_edge_op[rows], train)
        # The two inputs' edges added, not reduced: see ``mixed_edges``.
        nodes = self.node_edges(mixed[:, 0] + mixed[:, 1], weights_edge_op, train)
        return nodes.reshape(n * self.features, *nodes.shape[2:])  # the nodes concatenated


def reduction_indices(layers: int) -> tuple[int, int]:
    return (layers // 3, 2 * layers // 3)


# --remat: "cells" rematerialises ``early_cells`` in every gradient pass
# (``remat_cells_for``); "hvp" rematerialises ``first_stage_cells`` inside the
# exact Hessian-vector product only (``hvp_remat_cells_for``); "auto" stands for
# one of them (``resolve_remat``).
REMAT_MODES = ("auto", "none", "cells", "hvp")

# "auto" picks "hvp" on the CPU where one first-stage state holds at least this
# many elements per device (batch x H x W x C): the default config's 2**20 (64 x
# 32 x 32 x 16) saves about 1 GB of a 10.1 GB peak there. Small networks keep
# "none": their peak is the compiler's own, and at the test config (4 x 16 x 16
# x 4) "hvp" added 0.2 GB of peak and 1.5 s of compile (BENCHMARKS.md, session 27).
AUTO_HVP_MIN_STATE_ELEMENTS = 2**18


def early_cells(layers: int) -> tuple[int, ...]:
    """The cells before the last reduction cell: the ones worth rematerialising.

    They hold the large activations (the last stage's cells a quarter of the
    first stage's or less). At the default config (second order, CPU) cells
    0-4 rematerialised give the same XLA plan as all eight (3.63 against 3.62
    GB) in less compile and step time (BENCHMARKS.md, session 9).
    """
    return tuple(range(reduction_indices(layers)[1]))


def first_stage_cells(layers: int) -> tuple[int, ...]:
    """The normal cells before the first reduction cell: those with the largest states
    (at the default 8 layers cells 0 and 1, one cell loop)."""
    return tuple(range(reduction_indices(layers)[0]))


def _check_known_remat_mode(mode: str) -> None:
    if mode not in REMAT_MODES:
        raise ValueError(f"unknown remat mode {mode!r}; choose one of {REMAT_MODES}")


def resolve_remat(mode: str, devices, batch_size: int, image_size: int, C: int) -> str:
    """``mode`` with "auto" replaced by the mode it stands for when ``batch_size``
    images split over ``devices`` (``jax.Device``s): "hvp" on the CPU for networks
    whose first-stage states hold ``AUTO_HVP_MIN_STATE_ELEMENTS`` or more per
    device, else "none" (GPUs and TPUs: memory to spare, and recomputing costs
    step time). Other modes are returned as they are."""
    _check_known_remat_mode(mode)
    if mode != "auto":
        return mode
    state_elements = batch_size // len(devices) * image_size * image_size * C
    on_cpu = devices[0].platform == "cpu"
    return "hvp" if on_cpu and state_elements >= AUTO_HVP_MIN_STATE_ELEMENTS else "none"


def _check_remat_mode(mode: str) -> None:
    _check_known_remat_mode(mode)
    if mode == "auto":
        raise ValueError("remat mode 'auto' depends on the platform and sizes: resolve_remat first")


def remat_cells_for(mode: str, layers: int) -> tuple[int, ...]:
    """The cells the ``--remat`` mode rematerialises in every gradient pass:
    'cells' ``early_cells``, 'none' and 'hvp' none."""
    _check_remat_mode(mode)
    return early_cells(layers) if mode == "cells" else ()


def hvp_remat_cells_for(mode: str, layers: int) -> tuple[int, ...]:
    """The cells the ``--remat`` mode rematerialises inside the exact Hessian-vector
    product (``search_step.Hyper.hvp_remat_cells``): 'hvp' ``first_stage_cells``,
    else those of every pass (``remat_cells_for``).

    The product's program sets the second-order step's peak (its forward keeps
    tangents beside the values): at the default config, CPU, recomputing cells 0
    and 1 there took XLA's plan from 7.99 to 7.00 GB and the peak from 10.2 to
    9.25 GB for 1.4-7.4 s more per step (two alternating pairs; BENCHMARKS.md,
    session 16).
    """
    _check_remat_mode(mode)
    return first_stage_cells(layers) if mode == "hvp" else remat_cells_for(mode, layers)


def cell_groups(layers: int, remat_cells: tuple[int, ...] = ()) -> tuple[tuple[int, ...], ...]:
    """The cells in order, consecutive normal cells grouped (those of one stage:
    same shapes) where they also agree on ``remat_cells``. A group of two or more
    runs as one ``lax.scan`` (``scanned_cells``); reduction cells stand alone.
    At the default 8 layers: (0, 1), (2,), (3, 4), (5,), (6, 7)."""
    reductions = reduction_indices(layers)
    groups: list[list[int]] = []
    for i in range(layers):
        previous = groups[-1] if groups else None
        if (
            previous is not None
            and i not in reductions
            and previous[-1] not in reductions
            and (i in remat_cells) == (previous[-1] in remat_cells)
        ):
            previous.append(i)
        else:
            groups.append([i])
    return tuple(tuple(g) for g in groups)


def scanned_cells(
    network: nn.Module,
    cells: tuple[int, ...],
    c: int,
    reduction_prev: bool,
    s0,
    s1,
    weights_edge_op: jax.Array,
    train: bool,
    rematerialise: bool = False,
):
    """Consecutive normal cells of one stage as one ``lax.scan`` on ``network``'s
    variables: XLA compiles one cell for all of them (at the default 8 layers, 5
    cell bodies instead of 8). Returns (s0, s1) after the last cell.

    Step m runs cell m after its preproc0 (``SearchCell.edges``). The first two
    cells' preproc0 read states known before the loop and run before it; that of
    cell m + 2 reads cell m's output and runs in step m (in the last two steps
    on a copy of the last one's variables, its result discarded). The carry has
    the cells' output width n_nodes * C: a narrower first s1 (the stem's
    3C channels) is zero-padded and the first cell's preproc1 kernel gets zero
    rows, which changes no value and no gradient. ``rematerialise``: each step
    is a ``remat.recompute_in_backward`` rule, as ``rematerialised_cell``.
    New BN statistics are written back per cell, as the cells would.
    """
    n_nodes, width = network.n_nodes, network.n_nodes * c
    if len(cells) < 2 or s1.shape[0] > width:
        raise ValueError(f"scanned_cells needs two or more cells and s1 <= {width} channels")
    variables = {col: network.variables[col] for col in ("params", "batch_stats")}
    names = [f"cell{i}" for i in cells]

    def run(module, module_variables, *args, method=None):
        out, mutated = module.apply(
            module_variables, *args, train, method=method, mutable=["batch_stats"]
        )
        return out, mutated["batch_stats"]

    def variables_of(name, keys):
        return {col: {k: tree[name][k] for k in keys} for col, tree in variables.items()}

    def preproc0_variables(name):
        return {col: tree[name]["preproc0"] for col, tree in variables.items()}

    p0s, new_stats = [], {name: {} for name in names}
    for m, x in enumerate((s0, s1)):
        module = preproc0_module(c, reduction_prev and m == 0, parent=None)
        p0, new_stats[names[m]]["preproc0"] = run(module, preproc0_variables(names[m]), x)
        p0s.append(p0)

    per_cell = [variables_of(name, ("preproc1", "input_edges", "node_edges")) for name in names]
    if s1.shape[0] < width:
        pad = width - s1.shape[0]
        s1 = jnp.pad(s1, ((0, pad),) + ((0, 0),) * (s1.ndim - 1))
        kernel = per_cell[0]["params"]["preproc1"]["kernel"]
        per_cell[0]["params"]["preproc1"] = {"kernel": jnp.pad(kernel, ((0, pad), (0, 0)))}
    edge_xs = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *per_cell)
    pre0_xs = None
    if len(cells) > 2:  # preproc0 of cell m + 2, in step m
        later = [preproc0_variables(name) for name in names[2:]]
        pre0_xs = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *later, later[-1], later[-1])

    body_cell = SearchCell(c, False, False, n_nodes, parent=None)
    later_preproc0 = preproc0_module(c, False, parent=None)

    def cell_step(edge_vars, pre0_vars, p0, s1, weights_edge_op):
        with remat.disabled() if rematerialise else contextlib.nullcontext():
            out, new_edges = run(
                body_cell, edge_vars, p0, s1, weights_edge_op, method=SearchCell.edges
            )
            if pre0_vars is None:
                return out, new_edges
            return out, new_edges, *run(later_preproc0, pre0_vars, out)

    if rematerialise:
        cell_step = remat.recompute_in_backward(cell_step, inside_gradient=True)

    def body(carry, xs):
        p0, p0_following, s1 = carry
        edge_vars, pre0_vars = xs
        out, new_edges, *queued = cell_step(edge_vars, pre0_vars, p0, s1, weights_edge_op)
        p0_next, new_pre0 = queued if queued else (p0_following, None)
        return (p0_following, p0_next, out), (out, new_edges, new_pre0)

    _, (outs, new_edges, new_pre0) = lax.scan(body, (p0s[0], p0s[1], s1), (edge_xs, pre0_xs))
    if train and network.is_mutable_collection("batch_stats"):
        for m, name in enumerate(names):
            cell_stats = jax.tree_util.tree_map(lambda a, m=m: a[m], new_edges)
            if m >= 2:
                cell_stats["preproc0"] = jax.tree_util.tree_map(lambda a, m=m: a[m - 2], new_pre0)
            network.put_variable("batch_stats", name, {**new_stats[name], **cell_stats})
    return outs[-2], outs[-1]


class Stem(nn.Module):
    """Conv 3x3 (bias-free, padding 1, ``stride``) then affine BN."""

    features: int
    stride: int = 1

    @nn.compact
    def __call__(self, x_nhwc: jax.Array, train: bool) -> jax.Array:
        c_in = x_nhwc.shape[-1]
        kernel = self.param("kernel", ops.torch_uniform_init(9 * c_in), (3, 3, c_in, self.features))
        y = lax.conv_general_dilated(
            x_nhwc,
            kernel,
            (self.stride, self.stride),
            ((1, 1), (1, 1)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        return ops.BatchNorm(affine=True, name="bn")(y, train)


def classifier(features_in: int, num_classes: int, name: str = "classifier") -> nn.Dense:
    init = ops.torch_uniform_init(features_in)
    return nn.Dense(num_classes, kernel_init=init, bias_init=init, name=name)


def rematerialised_cell(network: nn.Module, cell: SearchCell, name: str, s0, s1, weights_edge_op):
    """``cell`` (unbound) in training mode on the ``network``'s variables under
    ``name``, as a ``remat.recompute_in_backward`` function of its weights, BN
    statistics, inputs and alpha weights: a gradient pass keeps only the
    cell's inputs and recomputes its forward pass in the backward pass.

    The alpha weights are an argument, so in the exact Hessian-vector product
    (forward over reverse) every cell's rule sits inside the gradient's trace,
    where forward mode may differentiate it. Inside the cell nothing else is
    rematerialised (``remat.disabled()``): the cell is recomputed as a whole,
    and a jvp could not meet the depthwise products' own ``custom_vjp`` there.
    The new BN statistics leave the rule as an output and are written back to
    ``network``'s collection.
    """

    def apply_cell(params, stats, s0, s1, weights_edge_op):
        with remat.disabled():
            out, mutated = cell.apply(
                {"params": params, "batch_stats": stats},
                s0,
                s1,
                weights_edge_op,
                True,
                mutable=["batch_stats"],
            )
        return out, mutated["batch_stats"]

    params = network.variables["params"][name]
    stats = network.variables["batch_stats"][name]
    out, new_stats = remat.recompute_in_backward(apply_cell, inside_gradient=True)(
        params, stats, s0, s1, weights_edge_op
    )
    if network.is_mutable_collection("batch_stats"):
        network.put_variable("batch_stats", name, new_stats)
    return out


class SearchNetwork(nn.Module):
    """pt.darts's SearchCNN: stem, `layers` search cells, global pool, linear.

    ``remat_cells``: indices of cells that, in training mode, keep only their
    inputs for the backward pass and recompute themselves there
    (``rematerialised_cell``): far less memory for one more forward pass per
    such cell and gradient pass. ``early_cells(layers)`` is the set that
    ``--remat cells`` picks.

    ``scan_cells``: each run of normal cells in a stage (``cell_groups``) is
    one ``lax.scan`` (``scanned_cells``) instead of one program per cell:
    same values and variables, and at the default config XLA plans 8.4 GB
    instead of 12.1 GB for the second-order step (BENCHMARKS.md, session 11).
    """

    C: int = 16
    num_classes: int = 10
    layers: int = 8
    n_nodes: int = 4
    stem_multiplier: int = 3
    remat_cells: tuple[int, ...] = ()
    scan_cells: bool = True

    @nn.compact
    def __call__(self, x_nhwc: jax.Array, alphas: Mapping[str, jax.Array], train: bool):
        check_alphas(alphas, self.n_nodes)
        if not set(self.remat_cells) <= set(range(self.layers)):
            raise ValueError(
                f"remat_cells {tuple(self.remat_cells)} must be cell indices in "
                f"0..{self.layers - 1}"
            )
        stem = Stem(self.stem_multiplier * self.C, name="stem")(x_nhwc, train)
        # Cells run features first (see ``ops``): states are (C, N, H, W).
        s0 = s1 = jnp.transpose(stem, (3, 0, 1, 2))
        weights = {k: jax.nn.softmax(v, axis=-1) for k, v in alphas.items()}
        reductions = reduction_indices(self.layers)
        c, reduction_prev = self.C, False
        if self.scan_cells and not self.is_initializing():
            groups = cell_groups(self.layers, self.remat_cells if train else ())
        else:
            groups = tuple((i,) for i in range(self.layers))
        for group in groups:
            if group[0] in reductions:
                c *= 2
            # A first s1 wider than the cells' outputs (the stem, if stem_multiplier
            # > n_nodes) cannot enter the loop's carry: that cell runs alone.
            head = 1 if len(group) > 1 and s1.shape[0] > self.n_nodes * c else 0
            alone, looped = (group[:head], group[head:]) if len(group) - head > 1 else (group, ())
            for i in alone:
                s0, s1 = s1, self._cell(i, c, reduction_prev, s0, s1, weights, train)
                reduction_prev = i in reductions
            if looped:
                s0, s1 = scanned_cells(
                    self,
                    looped,
                    c,
                    reduction_prev,
                    s0,
                    s1,
                    weights["normal"],
                    train,
                    rematerialise=train and looped[0] in self.remat_cells,
                )
                reduction_prev = False
        features = s1.mean(axis=(2, 3)).T  # (N, C)
        return classifier(features.shape[-1], self.num_classes)(features)

    def _cell(self, i: int, c: int, reduction_prev: bool, s0, s1, weights, train: bool):
        """Cell i as its own module (rematerialised if in ``remat_cells``)."""
        reduction = i in reduction_indices(self.layers)
        cell_args = (c, reduction, reduction_prev, self.n_nodes)
        cell_weights = weights["reduce" if reduction else "normal"]
        if i in self.remat_cells and train and not self.is_initializing():
            cell = SearchCell(*cell_args, parent=None)
            return rematerialised_cell(self, cell, f"cell{i}", s0, s1, cell_weights)
        return SearchCell(*cell_args, name=f"cell{i}")(s0, s1, cell_weights, train)


def check_alphas(alphas: Mapping[str, jax.Array], n_nodes: int) -> None:
    expected = (num_edges(n_nodes), len(PRIMITIVES))
    if set(alphas) != {"normal", "reduce"}:
        raise ValueError(f"alphas must have keys 'normal' and 'reduce', got {sorted(alphas)}")
    for k, v in alphas.items():
        if tuple(v.shape) != expected:
            raise ValueError(f"alphas[{k!r}] must have shape {expected}, got {tuple(v.shape)}")


def init_alphas(rng: jax.Array, n_nodes: int = 4, dtype=jnp.float32) -> dict[str, jax.Array]:
    """Alphas as pt.darts initialises them: 1e-3 * N(0, 1), one matrix per cell type."""
    shape = (num_edges(n_nodes), len(PRIMITIVES))
    k_normal, k_reduce = jax.random.split(rng)
    return {
        "normal": 1e-3 * jax.random.normal(k_normal, shape, dtype),
        "reduce": 1e-3 * jax.random.normal(k_reduce, shape, dtype),
    }


def init_variables(model: SearchNetwork, rng: jax.Array, input_shape, alphas) -> dict:
    """Builds the variables eagerly, without compiling a forward pass: the edge modules
    and BatchNorm skip their compute while initialising and weights are drawn on the host."""
    x = jnp.zeros((2, *input_shape[1:]), jnp.float32)
    return model.init(rng, x, alphas, train=True)


def count_params(params) -> int:
    return int(sum(np.prod(p.shape) for p in jax.tree_util.tree_leaves(params)))
