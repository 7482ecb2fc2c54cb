"""Converters between PyTorch DARTS checkpoints and darts_jax variables + alphas.

    model, variables, alphas = from_torch("weights.pt", "ptdarts_search")
    state_dict = to_torch(variables, alphas, "ptdarts_search")

Layouts (the state_dict names of tests/data/*.tsv):

- ``ptdarts_search``: pt.darts ``SearchCNNController`` (alphas as 4 per-node
  ``alpha_normal.i`` / ``alpha_reduce.i`` matrices of shape (i+2, 8)).
- ``ptdarts_final``: pt.darts ``AugmentCNN`` (optional ``aux_head``); needs the
  genotype (``genotype=``: a Genotype, genotype text or a name).
- ``official_search``: the official DARTS ``model_search.Network`` plus its
  ``alphas_normal`` / ``alphas_reduce`` (14, 8) with ``none`` FIRST: columns
  are permuted to darts_jax's order (``none`` last) on import and back on export.
- ``official_final``: the official ``NetworkCIFAR``. It has no BN after max/avg
  pooling, where pt.darts's AugmentCNN has an affine one: imports build a
  ``FinalNetwork(pool_bn=False)``; exporting a ``pool_bn=True`` model whose
  genotype pools raises NotImplementedError naming the pooling edges (their
  BN has nowhere to go). (Its aux head pools with stride 3, darts_jax with
  feature size - 5: equal on 32x32 input.)

Conventions (all conversions are exact: transposes, slices and copies only):

- conv weights (O, I, kH, kW) <-> (kH, kW, I, O); 1x1 convs (O, I, 1, 1) <->
  (I, O); depthwise (C, 1, k, k) <-> (k, k, C); Linear (out, in) <-> (in, out).
- Search cells: darts_jax batches the edges from the cell inputs on an (M
  targets, S sources) grid and stores the edges between nodes in one edge
  axis; pt.darts's edge ``dag.i.s`` (node i, source state s) is grid entry
  (i, s) of ``input_edges`` when s < 2, else row ``node_edge_rows(n)[s-2, i]``
  of ``node_edges`` (pool statistics: row s - 2). The 3x3 depthwise kernels
  of sep_conv_3x3 and dil_conv_3x3 are stored at their own 3x3 size: the
  model zero-pads them to 5x5 inside the forward pass only, so there is no
  padding ring in the parameters (and none that could receive gradients); nothing is embedded
  or cropped here. The BN statistics of a conv pair, shape (2, M, S, C), hold
  the 3x3 member at index 0 and the 5x5 member at index 1.
- Pool BN statistics: PyTorch keeps one affine-free BN per edge after each
  max/avg pool, darts_jax one per source state. All edges leaving a source
  pool the same input, so a model trained by either PyTorch project holds
  identical copies (bit for bit in our reference). On import the copies must
  agree (``pool_bn_stats="check"``, the default: rtol 1e-5, atol 1e-7, else
  ValueError naming them); the value kept is their mean, computed as
  ``first + mean(copy - first)``, so identical copies import bit for bit.
  ``pool_bn_stats="mean"`` averages without checking. On export every edge
  receives the statistics of its source.
- ``num_batches_tracked``: unused by BN with a momentum (both projects set
  one), so it is ignored on import and may be absent (PyTorch < 0.4.1
  checkpoints, e.g. the official code's, have none); on export every BN gets
  ``num_batches_tracked`` (default 0; pass the number of training forwards if
  it matters to you).
- Strictness: unknown keys, missing keys and shape mismatches raise
  ValueError listing every offending name; nothing is skipped. A uniform
  ``module.`` prefix (``nn.DataParallel``, as pt.darts's augment.py saves) is
  removed first.
- Files: ``torch.load(map_location="cpu", weights_only=True)``; a pickled
  whole model (pt.darts saves ``torch.save(model)``) is read with torch's
  weights-only allow-list for tensors and inert stand-ins for every other
  class, so pt.darts need not be installed and no code from the file runs.
- ``arrays_to_tree`` / ``tree_to_arrays`` map named gradients or optimizer
  buffers (they transform like the weights) of chosen collections.

torch is imported only inside the functions that need it (loading a file,
building tensors), so the layout tables work without torch.
"""

from __future__ import annotations

import _compat_pickle
import dataclasses
import os
import pickle
import re
import types
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from darts_jax import genotypes as gt
from darts_jax.final_model import FinalNetwork
from darts_jax.genotypes import OFFICIAL_PRIMITIVES, PRIMITIVES, edge_offsets, num_edges
from darts_jax.search_model import SearchNetwork, node_edge_rows, reduction_indices

LAYOUTS = ("ptdarts_search", "ptdarts_final", "official_search", "official_final")
POOLS = ("max_pool_3x3", "avg_pool_3x3")
_SEP = ("sep_conv_3x3", "sep_conv_5x5")
_DIL = ("dil_conv_3x3", "dil_conv_5x5")
# column j of darts_jax alphas = column _OFFICIAL_COLS[j] of official alphas
_OFFICIAL_COLS = np.array([OFFICIAL_PRIMITIVES.index(p) for p in PRIMITIVES])
_OURS_COLS = np.array([PRIMITIVES.index(p) for p in OFFICIAL_PRIMITIVES])
_POOL_RTOL, _POOL_ATOL = 1e-5, 1e-7


# ---------------------------------------------------------------------------
# Layout tables: one Entry per PyTorch state_dict name, in state_dict order


@dataclasses.dataclass(frozen=True)
class Entry:
    """One PyTorch tensor and where it lives in darts_jax's variables.

    ``target``: (collection, *path) of a darts_jax leaf, collection being
    'params', 'batch_stats' or 'alphas'; ``index``: the numpy index of the
    slice of that leaf (grid position of an edge); ``kind``: the transform
    (see ``_TO_OURS``). num_batches_tracked entries have kind 'nbt' and no target.
    """

    key: str
    kind: str
    target: tuple[str, ...] | None = None
    index: tuple = ()


_TO_OURS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "vec": lambda t: t,
    "conv": lambda t: t.transpose(2, 3, 1, 0),  # (O, I, kH, kW) -> (kH, kW, I, O)
    "pw": lambda t: t[:, :, 0, 0].T,  # (O, I, 1, 1) -> (I, O)
    "dw": lambda t: t[:, 0].transpose(1, 2, 0),  # (C, 1, k, k) -> (k, k, C)
    "linear": lambda t: t.T,  # (out, in) -> (in, out)
    "alpha": lambda t: t,
    "alpha_official": lambda t: t[:, _OFFICIAL_COLS],  # `none` first -> `none` last
}
_TO_TORCH: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "vec": lambda a: a,
    "conv": lambda a: a.transpose(3, 2, 0, 1),
    "pw": lambda a: a.T[:, :, None, None],
    "dw": lambda a: a.transpose(2, 0, 1)[:, None],
    "linear": lambda a: a.T,
    "alpha": lambda a: a,
    "alpha_official": lambda a: a[:, _OURS_COLS],
}


@dataclasses.dataclass(frozen=True)
class _Names:
    """How one PyTorch project names the submodules of its ops."""

    ops_order: tuple[str, ...]
    preproc: tuple[str, str]
    std: tuple[str, str]  # StdConv / ReLUConvBN: conv, bn
    fr: tuple[str, str, str]  # FactorizedReduce: conv1, conv2, bn
    pool_bn: str | None  # BN after a pool inside an op (None: the final net has none)
    sep: tuple[tuple[str, str, str], tuple[str, str, str]]  # (dw, pw, bn) per half
    dil: tuple[str, str, str]


_PTDARTS = _Names(
    ops_order=PRIMITIVES,
    preproc=("preproc0", "preproc1"),
    std=("net.1", "net.2"),
    fr=("conv1", "conv2", "bn"),
    pool_bn="bn",
    sep=(
        ("net.0.net.1", "net.0.net.2", "net.0.net.3"),
        ("net.1.net.1", "net.1.net.2", "net.1.net.3"),
    ),
    dil=("net.1", "net.2", "net.3"),
)
_OFFICIAL = _Names(
    ops_order=OFFICIAL_PRIMITIVES,
    preproc=("preprocess0", "preprocess1"),
    std=("op.1", "op.2"),
    fr=("conv_1", "conv_2", "bn"),
    pool_bn="1",  # search MixedOp: Sequential(pool, BN)
    sep=(("op.1", "op.2", "op.3"), ("op.5", "op.6", "op.7")),
    dil=("op.1", "op.2", "op.3"),
)


def _bn(prefix: str, path: tuple, index: tuple = (), affine: bool = False) -> list[Entry]:
    out = []
    if affine:
        out += [
            Entry(f"{prefix}.weight", "vec", ("params", *path, "scale"), index),
            Entry(f"{prefix}.bias", "vec", ("params", *path, "bias"), index),
        ]
    return out + [
        Entry(f"{prefix}.running_mean", "vec", ("batch_stats", *path, "mean"), index),
        Entry(f"{prefix}.running_var", "vec", ("batch_stats", *path, "var"), index),
        Entry(f"{prefix}.num_batches_tracked", "nbt"),
    ]


def _preproc(prefix: str, names: _Names, cell: str, which: int, fr: bool, affine: bool):
    p, path = f"{prefix}.{names.preproc[which]}", (cell, f"preproc{which}")
    if fr:
        c1, c2, bn = names.fr
        return [
            Entry(f"{p}.{c1}.weight", "pw", ("params", *path, "kernel1")),
            Entry(f"{p}.{c2}.weight", "pw", ("params", *path, "kernel2")),
            *_bn(f"{p}.{bn}", (*path, "bn"), affine=affine),
        ]
    conv, bn = names.std
    return [
        Entry(f"{p}.{conv}.weight", "pw", ("params", *path, "kernel")),
        *_bn(f"{p}.{bn}", (*path, "bn"), affine=affine),
    ]


def _stem(prefix: str) -> list[Entry]:
    return [
        Entry(f"{prefix}stem.0.weight", "conv", ("params", "stem", "kernel")),
        *_bn(f"{prefix}stem.1", ("stem", "bn"), affine=True),
    ]


def _mixed_edge(
    ops: str, names: _Names, cell: str, n_nodes: int, node: int, src: int, stride2: bool
):
    """Entries of the MixedOp of edge (node, src); ``ops`` is its op-list prefix."""
    if src < 2:
        mod, grid, s = "input_edges", (node, src), src
    else:
        mod, grid, s = "node_edges", (node_edge_rows(n_nodes)[src - 2, node],), src - 2
    p = ("params", cell, mod)
    out = []
    for k, name in enumerate(names.ops_order):
        q = f"{ops}.{k}"
        if name in POOLS:  # statistics shared by all edges of a source: index by source only
            out += _bn(f"{q}.{names.pool_bn}", (cell, mod, f"{name}_bn"), (s,))
        elif name == "skip_connect" and stride2:
            c1, c2, bn = names.fr
            out += [
                Entry(f"{q}.{c1}.weight", "pw", (*p, "skip_connect_fr1"), grid),
                Entry(f"{q}.{c2}.weight", "pw", (*p, "skip_connect_fr2"), grid),
                *_bn(f"{q}.{bn}", (cell, mod, "skip_connect_bn"), grid),
            ]
        elif name in _SEP or name in _DIL:
            member = int(name[-1] == "5")  # pair index: 3x3 first
            halves = names.sep if name in _SEP else (names.dil,)
            pair = ("sep_convs_1", "sep_convs_2") if name in _SEP else ("dil_convs",)
            for h, (dw, pw, bn) in enumerate(halves):
                stem = f"{name}_{h + 1}" if name in _SEP else name
                out += [
                    Entry(f"{q}.{dw}.weight", "dw", (*p, f"{stem}_dw"), (slice(None),) * 2 + grid),
                    Entry(f"{q}.{pw}.weight", "pw", (*p, f"{stem}_pw"), grid),
                    *_bn(f"{q}.{bn}", (cell, mod, f"{pair[h]}_bn"), (member, *grid)),
                ]
    return out


def _search_entries(model: SearchNetwork, official: bool) -> list[Entry]:
    names, n = (_OFFICIAL if official else _PTDARTS), model.n_nodes
    pre = "" if official else "net."
    out = []
    if not official:
        offsets = edge_offsets(n)
        for kind in ("normal", "reduce"):
            out += [
                Entry(f"alpha_{kind}.{i}", "alpha", ("alphas", kind), (slice(o, o + i + 2),))
                for i, o in enumerate(offsets)
            ]
    out += _stem(pre)
    reduction_prev = False
    for c in range(model.layers):
        reduction = c in reduction_indices(model.layers)
        cell, prefix = f"cell{c}", f"{pre}cells.{c}"
        out += _preproc(prefix, names, cell, 0, reduction_prev, False)
        out += _preproc(prefix, names, cell, 1, False, False)
        for i, o in enumerate(edge_offsets(n)):
            for s in range(i + 2):
                ops = f"{prefix}._ops.{o + s}._ops" if official else f"{prefix}.dag.{i}.{s}._ops"
                out += _mixed_edge(ops, names, cell, n, i, s, reduction and s < 2)
        reduction_prev = reduction
    head = "classifier" if official else "net.linear"
    out += [
        Entry(f"{head}.weight", "linear", ("params", "classifier", "kernel")),
        Entry(f"{head}.bias", "vec", ("params", "classifier", "bias")),
    ]
    if official:
        out += [
            Entry(f"alphas_{kind}", "alpha_official", ("alphas", kind))
            for kind in ("normal", "reduce")
        ]
    return out


def _final_op(q: str, names: _Names, path: tuple, name: str, stride2: bool) -> list[Entry]:
    p = ("params", *path)
    if name in POOLS:
        return _bn(f"{q}.bn", (*path, "bn"), affine=True)  # pt.darts's pool BN
    if name == "skip_connect":
        if not stride2:
            return []  # identity
        c1, c2, bn = names.fr
        return [
            Entry(f"{q}.{c1}.weight", "pw", (*p, "kernel1")),
            Entry(f"{q}.{c2}.weight", "pw", (*p, "kernel2")),
            *_bn(f"{q}.{bn}", (*path, "bn"), affine=True),
        ]
    if name in _SEP:
        out = []
        for h, (dw, pw, bn) in enumerate(names.sep):
            sub = (*path, f"conv{h + 1}")
            out += [
                Entry(f"{q}.{dw}.weight", "dw", ("params", *sub, "dw")),
                Entry(f"{q}.{pw}.weight", "pw", ("params", *sub, "pw")),
                *_bn(f"{q}.{bn}", (*sub, "bn"), affine=True),
            ]
        return out
    if name in _DIL:
        dw, pw, bn = names.dil
        return [
            Entry(f"{q}.{dw}.weight", "dw", (*p, "dw")),
            Entry(f"{q}.{pw}.weight", "pw", (*p, "pw")),
            *_bn(f"{q}.{bn}", (*path, "bn"), affine=True),
        ]
    return []  # none


def _final_entries(model: FinalNetwork, official: bool) -> list[Entry]:
    g = gt.validate(model.genotype)
    names = _OFFICIAL if official else _PTDARTS
    out = _stem("")
    reduction_prev = False
    for c in range(model.layers):
        reduction = c in reduction_indices(model.layers)
        cell, prefix = f"cell{c}", f"cells.{c}"
        out += _preproc(prefix, names, cell, 0, reduction_prev, True)
        out += _preproc(prefix, names, cell, 1, False, True)
        flat = 0
        for i, node in enumerate(g.reduce if reduction else g.normal):
            for e, (name, j) in enumerate(node):
                # pt.darts: Sequential(op, DropPath) per edge; official: a flat op list
                q = f"{prefix}._ops.{flat}" if official else f"{prefix}.dag.{i}.{e}.0"
                flat += 1
                if official and name in POOLS:
                    continue  # a bare pool: no parameters (the model has pool_bn=False)
                out += _final_op(q, names, (cell, f"node{i}_edge{e}"), name, reduction and j < 2)
        reduction_prev = reduction
    if model.auxiliary:
        a = "auxiliary_head" if official else "aux_head"
        f = "features" if official else "net"
        lin = "classifier" if official else "linear"
        out += [
            Entry(f"{a}.{f}.2.weight", "pw", ("params", "aux_head", "conv1")),
            *_bn(f"{a}.{f}.3", ("aux_head", "bn1"), affine=True),
            Entry(f"{a}.{f}.5.weight", "conv", ("params", "aux_head", "conv2")),
            *_bn(f"{a}.{f}.6", ("aux_head", "bn2"), affine=True),
            Entry(f"{a}.{lin}.weight", "linear", ("params", "aux_head", "linear", "kernel")),
            Entry(f"{a}.{lin}.bias", "vec", ("params", "aux_head", "linear", "bias")),
        ]
    head = "classifier" if official else "linear"
    return out + [
        Entry(f"{head}.weight", "linear", ("params", "classifier", "kernel")),
        Entry(f"{head}.bias", "vec", ("params", "classifier", "bias")),
    ]


def _check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {LAYOUTS}")


def layout_entries(layout: str, model: SearchNetwork | FinalNetwork) -> list[Entry]:
    """The layout's state_dict entries for ``model``'s hyper-parameters, in order."""
    _check_layout(layout)
    official = layout.startswith("official")
    if layout.endswith("search"):
        if not isinstance(model, SearchNetwork):
            raise TypeError(f"layout {layout!r} needs a SearchNetwork, got {type(model).__name__}")
        return _search_entries(model, official)
    if not isinstance(model, FinalNetwork):
        raise TypeError(f"layout {layout!r} needs a FinalNetwork, got {type(model).__name__}")
    return _final_entries(model, official)


def _unsupported(layout: str, model) -> None:
    """Raises NotImplementedError where darts_jax's model cannot hold the PyTorch one."""
    if layout != "official_final" or not model.pool_bn:
        return
    g = gt.validate(model.genotype)
    pools = [
        f"{cell} node {i} edge {e} ({name})"
        for cell, nodes in (("normal", g.normal), ("reduce", g.reduce))
        for i, node in enumerate(nodes)
        for e, (name, _) in enumerate(node)
        if name in POOLS
    ]
    if pools:
        raise NotImplementedError(
            "official DARTS NetworkCIFAR pools without a BN afterwards, while this model "
            "(pool_bn=True, pt.darts's AugmentCNN) has an affine BN after every max/avg pool; "
            f"this genotype pools at {', '.join(pools)}: those BNs cannot be exported. "
            "Models imported from official_final have pool_bn=False and export exactly."
        )


# ---------------------------------------------------------------------------
# Shapes of darts_jax's variables


def _input_shape(model, c_in: int) -> tuple[int, ...]:
    # 32x32 leaves 8x8 features for an aux head after two reductions; the
    # search network needs even sizes through its reductions only.
    size = 32 if isinstance(model, FinalNetwork) else 8
    return (2, size, size, c_in)


def variable_shapes(model, c_in: int, dtype=jnp.float32) -> dict[tuple, tuple[int, ...]]:
    """{(collection, *path): shape} of ``model``'s variables (and alphas), without compute."""
    x = jax.ShapeDtypeStruct(_input_shape(model, c_in), dtype)
    key = jax.random.PRNGKey(0)
    if isinstance(model, SearchNetwork):
        alpha_shape = (num_edges(model.n_nodes), len(PRIMITIVES))
        alphas = {k: jax.ShapeDtypeStruct(alpha_shape, dtype) for k in ("normal", "reduce")}
        tree = jax.eval_shape(lambda x, a: model.init(key, x, a, train=True), x, alphas)
        tree = {**tree, "alphas": alphas}
    else:
        tree = jax.eval_shape(lambda x: model.init(key, x, train=True), x)
    return {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(dict(tree)).items()}


def _stub_shape(shape: tuple[int, ...]) -> np.ndarray:
    return np.broadcast_to(np.zeros((), np.float32), shape)  # no memory


def _torch_shape(entry: Entry, shapes: Mapping[tuple, tuple[int, ...]]) -> tuple[int, ...]:
    sliced = _stub_shape(shapes[entry.target])[entry.index]
    return tuple(_TO_TORCH[entry.kind](sliced).shape)


def torch_layout(layout: str, model, c_in: int = 3) -> list[tuple[str, tuple[int, ...]]]:
    """[(state_dict name, shape)] that ``layout`` has for ``model`` (num_batches_tracked: ())."""
    shapes = variable_shapes(model, c_in)
    return [
        (e.key, () if e.kind == "nbt" else _torch_shape(e, shapes))
        for e in layout_entries(layout, model)
    ]


# ---------------------------------------------------------------------------
# Reading PyTorch checkpoints


class _Stub:
    """Stands in for any class a pickled nn.Module names (its code is never imported)."""

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slots)
            state = {**(state[0] or {}), **(state[1] or {})}
        if isinstance(state, dict):
            self.__dict__.update(state)


def _stub_pickle_module() -> types.ModuleType:
    """A pickle module for torch.load that builds tensors with torch's weights-only
    allow-list and turns every other global into an inert ``_Stub`` subclass."""
    from torch._weights_only_unpickler import _get_allowed_globals

    allowed = _get_allowed_globals()
    stubs: dict[str, type] = {}

    class Unpickler(pickle.Unpickler):
        def find_class(self, module, name):
            # protocol-2 pickles (torch.save's default) name Python 2 modules
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            module = _compat_pickle.IMPORT_MAPPING.get(module, module)
            full = f"{module}.{name}"
            if full in allowed:
                return allowed[full]
            if full not in stubs:
                stubs[full] = type(name, (_Stub,), {"_pickled_as": full})
            return stubs[full]

    mod = types.ModuleType("darts_jax_stub_pickle")
    mod.Unpickler = Unpickler
    mod.load = lambda f, **kw: Unpickler(f, **kw).load()
    mod.__version__ = "0"
    return mod


def _module_state(obj, prefix: str, out: dict) -> None:
    """state_dict of an unpickled (stub) nn.Module, in PyTorch's order."""
    d = vars(obj)
    for name, p in (d.get("_parameters") or {}).items():
        if p is not None:
            out[prefix + name] = p
    skip = d.get("_non_persistent_buffers_set") or set()
    for name, b in (d.get("_buffers") or {}).items():
        if b is not None and name not in skip:
            out[prefix + name] = b
    for name, m in (d.get("_modules") or {}).items():
        if m is not None:
            _module_state(m, f"{prefix}{name}.", out)


def _load_file(path: str):
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # pt.darts saves whole models (torch.save(model)): read them without
        # importing or running the pickled classes' code.
        try:
            return torch.load(
                path, map_location="cpu", weights_only=False, pickle_module=_stub_pickle_module()
            )
        except Exception as e:  # not a pickle at all: whatever torch.load tripped on
            raise ValueError(
                f"not a PyTorch checkpoint that torch.load reads ({type(e).__name__}: {e})"
            ) from e


def _is_tensor_like(v) -> bool:
    return hasattr(v, "shape") and (hasattr(v, "detach") or isinstance(v, np.ndarray))


def _to_numpy(v) -> np.ndarray:
    if hasattr(v, "detach"):
        import torch

        t = v.detach().cpu()
        if t.dtype == torch.bfloat16:
            t = t.float()
        return t.numpy()
    return np.asarray(v)


def load_state_dict(source) -> OrderedDict[str, np.ndarray]:
    """The state_dict in ``source`` as numpy arrays, in its order.

    ``source``: a path (.pt, .pth, .pth.tar), a state_dict (tensors or numpy
    arrays), a checkpoint dict holding one under 'state_dict' /
    'model_state_dict' / 'model', or an nn.Module (also a pickled one in a
    file: its classes are replaced by stubs, never imported). A uniform
    ``module.`` prefix is removed.
    """
    obj = source
    if isinstance(obj, str | os.PathLike):
        obj = _load_file(os.fspath(obj))
    if hasattr(obj, "state_dict") and callable(obj.state_dict):
        obj = obj.state_dict()
    elif isinstance(obj, _Stub):
        state: dict = OrderedDict()
        _module_state(obj, "", state)
        obj = state
    if isinstance(obj, Mapping) and not all(_is_tensor_like(v) for v in obj.values()):
        for key in ("state_dict", "model_state_dict", "model"):
            if key in obj:
                return load_state_dict(obj[key])
        bad = [k for k, v in obj.items() if not _is_tensor_like(v)][:5]
        raise ValueError(
            f"not a state_dict: entries {bad} are not tensors, and there is no "
            "'state_dict', 'model_state_dict' or 'model' entry"
        )
    if not isinstance(obj, Mapping):
        raise TypeError(f"cannot read a state_dict from a {type(obj).__name__}")
    keys = list(obj)
    strip = bool(keys) and all(str(k).startswith("module.") for k in keys)
    return OrderedDict((k[len("module.") :] if strip else k, _to_numpy(v)) for k, v in obj.items())


# ---------------------------------------------------------------------------
# Hyper-parameters


def _resolve_genotype(genotype):
    if genotype is None:
        return None
    return gt.resolve(genotype) if isinstance(genotype, str) else gt.validate(genotype)


def _shape_of(arrays: Mapping[str, np.ndarray], key: str, what: str) -> tuple[int, ...]:
    if key not in arrays:
        first = ", ".join(list(arrays)[:3])
        raise ValueError(
            f"cannot infer {what}: the state_dict has no {key!r} (is the layout right? "
            f"its first keys are: {first})"
        )
    return arrays[key].shape


def _count(keys: Iterable[str], pattern: str) -> int:
    found = [int(m.group(1)) for k in keys if (m := re.match(pattern, k))]
    return max(found) + 1 if found else 0


_HPARAMS = ("C", "num_classes", "layers", "n_nodes", "stem_multiplier", "auxiliary", "c_in")


def _infer_hparams(layout: str, arrays: Mapping[str, np.ndarray]) -> dict[str, Any]:
    official, search = layout.startswith("official"), layout.endswith("search")
    pre = "" if official or not search else "net."
    preproc1 = f"{pre}cells.0.{'preprocess1.op.1' if official else 'preproc1.net.1'}.weight"
    stem = _shape_of(arrays, f"{pre}stem.0.weight", "the stem channels")
    c = _shape_of(arrays, preproc1, "C")[0]
    head = f"{pre}{'classifier' if official else 'linear'}.weight"
    h = {
        "C": c,
        "stem_multiplier": stem[0] // c,
        "c_in": stem[1],
        "num_classes": _shape_of(arrays, head, "the number of classes")[0],
        "layers": _count(arrays, rf"{re.escape(pre)}cells\.(\d+)\."),
    }
    if search and official:
        rows = _shape_of(arrays, "alphas_normal", "n_nodes")[0]
        h["n_nodes"] = next((n for n in range(1, 64) if num_edges(n) == rows), None)
        if h["n_nodes"] is None:
            raise ValueError(f"alphas_normal has {rows} rows, which matches no node count")
    elif search:
        h["n_nodes"] = _count(arrays, r"alpha_normal\.(\d+)$")
    else:
        aux = "auxiliary_head." if official else "aux_head."
        h["auxiliary"] = any(k.startswith(aux) for k in arrays)
    return h


def _hparams_from_variables(variables, alphas) -> dict[str, Any]:
    params = variables["params"]
    c = params["cell0"]["preproc1"]["kernel"].shape[-1]
    stem = params["stem"]["kernel"].shape
    h = {
        "C": c,
        "stem_multiplier": stem[-1] // c,
        "c_in": stem[2],
        "num_classes": params["classifier"]["bias"].shape[0],
        "layers": sum(1 for k in params if re.fullmatch(r"cell\d+", k)),
        "auxiliary": "aux_head" in params,
    }
    if alphas is not None:
        rows = alphas["normal"].shape[0]
        h["n_nodes"] = next((n for n in range(1, 64) if num_edges(n) == rows), 0)
    return h


def _has_pool_bn(params, genotype, layers: int) -> bool | None:
    """Whether a final network's variables hold a BN after pooling (None: no pools)."""
    g = gt.validate(genotype)
    for c in range(layers):
        nodes = g.reduce if c in reduction_indices(layers) else g.normal
        for i, node in enumerate(nodes):
            for e, (name, _) in enumerate(node):
                if name in POOLS:
                    return f"node{i}_edge{e}" in params.get(f"cell{c}", {})
    return None


def _build_model(layout: str, h: Mapping[str, Any], genotype):
    if layout.endswith("search"):
        return SearchNetwork(
            h["C"], h["num_classes"], h["layers"], h["n_nodes"], h["stem_multiplier"]
        )
    if genotype is None:
        raise ValueError(f"layout {layout!r} needs genotype= (a Genotype, its text or a name)")
    return FinalNetwork(
        genotype,
        h["C"],
        h["num_classes"],
        h["layers"],
        h["auxiliary"],
        h["stem_multiplier"],
        pool_bn=layout != "official_final" if h.get("pool_bn") is None else h["pool_bn"],
    )


def _merge(inferred: dict, overrides: Mapping[str, Any]) -> dict:
    unknown = sorted(set(overrides) - set(_HPARAMS))
    if unknown:
        raise TypeError(f"unknown model argument(s) {unknown}; known: {list(_HPARAMS)}")
    return {**inferred, **{k: v for k, v in overrides.items() if v is not None}}


# ---------------------------------------------------------------------------
# Conversion core


def _list(names: list[str], limit: int = 20) -> str:
    more = f" ... and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _arrays_to_flat(
    arrays: Mapping[str, np.ndarray],
    entries: list[Entry],
    shapes: Mapping[tuple, tuple[int, ...]],
    dtype=None,
    pool_bn_stats: str = "check",
    allow_missing_nbt: bool = True,
) -> dict[tuple, np.ndarray]:
    """PyTorch arrays -> {(collection, *path): array}, strictly."""
    if pool_bn_stats not in ("check", "mean"):
        raise ValueError(f"pool_bn_stats must be 'check' or 'mean', got {pool_bn_stats!r}")
    known = {e.key for e in entries}
    unknown = [k for k in arrays if k not in known]
    missing = [
        e.key
        for e in entries
        if e.key not in arrays and not (e.kind == "nbt" and allow_missing_nbt)
    ]
    problems = []
    if unknown:
        problems.append(f"{len(unknown)} unknown key(s): {_list(unknown)}")
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_list(missing)}")
    mismatched = []
    for e in entries:
        if e.key not in arrays:
            continue
        expected = () if e.kind == "nbt" else _torch_shape(e, shapes)
        if tuple(arrays[e.key].shape) != expected:
            mismatched.append(f"{e.key} {tuple(arrays[e.key].shape)} != expected {expected}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es): {_list(mismatched)}")
    if problems:
        raise ValueError("state_dict does not match the layout: " + "; ".join(problems))

    targets = {e.target for e in entries if e.target is not None}
    # Pool BN copies: out = first + sum(copy - first) / n, their mean, and
    # bit-for-bit the first copy when all copies are equal (exact round trips).
    out: dict[tuple, np.ndarray] = {}
    deltas: dict[tuple, np.ndarray] = {}
    counts = {t: np.zeros(shapes[t], np.int64) for t in targets}
    first: dict[tuple, str] = {}
    disagree = []
    for e in entries:
        if e.target is None:
            continue
        value = _TO_OURS[e.kind](arrays[e.key])
        if e.target not in out:
            out[e.target] = np.zeros(shapes[e.target], dtype or value.dtype)
            deltas[e.target] = np.zeros(shapes[e.target], out[e.target].dtype)
        slot = (e.target, repr(e.index))
        if slot not in first:
            first[slot] = e.key
            out[e.target][e.index] = value
        else:
            ref = out[e.target][e.index]
            if pool_bn_stats == "check" and not np.allclose(
                value, ref, rtol=_POOL_RTOL, atol=_POOL_ATOL
            ):
                disagree.append(f"{e.key} vs {first[slot]}")
            deltas[e.target][e.index] += value - ref
        counts[e.target][e.index] += 1
    if disagree:
        raise ValueError(
            "pool BN statistics differ between edges that share a source state (darts_jax "
            f"keeps one copy per source): {_list(disagree)}; pass pool_bn_stats='mean' to "
            "average them"
        )
    for t in targets:
        c = counts[t]
        if not c.all():
            raise RuntimeError(f"internal error: the layout leaves part of {t} unset")
        if c.max() > 1:
            if t[-2] not in (f"{p}_bn" for p in POOLS):
                raise RuntimeError(f"internal error: the layout writes {t} more than once")
            out[t] = (out[t] + deltas[t] / c).astype(out[t].dtype)
    return out


def _flat_to_arrays(
    flat: Mapping[tuple, np.ndarray], entries: list[Entry], num_batches_tracked: int
) -> OrderedDict[str, np.ndarray]:
    out = OrderedDict()
    for e in entries:
        if e.target is None:
            out[e.key] = np.asarray(num_batches_tracked, np.int64)
        else:
            out[e.key] = np.ascontiguousarray(_TO_TORCH[e.kind](flat[e.target][e.index]))
    return out


def _check_tree(flat: Mapping[tuple, Any], shapes: Mapping[tuple, tuple], what: str) -> None:
    """Our side, strictly: the same leaves and shapes as the model has."""
    unknown = ["/".join(k) for k in flat if k not in shapes]
    missing = ["/".join(k) for k in shapes if k not in flat]
    wrong = [
        f"{'/'.join(k)} {tuple(np.shape(v))} != expected {shapes[k]}"
        for k, v in flat.items()
        if k in shapes and tuple(np.shape(v)) != shapes[k]
    ]
    problems = []
    if unknown:
        problems.append(f"{len(unknown)} unknown leaf/leaves: {_list(unknown)}")
    if missing:
        problems.append(f"{len(missing)} missing leaf/leaves: {_list(missing)}")
    if wrong:
        problems.append(f"{len(wrong)} shape mismatch(es): {_list(wrong)}")
    if problems:
        raise ValueError(f"{what} do not match the model: " + "; ".join(problems))


def _unflatten(flat: Mapping[tuple, np.ndarray], to_jax: bool = True) -> dict:
    conv = jnp.asarray if to_jax else (lambda a: a)
    return traverse_util.unflatten_dict({k: conv(v) for k, v in flat.items()})


def _flatten(tree: Mapping | None, collection: str) -> dict[tuple, np.ndarray]:
    if tree is None:
        return {}
    return {
        (collection, *k): np.asarray(v) for k, v in traverse_util.flatten_dict(dict(tree)).items()
    }


# ---------------------------------------------------------------------------
# Public API


def from_torch(
    state_dict_or_path,
    layout: str,
    *,
    genotype=None,
    dtype=None,
    pool_bn_stats: str = "check",
    **model_kwargs,
):
    """Imports a PyTorch checkpoint: returns ``(model, variables, alphas)``.

    ``variables`` = {'params', 'batch_stats'} for ``model.apply``; ``alphas`` =
    {'normal', 'reduce'} (n_edges, 8) in darts_jax column order, or None for
    a final-network layout. Hyper-parameters (C, num_classes, layers,
    n_nodes, stem_multiplier, auxiliary) are inferred from the shapes; a
    keyword overrides one (a wrong value then shows as shape mismatches).
    ``dtype``: of the arrays (default: the checkpoint's; float64 needs
    ``jax.enable_x64``). Raises ValueError for unknown or missing keys and
    wrong shapes, NotImplementedError where darts_jax cannot hold the model.
    """
    _check_layout(layout)
    arrays = load_state_dict(state_dict_or_path)
    h = _merge(_infer_hparams(layout, arrays), model_kwargs)
    model = _build_model(layout, h, _resolve_genotype(genotype))
    _unsupported(layout, model)
    shapes = variable_shapes(model, h["c_in"])
    entries = layout_entries(layout, model)
    flat = _arrays_to_flat(arrays, entries, shapes, dtype, pool_bn_stats)
    tree = _unflatten(flat)
    variables = {"params": tree["params"], "batch_stats": tree["batch_stats"]}
    return model, variables, tree.get("alphas")


def to_torch(
    variables: Mapping,
    alphas: Mapping | None,
    layout: str,
    *,
    model=None,
    genotype=None,
    num_batches_tracked: int = 0,
    dtype=None,
) -> OrderedDict:
    """Exports darts_jax variables (+ alphas for a search layout) as a PyTorch state_dict.

    An OrderedDict of torch tensors in the layout's exact key order, ready for
    ``load_state_dict`` of the PyTorch model (pt.darts's or our
    ``interop.torch_ref``'s). Hyper-parameters come from ``model`` or, without
    one, from the shapes (final layouts then need ``genotype``). ``dtype``: a
    torch dtype for the float tensors (default: the arrays' own).
    """
    import torch

    _check_layout(layout)
    search = layout.endswith("search")
    if search and alphas is None:
        raise ValueError(f"layout {layout!r} needs the alphas")
    if not search and alphas is not None:
        raise ValueError(f"layout {layout!r} is a final network: it has no alphas")
    h = _hparams_from_variables(variables, alphas)
    if model is None:
        genotype = _resolve_genotype(genotype)
        if not search and genotype is not None:
            h["pool_bn"] = _has_pool_bn(variables["params"], genotype, h["layers"])
        model = _build_model(layout, h, genotype)
    _unsupported(layout, model)
    shapes = variable_shapes(model, h["c_in"])
    flat = {
        **_flatten(variables.get("params"), "params"),
        **_flatten(variables.get("batch_stats"), "batch_stats"),
        **_flatten(alphas, "alphas"),
    }
    _check_tree(flat, shapes, "variables and alphas")
    arrays = _flat_to_arrays(flat, layout_entries(layout, model), num_batches_tracked)
    out = OrderedDict()
    for k, a in arrays.items():
        t = torch.from_numpy(a.copy())
        out[k] = t.to(dtype) if dtype is not None and t.is_floating_point() else t
    return out


def _collection_entries(layout, model, collections) -> list[Entry]:
    return [
        e
        for e in layout_entries(layout, model)
        if e.target is not None and e.target[0] in collections
    ]


def arrays_to_tree(
    arrays: Mapping[str, Any],
    layout: str,
    model,
    collections: tuple[str, ...] = ("params",),
    c_in: int = 3,
    dtype=None,
) -> dict:
    """Named PyTorch tensors of some collections -> {collection: tree}.

    For gradients and optimizer buffers (they map like the weights): e.g.
    ``collections=('params',)`` takes exactly the trainable weights by name,
    ``('alphas',)`` the alphas. Strict like ``from_torch``.
    """
    entries = _collection_entries(layout, model, collections)
    shapes = variable_shapes(model, c_in)
    np_arrays = {k: _to_numpy(v) for k, v in arrays.items()}
    flat = _arrays_to_flat(np_arrays, entries, shapes, dtype, "check")
    tree = _unflatten(flat)
    return {c: tree.get(c, {}) for c in collections}


def tree_to_arrays(
    trees: Mapping[str, Mapping], layout: str, model, c_in: int = 3
) -> OrderedDict[str, np.ndarray]:
    """{collection: tree} -> named numpy arrays in layout order (the inverse of arrays_to_tree)."""
    collections = tuple(trees)
    entries = _collection_entries(layout, model, collections)
    shapes = variable_shapes(model, c_in)
    flat = {}
    for c, tree in trees.items():
        flat.update(_flatten(tree, c))
    wanted = {k: v for k, v in shapes.items() if k[0] in collections}
    _check_tree(flat, wanted, f"{'/'.join(collections)} trees")
    return _flat_to_arrays(flat, entries, 0)
